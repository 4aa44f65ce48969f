"""SEG, GSPS and tracing sheet: validated by dciodvfy (once per kind) and checked for content."""
from __future__ import annotations

import dataclasses
from io import BytesIO

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cephnode.cephalometry.analysis import analyse
from cephnode.cephalometry.tracing import traced_structures
from cephnode.dicom_io import codes
from cephnode.dicom_io.gsps import key_lines
from cephnode.dicom_io.outputs import build_outputs, instance_uid
from cephnode.domain.outputs import ALL_OUTPUT_KINDS, OutputKind
from cephnode.dicom_io.seg import band_width_px, rasterise
from cephnode.dicom_io.uids import derived_uid
from cephnode.dicom_io.tracing_sheet import ROW_COLOURS, STRUCTURE_COLOURS
from tests.support.report_cases import PACK_NAME, PACK_VERSION, isbi_report_case
from tests.support.validators import dciodvfy

DCIODVFY_EXPLAINED = {
    r"Unrecognized defined term <99CEPHNODE> for value 1 of attribute <Coding Scheme Designator>":
        "SEG segment property types use our private scheme where SNOMED has no code (profile, cranial "
        "base, palatal plane, symphysis); the scheme is declared in the Coding Scheme Identification Sequence",
    r"Unrecognized defined term <99CS3D> for value 1 of attribute <Coding Scheme Designator>":
        "the SR's label positions for OHIF use cornerstone's private scheme, declared there too (test_report_sr)",
}


@pytest.fixture(scope="module")
def case():
    return isbi_report_case("004")


@pytest.fixture(scope="module")
def objects(case):
    return build_outputs(case.source, case.result, kinds=("seg", "gsps", "sc"), pack_name=PACK_NAME,
                         pack_version=PACK_VERSION)


def _roundtrip(ds) -> pydicom.Dataset:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buf.getvalue()))


@pytest.mark.parametrize("kind, iod", [("seg", "Segmentation"), ("gsps", "GrayscaleSoftcopyPresentationState"),
                                       ("sc", "SCImage")])
def test_object_passes_dciodvfy(objects, kind, iod, tmp_path):
    path = tmp_path / f"{kind}.dcm"
    objects[kind].save_as(path, enforce_file_format=True)
    report = dciodvfy(path)
    assert iod in report.output, report.output[-2000:]
    assert report.errors == [], "\n".join(report.errors)
    assert report.unexpected_warnings(DCIODVFY_EXPLAINED) == []


@pytest.mark.parametrize("kind", ["seg", "gsps", "sc"])
def test_object_joins_the_source_study_in_its_own_series(case, objects, kind):
    ds, src = objects[kind], case.source
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID not in (src.SeriesInstanceUID,)
    assert ds.SOPInstanceUID == instance_uid(src, PACK_VERSION, kind)
    assert ds.PatientID == src.PatientID and ds.PatientName == src.PatientName
    assert ds.AccessionNumber == src.AccessionNumber
    assert PACK_NAME in ds.SeriesDescription and PACK_VERSION in ds.SeriesDescription


def test_every_kind_gets_a_distinct_series():
    c = isbi_report_case("005")
    made = build_outputs(c.source, c.result, pack_name="p", pack_version="v").values()
    assert [d.Modality for d in made] == ["SR", "SEG", "PR", "OT"]
    assert len({d.SeriesInstanceUID for d in made}) == len(ALL_OUTPUT_KINDS)
    assert len({d.SOPInstanceUID for d in made}) == len(ALL_OUTPUT_KINDS)


def test_seg_has_one_binary_segment_per_traced_structure(case, objects):
    seg = hd.seg.Segmentation.from_dataset(_roundtrip(objects["seg"]))
    assert seg.SegmentationType == "BINARY"
    structures = traced_structures(case.result)
    # ISBI has no root apices, Co or Prn: the incisor axes cannot be traced from its landmarks.
    assert [s.key for s in structures] == ["soft_tissue_profile", "cranial_base", "palatal_plane",
                                           "mandibular_border", "mandibular_symphysis"]
    assert [d.SegmentLabel for d in seg.SegmentSequence] == [s.name for s in structures]
    types = [d.SegmentedPropertyTypeCodeSequence[0].CodeValue for d in seg.SegmentSequence]
    assert types == [codes.STRUCTURES[s.key].value for s in structures]
    pixels = seg.get_pixels_by_source_instance([case.source.SOPInstanceUID], combine_segments=False)
    assert pixels.shape == (1, case.source.Rows, case.source.Columns, len(structures))
    width = band_width_px(case.result)
    assert width == 5                                       # 1 mm at 0.2 mm/px
    for i, s in enumerate(structures):
        expected = rasterise(s, (case.source.Rows, case.source.Columns), width)
        np.testing.assert_array_equal(pixels[0, :, :, i].astype(bool), expected)
    # the cranial base band runs through S and N themselves
    for name in ("S", "N"):
        lm = case.result.landmark(name)
        assert pixels[0, int(round(lm.y)), int(round(lm.x)), 1] == 1


