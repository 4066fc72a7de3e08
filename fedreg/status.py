"""``fedreg status``: where the child runs of a parent run stand, read from the tracking store and the
experiment's checkpoint folder, without touching either: each planned child's status and round, its latest
progress figures and CPU time, why a failed one failed, whether a ``fedreg`` process is running them now
(the folder's lock) or they were interrupted, the CPU time spent and an estimate of what is left, and the
command that continues them. Made for sweeps that run for hours in the background across sessions."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fedreg import checkpoint
from fedreg.errors import FedregError
from fedreg.figures import progress_keys
from fedreg.locks import FolderLock
from fedreg.outputs import MetricNames
from fedreg.progress import duration
from fedreg.registry import installed_figures
from fedreg.resume import continue_command
from fedreg.stores import open_store
from fedreg.sweep import failure_summary

CPU = "cpu_s"  # the core's per-round key of the run's cumulative CPU seconds
#: the order of the statuses in the summary line
ORDER = ["FINISHED", "RUNNING", "INTERRUPTED", "SCHEDULED", "KILLED", "FAILED", "NOT STARTED"]


@dataclass
class Child:
    """One planned child run as the store has it (``run`` None: not started)."""

    name: str
    run: Any = None
    round: int = 0  # the last round it logged
    rounds: int | None = None
    cpu_s: float | None = None  # at that round
    logged_at: float | None = None  # when it logged that round (seconds since the epoch)

    @property
    def status(self) -> str:
        return self.run.info.status if self.run is not None else "NOT STARTED"

    def cpu_per_round(self) -> float | None:
        return self.cpu_s / self.round if self.cpu_s and self.round else None


def read_child(client: MlflowClient, names: MetricNames, name: str, run: Any) -> Child:
    child = Child(name, run)
    if run is None:
        return child
    try:
        child.rounds = int(run.data.params["federation.rounds"])
    except (KeyError, ValueError):
        pass
    history = client.get_metric_history(run.info.run_id, names.name(CPU))
    if history:
        last = max(history, key=lambda m: (m.step, m.timestamp))
        child.round, child.cpu_s, child.logged_at = last.step, last.value, last.timestamp / 1000
    return child


def planned_children(client: MlflowClient, parent: Any, meta: dict[str, Any]) -> tuple[list[Child], int]:
    """Every child the invocation planned, in the spec's order (from the folder's ``experiment.json``; without
    one, the children the store holds), each with its current run; and how many runs an earlier attempt of
    a child left behind (a restarted child's superseded run)."""
    found = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=50_000,
    )
    names = MetricNames(installed_figures())
    if not found and parent.data.tags.get("fedreg.role") != "parent":  # a single run: itself
        return [read_child(client, names, parent.info.run_name, parent)], 0
    by_id = {r.info.run_id: r for r in found}
    current = dict(meta.get("runs", {}))
    for r in found:  # without a folder: the latest run of each name
        if r.info.run_name not in current or not meta:
            current[r.info.run_name] = r.info.run_id
    order = list(meta.get("identities") or current)
    order += [n for n in current if n not in order]
    children = [read_child(client, names, n, by_id.get(current.get(n, ""))) for n in order]
    return children, len(found) - sum(c.run is not None for c in children)


def live_holder(folder: Path) -> dict[str, Any] | None:
    """What the folder's lock file says of the process that runs its runs (pid, host, start, command), when
    that process is alive (one on another host cannot be checked from here and counts as alive); None when
    no process runs them."""
    held = FolderLock(folder).holder()
    return held if held and FolderLock.alive(held) else None


RATE_MIN_SHARE = 0.05  # of a child's rounds, before its CPU per round counts in cpu_left


def cpu_left(children: Sequence[Child], work: dict[str, float] | None = None) -> float | None:
    """Expected CPU seconds of the rounds not yet run (None before any round was logged): per unfinished
    child, its remaining rounds x the mean CPU per round of its variant's logged rounds (of all variants'
    while its variant has none, scaled by ``work``, each variant's expected work per round, where given).
    A FAILED child counts as done: ``fedreg resume`` retries it, usually to the same failure. A child (running
    or stopped) within its first :data:`RATE_MIN_SHARE` of rounds gives no rate while others do (its CPU is
    mostly start-up: loading data, partitioning)."""
    measured = [c for c in children if c.cpu_per_round() is not None]
    settled = [c for c in measured if c.round > RATE_MIN_SHARE * (c.rounds or 0)]
    children_measured = settled or measured
    per_variant: dict[str, list[float]] = {}
    for c in children_measured:
        if (v := c.cpu_per_round()) is not None:
            per_variant.setdefault(variant_of(c), []).append(v)
    every = [v for vs in per_variant.values() for v in vs]
    rounds = {variant_of(c): c.rounds for c in children if c.rounds}  # a child not started: its variant's
    if not every or not rounds:
        return None
    work = work or {}
    units = [
        v / work[variant_of(c)]
        for c in children_measured
        if (v := c.cpu_per_round()) and work.get(variant_of(c))
    ]
    total = 0.0
    for c in children:
        if c.status in ("FINISHED", "FAILED"):
            continue
        if rates := per_variant.get(variant_of(c)):
            rate = sum(rates) / len(rates)
        elif units and variant_of(c) in work:  # CPU per unit of work measured on the others, x its work
            rate = sum(units) / len(units) * work[variant_of(c)]
        else:
            rate = sum(every) / len(every)
        planned = c.rounds or rounds.get(variant_of(c)) or max(rounds.values())
        total += (planned - c.round) * rate
    return total


