"""The "tracing sheet": a secondary-capture image for viewers that show nothing but pixels.

Left, the radiograph with the tracing (structures, reference lines, landmarks with names);
right, a table of every analysis: value, norm, deviation, colour-coded (green within the norm,
amber beyond 1 SD or outside a range, red beyond 2 SD, grey when there is no norm, and rows left
out with the reason). No patient identifiers are drawn: Burned In Annotation follows the source.
"""
from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from cephnode.cephalometry.analysis import Analysis, Measurement
from cephnode.cephalometry.tracing import reference_lines, traced_structures
from cephnode.dicom_io.pixels import DicomImage, read_dicom_image
from cephnode.inference.result import InferenceResult

MANUFACTURER = "cephnode"
MAX_IMAGE_HEIGHT = 1600          # px of the radiograph on the sheet
FONT = cv2.FONT_HERSHEY_SIMPLEX

# RGB
STRUCTURE_COLOURS = {
    "soft_tissue_profile": (255, 170, 0), "cranial_base": (0, 200, 255), "palatal_plane": (0, 255, 120),
    "mandibular_border": (255, 70, 70), "mandibular_symphysis": (255, 0, 200),
    "upper_incisor_axis": (255, 255, 0), "lower_incisor_axis": (170, 130, 255),
}
LINE_COLOUR = (150, 230, 255)
LANDMARK_COLOUR = (255, 230, 0)
DOUBTFUL_COLOUR = (255, 90, 90)
ROW_COLOURS = {          # severity / status -> background
    "within": (205, 240, 205), "sev1": (255, 226, 150), "sev2": (255, 175, 175),
    "no-norm": (232, 232, 232), "omitted": (255, 255, 255),
}
INK = (20, 20, 20)
MUTED = (130, 130, 130)


def _row_colour(m: Measurement) -> tuple[int, int, int]:
    if m.status == "omitted":
        return ROW_COLOURS["omitted"]
    if m.status == "no-norm":
        return ROW_COLOURS["no-norm"]
    return {0: ROW_COLOURS["within"], 1: ROW_COLOURS["sev1"], 2: ROW_COLOURS["sev2"]}[m.severity]


