"""The traced structures as a binary Segmentation (highdicom), one segment per structure.

Binary SEG, not the label-map SEG class: Orthanc 1.10 and dciodvfy 2022 do not know the latter.
Each traced polyline is rasterised as a band about 1 mm wide (the line's own uncertainty is of
that order), so the segment is visible as a contour overlay on the single-frame source.

Plane geometry for a projection source (see with_nominal_plane): OHIF 3.13 reads the SEG's
shared Pixel Measures and Plane Orientation and fails without them, and a DX has no Frame of
Reference from which highdicom could take them.
"""
from __future__ import annotations

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cephnode.cephalometry.analysis import Analysis
from cephnode.cephalometry.tracing import NothingTraced, TracedStructure, traced_structures
from cephnode.dicom_io import codes
from cephnode.dicom_io.uids import derived_uid
from cephnode.domain.result import InferenceResult
from cephnode.dicom_io.equipment import DEVICE_SERIAL_NUMBER, MANUFACTURER, model_name, software_versions

BAND_MM = 1.0
BAND_PX_WITHOUT_SPACING = 5

# CIELab display colours (highdicom converts from RGB) so viewers tell the structures apart.
_COLOURS = {
    "soft_tissue_profile": (255, 170, 0), "cranial_base": (0, 200, 255), "palatal_plane": (0, 255, 120),
    "mandibular_border": (255, 60, 60), "mandibular_symphysis": (255, 0, 200),
    "upper_incisor_axis": (255, 255, 0), "lower_incisor_axis": (160, 120, 255),
}


class Segmentation(hd.seg.Segmentation):
    """highdicom's Segmentation, same arguments and same dataset, with a cheaper overlap check
    and bit packing (below).

    highdicom 0.28 decides Segments Overlap by summing a boolean (frames, rows, columns,
    segments) array over its segments, and numpy sums booleans into int64: about 25 ms of CPU
    for our 7 segments on a 2000 x 2500 source, half of the SEG's build (issue 14). Counting
    in uint8 gives the same answer while there are fewer than 256 segments, in 2 ms. Any other
    input (another dtype, a Volume, a label map) goes to highdicom's own check unchanged.
    """

    @classmethod
    def _check_and_cast_pixel_array(cls, pixel_array, segment_numbers, segmentation_type, dtype):
        if not (type(pixel_array) is np.ndarray and pixel_array.dtype == np.bool_ and pixel_array.ndim == 4
                and segmentation_type == hd.seg.SegmentationTypeValues.BINARY
                and 1 < pixel_array.shape[-1] == len(segment_numbers) < 256):
            return super()._check_and_cast_pixel_array(pixel_array, segment_numbers, segmentation_type, dtype)
        # What highdicom works out for a boolean stack of several segments: no value can
        # exceed 1, an empty array cannot overlap, else overlap where a pixel counts twice.
        if not pixel_array.any():
            return pixel_array, hd.seg.SegmentsOverlapValues.NO
        counts = np.add.reduce(pixel_array, axis=-1, dtype=np.uint8)
        overlap = hd.seg.SegmentsOverlapValues.YES if (counts > 1).any() else hd.seg.SegmentsOverlapValues.NO
        return pixel_array, overlap

    def _encode_pixels_native(self, planes: np.ndarray) -> bytes:
        """pydicom's pack_bits(planes, pad=False), as highdicom calls it for a binary SEG, with
        one pass to check the values are 0 or 1 instead of two copies (pack_bits compares the
        array with a boolean copy of itself, then packs a uint8 copy): ~10 ms on 7 segments of
        a 2000 x 2500 source. Same bits (tests/test_report_seg_fast.py)."""
        if self.BitsAllocated != 1 or planes.dtype not in (np.uint8, np.bool_) or planes.size == 0:
            return super()._encode_pixels_native(planes)
        flat = planes.ravel()
        if flat.dtype == np.uint8 and flat.max() > 1:
            raise ValueError("Only binary arrays (containing ones or zeroes) can be packed.")
        if flat.size % 8:
            flat = np.concatenate([flat, np.zeros(8 - flat.size % 8, flat.dtype)])
        return np.packbits(flat, bitorder="little").tobytes()


def band_width_px(result: InferenceResult) -> int:
    if result.pixel_spacing_mm is None:
        return BAND_PX_WITHOUT_SPACING
    return max(2, int(round(BAND_MM / min(result.pixel_spacing_mm))))