def test_seg_of_a_projection_image_has_a_nominal_plane(case, objects):
    # OHIF reads the shared Pixel Measures and Plane Orientation; a DX has no Frame of Reference,
    # so the SEG carries its own (PS3.3 A.51: may, with the Derivation Image functional group).
    seg = _roundtrip(objects["seg"])
    assert "FrameOfReferenceUID" not in case.source
    assert seg.FrameOfReferenceUID == derived_uid(case.source.SOPInstanceUID, PACK_VERSION, "seg-frame-of-reference")
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    np.testing.assert_allclose(spacing, case.result.pixel_spacing_mm, rtol=1e-9)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == [0, 0, 0]
        src = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert src.ReferencedSOPInstanceUID == case.source.SOPInstanceUID   # pixel for pixel


def test_gsps_draws_landmarks_tracing_and_key_measurements(case, objects):
    ds = _roundtrip(objects["gsps"])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
    ref = ds.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == case.source.SOPInstanceUID
    layers = {a.GraphicLayer: a for a in ds.GraphicAnnotationSequence}
    assert set(layers) == {"LANDMARKS", "TRACING", "MEASUREMENTS"}
    points = {g.TrackingID: np.array(g.GraphicData, np.float32) for g in layers["LANDMARKS"].GraphicObjectSequence
              if g.GraphicType == "POINT"}
    available = [lm for lm in case.result.landmarks if lm.available]
    assert len(points) == len(available)
    for lm in available:
        np.testing.assert_array_equal(points[f"Landmark {lm.name}"], np.float32([lm.x + 0.5, lm.y + 0.5]))
    labels = {t.UnformattedTextValue for t in layers["LANDMARKS"].TextObjectSequence}
    assert {lm.name for lm in available} <= labels
    lines = [g for g in layers["TRACING"].GraphicObjectSequence if g.GraphicType == "POLYLINE"]
    assert {g.TrackingID for g in lines} >= {"SN line", "FH line", "MP line", "Soft-tissue profile"}
    texts = [t.UnformattedTextValue for t in layers["MEASUREMENTS"].TextObjectSequence]
    analysis = analyse(case.result)
    assert texts[: len(key_lines(analysis))] == key_lines(analysis)
    sna = analysis.get("steiner.sna").value
    assert any(t.startswith(f"SNA: {sna:.1f} deg (norm 82 +- 2 deg)") for t in texts)
    assert any("Skeletal class (ANB)" in t for t in texts)


def test_tracing_sheet_shows_the_tracing_and_a_colour_coded_table(case, objects):
    ds = _roundtrip(objects["sc"])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.BurnedInAnnotation == "NO"
    sheet = ds.pixel_array
    rows, cols = case.source.Rows, case.source.Columns
    assert sheet.shape[0] == rows and sheet.shape[1] > cols + 800     # radiograph at full size + table
    left, table = sheet[:, :cols], sheet[:, cols:]
    # the tracing is drawn in colour over the grey radiograph
    colourful = np.abs(left.astype(int) - left.mean(axis=2, keepdims=True)).max(axis=2) > 40
    assert colourful.mean() > 0.002
    lm = case.result.landmark("Go")
    patch = left[int(lm.y) - 12:int(lm.y) + 13, int(lm.x) - 12:int(lm.x) + 13].reshape(-1, 3)
    assert (np.abs(patch.astype(int) - STRUCTURE_COLOURS["mandibular_border"]).sum(axis=1) < 60).any()
    # the table uses the severity colours as row backgrounds, one kind per measurement status
    analysis = analyse(case.result)
    # (the sheet is JPEG: a flat colour comes back within a few levels; the colours are 27+ apart)
    near = {k: (np.abs(table.astype(int) - rgb).max(axis=2) <= 3).sum() for k, rgb in ROW_COLOURS.items()}
    present = {k for k, n in near.items() if k != "omitted" and n > 4000}  # a row, not the legend swatch
    expected = set()
    for m in analysis.computed:
        expected.add("no-norm" if m.status == "no-norm" else {0: "within", 1: "sev1", 2: "sev2"}[m.severity])
    assert present == expected


