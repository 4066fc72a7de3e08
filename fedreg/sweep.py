"""A sweep's child runs in parallel: worker processes on this machine, or Ray tasks.

The child runs of one invocation (variants x grid points x seeds) are independent. The parent process
(:class:`fedreg.experiment.Experiment`) checks every input, opens the parent MLflow run, and opens each
child's MLflow run (tags, params, resolved spec, partition: what a sequential sweep writes) just before the
child starts, recording it in ``experiment.json`` so that ``--resume`` finds it. A worker then loads the
data, trains the child with its own tracking client (MLflow's SQLite store waits for its lock; see
:mod:`fedreg.tracking`), ends the child's run ``FINISHED`` / ``FAILED`` / ``KILLED`` and returns a
:class:`ChildOutcome`. A child that fails, or whose worker dies, is one failed child: the others go on.

Workers (:mod:`fedreg.pools`):

- :class:`~fedreg.pools.ProcessPool`: ``jobs`` processes from the standard library's ``forkserver``
  start method (a server process that imported fedreg and torch once forks each worker, so a worker starts
  in well under a second and inherits no torch thread pool); one process per child, so a killed worker ends
  one child only. A worker whose parent process ended stops its child (:class:`ParentGone`).
- :class:`~fedreg.pools.RayPool`: each child a Ray task (``max_retries=0``: a failed child is reported,
  not silently run again), on a local Ray or the cluster named by ``execution.address`` / ``$RAY_ADDRESS``.
  On a cluster of more than one node the tracking store must be a server (a SQLite or file store on one
  node's disk cannot be shared): :func:`~fedreg.pools.check_cluster_store`.

Each child trains with ``execution.threads`` intra-op threads, or one when the spec leaves it unset: a child
gives the same metrics, bit for bit, whether it ran alone, in a sequential sweep, in a worker process or on
Ray at the same thread count.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedreg.errors import ComponentFailure, FedregError, PluginError
from fedreg.timelimit import TimeLimitReached

#: environment variables a worker takes from the parent when it has none of its own (where the data and
#: the tracking store are; a Ray worker on another node keeps its own)
PASSED_ENV = ("FEDREG_DATA_DIR", "MLFLOW_TRACKING_URI")


@dataclass
class ChildTask:
    """One child run for a worker: what to train and where to log it. Picklable."""

    index: int  # position in the invocation's list of runs
    rs: Any  # fedreg.spec.ResolvedSpec
    label: str  # the child's name (its run name)
    run_id: str  # its MLflow run, opened by the parent
    tracking_uri: str
    experiment: str
    spool_dir: str
    checkpoint_file: str | None  # where it checkpoints (None: off)
    resume_file: str | None  # the checkpoint it continues from
    logged_through: int  # the last round its MLflow run holds
    threads: int  # intra-op threads
    fingerprint: str = ""  # of the resolved spec in the parent: the worker must resolve it alike
    parent_run_id: str | None = None  # the sweep's parent run (marked KILLED by a worker whose parent died)
    deadline: float | None = None  # --max-time: stop at a round's end after this time.time()
    cwd: str = field(default_factory=os.getcwd)
    env: dict[str, str] = field(
        default_factory=lambda: {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    )


@dataclass
class ChildOutcome:
    """How a child run ended. ``status``: FINISHED, FAILED or KILLED; ``reason``: why it did not finish;
    ``spool``: the folder of tracking calls it could not deliver (send them with ``fedreg replay``)."""

    index: int
    status: str
    result: Any = None  # fedreg.rounds.RunResult when FINISHED (client states are not sent back)
    reason: str | None = None
    spool: str | None = None
    stopped_after: int | None = None  # the round after which --max-time stopped it (status KILLED)


class ParentGone(KeyboardInterrupt):
    """Raised in a worker by a progress message that cannot reach the sweep's parent process: the parent
    ended without stopping its workers (SIGKILL, a crash, the machine's OOM killer). The child stops as if
    interrupted (its run KILLED, resumable from its last checkpoint), and the worker marks the parent run
    KILLED, since the parent cannot."""

    reason = (
        "the sweep's parent process ended while this child ran (killed?); its workers stopped their "
        "children. Continue with 'fedreg resume <parent run id>'"
    )


def grid_tags(rs: Any) -> dict[str, str]:
    """A grid child's tags: ``fedreg.grid`` (its point as JSON), ``fedreg.grid_label`` (``tau=2``, as in its
    name) and ``fedreg.grid.<path>`` per gridded path; {} outside a grid. (Its params hold the values at
    their paths as well, for filtering and plotting in the MLflow UI.)"""
    if not rs.grid:
        return {}
    from fedreg.spec.loading import format_value, grid_label

    tags = {"fedreg.grid": json.dumps(rs.grid), "fedreg.grid_label": grid_label(rs.grid)}
    tags.update({f"fedreg.grid.{path}": format_value(v) for path, v in rs.grid.items()})
    return tags


def group_tag(rs: Any, parent: str | None) -> str:
    """The child's seed-free group, tag ``fedreg.group``: its variant and grid point, then the comparison
    (the parent run's id, shortened), e.g. ``fedkper.tau=2 @ 497ba1bc``; MLflow's Group-by on it gives the
    mean and band over the seeds of exactly one variant and grid point of one comparison."""
    from fedreg.spec.loading import grid_label

    name = rs.variant or rs.spec.name
    if rs.grid:
        name += "." + grid_label(rs.grid)
    return f"{name} @ {parent[:8]}" if parent else name


def expected_cost(rs: Any, fed: Any) -> float:
    """A child's expected work, for ordering a sweep longest first: the training samples of the clients its
    selection draws, round by round, x local epochs x the objective's ``relative_cost`` (its work per sample
    against plain cross-entropy), plus its evaluations (a forward pass of the test sets, counted as a third
    of a training step). The draws are those of the run's own sampling stream with a fresh selector (one
    that learns from the run is simulated without that feedback); under label skew the clients' sizes
    differ widely, so two seeds of one spec can differ by half in cost."""
    from fedreg.components import RunInfo
    from fedreg.evaluation import call, select_clients

    s = rs.spec
    fr = s.federation
    sizes = [len(c.train_idx) for c in fed.clients]
    try:
        selector = rs.components["selection"].instantiate()
        infos = fed.infos()
        info = RunInfo(tuple(infos), fed.dataset.num_classes, fr.clients_per_round, fr.rounds, s.seed)
        call(selector, "start_run", 0, None, info)
        trained = sum(
            sizes[c]
            for r in range(1, fr.rounds + 1)
            for c in select_clients(selector, r, infos, fr.clients_per_round, s.seed)
        )
    except Exception:  # noqa: BLE001 - a selector that cannot run ahead: the mean client instead
        trained = sum(sizes) / max(1, len(sizes)) * fr.clients_per_round * fr.rounds
    evaluations = -(-fr.rounds // s.evaluation.every)
    tested = len(fed.dataset.test_y) + sum(len(c.test_idx) for c in fed.clients)
    return trained * s.training.local_epochs * cost_per_sample(rs) + evaluations * tested / 3


def run_order(costs: list[float], done: list[float], longest_first: bool) -> list[int]:
    """The order in which a sweep's children start. ``done``: each child's fraction of its rounds already
    checkpointed (0 for a new child). Children a resumed sweep had started come first, the most work left
    first, so that work already done is not left waiting behind new children (and, across sessions, is the
    first to finish); the others follow longest expected first (``longest_first``, parallel sweeps) or in the
    spec's order. Ties keep the spec's order."""
    left = [c * (1.0 - d) for c, d in zip(costs, done, strict=True)]
    started = sorted((i for i, d in enumerate(done) if d > 0), key=lambda i: -left[i])
    rest = [i for i, d in enumerate(done) if d <= 0]
    if longest_first:
        rest.sort(key=lambda i: -costs[i])
    return started + rest


def cost_per_sample(rs: Any) -> float:
    """The child's training work per sample and local epoch: its objective's ``relative_cost``."""
    objective = rs.components["objective"]
    return float(objective.info.cls.relative_cost(objective.params, rs.spec))


def failure_summary(text: str, limit: int = 160) -> str:
    """A child's recorded failure (its ``fedreg.failure`` tag) in one short line: a non-finite training loss
    reads "diverged: non-finite training loss in round N"; other failures their reason, cut at ``limit``
    characters; "" when none was recorded."""
    text = " ".join(text.split())
    if "NonFiniteLoss" in text:
        where = re.search(r"\bround (\d+)\b", text)
        return "diverged: non-finite training loss" + (f" in round {where.group(1)}" if where else "")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def failure_reason(exc: BaseException) -> str:
    """One line saying why a child failed (the component and round for a component's failure)."""
    if isinstance(exc, ComponentFailure):
        return str(PluginError(str(exc))).splitlines()[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, FedregError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def train_child(
    rs: Any,
    fed: Any,
    tracker: Any,
    run_id: str,
    label: str,
    checkpoint_file: Path | None,
    resume: dict[str, Any] | None,
    logged_through: int,
    progress: bool = False,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    deadline: float | None = None,
) -> tuple[str, Any, BaseException | None]:
    """Train one child and end its MLflow run: (status, RunResult or None, the exception it failed with).
    A failure is recorded on the run (tag ``fedreg.failure``) and returned, not raised; an interruption
    (Ctrl-C, SIGTERM) ends the run ``KILLED`` and is raised."""
    from fedreg.rounds import FederatedRun

    try:
        result = FederatedRun(
            rs,
            fed,
            tracker,
            run_id,
            progress=progress,
            label=label,
            checkpoint_file=checkpoint_file,
            resume=resume,
            logged_through=logged_through,
            on_round=on_round,
            deadline=deadline,
        ).run()
    except KeyboardInterrupt:
        tracker.end_run(run_id, "KILLED")
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a child is that child's, reported with it
        tracker.set_tags(run_id, {"fedreg.failure": failure_reason(exc)[:5000]})
        tracker.end_run(run_id, "FAILED")
        return "FAILED", None, exc
    tracker.end_run(run_id, "FINISHED")
    return "FINISHED", result, None


def work(task: ChildTask, send: Callable[[tuple], None]) -> ChildOutcome:
    """A worker's whole job for one child: load its data, open a tracking client, train it, deliver what
    is queued. ``send`` carries progress messages to the parent."""
    import torch

    from fedreg import checkpoint
    from fedreg.data import DataCache
    from fedreg.figures import figures_of, progress_keys
    from fedreg.tracking import Tracker

    if Path(task.cwd).is_dir():  # relative paths in the spec mean what they mean to the parent
        os.chdir(task.cwd)
    for k, v in task.env.items():
        os.environ.setdefault(k, v)
    torch.set_num_threads(task.threads)
    torch.set_flush_denormal(True)
    try:
        if task.fingerprint and checkpoint.fingerprint(task.rs.resolved_dict()) != task.fingerprint:
            raise FedregError(
                f"this worker ({os.uname().nodename}) resolves the spec differently from the parent process: "
                "install the same fedreg and plugin versions on every node"
            )
        if task.checkpoint_file and not Path(task.checkpoint_file).parent.is_dir():
            raise FedregError(
                f"the checkpoint folder '{Path(task.checkpoint_file).parent}' does not exist on "
                f"{os.uname().nodename}: put checkpoint.dir on a filesystem every node shares (or set "
                "checkpoint.every: 0)"
            )
        fed = DataCache().get(task.rs)
        tracker = Tracker(task.tracking_uri, task.experiment, spool_dir=task.spool_dir)
        ck = checkpoint.load(Path(task.resume_file)) if task.resume_file else None
    except Exception as exc:  # noqa: BLE001 - reported as this child's failure; the parent ends its run
        return ChildOutcome(
            task.index, "FAILED", reason=f"set-up in the worker failed: {failure_reason(exc)}"
        )
    keys = progress_keys(figures_of(m.info.cls for m in task.rs.metrics))  # what the progress line shows
    stopped_after = None

    def on_round(r: int, scalars: dict[str, float]) -> None:
        send(("round", task.index, r, {k: scalars[k] for k in keys if k in scalars}))

    try:
        status, result, error = train_child(
            task.rs,
            fed,
            tracker,
            task.run_id,
            task.label,
            Path(task.checkpoint_file) if task.checkpoint_file else None,
            ck,
            task.logged_through,
            on_round=on_round,
            deadline=task.deadline,
        )
    except KeyboardInterrupt as exc:
        status, result, error = "KILLED", None, None
        stopped_after = exc.round if isinstance(exc, TimeLimitReached) else None
        if isinstance(exc, ParentGone):  # orphaned, not failed: the parent run is ended here
            tracker.set_tags(task.run_id, {"fedreg.failure": ParentGone.reason})
            if task.parent_run_id:
                tracker.set_tags(task.parent_run_id, {"fedreg.failure": ParentGone.reason})
                tracker.end_run(task.parent_run_id, "KILLED")
    spool = tracker.close()
    if result is not None:
        result.client_states = {}  # not sent back: the checkpoint holds them
    return ChildOutcome(
        task.index,
        status,
        result,
        failure_reason(error) if error is not None else ("interrupted" if status == "KILLED" else None),
        str(spool) if spool is not None else None,
        stopped_after,
    )
