"""A Comprehensive SR document made by highdicom, without its per-node work on the content tree.

Why (issue 14, profiled on a 2000 x 2500 source): highdicom 0.28's SR constructor spends about
three quarters of the SR's build time on the content tree it was handed, not on the document:
- it deep-copies the whole tree and re-reads the copy into highdicom content-item objects, only
  to keep them as `sr.content`;
- it looks for IMAGE and COMPOSITE references (the evidence check) and, in ComprehensiveSR, for
  SCOORD3D items, with `find_content_items`, which makes a new highdicom ContentItem (and
  CodedConcept) for every node just to compare its Value Type: three walks of ~500 nodes that
  each build ~500 pydicom datasets attribute by attribute.
The document it writes is the tree as given plus header attributes that do not depend on the
tree. So `ComprehensiveSR` here lets highdicom build the document around the root item alone
(no children: nothing to copy or walk), then puts the real children in, checks them the way
highdicom would (evidence for every referenced instance, no SCOORD3D) with one walk over the raw
`ValueType` strings, and reads `content` back into highdicom objects only when someone asks.

The written dataset is the one plain highdicom writes (tests/test_report_sr_fast.py compares the
two by dataset equality; only the clock stamps differ, as between any two builds: instance
creation and content date/time, and highdicom's contribution date/time). Nothing of highdicom is patched: other callers keep its plain behaviour.
"""
from __future__ import annotations

from copy import deepcopy
from typing import Any

import highdicom as hd
from highdicom.sr.coding import CodedConcept
from highdicom.sr.value_types import ContentItem, ContentSequence
from pydicom.dataset import Dataset

_REFERENCE_TYPES = frozenset({"IMAGE", "COMPOSITE"})
_UNSUPPORTED_TYPES = frozenset({"SCOORD3D"})          # what a Comprehensive SR may not hold


def referenced_instances(root: Dataset) -> set[str]:
    """SOP Instance UIDs the tree references (IMAGE / COMPOSITE items), checking on the way that
    no item has a value type a Comprehensive SR does not allow. One iterative walk."""
    found: set[str] = set()
    stack = list(root.get("ContentSequence", []))
    while stack:
        item = stack.pop()
        value_type = item.ValueType
        if value_type in _UNSUPPORTED_TYPES:
            raise ValueError(f"Comprehensive SR does not support content items with {value_type} value type.")
        if value_type in _REFERENCE_TYPES:
            found.add(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        children = item.get("ContentSequence")
        if children:
            stack.extend(children)
    return found


class SharedConcept(CodedConcept):
    """A CodedConcept made once per report and shared by many items (dicom_io.sr._Parts), never
    changed after it is made. highdicom hashes a concept each time it files an item under its
    name (ContentSequence's look-up table), by reading two attributes through pydicom: a quarter
    of the content tree's build time. The hash is the same value, computed once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_shared_hash", hash(self.scheme_designator + self.value))

    def __hash__(self) -> int:
        return self._shared_hash

    __eq__ = CodedConcept.__eq__          # (defining __hash__ alone would not keep the parent's)


class ComprehensiveSR(hd.sr.ComprehensiveSR):
    """highdicom's ComprehensiveSR, same arguments and same dataset, faster on large trees."""

    def __init__(self, evidence, content, *args: Any, **kwargs: Any) -> None:
        if not isinstance(content, Dataset):          # a one-item sequence, as highdicom accepts
            if len(content) != 1:
                raise ValueError("If content is a pydicom.Sequence, it must contain a single element.")
            content = content[0]
        # The root item with no children (highdicom wants the attribute, empty will do); its other
        # elements are the very objects of the full tree, so what highdicom copies onto the
        # document is what it would have copied from the full tree.
        root = Dataset()
        for elem in content:
            if elem.keyword != "ContentSequence":
                root.add(elem)
        root.ContentSequence = []
        super().__init__(evidence, root, *args, **kwargs)
        if "ContentSequence" in content:
            self["ContentSequence"] = content["ContentSequence"]
        else:
            del self.ContentSequence
        missing = referenced_instances(content) - {str(e.SOPInstanceUID) for e in evidence}
        if missing:
            raise ValueError("No evidence was provided for the following SOP instances, which are "
                             f'referenced in the document content: "{", ".join(sorted(missing))}"')
        self._full_root = content
        self._content_read = False

    @property
    def content(self) -> ContentSequence:
        """The tree as highdicom objects (as plain highdicom keeps it), read on first use."""
        if not self._content_read:
            item = ContentItem._from_dataset_derived(deepcopy(self._full_root))
            self._content = ContentSequence([item], is_root=True)
            self._content_read = True
        return self._content
