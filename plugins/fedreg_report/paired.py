"""Paired comparisons of two methods over seeds: the per-seed values of a figure
(:func:`values_by_seed`), their differences with a t-interval (:func:`compare_pair`,
:class:`Comparison`) and the verdict wordings: against a claimed gap (:func:`gap_verdict`) or on the
direction (:func:`direction_verdict`). The two runs of one seed share the partition and the
client-sampling stream, so each seed gives one difference."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedreg_report.runs import RunData
from fedreg_report.stats import Interval, paired_differences, t_interval
from fedreg_report.summary import run_values


def _iv(iv: Interval, decimals: int) -> str:
    """'[+1.0, +3.0]', noting an interval of zero width."""
    zero = " (zero width: every seed gave the same difference)" if iv.lo == iv.hi else ""
    return f"[{iv.lo:+.{decimals}f}, {iv.hi:+.{decimals}f}]{zero}"


def gap_verdict(iv: Interval, claimed: float, decimals: int = 1, unit: str = "points") -> tuple[str, str]:
    """(status, wording) for the claim 'the mean paired difference is ``claimed`` (in ``unit``)', from the
    interval: 'holds' only when the whole interval lies above the claimed gap, 'not supported' when it lies
    below it, else 'consistent'."""
    pct = "%" if unit == "%" else ""
    claim = f"{claimed:+.{decimals}f}{pct}"
    if iv.n == 0:
        return "not judged", "not judged: no seed has both methods"
    if iv.lo is None or iv.hi is None:
        return "not judged", (
            f"one seed: no interval (the difference is {iv.mean:+.{decimals}f}{pct or ' ' + unit}, the "
            f"claim {claim}); more seeds are needed to judge it"
        )
    where = _iv(iv, decimals)
    if iv.lo > claimed:
        return "holds", f"holds: the interval {where} lies above the claimed {claim}"
    if iv.hi < claimed:
        tail = (
            "FedKPer is ahead, by less than claimed"
            if iv.lo > 0
            else "FedKPer is behind"
            if iv.hi < 0
            else "it contains 0: FedKPer is not shown ahead at all"
        )
        return "not supported", f"not supported: the interval {where} excludes the claimed {claim} ({tail})"
    tail = "" if iv.lo > 0 else " (it also contains 0: FedKPer is not shown ahead at all)"
    return "consistent", f"consistent with the claim: the interval {where} contains the claimed {claim}{tail}"


def direction_verdict(iv: Interval, higher_is_better: bool = True, decimals: int = 1) -> tuple[str, str]:
    """(status, wording) for 'the first method is better than the second' from the interval of their paired
    difference (first minus second): 'supported' when it lies on the better side of 0, 'contradicted' when
    on the worse side, else 'not shown'."""
    if iv.n == 0:
        return "not judged", "not judged: no seed has both methods"
    if iv.lo is None or iv.hi is None:
        return "not judged", (
            f"one seed: no interval (the difference is {iv.mean:+.{decimals}f}); more seeds "
            "are needed to judge it"
        )
    where = _iv(iv, decimals)
    good = "above" if higher_is_better else "below"
    bad = "below" if higher_is_better else "above"
    if (iv.lo > 0) if higher_is_better else (iv.hi < 0):
        return "supported", f"supported: the interval {where} lies {good} 0 (better)"
    if (iv.hi < 0) if higher_is_better else (iv.lo > 0):
        return "contradicted", f"contradicted: the interval {where} lies {bad} 0 (worse)"
    return "not shown", f"not shown: the interval {where} contains 0"


@dataclass
class Comparison:
    """One paired comparison over seeds: ``a`` minus ``b`` on a figure, in points (``unit`` "points"), or
    relative to ``b`` (``unit`` "%": 100 (a / b - 1))."""

    figure: str
    a: str
    b: str
    why: str  # how b was chosen
    diffs: dict[Any, float]
    interval: Interval
    status: str
    verdict: str
    decimals: int = 1
    ranks: dict[Any, tuple[int, int]] = field(default_factory=dict)  # a's rank per seed, where it matters
    unit: str = "points"

    def per_seed(self) -> str:
        """'1: +2.0 (rank 1 of 4), 2: -0.5 (rank 2 of 4)'."""
        return (
            ", ".join(
                f"{s}: {d:+.{self.decimals}f}"
                + (f" (rank {self.ranks[s][0]} of {self.ranks[s][1]})" if s in self.ranks else "")
                for s, d in self.diffs.items()
            )
            or "-"
        )


def compare_pair(
    values: dict[str, dict[Any, float]],
    a: str,
    b: str,
    figure: str,
    why: str,
    higher_is_better: bool = True,
    claimed: float | None = None,
    decimals: int = 1,
    scale: float = 100.0,
    relative: bool = False,
) -> Comparison:
    """``a`` minus ``b`` per seed (times ``scale``: points), or with ``relative`` ``a`` relative to ``b``
    (100 (a / b - 1), percent; seeds where ``b`` is not positive are left out), its t-interval and the
    verdict: against the claimed gap when ``claimed`` is given, else on the direction."""
    va, vb = values.get(a, {}), values.get(b, {})
    if relative:
        diffs = {s: 100.0 * d / vb[s] for s, d in paired_differences(va, vb).items() if vb[s] > 0}
    else:
        diffs = {s: d * scale for s, d in paired_differences(va, vb).items()}
    unit = "%" if relative else "points"
    iv = t_interval(diffs.values())
    status, verdict = (
        gap_verdict(iv, claimed, decimals, unit)
        if claimed is not None
        else direction_verdict(iv, higher_is_better, decimals)
    )
    return Comparison(figure, a, b, why, diffs, iv, status, verdict, decimals, unit=unit)


def tally(comps: Sequence[Comparison]) -> str:
    """'supported 2, not shown 1': how many comparisons have each status."""
    counts: dict[str, int] = {}
    for c in comps:
        counts[c.status] = counts.get(c.status, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def values_by_seed(runs: Iterable[RunData], key: str) -> dict[str, dict[Any, float]]:
    """method -> seed -> run_values(rd)[key] (finite values only)."""
    out: dict[str, dict[Any, float]] = {}
    for rd in runs:
        v = run_values(rd).get(key)
        if v is not None and math.isfinite(v):
            out.setdefault(rd.method, {})[rd.seed if rd.seed is not None else rd.run_id] = float(v)
    return out
