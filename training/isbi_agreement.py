"""The ISBI 2015 inter-observer table (senior vs junior annotator, in measurement terms).

`python -m cephnode.training.isbi_agreement [--json]` prints the table of the README.
"""
from __future__ import annotations

import json
import sys

from cephnode.cephalometry.agreement import (Analysis, agreement_table, annotator_pair, classification_agreement,
                                             markdown)
from cephnode.domain.landmarks import ISBI_19
from cephnode.training import isbi


def isbi_pairs(cases: list[isbi.IsbiCase]) -> list[tuple[Analysis, Analysis]]:
    """Analyses of each ISBI case from the senior and from the junior annotator."""
    spacing = isbi.pixel_spacing_mm()
    width, height = isbi.image_size()
    return [
        annotator_pair(dict(zip(ISBI_19, map(tuple, c.senior))), dict(zip(ISBI_19, map(tuple, c.junior))),
                       width=width, height=height, pixel_spacing_mm=spacing, name=c.case_id, face="right",
                       source="ISBI 2015 annotation", missing_note="not labelled in ISBI 2015")
        for c in cases
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pairs = isbi_pairs(isbi.load_cases(exclude_duplicates=True))
    rows = agreement_table(pairs)
    classes = classification_agreement(pairs)
    if "--json" in argv:
        print(json.dumps({"measurements": [r.__dict__ for r in rows],
                          "classifications": {k: {"same": s, "cases": n} for k, (s, n) in classes.items()}}, indent=1))
    else:
        print(markdown(rows))
        print()
        print("| classification | same category (senior vs junior) |")
        print("|---|---|")
        for name, (same, n) in classes.items():
            print(f"| {name} | {same}/{n} ({100 * same / n:.0f} %) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
