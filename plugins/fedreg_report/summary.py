"""Per-run values and per-method statistics over seeds, on :class:`~fedreg_report.runs.RunData`: a run's
derived values (:func:`run_values`: its worst client, forgetting means over two windows, the balance of
global and local accuracy; no global figures for a method without a global model), :func:`group` and
:func:`aggregate` (mean ± std per method), the matched time budget (:func:`matched_budget`, on the
:class:`Clock` of :func:`clock_of`: CPU time where every run has it, else wall time) and the round-to-round
swing of global accuracy."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from fedreg_report.metrics import (
    BALANCE_KEY,
    FORGETTING,
    GLOBAL_MODEL_TAG,
    TABLE_KEYS,
    WINDOW,
    WORST_KEY,
    measures_the_global_model,
)
from fedreg_report.runs import RunData
from fedreg_report.stats import Stat, WorstClient, window_means, within_budget, worst_client


def worst_of(rd: RunData) -> WorstClient | None:
    """The run's worst client (:func:`~fedreg_report.stats.worst_client`)."""
    return worst_client(rd.clients, rd.local_test_sizes, rd.participants, rd.num_clients)


def round_counts(runs: Iterable[RunData], key: str) -> list[int]:
    """Per run that logged ``key``: its number of rounds with a value (for the window labels)."""
    return [window_means(rd.curves.get(key, [])).all_n for rd in runs if rd.curves.get(key)]


def run_values(rd: RunData) -> dict[str, float]:
    """A run's summary metrics plus derived values: ``worst_client_local_acc`` (:func:`worst_client`), for
    each forgetting metric ``all_<key>`` (mean over all rounds with a value) and ``last10_<key>`` (when the
    run did not log it), and ``balance_global_local_acc`` (mean of the global and mean local last-10
    means)."""
    out = dict(rd.summary)
    w = worst_of(rd)
    out[WORST_KEY] = w.value if w else math.nan
    for key, _, _ in FORGETTING:
        wm = window_means(rd.curves.get(key, []))
        out[f"all_{key}"] = wm.all_mean
        if out.get(f"last{WINDOW}_{key}") is None:
            out[f"last{WINDOW}_{key}"] = wm.last_mean
    g, loc = out.get(f"last{WINDOW}_global_acc"), out.get(f"last{WINDOW}_local_acc_mean")
    out[BALANCE_KEY] = (g + loc) / 2 if g is not None and loc is not None else math.nan
    if not has_global_model(rd):  # its global figures measure no model of the method: left out
        out.update({k: math.nan for k in out if measures_the_global_model(k)})
    return out


def has_global_model(rd: RunData) -> bool:
    """Whether the run's aggregated weights are a model of its method (tag ``fedreg.global_model_role``;
    runs logged before the tag existed count as having one)."""
    return rd.tags.get(GLOBAL_MODEL_TAG, "global") != "none"


@dataclass
class MethodSummary:
    """One method's statistics over its seeds."""

    method: str
    seeds: list[int | None]
    stats: dict[str, Stat]  # metric key -> Stat over seeds
    rounds: list[int]
    local_model_role: str


def group(runs: Iterable[RunData], methods: Sequence[str] | None = None) -> dict[str, list[RunData]]:
    """method -> its runs ordered by seed, methods in the order of ``methods`` (others after them)."""
    out: dict[str, list[RunData]] = {m: [] for m in (methods or [])}
    for rd in runs:
        out.setdefault(rd.method, []).append(rd)
    for rs in out.values():
        rs.sort(key=lambda rd: (rd.seed is None, rd.seed if rd.seed is not None else 0, rd.run_id))
    return {m: rs for m, rs in out.items() if rs}


K = TypeVar("K", bound=Hashable)


def users_of(
    runs: Iterable[RunData], methods: Sequence[str] | None, key: Callable[[RunData], K]
) -> dict[K, dict[str, list]]:
    """Each distinct ``key(run)`` (a protocol, an environment) with the methods whose runs have it and
    their seeds, in first-use order (methods as :func:`group` orders them)."""
    out: dict[K, dict[str, list]] = {}
    for m, rs in group(runs, methods).items():
        for rd in rs:
            out.setdefault(key(rd), {}).setdefault(m, []).append(rd.seed)
    return out


def users_text(who: dict[str, list]) -> str:
    """'fedavg (1, 2); moon (3)': methods and their seeds ('?' for a run without one)."""
    return "; ".join(f"{m} ({', '.join('?' if s is None else str(s) for s in ss)})" for m, ss in who.items())


