"""The dimensions a compressed frame itself declares, read before any decoder runs.

A decoder allocates what the codestream says, not what Rows x Columns say: a 0.9 MB JPEG
2000 frame whose SIZ declares 60000 x 60000 asks for gigabytes. So the frame's own header
(JPEG SOF, JPEG-LS SOF55, J2K SIZ) must match the DICOM header, and an RLE frame's segments
must be able to hold the pixels (a run of at most 128 bytes per 2 coded bytes: a segment
shorter than rows*cols/64 cannot be a real encoding of that size).
"""
from __future__ import annotations

import struct

JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                 "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
J2K_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                "1.2.840.10008.1.2.4.203"}
RLE_SYNTAX = "1.2.840.10008.1.2.5"
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}  # F7: JPEG-LS


class CodestreamError(ValueError):
    """The frame's own header is missing, malformed or disagrees with the DICOM header."""


def jpeg_size(frame: bytes) -> tuple[int, int]:
    """(rows, columns) from the first start-of-frame marker."""
    if frame[:2] != b"\xff\xd8":
        raise CodestreamError("JPEG frame does not start with SOI")
    i = 2
    n = len(frame)
    while i + 4 <= n:
        if frame[i] != 0xFF:
            raise CodestreamError("JPEG marker segment out of step before the frame header")
        marker = frame[i + 1]
        if marker == 0xFF:          # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", frame[i + 2:i + 4])
        if marker in _SOF:
            if i + 9 > n:
                break
            rows, cols = struct.unpack(">HH", frame[i + 5:i + 9])
            return rows, cols
        if marker == 0xDA or length < 2:
            break
        i += 2 + length
    raise CodestreamError("no JPEG frame header (SOF) before the scan")


def j2k_size(frame: bytes) -> tuple[int, int]:
    """(rows, columns) from the SIZ marker of a J2K codestream (raw or in a JP2 box)."""
    at = frame.find(b"\xff\x4f\xff\x51")
    if at < 0 or at > 4096:
        raise CodestreamError("no JPEG 2000 SIZ marker at the start of the frame")
    body = frame[at + 4:at + 4 + 2 + 2 + 16]
    if len(body) < 20:
        raise CodestreamError("JPEG 2000 SIZ marker is truncated")
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", body[4:20])
    if xo >= xsiz or yo >= ysiz:
        raise CodestreamError("JPEG 2000 SIZ offsets exceed the image size")
    return ysiz - yo, xsiz - xo


def rle_check(frame: bytes, rows: int, cols: int, segments_expected: int) -> None:
    if len(frame) < 64:
        raise CodestreamError("RLE frame shorter than its 64-byte header")
    header = struct.unpack("<16I", frame[:64])
    count = header[0]
    if count != segments_expected:
        raise CodestreamError(f"RLE frame has {count} segments, the header implies {segments_expected}")
    offsets = list(header[1:1 + count]) + [len(frame)]
    if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise CodestreamError("RLE segment offsets are not increasing within the frame")
    need = rows * cols
    for a, b in zip(offsets, offsets[1:]):
        if (b - a) * 64 < need:
            raise CodestreamError(f"RLE segment of {b - a} bytes cannot hold {rows} x {cols} pixels")
    got = _rle_decoded_length(frame[offsets[0]:offsets[1]], need + 2)
    if not need <= got <= need + 1:   # an encoder may pad a segment to even length
        raise CodestreamError(f"RLE segment decodes to {got} bytes, the header implies {rows} x {cols} = {need}")


def _rle_decoded_length(seg: bytes, stop: int) -> int:
    """How many bytes a PackBits segment decodes to (counted, not decoded; stops past `stop`)."""
    i, n, out = 0, len(seg), 0
    while i < n and out <= stop:
        h = seg[i]
        if h < 128:               # h + 1 literal bytes follow
            out += h + 1
            i += h + 2
        elif h > 128:             # the next byte, repeated 257 - h times
            out += 257 - h
            i += 2
        else:                     # 128: no operation
            i += 1
    return out


def check_frame(transfer_syntax: str, frame: bytes, *, rows: int, cols: int, samples: int, bits_allocated: int,
                max_pixels: int) -> None:
    """Raise CodestreamError unless the frame's own dimensions match rows x cols (<= max_pixels)."""
    ts = str(transfer_syntax)
    if ts in JPEG_SYNTAXES:
        size = jpeg_size(frame)
    elif ts in J2K_SYNTAXES:
        size = j2k_size(frame)
    elif ts == RLE_SYNTAX:
        rle_check(frame, rows, cols, samples * max(1, bits_allocated // 8))
        return
    else:
        return
    if size[0] * size[1] > max_pixels:
        raise CodestreamError(f"codestream declares {size[0]} x {size[1]} pixels, over the limit of {max_pixels}")
    if size != (rows, cols):
        raise CodestreamError(f"codestream declares {size[0]} x {size[1]}, the header {rows} x {cols}")
