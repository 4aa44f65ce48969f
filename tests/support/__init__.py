"""Shared helpers for the tests: real data, generated DICOM, stand-in models, real peers."""