def aggregate(
    runs: Iterable[RunData],
    methods: Sequence[str] | None = None,
    keys: Sequence[str] = TABLE_KEYS,
) -> list[MethodSummary]:
    """Per method: mean ± sample std over its runs (seeds) of each summary metric (and derived value, see
    :func:`run_values`)."""
    out = []
    for m, rs in group(runs, methods).items():
        roles = sorted({rd.tags.get("fedreg.local_model_role", "") for rd in rs} - {""})
        vals = [run_values(rd) for rd in rs]
        out.append(
            MethodSummary(
                m,
                [rd.seed for rd in rs],
                {k: Stat.of(v.get(k) for v in vals) for k in keys},
                [rd.last_round for rd in rs if rd.last_round is not None],
                "/".join(roles) or "?",
            )
        )
    return out


@dataclass(frozen=True)
class Clock:
    """The time axis of the accuracy-against-time view and of the matched budget."""

    curve: str  # the per-round history: seconds since the run started, at each round
    total: str  # the run's summary metric of its whole time
    name: str  # in sentences and headings


WALL = Clock("elapsed_s", "wall_time_s", "wall-clock time")
CPU = Clock("cpu_s", "cpu_time_s", "CPU time")
#: fedreg's backends whose clients train in the process that runs the round loop, so that its CPU time
#: (timing/cpu_s) is the run's whole cost; with another backend (Ray, Flower) it is the server's part only
IN_PROCESS_BACKENDS = ("local", "vectorized")


def clock_of(by_method: dict[str, list[RunData]]) -> Clock:
    """CPU time when every run shown logged it up to its last round and trained in its own process, else wall
    time. On a machine shared with other work (or by the runs of a parallel sweep), or for a run that was
    paused, wall time measures the machine; CPU time measures the run."""
    runs = [rd for rs in by_method.values() for rd in rs]
    ok = runs and all(
        rd.curves.get(CPU.curve)
        and rd.curves[CPU.curve][-1][0] == rd.last_round
        and rd.params.get("execution.backend", "local") in IN_PROCESS_BACKENDS
        for rd in runs
    )
    return CPU if ok else WALL


def total_time(rd: RunData, clock: Clock = WALL) -> float | None:
    """The run's time on ``clock``: the curve's value at its last round, else the run's summary metric."""
    el = rd.curves.get(clock.curve)
    if el:
        return el[-1][1]
    return rd.summary.get(clock.total)


@dataclass
class BudgetRow:
    """One method cut at the matched time budget T (see :func:`matched_budget`)."""

    method: str
    total_time: Stat
    rounds: Stat
    at_budget: Stat
    last10_at_budget: Stat
    full_last10: Stat


def matched_budget(
    by_method: dict[str, list[RunData]],
    key: str = "global_acc",
    budget: float | None = None,
    clock: Clock = WALL,
) -> tuple[float, list[BudgetRow]]:
    """Every method cut at the same time T on ``clock`` (default T: the shortest mean total time among the
    methods): rounds reached, ``key`` at T and its mean over the last 10 rounds before T, over seeds."""
    totals = {m: Stat.of(total_time(rd, clock) for rd in rs) for m, rs in by_method.items()}
    if budget is None:
        finite = [s.mean for s in totals.values() if s.n]
        if not finite:
            return math.nan, []
        budget = min(finite)
    rows = []
    for m, rs in by_method.items():
        cut = [within_budget(rd.curves.get(clock.curve, []), rd.curves.get(key, []), budget) for rd in rs]
        full = [
            float(np.mean([v for _, v in rd.curves.get(key, [])][-WINDOW:])) if rd.curves.get(key) else None
            for rd in rs
        ]
        rows.append(
            BudgetRow(
                m,
                totals[m],
                Stat.of(c[0] for c in cut),
                Stat.of(c[1] for c in cut),
                Stat.of(c[2] for c in cut),
                Stat.of(full),
            )
        )
    return budget, rows


def round_to_round_swing(runs: Iterable[RunData], key: str = "global_acc") -> tuple[float, float] | None:
    """Median and 90th percentile of |change of ``key`` between consecutive evaluated rounds| in the second
    half of each run (after most of the learning), over runs; None without two such rounds."""
    diffs = []
    for rd in runs:
        vals = [v for _, v in rd.curves.get(key, [])]
        diffs += list(np.abs(np.diff(vals[len(vals) // 2 :])))
    if not diffs:
        return None
    return float(np.median(diffs)), float(np.percentile(diffs, 90))