def variant_of(c: Child) -> str:
    """The child's variant and grid point: its name less the seed (``fedkper.tau=2.seed3`` ->
    ``fedkper.tau=2``), whose seeds cost about the same per round."""
    return c.name.rsplit(".seed", 1)[0]


def child_line(c: Child, status: str, shown: dict[str, str], now: float) -> str:
    """One child: name, status, round, CPU seconds, its latest progress figures, and why it failed or
    when it last logged."""
    where = f"{c.round}/{c.rounds}" if c.rounds else (str(c.round) if c.round else "-")
    cpu = f"{c.cpu_s:,.0f}" if c.cpu_s is not None else "-"
    figs = " ".join(f"{label} {fmt(c.run.data.metrics.get(key))}" for key, label in shown.items() if c.run)
    note = ""
    if c.status == "FAILED":
        note = failure_summary(c.run.data.tags.get("fedreg.failure", ""), 90) or "failed"
    elif c.status == "RUNNING" and c.logged_at:
        note = f"logged {duration(now - c.logged_at)} ago"
    return f"  {c.name:<28} {status:<12} {where:>9} {cpu:>9}  {figs}  {note}".rstrip()


def totals_line(counts: dict[str, int], spent: float, left: float | None) -> str:
    """'  5 finished, 2 running; CPU time 4h05m so far, about 3h left (one thread per child)'."""
    return (
        "  "
        + ", ".join(f"{counts[s]} {s.lower()}" for s in sorted(counts, key=ORDER.index))
        + f"; CPU time {duration(spent)} so far"
        + (f", about {duration(left)} left (one thread per child)" if left else "")
    )


def fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def status(run_ids: Sequence[str], tracking: str | None, folder_root: str, echo: Callable = print) -> int:
    """Print where each parent run's children stand; 0, or 1 when a child failed."""
    client = open_store(tracking)
    failed = 0
    for run_id in run_ids:
        failed += parent_status(client, run_id, tracking, Path(folder_root), echo)
    return 1 if failed else 0


def parent_status(client: MlflowClient, run_id: str, tracking: str | None, root: Path, echo: Callable) -> int:
    """Print one parent run's children (a child's id stands for its parent; a single run is its own only
    child); returns how many failed."""
    checkpoint.check_run_id(run_id)
    try:
        parent = client.get_run(run_id)
        if up := parent.data.tags.get("mlflow.parentRunId"):  # a child: its whole invocation
            run_id, parent = up, client.get_run(up)
    except MlflowException:
        raise FedregError(
            f"no MLflow run '{run_id}' in {client.tracking_uri}; pass the parent run id printed by 'fedreg "
            f"run' (and --tracking-uri if the store is elsewhere)"
        ) from None
    exp = checkpoint.find_from_tracking(run_id, tracking) or checkpoint.find_by_run_id(root, run_id)
    meta = exp.read() if exp is not None else {}
    children, superseded = planned_children(client, parent, meta)
    holder = live_holder(exp.path) if exp is not None else None
    spec = parent.data.tags.get("fedreg.spec_file")
    what = "parent" if parent.data.tags.get("fedreg.role") == "parent" else "run"
    count = f"{len(children)} child runs" if what == "parent" else "a single run"
    echo(f"{parent.info.run_name} ({what} {run_id}{', ' + spec if spec else ''}): {count}")
    if holder:
        echo(
            f"  being run by pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
            f"{holder.get('started', '?')}: {holder.get('command', '?')}"
        )
    elif exp is None:
        echo("  no checkpoint folder found: children not started yet are not known, and none can resume")
    names = MetricNames(installed_figures())
    shown = {names.name(k): k.replace("_", " ") for k in progress_keys(installed_figures())}
    echo(f"  {'child':<28} {'status':<12} {'round':>9} {'CPU s':>9}  latest")
    now = time.time()
    counts: dict[str, int] = {}
    for c in children:
        line_status = "INTERRUPTED" if c.status == "RUNNING" and holder is None else c.status
        counts[line_status] = counts.get(line_status, 0) + 1
        echo(child_line(c, line_status, shown, now))
    spent = sum(c.cpu_s or 0 for c in children)
    left = cpu_left(children)
    echo(
        totals_line(counts, spent, left)
        + (f"; {superseded} superseded run(s) of restarted children not shown" if superseded else "")
    )
    if any(c.status != "FINISHED" for c in children) and holder is None and meta.get("status") != "FINISHED":
        if (cmd := continue_command(exp, tracking)) is not None:
            echo(f"  continue: {cmd}   (add --jobs N to run N children at once)")
    return counts.get("FAILED", 0)