def test_tracing_sheet_is_labelled_lossy_small_and_names_its_source(case, objects):
    sc = objects["sc"]
    ds = _roundtrip(sc)
    # JPEG baseline of the RGB samples as drawn (no colour transform), labelled lossy with its
    # ratio and method (PS3.3 C.7.6.1.1.5): a picture for reading, the radiograph stays as it is.
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
    from pydicom.encaps import generate_frames
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    assert b"Adobe" in frame[:64]          # APP14 with transform 0: the decoder keeps RGB as RGB
    from cephnode.dicom_io.pixels import read_dicom_image
    from cephnode.dicom_io.tracing_sheet import render_sheet
    analysis = analyse(case.result)
    title = f"Cephalometric analysis - cephnode {PACK_NAME} {PACK_VERSION}"
    drawn = render_sheet(read_dicom_image(case.source).pixels, case.result, analysis, title=title)
    assert float(ds.LossyImageCompressionRatio) == pytest.approx(drawn.nbytes / len(frame), abs=0.01)
    # decodes to what was drawn within JPEG quality 90 (measured: PSNR 47.5 dB, largest error 19)
    error = ds.pixel_array.astype(float) - drawn
    assert 10 * np.log10(255 ** 2 / np.mean(error ** 2)) > 45
    assert np.abs(error).max() <= 32 and np.mean(np.abs(error) > 8) < 0.002
    buf = BytesIO()
    sc.save_as(buf, enforce_file_format=True)
    assert len(buf.getvalue()) < 1_500_000 < drawn.nbytes                   # raw RGB is ~7 MB
    (ref,) = ds.SourceImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (case.source.SOPClassUID,
                                                                         case.source.SOPInstanceUID)
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert "tracing" in ds.DerivationDescription and ds.ImageType[0] == "DERIVED"


def test_tracing_sheet_of_a_lossy_source_keeps_its_compression_history():
    # PS3.3 C.7.6.1.1.5: ratios and methods list every lossy step, oldest first.
    c = isbi_report_case("005")
    c.source.LossyImageCompression = "01"
    c.source.LossyImageCompressionRatio = "9.5"
    c.source.LossyImageCompressionMethod = "ISO_15444_1"
    (sc,) = build_outputs(c.source, c.result, kinds="sc", pack_name="p", pack_version="v").values()
    back = _roundtrip(sc)
    assert back.LossyImageCompression == "01"
    assert list(back.LossyImageCompressionMethod) == ["ISO_15444_1", "ISO_10918_1"]
    assert float(back.LossyImageCompressionRatio[0]) == 9.5 and float(back.LossyImageCompressionRatio[1]) > 3


def test_tracing_sheet_text_is_what_pillow_draws():
    """The sheet's texts are rendered once per process and blended in (tracing_sheet._Texts):
    the pixels must be those ImageDraw.text draws, halos, bold and clipping at the edges included."""
    from PIL import Image, ImageDraw

    from cephnode.dicom_io.tracing_sheet import _Texts, font

    rng = np.random.default_rng(14)
    base = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    texts = _Texts()
    styles = [("S", 27, False, 3), ("Go?", 14, False, 1), ("SNA 82 \u00b1 2\u00b0", 20, True, 0),
              ("Measurement", 11, False, 0), ("edge", 30, False, 2), ("Wj", 40, True, 0)]
    for i, (text, px, bold, outline) in enumerate(styles):
        for x, y in ((10 + 60 * i, 50 + 40 * i), (-5, 10), (480, 299), (250, 2), (600, 50)):
            texts.add(x, y, text, tuple(int(v) for v in rng.integers(0, 256, 3)), px, bold=bold, outline=outline)
    ours = texts.draw_into(base.copy())
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for lb in texts.labels:
        draw.text((lb.x, lb.y), lb.text, fill=lb.colour, font=font(lb.px), anchor="ls",
                  stroke_width=lb.outline or (1 if lb.bold else 0), stroke_fill=(0, 0, 0) if lb.outline else lb.colour)
    assert np.array_equal(ours, np.asarray(img))
    assert not np.array_equal(ours, base)