def _draw_radiograph(grey: np.ndarray, result: InferenceResult, scale: float) -> np.ndarray:
    h, w = grey.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = cv2.resize((grey * 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    rgb = np.repeat(img[:, :, None], 3, axis=2).copy()
    t = max(1, round(size[1] / 700))

    def pts(points) -> np.ndarray:
        return np.round((np.asarray(points, float) + 0.5) * scale * 16 - 8).astype(np.int32).reshape(-1, 1, 2)

    for name, a, b in reference_lines(result):
        cv2.polylines(rgb, [pts([a, b])], False, LINE_COLOUR, t, cv2.LINE_AA, shift=4)
    for s in traced_structures(result):
        cv2.polylines(rgb, [pts(s.points)], False, STRUCTURE_COLOURS[s.key], t + 1, cv2.LINE_AA, shift=4)
    r = max(3, round(size[1] / 250))
    fs = max(0.45, size[1] / 1900)
    for lm in result.landmarks:
        if not lm.available:
            continue
        doubtful = lm.level == "low" or not lm.predicted
        colour = DOUBTFUL_COLOUR if doubtful else LANDMARK_COLOUR
        (c,) = pts([(lm.x, lm.y)]).reshape(-1, 2)
        cv2.circle(rgb, tuple(int(v) for v in c), r * 16, colour, t, cv2.LINE_AA, shift=4)
        x, y = int(c[0] / 16) + r + 2, int(c[1] / 16) - r
        label = lm.name + ("?" if doubtful else "")
        cv2.putText(rgb, label, (x, y), FONT, fs, (0, 0, 0), t + 2, cv2.LINE_AA)
        cv2.putText(rgb, label, (x, y), FONT, fs, colour, t, cv2.LINE_AA)
    return rgb


def _fmt(v: float | None, unit: str) -> str:
    return "n/a" if v is None else f"{v:.1f} {unit}"


def _table_rows(analysis: Analysis) -> list[tuple[str, object]]:
    """('title' | 'header' | 'row' | 'class' | 'note', payload) in display order."""
    rows: list[tuple[str, object]] = []
    current = None
    for m in analysis.measurements:
        if m.analysis != current:
            current = m.analysis
            rows.append(("header", current))
        rows.append(("row", m))
    rows.append(("header", "Classification"))
    for c in analysis.classifications:
        rows.append(("class", c))
    return rows


def _draw_table(analysis: Analysis, height: int, width: int, title: str) -> np.ndarray:
    panel = np.full((height, width, 3), 255, np.uint8)
    rows = _table_rows(analysis)
    n = len(rows) + 5   # title, column heads, legend x2, spacing note
    row_h = max(14, height // n)
    fs = row_h / 34.0
    t = 1 if row_h < 26 else 2
    cols = [int(width * f) for f in (0.02, 0.36, 0.52, 0.72, 0.82)]   # name, value, norm, SD, note
    y = row_h

    def text(s: str, x: int, yy: int, colour=INK, scale=fs, thick=t) -> None:
        cv2.putText(panel, s, (x, yy), FONT, scale, colour, thick, cv2.LINE_AA)

    text(title, cols[0], y - row_h // 4, scale=fs * 1.1, thick=t + 1)
    y += row_h
    for label, x in zip(("Measurement", "Value", "Norm", "Dev (SD)", "Note"), cols):
        text(label, x, y - row_h // 4, thick=t + 1)
    cv2.line(panel, (cols[0], y), (width - cols[0], y), INK, 1)
    for kind, item in rows:
        if y + row_h > height - 2 * row_h:
            break
        top = y
        y += row_h
        base = y - row_h // 4
        if kind == "header":
            text(str(item), cols[0], base, thick=t + 1)
            continue
        if kind == "class":
            c = item
            text(f"  {c.name}", cols[0], base)
            if c.category is None:
                text("not determined", cols[1], base, MUTED)
            else:
                text(f"{c.category}  ({c.value:.1f})", cols[1], base)
            continue
        m: Measurement = item
        cv2.rectangle(panel, (cols[0], top + 1), (width - cols[0], y - 1), _row_colour(m), -1)
        ink = MUTED if m.value is None else INK
        text(f"  {m.name}", cols[0], base, ink)
        text(_fmt(m.value, m.unit), cols[1], base, ink)
        text(m.norm.text[:22], cols[2], base, ink)
        if m.deviation_sd is not None:
            text(f"{m.deviation_sd:+.1f}", cols[3], base, ink)
        note = m.omitted_reason.replace("landmark unavailable: ", "no ").replace(
            "pixel spacing unknown: mm values cannot be measured", "no pixel spacing")
        if not note and any(f.startswith(("low-confidence", "rule-based")) for f in m.flags):
            # a rule-placed point is usually low-confidence too: name each landmark once
            doubtful = dict.fromkeys(f.split(":")[1] for f in m.flags if f.startswith(("low-confidence", "rule-based")))
            note = "check: " + ", ".join(doubtful)
        text(note[:28], cols[4], base, MUTED if m.value is None else (160, 60, 0))
    # legend
    y = height - row_h - row_h // 2
    x = cols[0]
    for label, key in (("within norm", "within"), ("> 1 SD / outside range", "sev1"), ("> 2 SD", "sev2"),
                       ("no norm", "no-norm")):
        cv2.rectangle(panel, (x, y - row_h + 4), (x + row_h, y), ROW_COLOURS[key], -1)
        cv2.rectangle(panel, (x, y - row_h + 4), (x + row_h, y), MUTED, 1)
        text(label, x + row_h + 6, y - 3)
        x += row_h + 12 + int(cv2.getTextSize(label, FONT, fs, t)[0][0]) + 20
    note = "Automated tracing: verify before clinical use." + (
        "" if analysis.spacing_known else " Pixel spacing unknown: no mm values.")
    text(note, cols[0], height - row_h // 3, MUTED)
    return panel


def render_sheet(grey: np.ndarray, result: InferenceResult, analysis: Analysis, *, title: str) -> np.ndarray:
    """RGB uint8 sheet: the traced radiograph beside the analysis table."""
    h = grey.shape[0]
    scale = min(1.0, MAX_IMAGE_HEIGHT / h)
    left = _draw_radiograph(grey, result, scale)
    height = left.shape[0]
    table = _draw_table(analysis, height, max(900, int(height * 0.85)), title)
    return np.concatenate([left, table], axis=1)


def build_tracing_sheet(
    source: Dataset,
    result: InferenceResult,
    analysis: Analysis,
    *,
    pack_name: str,
    pack_version: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
    image: DicomImage | None = None,
) -> hd.sc.SCImage:
    # The node passes the image it already decoded for inference: decoding it again costs
    # ~100 ms on a full-size detector image.
    grey = (image if image is not None else read_dicom_image(source)).pixels
    title = f"Cephalometric analysis - cephnode {pack_name} {pack_version}"
    if result.degraded:
        title += f" - DEGRADED (Stage 0 {result.stage0.failed_phase or ''} failed)"
    sheet = render_sheet(grey, result, analysis, title=title)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=sheet,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        # highdicom accepts only single-letter orientations here; the real value is set below.
        patient_orientation=("A", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        series_description=f"Cephalometric tracing sheet ({pack_name} {pack_version})"[:64],
    )
    # The radiograph on the sheet keeps the source's directions (scaled, not turned), so its
    # Patient Orientation is the source's, or empty (Type 2) when the source does not say.
    sc.PatientOrientation = source.get("PatientOrientation", "") or ""
    # Body part from the source lets dciodvfy see the skull is unpaired (else it wants Laterality).
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    if source.get("Laterality"):
        sc.Laterality = source.Laterality
    # We draw no identifiers, but the radiograph may carry burnt-in text of its own.
    sc.BurnedInAnnotation = "YES" if str(source.get("BurnedInAnnotation", "")).upper() == "YES" else "NO"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    return sc
