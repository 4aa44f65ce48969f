"""A real Orthanc accepts every object we build, by C-STORE over a real socket (dcmtk storescu),
files them under the source's study, and gives the SR back unchanged."""
from __future__ import annotations

import io
import subprocess

import highdicom as hd
import pytest

from cephnode.cephalometry.analysis import analyse
from cephnode.dicom_io import codes
from cephnode.dicom_io.outputs import build_outputs
from tests.support.orthanc import start_orthanc
from tests.support.report_cases import PACK_NAME, PACK_VERSION, isbi_report_case

SOP_CLASSES = {
    "sr": "1.2.840.10008.5.1.4.1.1.88.33",
    "seg": "1.2.840.10008.5.1.4.1.1.66.4",
    "gsps": "1.2.840.10008.5.1.4.1.1.11.1",
    "sc": "1.2.840.10008.5.1.4.1.1.7",
}


@pytest.mark.slow
def test_orthanc_accepts_each_object_by_c_store(tmp_path):
    case = isbi_report_case("006")
    objects = build_outputs(case.source, case.result, pack_name=PACK_NAME, pack_version=PACK_VERSION)
    assert list(objects) == list(SOP_CLASSES)
    files = [tmp_path / "source.dcm"]
    case.source.save_as(files[0], enforce_file_format=True)
    for kind, ds in objects.items():
        files.append(tmp_path / f"{kind}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)

    with start_orthanc(tmp_path / "orthanc") as pacs:
        # -R: propose exactly the SOP classes of the files (SEG and GSPS included); -xy: and
        # JPEG baseline, the tracing sheet's transfer syntax
        proc = subprocess.run(["storescu", "-R", "-xy", "-aet", "CEPHNODE", "-aec", pacs.aet, pacs.host,
                               str(pacs.dicom_port), *map(str, files)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Failed" not in proc.stderr and "Refused" not in proc.stderr, proc.stderr
        pacs.wait_for_instances(len(files))
        stored = pacs.instances_by_sop_uid()
        for kind, ds in objects.items():
            assert ds.SOPInstanceUID in stored, kind
            tags = pacs.instance_tags(stored[ds.SOPInstanceUID])
            assert tags["SOPClassUID"] == SOP_CLASSES[kind]
            assert tags["StudyInstanceUID"] == case.source.StudyInstanceUID
        # Orthanc decodes the JPEG sheet itself (DCMTK's decoder): the very pixels pydicom decodes
        import numpy as np
        from PIL import Image

        sc = objects["sc"]
        png = pacs.request("GET", f"/instances/{stored[sc.SOPInstanceUID]}/frames/0/preview")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), sc.pixel_array)
        studies = pacs.get_json("/studies")
        assert len(studies) == 1
        assert len(pacs.get_json(f"/studies/{studies[0]}/series")) == 1 + len(objects)

        # The SR as the archive holds it still carries every measurement value exactly.
        back = pacs.dataset(stored[objects["sr"].SOPInstanceUID])
        report = hd.sr.ComprehensiveSR.from_dataset(back).content
        got = {codes.MEASUREMENT_KEY_BY_VALUE[m.name.value]: m.value
               for g in report.get_image_measurement_groups() for m in g.get_measurements()
               if m.name.value != codes.LANDMARK_CONFIDENCE.value}
        assert got == {m.key: m.value for m in analyse(case.result).computed}


def test_a_peer_that_refuses_jpeg_gets_the_tracing_sheet_uncompressed(tmp_path):
    # The sheet is stored JPEG baseline; an archive that accepts only uncompressed syntaxes
    # still gets it, with the pixels it decodes to, still labelled lossy, and the same SOP
    # Instance UID (node.delivery).
    import numpy as np
    import pydicom
    from pynetdicom import AE

    from cephnode.node.delivery import _as_peer_accepts
    from tests.support.dcmtk import start_storescp

    case = isbi_report_case("006")
    (sc,) = build_outputs(case.source, case.result, kinds="sc", pack_name=PACK_NAME, pack_version=PACK_VERSION).values()
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    drawn = pydicom.dcmread(path).pixel_array
    with start_storescp(tmp_path / "archive", accept_only=[sc.SOPClassUID]) as scp:
        ae = AE(ae_title="CEPHNODE")
        ae.add_requested_context(sc.SOPClassUID, [str(sc.file_meta.TransferSyntaxUID), "1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title)
        assert assoc.is_established
        try:
            ds = _as_peer_accepts(assoc, pydicom.dcmread(path), sc.SOPClassUID)
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        assert status.Status == 0x0000
        (got,) = [p for p in scp.folder.iterdir() if p.is_file()]
    back = pydicom.dcmread(got)
    assert back.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
    assert back.SOPInstanceUID == sc.SOPInstanceUID and back.PhotometricInterpretation == "RGB"
    assert back.LossyImageCompression == "01" and back.LossyImageCompressionMethod == "ISO_10918_1"
    assert np.array_equal(back.pixel_array, drawn)
