"""highdicom's "is this attribute in this IOD?" answered once per question, not once per object.

highdicom asks it while building every object (Content Date and Time for each SOP class; whether
the source image has pixel data and may be multi-frame, for each reference to it) and answers by
walking every attribute of every module of the IOD in the standard's tables shipped with it: about
twenty walks per job, 14 ms of the report objects' CPU at 2000 x 2500 (issue 14; the objects'
target is 150 ms). The answer depends only on the arguments and those tables, which never change
in a running process, so it is kept after the first time. This is the fix we would send upstream
(a cache on the function); until highdicom has one, `install()` puts the cached function where
highdicom's modules look it up. tests/test_iod_lookup.py checks that it answers as the original
does, and the report tests compare the objects it builds with highdicom's, byte for byte.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import highdicom._standard_utils as _standard_utils
import highdicom.base as _base

_ORIGINAL = _standard_utils.is_attribute_in_iod
_EXPECTED_PARAMETERS = ["attribute", "sop_class_uid", "exclude_path_elements"]


@functools.lru_cache(maxsize=4096)
def _answer(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
    return _ORIGINAL(attribute, sop_class_uid, None if exclude is None else list(exclude))


def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                        exclude_path_elements: Sequence[str] | None = None) -> bool:
    """highdicom._standard_utils.is_attribute_in_iod, remembered (same arguments, same answer,
    same KeyError for an unknown SOP class: errors are not cached)."""
    exclude = None if exclude_path_elements is None else tuple(exclude_path_elements)
    return _answer(str(attribute), str(sop_class_uid), exclude)


def install() -> bool:
    """Point highdicom's modules at the remembered lookup; False (nothing changed) when this
    highdicom's function is not the one this cache was written for."""
    if list(inspect.signature(_ORIGINAL).parameters) != _EXPECTED_PARAMETERS:
        return False
    # _standard_utils' own callers (does_iod_have_pixel_data, is_multiframe_image) look the
    # name up in their module; base.py imported it by name
    _standard_utils.is_attribute_in_iod = is_attribute_in_iod
    if getattr(_base, "is_attribute_in_iod", None) is _ORIGINAL:
        _base.is_attribute_in_iod = is_attribute_in_iod
    return True
