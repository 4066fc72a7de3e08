"""An experiment: one invocation of ``fedreg run``, the variants of one spec.

Everything that can fail on input is checked before anything is written: the variants share tracking and
checkpoint settings, a resumed experiment folder is not in use by another process and records the same spec
(also before its first checkpoint), resumed checkpoints belong to their spec, data and partitions load, the
checkpoint folder is writable. Then each variant runs as an MLflow run (a child of one parent run when the
spec has variants); with ``resume``, the runs recorded in an experiment folder continue from their
checkpoints, in the same MLflow runs, each step logged once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from fedreg import checkpoint
from fedreg.data import DataCache, FederatedData
from fedreg.describe import ParentRun, child_tags, provenance_tags
from fedreg.errors import ComponentFailure, FedregError, PluginError
from fedreg.figures import figures_of, headline_keys
from fedreg.limits import check_workers, memory_problem
from fedreg.locks import FolderLock
from fedreg.outputs import CORE_NAMES, TRAIN_LOSS, log_partition, summarize
from fedreg.parallel import Prepared, run_parallel, run_sequential
from fedreg.pools import Pool, ProcessPool, RayPool
from fedreg.preflight import check_models, warn_local_tests
from fedreg.resume import (
    check_shared,
    continue_command,
    failed_list,
    failure_hint,
    identities,
    interrupted_text,
    load_checkpoints,
    new_meta,
    recorded_identities,
    run_key,
)
from fedreg.rounds import RunResult
from fedreg.spec import ResolvedSpec, RunSpec
from fedreg.spool import delivery_report
from fedreg.sweep import ChildOutcome, failure_reason, train_child
from fedreg.timelimit import TimeLimitReached, check_limit, deadline_after
from fedreg.tracking import Tracker, flatten, tracking_uri


@dataclass
class ExperimentResult:
    parent_run_id: str | None
    results: list[RunResult]  # the runs that finished, in the spec's order
    tracking_uri: str


class SweepFailed(FedregError):
    """Some child runs of a sweep failed; the others finished. Exit status 1."""

    exit_code = 1


@dataclass(eq=False)
class Experiment:
    """The variants of one invocation and where they are recorded. :meth:`run` it once: it checks the
    inputs, opens the parent run (or adopts the recorded one when resuming), runs each variant as a child
    run, then finishes the parent run and the experiment folder."""

    specs: list[ResolvedSpec]
    source: str | None = None  # the spec file
    progress: bool = True
    echo: Callable[[str], Any] = print
    original: dict | None = None  # the spec as written, with its variants and overrides applied
    resume: checkpoint.ExperimentDir | None = None  # the experiment folder to continue
    jobs: int | None = None  # child runs at once (None: execution.jobs)
    sweep: str | None = None  # "local" or "ray" (None: execution.sweep)
    max_time: float | None = None  # --max-time, seconds (fedreg.timelimit)
    #: each variant's clients and data (None: the spec's dataset partitioned here; at sites: their reports)
    data: Callable[[ResolvedSpec], FederatedData] | None = None

    # set while running
    tracker: Tracker = field(init=False, repr=False)
    feds: list[FederatedData] = field(init=False, default_factory=list, repr=False)
    stored: dict[str, Any] | None = field(init=False, default=None)  # the resumed experiment.json
    checkpoints: dict[str | None, dict[str, Any]] = field(init=False, default_factory=dict, repr=False)
    meta: dict[str, Any] = field(init=False, default_factory=dict)  # what experiment.json holds
    exp_dir: checkpoint.ExperimentDir | None = field(init=False, default=None)
    lock: FolderLock | None = field(init=False, default=None, repr=False)
    # a run started (or set RUNNING again) whose training has not begun: ended by run_variants if
    # interrupted there (train ends the runs it trains)
    open_run: str | None = field(init=False, default=None)
    parent: str | None = field(init=False, default=None)  # the parent run's id
    base_tags: dict[str, str] = field(init=False, default_factory=dict)
    results: list[RunResult] = field(init=False, default_factory=list)
    failed: list[tuple[str, str]] = field(init=False, default_factory=list)  # (child, why)
    pool: Pool | None = field(init=False, default=None, repr=False)
    deadline: float | None = field(init=False, default=None)  # when max_time is reached (time.time())
    stopped: list[tuple[str, int | None]] = field(init=False, default_factory=list)  # by it: (child, round)
    unstarted: list[str] = field(init=False, default_factory=list)  # children it kept from starting

    @property
    def first(self) -> RunSpec:
        return self.specs[0].spec

    @property
    def ck_root(self) -> Path:
        """``<checkpoint.dir>/<spec name>``, always inside ``checkpoint.dir`` whatever the name."""
        return checkpoint.spec_folder(self.first.checkpoint.dir, self.first.name)

    def run(self) -> ExperimentResult:
        try:
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()

    def take_lock(self, exp: checkpoint.ExperimentDir) -> None:
        """Hold the experiment folder's :class:`~fedreg.locks.FolderLock` until :meth:`run` returns."""
        lock = FolderLock(exp.path)
        lock.acquire()
        self.lock = lock

    def _run(self) -> ExperimentResult:
        self.deadline = deadline_after(self.max_time)
        check_shared(self.specs)
        check_limit(self.max_time, self.first.checkpoint.every)
        if self.sweep_mode == "local":  # (a Ray cluster schedules its own workers)
            asked = f"--jobs {self.jobs}" if self.jobs else f"execution.jobs: {self.job_count}"
            check_workers(asked, self.job_count, len(self.specs), self.first.execution.threads or 1)
        torch.set_flush_denormal(True)
        if self.resume is not None:
            # before anything is read or written: no other process runs these runs
            self.take_lock(self.resume)
            self.stored = self.resume.read()
            if self.stored.get("status") == "FINISHED":
                raise FedregError(f"nothing to resume: the runs in '{self.resume.path}' have finished")
        self.checkpoints = load_checkpoints(self.resume, self.stored, self.specs, self.restart)
        # everything that can fail on input happens before anything is written: data, partitions, folders,
        # store
        get = self.data or DataCache().get  # one cache: the variants share datasets and partitions
        self.feds = [get(rs) for rs in self.specs]
        check_models(self.specs, self.feds)  # each model takes its dataset's images and fits in memory
        warn_local_tests(self.specs, self.feds, self.echo)
        if self.first.checkpoint.every:
            checkpoint.ensure_writable(self.ck_root)
        self.pool = self.make_pool()  # a Ray sweep refuses a store its nodes cannot share, before any run
        self.tracker = Tracker(
            self.stored["tracking_uri"] if self.stored else self.first.tracking.uri,
            self.first.tracking.experiment,
            spool_dir=Path(self.first.checkpoint.dir).parent / "spool",
        )
        try:
            return self.run_variants()
        finally:
            self.close_tracker()

    @property
    def restart(self) -> frozenset[str]:
        """The run keys whose spec changed since they failed (``fedreg run SPEC --resume``): run afresh."""
        return getattr(self.resume, "restart", frozenset())

    @property
    def sweep_mode(self) -> str:
        return self.sweep or self.first.execution.sweep

    @property
    def job_count(self) -> int | None:
        return self.jobs or self.first.execution.jobs

    def make_pool(self) -> Pool | None:
        """Where the children run: None in this process, one after another (one run, or one job)."""
        if self.sweep_mode == "ray":
            uri = self.stored["tracking_uri"] if self.stored else tracking_uri(self.first.tracking.uri)
            threads = max(rs.spec.execution.threads or 1 for rs in self.specs)
            return RayPool(self.first.execution.address, self.job_count, threads, uri)
        jobs = min(self.job_count or 1, len(self.specs))
        return ProcessPool(jobs) if jobs > 1 else None

    def run_variants(self) -> ExperimentResult:
        self.base_tags = provenance_tags(self.first.name, self.source)
        self.parent = self.open_parent()
        self.exp_dir = self.resume
        if self.stored is not None:
            self.meta = self.stored
            # checked equal by load_checkpoints; recorded from now on in folders written before they were
            self.meta["identities"] = {**recorded_identities(self.stored), **identities(self.specs)}
            if self.restart:  # the spec changed: what 'fedreg resume' runs from now on
                self.meta.update(original=self.original, spec_file=str(self.source) if self.source else None)
        else:
            self.meta = new_meta(self.specs, self.source, self.original, self.parent, self.tracker.uri)
        try:
            self.results = run_sequential(self) if self.pool is None else run_parallel(self, self.pool)
            if self.stopped or self.unstarted:  # by --max-time: ended as an interruption, resumable
                raise TimeLimitReached()
        except KeyboardInterrupt:
            self.end_open_run("KILLED")
            if self.parent:
                self.tracker.end_run(self.parent, "KILLED")
            raise
        except BaseException:
            self.end_open_run("FAILED")
            if self.parent:
                self.tracker.end_run(self.parent, "FAILED")
            raise
        return self.finish()

    def end_open_run(self, status: str) -> None:
        """End the run interrupted between its start and its training (no run is left RUNNING)."""
        if self.open_run is not None:
            self.tracker.end_run(self.open_run, status)
            self.open_run = None

    def open_parent(self) -> str | None:
        """The parent run: the recorded one when resuming (marked running again), else a new one when the
        spec has variants; None for a single run."""
        parent = self.stored["parent_run_id"] if self.stored else None
        if parent:
            self.tracker.set_status(parent, "RUNNING")
        elif any(rs.key for rs in self.specs):
            parent = self.tracker.start_run(
                self.first.tracking.run_name or self.first.name,
                {
                    **self.base_tags,
                    "fedreg.role": "parent",
                    "fedreg.variants": ",".join(dict.fromkeys(rs.variant or "" for rs in self.specs)),
                },
            )
            if self.original is not None:
                self.tracker.log_text(parent, yaml.safe_dump(self.original, sort_keys=False), "spec.yaml")
            ParentRun(self.tracker, parent, self.specs, self.original, self.source).opened()
            self.echo(f"parent run {parent} ({len(self.specs)} child runs) -> {self.tracker.uri}")
        return parent

    def run_variant(self, rs: ResolvedSpec, fed: FederatedData) -> RunResult | None:
        """One child in this process: kept as it is when it finished before, else started (or resumed)
        and trained; its result (None when it failed). A failed child of a sweep is recorded and the sweep
        goes on; a single run's failure is raised."""
        prep = self.prepare(rs, fed)
        if isinstance(prep, RunResult):
            return prep
        self.open_run = None  # from here on, train_child ends the run whatever happens
        status, result, exc = train_child(
            rs,
            fed,
            self.tracker,
            prep.run_id,
            prep.name,
            prep.checkpoint_file,
            prep.checkpoint,
            prep.logged_through,
            progress=self.progress,
            deadline=self.deadline,
        )
        if exc is None:
            self.echo(self.headline(rs, prep.name, result))
            return result
        if not self.parent:
            if (oom := memory_problem(getattr(exc, "original", exc))) is not None:
                raise oom from exc
            if isinstance(exc, ComponentFailure):
                raise PluginError(f"{exc}") from exc
            raise exc
        self.child_failed(prep.name, ChildOutcome(0, status, reason=failure_reason(exc)))
        return None

    def headline(self, rs: ResolvedSpec, name: str, result: RunResult) -> str:
        keys = headline_keys(figures_of(m.info.cls for m in rs.metrics))
        return f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.final.items() if k in keys)

    def child_failed(self, name: str, outcome: ChildOutcome) -> None:
        self.failed.append((name, outcome.reason or outcome.status))
        self.echo(f"{name}: {outcome.status}: {outcome.reason or ''}")

    def prepare(self, rs: ResolvedSpec, fed: FederatedData) -> RunResult | Prepared:
        """The result of a child that finished before (kept as it is), or the child's MLflow run, started
        or set running again, with its checkpoint file and the checkpoint it continues from."""
        key = run_key(rs)
        name = self.child_name(rs)
        ck = self.checkpoints.get(rs.key)
        run_id = self.meta["runs"].get(key)
        if key in self.restart and run_id is not None and self.resume is not None:
            self.resume.run_file(rs.key).unlink(missing_ok=True)  # the old spec's checkpoint
            self.echo(f"{name}: its spec changed: starting again from round 1 (run {run_id} stays as it was)")
            run_id = None
        if ck is not None and ck["finished"]:
            self.echo(f"{name}: finished before, kept as it is (run {run_id})")
            return RunResult(
                run_id,
                rs.variant,
                summarize(ck["history"]),
                ck["history"],
                float(ck["elapsed_s"]),
                ck["global_state"],
                ck["client_states"],
            )
        logged = 0
        if run_id is None:
            run_id = self.start_child(rs, fed, name)
            self.meta["runs"][key] = run_id
        else:
            self.tracker.set_status(run_id, "RUNNING")
            self.open_run = run_id
            logged = self.tracker.last_step(run_id, CORE_NAMES[TRAIN_LOSS])  # logged every round
            self.echo(f"{name}: resuming run {run_id} after round {ck['round'] if ck else 0}")
        return Prepared(name, run_id, self.checkpoint_file(rs, run_id), ck, logged)

    def start_child(self, rs: ResolvedSpec, fed: FederatedData, name: str) -> str:
        """A new MLflow run for one variant, with its tags, parameters, resolved spec and partition."""
        tags = child_tags(rs, fed, self.base_tags, self.parent, self.original)
        run_id = self.tracker.start_run(name, tags, parent=self.parent)
        self.open_run = run_id
        self.tracker.log_params(run_id, flatten(rs.resolved_dict()))
        self.tracker.log_text(run_id, yaml.safe_dump(rs.resolved_dict(), sort_keys=False), "spec.yaml")
        log_partition(self.tracker, run_id, fed)
        return run_id

    def checkpoint_file(self, rs: ResolvedSpec, run_id: str) -> Path | None:
        """Where the variant's checkpoints go (None without checkpointing); writes experiment.json first."""
        if not self.first.checkpoint.every:
            return None
        if self.exp_dir is None:
            self.exp_dir = checkpoint.ExperimentDir(checkpoint.inside(self.ck_root, self.parent or run_id))
            self.take_lock(self.exp_dir)  # before experiment.json makes the folder resumable
            if self.parent:
                self.tracker.set_tags(
                    self.parent, {"fedreg.checkpoint_dir": str(self.exp_dir.path.resolve())}
                )
        self.exp_dir.write(self.meta)
        ck_file = self.exp_dir.run_file(rs.key)
        self.tracker.set_tags(
            run_id,
            {
                "fedreg.checkpoint": str(ck_file.resolve()),
                "fedreg.checkpoint_dir": str(self.exp_dir.path.resolve()),
            },
        )
        return ck_file

    def finish(self) -> ExperimentResult:
        """End the parent run and the experiment folder: FINISHED, or FAILED (still resumable) when a
        child failed, raising :class:`SweepFailed` with the failed children and how to continue."""
        status = "FAILED" if self.failed else "FINISHED"
        if self.parent:
            ParentRun.of(self).finished(self.results)
            self.tracker.end_run(self.parent, status)
        if self.exp_dir is not None:
            self.meta["status"] = status
            self.exp_dir.write(self.meta)
        if self.failed:
            how = failure_hint(self.exp_dir or self.resume, self.source, self.resume_command(jobs=True))
            raise SweepFailed(
                f"{len(self.failed)} of {len(self.specs)} child runs failed (parent run {self.parent}; the "
                f"others finished):\n{failed_list(self.failed)}\n{how}"
            )
        return ExperimentResult(self.parent, self.results, self.tracker.uri)

    def resume_command(self, jobs: bool = False) -> str | None:
        """The command that continues this experiment (None: no checkpoint folder was made); with ``jobs``,
        as many children at once as now."""
        cmd = continue_command(
            self.exp_dir or self.resume, self.tracker.uri if hasattr(self, "tracker") else None
        )
        return cmd + f" --jobs {self.job_count}" if cmd and jobs and (self.job_count or 1) > 1 else cmd

    def child_name(self, rs: ResolvedSpec) -> str:
        return rs.key or self.first.tracking.run_name or rs.spec.name

    def interrupted(self) -> str:
        """What an interruption (Ctrl-C, SIGTERM) left, and how to go on."""
        recorded = bool(self.parent or self.meta.get("runs"))
        return interrupted_text(self.resume_command(), recorded, bool(self.first.checkpoint.every))

    def close_tracker(self) -> None:
        """Deliver what is queued; say what could not be delivered, or that the server was unreachable."""
        if (said := delivery_report(self.tracker, self.tracker.close())) is not None:
            self.echo(said)


def run_experiment(
    specs: list[ResolvedSpec],
    source: str | None = None,
    progress: bool = True,
    echo=print,
    original: dict | None = None,
    resume: checkpoint.ExperimentDir | None = None,
    jobs: int | None = None,
    sweep: str | None = None,
) -> ExperimentResult:
    """Run every resolved variant; with variants, as MLflow child runs under one parent run (which keeps
    ``original``, the spec as written with its variants and overrides applied). With ``resume``, continue
    the runs recorded there from their checkpoints, in the same MLflow runs. ``jobs`` / ``sweep``: run the
    children in parallel (see :mod:`fedreg.sweep`)."""
    return Experiment(specs, source, progress, echo, original, resume, jobs, sweep).run()
