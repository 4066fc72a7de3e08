"""The statistics of a report, as plain functions on plain values (no MLflow, no RunData): mean ± sample
std over seeds (:class:`Stat`), trailing means and curves over seeds, a run cut at a wall-clock budget,
the worst client at its last participation, means over all rounds and over the last :data:`WINDOW` and
their labels, t-intervals of paired differences over seeds (scipy.stats) and per-seed ranks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedreg_report.metrics import SMALL_LOCAL_TEST, WINDOW


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (n - 1) of the finite values; std is None below two values."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not xs:
            return cls(math.nan, None, 0)
        return cls(float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else None, len(xs))

    def fmt(self, scale: float = 1.0, decimals: int = 2, n_expected: int | None = None) -> str:
        if self.n == 0:
            return "-"
        s = f"{self.mean * scale:.{decimals}f}"
        if self.std is not None:
            s += f" ± {self.std * scale:.{decimals}f}"
        if n_expected is not None and self.n != n_expected:
            s += f" (n={self.n})"
        return s


def trailing_mean(values: Sequence[float], window: int = WINDOW) -> list[float]:
    """Mean of the last ``window`` values up to each position (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(values, dtype=float))])
    return [
        float((c[i + 1] - c[max(0, i + 1 - window)]) / (i + 1 - max(0, i + 1 - window)))
        for i in range(len(values))
    ]


def curve_over_seeds(
    curves: Sequence[Sequence[tuple[int, float]]], smooth: int | None = None
) -> list[tuple[int, float, float, float, int]]:
    """Per round: (round, mean, min, max, n) over the seeds' curves (each optionally smoothed first by a
    trailing mean over ``smooth`` evaluated rounds)."""
    by_round: dict[int, list[float]] = {}
    for pts in curves:
        if not pts:
            continue
        steps = [s for s, _ in pts]
        vals = [v for _, v in pts]
        if smooth:
            vals = trailing_mean(vals, smooth)
        for s, v in zip(steps, vals, strict=True):
            by_round.setdefault(s, []).append(v)
    return [
        (s, float(np.mean(v)), float(np.min(v)), float(np.max(v)), len(v))
        for s, v in sorted(by_round.items())
    ]


def within_budget(
    elapsed: Sequence[tuple[int, float]],
    values: Sequence[tuple[int, float]],
    budget: float,
    window: int = WINDOW,
) -> tuple[int, float, float]:
    """A run stopped at wall-clock time ``budget``: (rounds completed by then, the value at the last of them,
    the mean over the last ``window`` of them). NaNs when no round had finished by then."""
    done = {s for s, t in elapsed if t <= budget}
    vals = [v for s, v in values if s in done]
    if not done or not vals:
        return (len(done), math.nan, math.nan)
    return (max(done), vals[-1], float(np.mean(vals[-window:])))


@dataclass(frozen=True)
class WorstClient:
    """The worst client of one run: the lowest local accuracy at last participation over all clients."""

    client: int
    value: float
    round: int  # the client's last participation (with a local accuracy)
    local_test: int | None  # its local test size; None when the run logged no partition statistics
    covered: int  # clients that participated at least once
    num_clients: int | None = None

    @property
    def few(self) -> bool:
        """Its local test holds fewer than SMALL_LOCAL_TEST samples: the value moves in coarse steps."""
        return self.local_test is not None and self.local_test < SMALL_LOCAL_TEST


def worst_client(
    clients: dict[int, tuple[int, float]],
    local_test_sizes: dict[int, int] | None = None,
    participants: Iterable[int] = (),
    num_clients: int | None = None,
) -> WorstClient | None:
    """The minimum over every client that has a value of its value at its last participation (``clients``:
    client -> (round, value), as :func:`last_at_participation` gives). Ties go to the lower client id.
    ``covered`` counts the clients that participated: those in ``participants`` or with a value. None when no
    client has a finite value."""
    vals = {c: (r, v) for c, (r, v) in clients.items() if v is not None and math.isfinite(v)}
    if not vals:
        return None
    c = min(vals, key=lambda c: (vals[c][1], c))
    covered = len(set(participants) | set(clients))
    return WorstClient(
        c, float(vals[c][1]), int(vals[c][0]), (local_test_sizes or {}).get(c), covered, num_clients
    )


@dataclass(frozen=True)
class WindowMeans:
    """A per-round metric's mean over all evaluated rounds with a value and over the last ``window`` of
    them."""

    all_mean: float
    all_n: int
    last_mean: float
    last_n: int


def window_means(points: Sequence[tuple[int, float]], window: int = WINDOW) -> WindowMeans:
    """``points``: (round, value) in round order; NaNs are not rounds with a value."""
    vals = [float(v) for _, v in points if v is not None and math.isfinite(float(v))]
    if not vals:
        return WindowMeans(math.nan, 0, math.nan, 0)
    last = vals[-window:]
    return WindowMeans(float(np.mean(vals)), len(vals), float(np.mean(last)), len(last))


