"""Reading DICOM pixels and writing the objects cephnode returns."""
