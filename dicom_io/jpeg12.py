"""A pydicom decoder plugin for 12-bit JPEG Extended (process 4) through GDCM.

pydicom's own GDCM plugin refuses 12-bit JPEG Extended (it guards against old GDCM builds),
Pillow cannot read 12-bit JPEG, and the one remaining pydicom plugin for it,
pylibjpeg-libjpeg, is GPL-3.0, which we cannot ship. The GDCM wheel carries IJG libjpeg
built for 8, 12 and 16-bit samples and decodes these frames correctly
(tests/test_node_syntaxes.py sends dcmtk-encoded 12-bit process-4 images through the node).
Registered by dicom_io.transfer_syntaxes.register_decoders().
"""
from __future__ import annotations

from pydicom import uid
from pydicom.pixels.decoders.base import DecodeRunner

try:
    import gdcm

    HAVE_GDCM = True
except ImportError:  # python-gdcm is a runtime dependency; be explicit all the same
    HAVE_GDCM = False

DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("python-gdcm>=3.0.10",)}


def is_available(transfer_syntax: str) -> bool:
    return HAVE_GDCM and transfer_syntax == uid.JPEGExtended12Bit


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    if runner.samples_per_pixel != 1:
        raise NotImplementedError("only greyscale 12-bit JPEG Extended is handled here")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    elem.SetValue(fragments.__ref__())
    img = gdcm.Image()
    img.SetNumberOfDimensions(2)
    img.SetDimensions((runner.columns, runner.rows, 1))
    img.SetDataElement(elem)
    pi = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    img.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi))
    img.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(uid.JPEGExtended12Bit))))
    bits = runner.bits_stored
    img.SetPixelFormat(gdcm.PixelFormat(1, runner.bits_allocated, bits, bits - 1, runner.pixel_representation))
    frame = img.GetBuffer().encode("utf-8", "surrogateescape")  # GDCM hands char* back as str
    expected = runner.rows * runner.columns * (runner.bits_allocated // 8)
    if len(frame) != expected:
        raise ValueError(f"GDCM returned {len(frame)} bytes for a {runner.rows} x {runner.columns} frame")
    return frame
