"""Patient names that are not ASCII reach the archive as the source spelled them: every object
we build carries the source's Specific Character Set (highdicom copies it with the patient and
study attributes; sr_fast builds the SR past highdicom and must keep it too). Our own text is
ASCII, so the source's declaration always holds it."""
from __future__ import annotations

import copy
from io import BytesIO

import pydicom
import pytest

from cephnode.dicom_io.outputs import build_outputs
from cephnode.domain.outputs import ALL_OUTPUT_KINDS
from tests.support.report_cases import PACK_NAME, PACK_VERSION, isbi_report_case
from tests.support.validators import dciodvfy


@pytest.fixture(scope="module")
def case():
    return isbi_report_case("004")


def _roundtrip(ds) -> pydicom.Dataset:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buf.getvalue()))


def _source(case, charset, name, description):
    src = copy.deepcopy(case.source)
    if charset is None:
        if "SpecificCharacterSet" in src:
            del src.SpecificCharacterSet
    else:
        src.SpecificCharacterSet = charset
    src.PatientName = name
    src.ReferringPhysicianName = description
    # what the archive holds: the source as written and read back in its own character set
    return _roundtrip(src)


@pytest.mark.parametrize("charset, name, description, want", [
    ("ISO_IR 100", "Müller^Jörg", "Schäfer^Eva", "ISO_IR 100"),
    ("ISO_IR 192", "山田^太郎", "佐藤^花子", "ISO_IR 192"),
    (None, "Smith^Anna", "Jones^Tom", None),
])
def test_every_object_keeps_the_patients_name_and_declares_its_character_set(case, charset, name, description, want):
    """description: the referring physician, a second copied name."""
    src = _source(case, charset, name, description)
    assert str(src.PatientName) == name
    objects = build_outputs(src, case.result, kinds=ALL_OUTPUT_KINDS, pack_name=PACK_NAME, pack_version=PACK_VERSION)
    assert set(objects) == set(ALL_OUTPUT_KINDS)
    for kind, ds in objects.items():
        back = _roundtrip(ds)
        assert str(back.PatientName) == name, kind
        assert str(back.ReferringPhysicianName) == description, kind
        assert back.get("SpecificCharacterSet") == want, kind
        texts = [str(e.value) for e in back.iterall() if e.VR in ("SH", "LO", "ST", "LT", "UT", "UC") and e.value]
        own = [t for t in texts if not t.isascii() and t not in (name, description)]
        assert own == [], f"{kind}: our own text is not ASCII: {own[:3]}"


def test_a_utf8_sr_passes_dciodvfy(case, tmp_path):
    src = _source(case, "ISO_IR 192", "山田^太郎", "Jones^Tom")
    sr = build_outputs(src, case.result, kinds=("sr",), pack_name=PACK_NAME, pack_version=PACK_VERSION)["sr"]
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    report = dciodvfy(path)
    assert report.errors == [], "\n".join(report.errors)
