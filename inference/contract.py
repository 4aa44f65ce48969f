"""The seven model files of the CephTrace v4 contract and the shapes they must have."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    key: str                     # short name used in code and manifests
    path: str                    # path relative to the pack folder (published name)
    phase: str
    input_shape: tuple[int, ...]
    # Accepted output shapes; first is the canonical one.
    output_shapes: tuple[tuple[int, ...], ...]
    classes: tuple[str, ...] = ()


PROFILE = ModelSpec("profile", "stage0/v4_stage0_profile.onnx", "0A",
                    (1, 1, 512, 512), ((1, 1, 512, 512), (1, 2, 512, 512)))
ZONE1 = ModelSpec("z1", "stage0/z1_cranial_base_contours.onnx", "0C",
                  (1, 1, 256, 256), ((1, 1, 256, 256),), ("cranial_base",))
ZONE2 = ModelSpec("z2", "stage0/z2_midface_contours.onnx", "0C",
                  (1, 1, 256, 256), ((1, 2, 256, 256),), ("palatal_plane", "upper_incisor_axis"))
ZONE3 = ModelSpec("z3", "stage0/z3_mandible_contours.onnx", "0C",
                  (1, 1, 256, 256), ((1, 3, 256, 256),),
                  ("mandibular_border", "mandibular_symphysis", "lower_incisor_axis"))
ZONE4 = ModelSpec("z4", "stage0/z4_posterior_contours.onnx", "0C",
                  (1, 1, 256, 256), ((1, 2, 256, 256),), ("mandibular_border", "cranial_base"))
PHASE0E = ModelSpec("phase0e", "stage0/phase0e_model.onnx", "0E", (1, 14), ((1, 36),))
STAGE1 = ModelSpec("stage1", "stage1/v4_stage1.onnx", "1",
                   (1, 28, 512, 512), ((1, 25, 256, 256),))

MODELS: tuple[ModelSpec, ...] = (PROFILE, ZONE1, ZONE2, ZONE3, ZONE4, PHASE0E, STAGE1)

# Beyond the contract, optional: a pack may add a landmark refiner (inference.refine), named in
# pack.json "refinement". Its batch axis is dynamic (one patch per refined landmark); one output
# channel per ISBI-labelled landmark.
REFINER = ModelSpec("refiner", "refine/refiner.onnx", "R", (1, 1, 64, 64), ((1, 19, 32, 32),))
OPTIONAL_MODELS: tuple[ModelSpec, ...] = (REFINER,)

ZONE_INPUT = 256