def test_tracing_sheet_prints_degree_and_plus_minus_signs():
    from cephnode.dicom_io.tracing_sheet import clinical_text, font, value_text
    assert clinical_text("82 +- 2 deg") == "82 \u00b1 2\u00b0" and value_text(85.04, "deg") == "85.0\u00b0"
    assert value_text(9.84, "mm") == "9.8 mm" and value_text(None, "deg") == "n/a"
    # the font really has the glyphs: each differs from the font's missing-glyph box
    from PIL import Image, ImageDraw

    def glyph(ch: str) -> np.ndarray:
        img = Image.new("L", (64, 64))
        ImageDraw.Draw(img).text((8, 8), ch, font=font(32), fill=255)
        return np.asarray(img)

    missing = glyph("\ue000")
    for ch in "\u00b0\u00b1":
        assert glyph(ch).any() and not np.array_equal(glyph(ch), missing), repr(ch)


def test_a_source_without_spacing_or_orientation_still_gives_valid_objects(tmp_path):
    """Real CR/DX headers often lack Imager Pixel Spacing or Patient Orientation: every object must
    still be valid (mm values left out, Image Library without the projection descriptors)."""
    c = isbi_report_case("008", spacing=False)
    c.source.PatientOrientation = ""
    made = build_outputs(c.source, c.result, pack_name=PACK_NAME, pack_version=PACK_VERSION).values()
    for ds in made:
        path = tmp_path / f"{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        report = dciodvfy(path)
        assert report.errors == [], (ds.Modality, report.errors)
        assert report.unexpected_warnings(DCIODVFY_EXPLAINED) == [], ds.Modality