def rounds_text(n: int) -> str:
    """'1 round', '4 rounds'."""
    return f"{n} round" + ("" if n == 1 else "s")


def window_label(counts: Iterable[int], window: int = WINDOW) -> str:
    """What 'the last ``window`` rounds' really is for runs with ``counts`` rounds with a value: 'last 10
    rounds', 'last 4 rounds (all)' when every run is shorter, or a note when some are."""
    ns = sorted({int(n) for n in counts if n})
    if not ns or ns[0] >= window:
        return f"last {rounds_text(window)}"
    if len(ns) == 1:
        return f"last {rounds_text(ns[0])} (all)"
    if ns[-1] <= window:
        return f"last {ns[0]}-{ns[-1]} rounds (all of each run)"
    return f"last {rounds_text(window)} (all rounds of shorter runs: {ns[0]} in the shortest)"


def all_label(counts: Iterable[int]) -> str:
    """'all 199 rounds', or 'all rounds (12-30 per run)' when the runs differ."""
    ns = sorted({int(n) for n in counts if n})
    if not ns:
        return "all rounds"
    if len(ns) == 1:
        return f"all {rounds_text(ns[0])}" if ns[0] > 1 else "its only round"
    return f"all rounds ({ns[0]}-{ns[-1]} per run)"


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences with its t-interval over seeds; lo/hi are None below two values."""

    mean: float
    lo: float | None
    hi: float | None
    n: int
    std: float | None = None
    level: float = 0.95

    def fmt(self, decimals: int = 1) -> str:
        if self.n == 0:
            return "-"
        if self.lo is None:
            return f"{self.mean:+.{decimals}f} (one seed: no interval)"
        return f"{self.mean:+.{decimals}f} [{self.lo:+.{decimals}f}, {self.hi:+.{decimals}f}]"


def t_interval(values: Iterable[float], level: float = 0.95) -> Interval:
    """mean ± t_{(1+level)/2, n-1} · s / sqrt(n) over the finite values (s: sample std, n - 1)."""
    from scipy import stats

    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return Interval(math.nan, None, None, 0, None, level)
    m = float(np.mean(xs))
    if len(xs) == 1:
        return Interval(m, None, None, 1, None, level)
    sd = float(np.std(xs, ddof=1))
    h = float(stats.t.ppf((1 + level) / 2, len(xs) - 1)) * sd / math.sqrt(len(xs))
    return Interval(m, m - h, m + h, len(xs), sd, level)


def paired_differences(a: dict[Any, float], b: dict[Any, float]) -> dict[Any, float]:
    """a[s] - b[s] for every seed s with a finite value in both, in a's order."""
    return {
        s: a[s] - b[s]
        for s in a
        if s in b and a[s] is not None and b[s] is not None and math.isfinite(a[s]) and math.isfinite(b[s])
    }


def rank_per_seed(
    values: dict[str, dict[Any, float]], method: str, higher_is_better: bool = True
) -> dict[Any, tuple[int, int]]:
    """Per seed: (rank of ``method`` among the methods with a value at that seed (1 = best; ties share the
    better rank), number of such methods)."""
    out = {}
    for s, v in values.get(method, {}).items():
        if v is None or not math.isfinite(v):
            continue
        others = [
            vals[s]
            for m, vals in values.items()
            if m != method and s in vals and vals[s] is not None and math.isfinite(vals[s])
        ]
        better = sum(1 for o in others if (o > v if higher_is_better else o < v))
        out[s] = (1 + better, 1 + len(others))
    return out


def ranked_others(
    values: dict[str, dict[Any, float]], method: str, higher_is_better: bool = True
) -> list[str]:
    """The other methods with a value, best first, ranked paired with ``method``: each by its mean over the
    seeds it shares with ``method``, less ``method``'s mean over the same seeds. With every seed present
    that is the order of the means over seeds; where a method lacks a seed (a run that diverged), it is
    not ranked on easier or harder seeds than the rest. Methods that share no seed with ``method`` come
    last, by their own mean over seeds (all methods so, where ``method`` has no value)."""
    mine = values.get(method, {})
    paired, unpaired = {}, {}
    for m, v in values.items():
        own = Stat.of(v.values())
        if m == method or own.n == 0:
            continue
        diffs = paired_differences(v, mine)
        if diffs:
            paired[m] = Stat.of(diffs.values()).mean
        else:
            unpaired[m] = own.mean

    def best_first(keyed: dict[str, float]) -> list[str]:
        return sorted(keyed, key=lambda m: (-keyed[m] if higher_is_better else keyed[m], m))

    return best_first(paired) + best_first(unpaired)
