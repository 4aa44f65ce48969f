"""The DICOM network node: receive -> spool -> study -> inference -> report -> send."""