def test_a_degraded_tracing_is_said_so_in_every_object():
    c = isbi_report_case("009")
    c.result.degraded = True
    c.result.stage0.ok, c.result.stage0.failed_phase, c.result.stage0.reason = False, "0A", "profile mask too small"
    sr, _, gsps, sc = build_outputs(c.source, c.result, pack_name="p", pack_version="v").values()
    (container,) = [it for it in sr.ContentSequence if it.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    status = [it.ConceptCodeSequence[0].CodeValue for it in container.ContentSequence
              if it.ConceptNameCodeSequence[0].CodeValue == codes.TRACING_STATUS.value]
    assert status == [codes.TRACING_STATUSES[True].value]
    texts = [t.UnformattedTextValue for a in gsps.GraphicAnnotationSequence for t in a.get("TextObjectSequence", [])]
    assert any(t.startswith("DEGRADED tracing: Stage 0 0A failed (profile mask too small)") for t in texts)
    # the title of the sheet is drawn in ink: a degraded sheet differs from a normal one there
    c.result.degraded = False
    normal = list(build_outputs(c.source, c.result, kinds="sc", pack_name="p", pack_version="v").values())[0]
    cols = c.source.Columns
    assert (sc.pixel_array[:40, cols:] != normal.pixel_array[:40, cols:]).any()


def test_nothing_to_trace_leaves_the_seg_out_but_keeps_the_others():
    c = isbi_report_case("010")
    for lm in c.result.landmarks:
        if lm.name not in ("S", "A", "Pog", "UL"):      # one point per structure: nothing to draw
            lm.x = lm.y = None
            lm.level, lm.predicted = "unavailable", False
    made = build_outputs(c.source, c.result, pack_name="p", pack_version="v")
    assert list(made) == [OutputKind.SR, OutputKind.GSPS, OutputKind.SC]
    assert [d.Modality for d in made.values()] == ["SR", "PR", "OT"]


@pytest.mark.parametrize("monochrome1, shape", [(False, "IDENTITY"), (True, "INVERSE")])
def test_gsps_keeps_the_source_display_pipeline(monochrome1, shape):
    """A GSPS replaces the image's display pipeline: it must carry the source's window and, for
    MONOCHROME1 detectors, invert, or the viewer shows a wrongly windowed or negative image."""
    from tests.support.dicomgen import make_dx, read_grey
    from cephnode.training import isbi

    c = isbi_report_case("012")
    case = next(x for x in isbi.load_cases() if x.case_id == "012")
    src = make_dx(read_grey(case.image_path), bits=12, monochrome1=monochrome1, window=(1800.0, 3000.0),
                  pixel_spacing_mm=isbi.pixel_spacing_mm())
    (gsps,) = build_outputs(src, c.result, kinds="gsps", pack_name="p", pack_version="v").values()
    assert gsps.PresentationLUTShape == shape
    voi = gsps.SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (1800.0, 3000.0)


def _all_uids(ds: pydicom.Dataset) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def collect(_ds, elem):
        if elem.VR == "UI" and elem.value:
            found.append((elem.keyword, str(elem.value)))

    ds.walk(collect)
    return found


@pytest.mark.parametrize("kind", ["seg", "gsps", "sc"])
def test_a_rebuild_writes_the_very_same_uids(case, objects, kind):
    # A job retried after a crash must produce the very same instances, down to every UID inside
    # them (highdicom draws some, e.g. the SEG's Dimension Organization UID, at random).
    (again,) = build_outputs(case.source, case.result, kinds=[kind], pack_name=PACK_NAME, pack_version=PACK_VERSION).values()
    assert _all_uids(again) == _all_uids(objects[kind])


def test_tracing_sheet_from_the_callers_decoded_image_is_the_same(case, objects):
    # The node hands over the image it decoded for inference instead of decoding it twice.
    from cephnode.dicom_io.pixels import read_dicom_image

    image = read_dicom_image(case.source)
    (sc,) = build_outputs(case.source, case.result, kinds=["sc"], pack_name=PACK_NAME, pack_version=PACK_VERSION,
                          image=image).values()
    assert sc.SOPInstanceUID == objects["sc"].SOPInstanceUID
    assert np.array_equal(sc.pixel_array, objects["sc"].pixel_array)
    # and the image really is what is drawn: a blank one gives a different sheet
    blank = dataclasses.replace(image, pixels=np.zeros_like(image.pixels))
    (other,) = build_outputs(case.source, case.result, kinds=["sc"], pack_name=PACK_NAME, pack_version=PACK_VERSION,
                             image=blank).values()
    assert not np.array_equal(other.pixel_array, objects["sc"].pixel_array)


def test_two_workers_can_build_tracing_sheets_at_once():
    # The node's workers build sheets in parallel threads; unguarded, two JPEG 2000 encodes at
    # once crashed the whole process (SIGSEGV). A crash would take pytest down: run it apart.
    import subprocess
    import sys
    from pathlib import Path

    script = """
import threading
from cephnode.dicom_io.outputs import build_outputs
from tests.support.report_cases import isbi_report_case
cases = [isbi_report_case(c) for c in ("004", "005")]
def work(c):
    for _ in range(3):
        build_outputs(c.source, c.result, kinds="sc", pack_name="p", pack_version="v")
threads = [threading.Thread(target=work, args=(c,)) for c in cases]
for t in threads: t.start()
for t in threads: t.join()
print("built")
"""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "built" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_each_kind_is_stored_as_the_sop_class_delivery_proposes(case):
    from cephnode.domain.outputs import SOP_CLASSES

    built = build_outputs(case.source, case.result, pack_name=PACK_NAME, pack_version=PACK_VERSION)
    assert {str(k): str(ds.SOPClassUID) for k, ds in built.items()} == {str(k): v for k, v in SOP_CLASSES.items()}


def test_tracing_sheet_shrinks_the_radiograph_like_area_averaging():
    """tracing_sheet.shrink (Gaussian, then bilinear) must stay close to OpenCV's area
    averaging, the reference for shrinking, at the scales a sheet uses; at scale 1 it is the
    image itself, rounded to 8 bits."""
    import cv2

    from cephnode.dicom_io.tracing_sheet import shrink
    from tests.support import dicomgen

    grey = cv2.resize(dicomgen.isbi_image("001").astype(np.float32) / 255.0, (2000, 2500),
                      interpolation=cv2.INTER_CUBIC).clip(0, 1)
    area_u8 = np.round(grey * 255).astype(np.uint8)
    for scale in (0.64, 0.45, 0.33):
        ours = shrink(grey, scale)
        reference = cv2.resize(area_u8, (ours.shape[1], ours.shape[0]), interpolation=cv2.INTER_AREA)
        assert ours.shape == (round(2500 * scale), round(2000 * scale))
        mse = np.mean((ours.astype(float) - reference) ** 2)
        assert 10 * np.log10(255 ** 2 / mse) > 50, scale
    assert np.array_equal(shrink(grey, 1.0), area_u8)
