"""A Grayscale Softcopy Presentation State that draws the tracing on the source image.

Weasis and most PACS viewers show a GSPS by default, where many ignore SR graphics. Three
graphic layers, so a reader can switch them separately:
  LANDMARKS     a point, a small circle and the name of each landmark
  TRACING       the traced structures and the reference lines (SN, FH, MP, N-Pog, E-line...)
  MEASUREMENTS  the key measurements as text, with norm and deviation, on the back of the skull
Graphic coordinates are PIXEL units with (0, 0) at the top-left pixel's corner, hence + 0.5.
"""
from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from cephnode.cephalometry.analysis import Analysis, Measurement
from cephnode.cephalometry.tracing import reference_lines, traced_structures
from cephnode.dicom_io import qc_content
from cephnode.dicom_io.uids import derived_uid
from cephnode.domain.result import InferenceResult
from cephnode.dicom_io.equipment import DEVICE_SERIAL_NUMBER, MANUFACTURER, model_name, software_versions

PIXEL = hd.pr.AnnotationUnitsValues.PIXEL

# What an orthodontist looks at first; in this order on the image.
KEY_MEASUREMENTS = (
    "steiner.sna", "steiner.snb", "steiner.anb", "steiner.sn_gogn", "tweed.fma", "tweed.impa",
    "steiner.u1_sn", "steiner.interincisal", "downs.facial_angle", "bjork.jarabak_ratio",
    "steiner.l1_nb_mm", "ricketts.ll_eline",
)


def _colour(r: int, g: int, b: int) -> hd.color.CIELabColor:
    return hd.color.CIELabColor.from_rgb(r, g, b)


def _xy(points, rows: int, cols: int) -> np.ndarray:
    """PIXEL graphic data: corner-origin coordinates, kept inside the image as GSPS requires
    (a landmark or contour may sit on, or a rounding beyond, the border)."""
    xy = np.asarray(points, dtype=float).reshape(-1, 2) + 0.5
    return np.column_stack([np.clip(xy[:, 0], 0.0, cols), np.clip(xy[:, 1], 0.0, rows)])


def measurement_text(m: Measurement) -> str:
    unit = {"deg": " deg", "mm": " mm", "%": " %"}[m.unit]
    text = f"{m.name}: {m.value:.1f}{unit} (norm {m.norm.text})"
    if m.deviation_sd is not None:
        text += f" {m.deviation_sd:+.1f} SD"
    elif m.status in ("above", "below"):
        text += f" {m.status} range"
    if any(f.caveat.doubtful for f in m.flags):
        text += " [check]"
    return text


def degraded_note(result: InferenceResult) -> str | None:
    if not result.degraded:
        return None
    s0 = result.stage0
    return f"DEGRADED tracing: Stage 0 {s0.failed_phase or ''} failed ({s0.reason or 'no reason given'})"[:200]


def key_lines(analysis: Analysis) -> list[str]:
    lines = []
    by_key = {m.key: m for m in analysis.computed}
    for key in KEY_MEASUREMENTS:
        if key in by_key:
            lines.append(measurement_text(by_key[key]))
    for c in analysis.classifications:
        if c.category is not None:
            lines.append(f"{c.name}: {c.category}")
    return lines


def _face_points_right(result: InferenceResult) -> bool:
    s, n = result.landmark("S"), result.landmark("N")
    if s.available and n.available:
        return n.x > s.x
    return result.orientation.flipped  # canonical pose faces left; flipped input faced right


