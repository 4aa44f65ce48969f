"""Agreement of two sets of landmarks in measurement terms (e.g. two annotators of ISBI 2015).

Data-set neutral: the ISBI table of the README is built by `cephnode.training.isbi_agreement`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cephnode.cephalometry.analysis import Analysis, analyse
from cephnode.cephalometry.annotations import result_from_points


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


def annotator_pair(first: dict[str, tuple[float, float]], second: dict[str, tuple[float, float]], *,
                   width: int, height: int, pixel_spacing_mm: tuple[float, float], name: str, face: str,
                   source: str, missing_note: str) -> tuple[Analysis, Analysis]:
    """The analyses of one image from two annotators' landmarks (name -> (x, y) pixels)."""
    out = []
    for points in (first, second):
        r = result_from_points(points, width=width, height=height, pixel_spacing_mm=pixel_spacing_mm,
                               name=name, face=face, source=source, missing_note=missing_note)
        out.append(analyse(r))
    return out[0], out[1]


def markdown(rows: list[AgreementRow]) -> str:
    lines = ["| measurement | unit | cases | mean abs difference | mean difference (1st - 2nd) | SD of difference |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r.mean_abs_diff is None:
            lines.append(f"| {r.name} | {r.unit} | 0 | left out: {r.omitted_reason} | | |")
        else:
            lines.append(f"| {r.name} | {r.unit} | {r.cases} | {r.mean_abs_diff:.2f} | {r.mean_diff:+.2f} | {r.sd_diff:.2f} |")
    return "\n".join(lines)
