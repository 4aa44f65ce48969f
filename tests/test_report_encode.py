"""dicom_io.encode.file_bytes writes exactly the bytes pydicom's save_as writes (issue 14: the
SR's encode was ~100 ms of pydicom's per-element work; file_bytes remembers leaf elements)."""
from __future__ import annotations

from io import BytesIO

import pydicom
import pytest

from cephnode.dicom_io.encode import file_bytes
from cephnode.dicom_io.outputs import build_outputs
from cephnode.domain.outputs import ALL_OUTPUT_KINDS
from tests.support.report_cases import PACK_NAME, PACK_VERSION, isbi_report_case


def _saved(ds) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def objects():
    # two images in one process: leaf elements remembered from the first must not leak into the
    # second (other UIDs, values, texts)
    out = []
    for case_id, spacing in (("001", True), ("007", False)):
        c = isbi_report_case(case_id, spacing=spacing)
        out.append(build_outputs(c.source, c.result, pack_name=PACK_NAME, pack_version=PACK_VERSION))
    return out


@pytest.mark.parametrize("kind", [str(k) for k in ALL_OUTPUT_KINDS])
def test_file_bytes_are_the_bytes_pydicom_writes(objects, kind):
    for built in objects:
        ds = built[kind]
        first = file_bytes(ds)
        assert first == _saved(ds)
        assert file_bytes(ds) == first        # and again, from remembered elements
        back = pydicom.dcmread(BytesIO(first))
        assert back.SOPInstanceUID == ds.SOPInstanceUID


def test_the_two_srs_differ_where_their_content_differs(objects):
    a, b = (file_bytes(o["sr"]) for o in objects)
    assert a != b
    ra, rb = (pydicom.dcmread(BytesIO(x)) for x in (a, b))
    assert ra.ContentSequence != rb.ContentSequence


def test_a_dataset_read_from_a_file_goes_to_pydicom_and_gives_the_same_bytes(objects):
    saved = _saved(objects[0]["sr"])
    read = pydicom.dcmread(BytesIO(saved))
    assert file_bytes(read) == _saved(read)