def build_gsps(
    source: Dataset,
    result: InferenceResult,
    analysis: Analysis,
    *,
    pack_name: str,
    pack_version: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    rows, cols = int(source.Rows), int(source.Columns)
    src_uid = str(source.SOPInstanceUID)
    layers = {
        "LANDMARKS": hd.pr.GraphicLayer("LANDMARKS", 1, "Landmark points and names", _colour(255, 220, 0)),
        "TRACING": hd.pr.GraphicLayer("TRACING", 2, "Traced structures and reference lines", _colour(0, 220, 255)),
        "MEASUREMENTS": hd.pr.GraphicLayer("MEASUREMENTS", 3, "Key measurements", _colour(255, 255, 255)),
    }
    radius = max(3.0, min(rows, cols) / 250)
    label_h = max(12.0, rows / 70)

    lm_graphics, lm_texts = [], []
    doubtful = set(result.qc.doubtful_landmarks) if getattr(result, "qc", None) else set()
    for lm in result.landmarks:
        if not lm.available:
            continue
        (x, y), = _xy([(lm.x, lm.y)], rows, cols)
        track = derived_uid(src_uid, pack_version, f"gsps-landmark-{lm.name}")
        lm_graphics.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POINT, np.array([[x, y]]), PIXEL,
                                               tracking_id=f"Landmark {lm.name}", tracking_uid=track))
        lm_graphics.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.CIRCLE, _xy([[x - 0.5, y - 0.5], [x - 0.5 + (radius if x + radius <= cols else -radius), y - 0.5]], rows, cols), PIXEL))
        label = lm.name + ("?" if lm.level == "low" or not lm.predicted or lm.name in doubtful else "")
        x0 = min(max(x + radius + 2, 0.0), cols - 2.0)
        y0 = min(max(y - label_h, 0.0), rows - 2.0)
        x1 = min(x0 + label_h * 0.7 * (len(label) + 1), float(cols))
        y1 = min(y0 + label_h, float(rows))
        lm_texts.append(hd.pr.TextObject(label, PIXEL, bounding_box=(x0, y0, x1, y1)))

    tracing = []
    for s in traced_structures(result):
        tracing.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, _xy(s.points, rows, cols), PIXEL,
                                           tracking_id=s.name[:64],
                                           tracking_uid=derived_uid(src_uid, pack_version, f"gsps-structure-{s.key}")))
    for name, a, b in reference_lines(result):
        tracing.append(hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, _xy([a, b], rows, cols), PIXEL,
                                           tracking_id=f"{name} line",
                                           tracking_uid=derived_uid(src_uid, pack_version, f"gsps-line-{name}")))

    note = degraded_note(result)
    lines = qc_content.warning_lines(result) + ([note] if note else []) + key_lines(analysis) + [
        f"cephnode {pack_name} {pack_version}: automated tracing, verify before use"]
    line_h = max(14.0, rows / 45)
    width = cols * 0.48
    x0 = 0.02 * cols if _face_points_right(result) else cols - width - 0.02 * cols
    texts = []
    for i, text in enumerate(lines):
        y0 = 0.02 * rows + i * line_h
        if y0 + line_h > rows:
            break
        texts.append(hd.pr.TextObject(text[:1024], PIXEL, bounding_box=(x0, y0, x0 + width, y0 + line_h)))

    content = {"LANDMARKS": (lm_graphics, lm_texts), "TRACING": (tracing, []), "MEASUREMENTS": ([], texts)}
    annotations = [
        hd.pr.GraphicAnnotation([source], layers[name], graphic_objects=g or None, text_objects=t or None)
        for name, (g, t) in content.items() if g or t     # a layer with nothing to show is left out
    ]
    # A presentation state replaces the image's own display pipeline: for MONOCHROME1 (bright =
    # low values) only an INVERSE Presentation LUT keeps bone white; highdicom defaults to IDENTITY.
    inverse = str(source.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    presentation_lut = hd.PresentationLUTTransformation(
        presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE if inverse else hd.PresentationLUTShapeValues.IDENTITY)
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model_name(pack_name),
        software_versions=software_versions(pack_version),
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label="CEPH_TRACING",
        content_description=f"Cephalometric tracing ({pack_name} {pack_version})"[:64],
        graphic_annotations=annotations,
        graphic_layers=[layers[k] for k in ("LANDMARKS", "TRACING", "MEASUREMENTS")],
        presentation_lut_transformation=presentation_lut,
        series_description=f"Cephalometric tracing GSPS ({pack_name} {pack_version})"[:64],
    )
    # General Series: with no Body Part Examined dciodvfy cannot tell that the skull is unpaired
    # and wants Laterality (Type 2C). highdicom copies neither; the source's body part says it.
    if source.get("BodyPartExamined"):
        gsps.BodyPartExamined = source.BodyPartExamined
    if source.get("Laterality"):
        gsps.Laterality = source.Laterality
    return gsps
