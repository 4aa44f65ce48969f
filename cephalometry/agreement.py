"""Agreement of two sets of landmarks in measurement terms (e.g. two annotators of ISBI 2015).

`python -m cephalometry.agreement` prints the inter-observer table of the README:
per measurement, the mean absolute difference between the senior and junior annotators.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from cephnode.cephalometry.analysis import Analysis, analyse
from cephnode.cephalometry.annotations import result_from_points
from cephnode.inference.landmarks import ISBI_19


@dataclass(frozen=True)
class AgreementRow:
    key: str
    name: str
    unit: str
    cases: int                 # cases where both observers' value exists
    mean_abs_diff: float | None
    mean_diff: float | None    # first minus second observer: a systematic offset shows here
    sd_diff: float | None      # SD of the signed differences
    omitted_reason: str = ""


def agreement_table(pairs: list[tuple[Analysis, Analysis]]) -> list[AgreementRow]:
    if not pairs:
        return []
    rows = []
    for m0 in pairs[0][0].measurements:
        diffs = []
        for a, b in pairs:
            va, vb = a.get(m0.key).value, b.get(m0.key).value
            if va is not None and vb is not None:
                diffs.append(va - vb)
        d = np.array(diffs)
        rows.append(AgreementRow(
            m0.key, m0.name, m0.unit, len(diffs),
            float(np.mean(np.abs(d))) if len(d) else None,
            float(np.mean(d)) if len(d) else None,
            float(np.std(d, ddof=1)) if len(d) > 1 else None,
            "" if len(d) else m0.omitted_reason,
        ))
    return rows


def classification_agreement(pairs: list[tuple[Analysis, Analysis]]) -> dict[str, tuple[int, int]]:
    """classification name -> (cases where both observers put it in the same category, cases)."""
    out: dict[str, tuple[int, int]] = {}
    for a, b in pairs:
        for ca, cb in zip(a.classifications, b.classifications):
            if ca.category is None or cb.category is None:
                continue
            same, n = out.get(ca.name, (0, 0))
            out[ca.name] = (same + (ca.category == cb.category), n + 1)
    return out


def isbi_pairs(cases) -> list[tuple[Analysis, Analysis]]:
    """Analyses of each ISBI case from the senior and from the junior annotator."""
    from cephnode.training import isbi

    spacing = isbi.pixel_spacing_mm()
    out = []
    for c in cases:
        pair = []
        for who in (c.senior, c.junior):
            r = result_from_points(
                dict(zip(ISBI_19, map(tuple, who))), width=968, height=1200, pixel_spacing_mm=spacing,
                name=c.case_id, face="right", source="ISBI 2015 annotation",
                missing_note="not labelled in ISBI 2015",
            )
            pair.append(analyse(r))
        out.append((pair[0], pair[1]))
    return out


def markdown(rows: list[AgreementRow]) -> str:
    lines = ["| measurement | unit | cases | mean abs difference | mean difference (1st - 2nd) | SD of difference |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r.mean_abs_diff is None:
            lines.append(f"| {r.name} | {r.unit} | 0 | left out: {r.omitted_reason} | | |")
        else:
            lines.append(f"| {r.name} | {r.unit} | {r.cases} | {r.mean_abs_diff:.2f} | {r.mean_diff:+.2f} | {r.sd_diff:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from cephnode.training import isbi

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