def rasterise(structure: TracedStructure, shape: tuple[int, int], width: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    # cv2 draws with fixed-point sub-pixel coordinates (shift = 4 bits)
    pts = np.round(np.asarray(structure.points, dtype=np.float64) * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(mask, [pts], isClosed=False, color=1, thickness=width, lineType=cv2.LINE_8, shift=4)
    return mask.view(bool)          # the bytes are 0 and 1: a boolean view, no copy


# The detector plane as the x-y plane of the SEG's own frame of reference, rows along +x and
# columns along +y: the orientation OHIF assumes for an image that declares none, so the SEG
# lines up with the DX it overlays.
NOMINAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def with_nominal_plane(seg: hd.seg.Segmentation, source: Dataset, result: InferenceResult, frame_uid: str) -> None:
    """Give a SEG of an image without a Frame of Reference (DX, CR) a nominal plane.

    PS3.3 A.51: a SEG that carries the Derivation Image functional group (pixel-for-pixel with its
    source, as ours does) MAY carry a Frame of Reference, and with one it MAY carry Pixel Measures,
    Plane Position (Patient) and Plane Orientation (Patient). The frame is the SEG's own (the
    source has none to share) and says nothing about the patient beyond what the pixels already
    do: the segmentation grid is the source grid, at the source's pixel spacing, at the origin.
    """
    if "FrameOfReferenceUID" in seg or "FrameOfReferenceUID" in source:
        return  # highdicom took the source's geometry
    seg.FrameOfReferenceUID = frame_uid
    seg.PositionReferenceIndicator = ""
    spacing = result.pixel_spacing_mm or (1.0, 1.0)
    measures = Dataset()
    measures.PixelSpacing = [f"{v:.10g}" for v in spacing]
    measures.SliceThickness = f"{min(spacing):.10g}"
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(NOMINAL_ORIENTATION)
    shared = seg.SharedFunctionalGroupsSequence[0]
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    for frame in seg.PerFrameFunctionalGroupsSequence:
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 0.0]
        frame.PlanePositionSequence = Sequence([position])


def build_seg(
    source: Dataset,
    result: InferenceResult,
    analysis: Analysis,
    *,
    pack_name: str,
    pack_version: str,
    series_uid: str,
    sop_uid: str,
    series_number: int,
) -> Segmentation:
    shape = (int(source.Rows), int(source.Columns))
    structures = traced_structures(result)
    if not structures:
        raise NothingTraced("no Stage 0 contour and too few landmarks for any structure")
    width = band_width_px(result)
    masks, descriptions = [], []
    algo = hd.AlgorithmIdentificationSequence(
        name=f"cephnode CephTrace v4 ({pack_name})"[:64], family=codes.ANATOMICAL_STRUCTURE, version=pack_version,
    )
    for number, s in enumerate(structures, start=1):
        mask = rasterise(s, shape, width)
        if not mask.any():
            continue  # entirely outside the image
        masks.append(mask)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=len(masks),
            segment_label=s.name[:64],
            segmented_property_category=codes.ANATOMICAL_STRUCTURE,
            segmented_property_type=codes.STRUCTURES[s.key],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=derived_uid(str(source.SOPInstanceUID), pack_version, f"seg-track-{s.key}"),
            tracking_id=f"{s.name} ({s.source})"[:64],
            display_color=hd.color.CIELabColor.from_rgb(*_COLOURS[s.key]) if hasattr(hd.color.CIELabColor, "from_rgb") else None,
        ))
    if not masks:
        raise NothingTraced("every traced structure lies outside the image")
    # (frames=1, rows, cols, segments), stored segment-major: the segment axis has the largest
    # stride, so highdicom's overlap check (a sum over that axis) adds whole planes and each
    # segment's frame is a contiguous slice. Same values as stacking on the last axis, about a
    # third of the time on a 2000 x 2500 image.
    pixel_array = np.moveaxis(np.stack(masks, axis=0), 0, -1)[np.newaxis]
    seg = Segmentation(
        source_images=[source],
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model_name(pack_name),
        software_versions=software_versions(pack_version),
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label="CEPH_TRACING",
        content_description="Cephalometric tracing",
        series_description=f"Cephalometric tracing SEG ({pack_name} {pack_version})"[:64],
        coding_schemes=codes.coding_scheme_identification(),
    )
    # General Image: Patient Orientation is Type 2C when there is no plane orientation, as for a
    # single-frame radiograph; highdicom leaves it out. Same frame as the source, so its value.
    seg.PatientOrientation = source.get("PatientOrientation", "") or ""
    # highdicom draws a random Dimension Organization UID; a retried job must give the very same
    # object, so derive it like every other UID we write.
    dim_org_uid = derived_uid(str(source.SOPInstanceUID), pack_version, "seg-dimension-organization")
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dim_org_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dim_org_uid
    with_nominal_plane(seg, source, result, derived_uid(str(source.SOPInstanceUID), pack_version, "seg-frame-of-reference"))
    return seg
