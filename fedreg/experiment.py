"""An experiment: one invocation of ``fedreg run``, the variants of one spec.

Everything that can fail on input is checked before anything is written: the variants share tracking and
checkpoint settings, a resumed experiment folder is not in use by another process and records the same spec
(also before its first checkpoint), resumed checkpoints belong to their spec, data and partitions load, the
checkpoint folder is writable. Then each variant runs as an MLflow run (a child of one parent run when the
spec has variants); with ``resume``, the runs recorded in an experiment folder continue from their
checkpoints, in the same MLflow runs, each step logged once.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import fedreg
from fedreg import checkpoint
from fedreg.data import DataCache, FederatedData, check_model_fits
from fedreg.describe import DESCRIPTION, ParentRun, describe_child, overrides_of
from fedreg.errors import ComponentFailure, FedregError, PluginError
from fedreg.figures import figures_of
from fedreg.outputs import CORE_NAMES, TRAIN_LOSS, component_tags, log_partition, summarize
from fedreg.progress import SweepProgress
from fedreg.resume import identities, recorded_identities, run_key
from fedreg.rounds import RunResult
from fedreg.spec import ResolvedSpec, RunSpec
from fedreg.sweep import (
    ChildOutcome,
    ChildTask,
    Pool,
    ProcessPool,
    RayPool,
    expected_cost,
    failure_reason,
    grid_tags,
    train_child,
)
from fedreg.tracking import Tracker, fedreg_commit, flatten, git_commit, tracking_uri


def headline_keys(rs: ResolvedSpec) -> set[str]:
    """The summary keys printed when a run ends: its metrics' final-column figures and the wall time."""
    figures = figures_of(m.info.cls for m in rs.metrics)
    return {k for f in figures if f.final for _, k in f.columns()} | {"wall_time_s"}


@dataclass
class ExperimentResult:
    parent_run_id: str | None
    results: list[RunResult]  # the runs that finished, in the spec's order
    tracking_uri: str


class SweepFailed(FedregError):
    """Some child runs of a sweep failed; the others finished. Exit status 1."""

    exit_code = 1


@dataclass
class Prepared:
    """A child run opened (or re-opened) in the tracking store, ready to train."""

    name: str
    run_id: str
    checkpoint_file: Path | None
    checkpoint: dict[str, Any] | None  # the checkpoint it continues from
    logged_through: int


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

    # set while running
    tracker: Tracker = field(init=False, repr=False)
    feds: list[FederatedData] = field(init=False, default_factory=list, repr=False)
    stored: dict[str, Any] | None = field(init=False, default=None)  # the resumed experiment.json
    checkpoints: dict[str | None, dict[str, Any]] = field(init=False, default_factory=dict, repr=False)
    meta: dict[str, Any] = field(init=False, default_factory=dict)  # what experiment.json holds
    exp_dir: checkpoint.ExperimentDir | None = field(init=False, default=None)
    lock: checkpoint.FolderLock | None = field(init=False, default=None, repr=False)
    # a run started (or set RUNNING again) whose training has not begun: ended by run_variants if
    # interrupted there (train ends the runs it trains)
    open_run: str | None = field(init=False, default=None)
    parent: str | None = field(init=False, default=None)  # the parent run's id
    base_tags: dict[str, str] = field(init=False, default_factory=dict)
    results: list[RunResult] = field(init=False, default_factory=list)
    failed: list[tuple[str, str]] = field(init=False, default_factory=list)  # (child, why)
    pool: Pool | None = field(init=False, default=None, repr=False)

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
        """Hold the experiment folder's :class:`~fedreg.checkpoint.FolderLock` until :meth:`run` returns."""
        lock = checkpoint.FolderLock(exp.path)
        lock.acquire()
        self.lock = lock

    def _run(self) -> ExperimentResult:
        self.check_shared()
        torch.set_flush_denormal(True)
        if self.resume is not None:
            # before anything is read or written: no other process runs these runs
            self.take_lock(self.resume)
            self.stored = self.resume.read()
            if self.stored.get("status") == "FINISHED":
                raise FedregError(f"nothing to resume: the runs in '{self.resume.path}' have finished")
        self.checkpoints = self.load_checkpoints()
        # everything that can fail on input happens before anything is written: data, partitions, folders,
        # store
        cache = DataCache()
        self.feds = [cache.get(rs) for rs in self.specs]
        checked = set()
        for rs, fed in zip(self.specs, self.feds, strict=True):  # each model takes its dataset's images
            model = rs.components["model"]
            if (key := (model.name, model.params.model_dump_json(), id(fed.dataset))) not in checked:
                checked.add(key)
                check_model_fits(model, fed.dataset)
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

    # -- input checks ------------------------------------------------------------------------------------
    def check_shared(self) -> None:
        first = self.first
        for rs in self.specs[1:]:
            if (rs.spec.tracking.uri, rs.spec.tracking.experiment, rs.spec.checkpoint) != (
                first.tracking.uri,
                first.tracking.experiment,
                first.checkpoint,
            ):
                raise FedregError(
                    "all variants must share 'tracking' and 'checkpoint'; move them out of the variants"
                )
            if (rs.spec.execution.sweep, rs.spec.execution.jobs) != (
                first.execution.sweep,
                first.execution.jobs,
            ):
                raise FedregError(
                    "all variants must share execution.sweep and execution.jobs (they say how the whole "
                    "sweep runs); move them out of the variants and the grid"
                )

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

    def load_checkpoints(self) -> dict[str | None, dict[str, Any]]:
        """The checkpoints of the resumed runs, by variant key, each checked against its spec."""
        checkpoints: dict[str | None, dict[str, Any]] = {}
        if self.resume is None or self.stored is None:
            return checkpoints
        # the folder's recorded spec, which exists before the first checkpoint does
        diff = checkpoint.spec_differences(recorded_identities(self.stored), identities(self.specs))
        if diff is not None:
            raise FedregError(
                f"the runs in '{self.resume.path}' belong to another spec: {diff}. Continue them as they "
                f"were started with 'fedreg resume {self.resume.path.name}', or run without --resume to "
                f"start afresh"
            )
        for rs in self.specs:
            f = self.resume.run_file(rs.key)
            if f.exists():
                ck = checkpoint.load(f)
                if ck["fingerprint"] != checkpoint.fingerprint(rs.resolved_dict()):
                    raise FedregError(
                        f"the checkpoint '{f}' belongs to another spec: "
                        f"{checkpoint.differences(ck['identity'], checkpoint.identity(rs.resolved_dict()))}. "
                        f"Run without --resume to start afresh, or restore the spec it was made with"
                    )
                checkpoints[rs.key] = ck
        return checkpoints

    # -- the runs ----------------------------------------------------------------------------------------
    def run_variants(self) -> ExperimentResult:
        self.base_tags = self.common_tags()
        self.parent = self.open_parent()
        self.exp_dir = self.resume
        if self.stored is not None:
            self.meta = self.stored
            # checked equal by load_checkpoints; recorded from now on in folders written before they were
            self.meta["identities"] = {**recorded_identities(self.stored), **identities(self.specs)}
        else:
            self.meta = self.new_meta()
        try:
            if self.pool is None:
                for rs, fed in zip(self.specs, self.feds, strict=True):
                    self.run_variant(rs, fed)
            else:
                self.run_parallel(self.pool)
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

    def common_tags(self) -> dict[str, str]:
        commit = git_commit(Path(self.source).parent if self.source else ".")
        tags = {"fedreg.version": fedreg.__version__, "fedreg.spec": self.first.name}
        own = fedreg_commit()  # fedreg's own source checkout, not the spec's repository
        if own:
            tags["fedreg.commit"] = own
        if self.source:
            tags["fedreg.spec_file"] = str(self.source)
        if commit:
            tags["mlflow.source.git.commit"] = commit
        return tags

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
            self.echo(f"parent run {parent} ({len(self.specs)} variants) -> {self.tracker.uri}")
        return parent

    def new_meta(self) -> dict[str, Any]:
        return {
            "spec_file": str(self.source) if self.source else None,
            "original": self.original,
            "parent_run_id": self.parent,
            "variants": list(dict.fromkeys(rs.variant for rs in self.specs if rs.variant)),
            "runs": {},
            "identities": identities(self.specs),
            "tracking_uri": self.tracker.uri,
            "status": "RUNNING",
        }

    def run_variant(self, rs: ResolvedSpec, fed: FederatedData) -> None:
        """One child in this process: kept as it is when it finished before, else started (or resumed)
        and trained. A failed child of a sweep is recorded and the sweep goes on; a single run's failure is
        raised."""
        prep = self.prepare(rs, fed)
        if isinstance(prep, RunResult):
            self.results.append(prep)
            return
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
        )
        if exc is None:
            self.results.append(result)
            self.echo(self.headline(rs, prep.name, result))
            return
        if not self.parent:
            if isinstance(exc, ComponentFailure):
                raise PluginError(f"{exc}") from exc
            raise exc
        self.child_failed(prep.name, ChildOutcome(0, status, reason=failure_reason(exc)))

    def headline(self, rs: ResolvedSpec, name: str, result: RunResult) -> str:
        return f"{name}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in result.final.items() if k in headline_keys(rs)
        )

    def child_failed(self, name: str, outcome: ChildOutcome) -> None:
        self.failed.append((name, outcome.reason or outcome.status))
        self.echo(f"{name}: {outcome.status}: {outcome.reason or ''}")

    def prepare(self, rs: ResolvedSpec, fed: FederatedData) -> RunResult | Prepared:
        """The result of a child that finished before (kept as it is), or the child's MLflow run, started
        or set running again, with its checkpoint file and the checkpoint it continues from."""
        key = run_key(rs)
        name = rs.key or self.first.tracking.run_name or rs.spec.name
        ck = self.checkpoints.get(rs.key)
        run_id = self.meta["runs"].get(key)
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

    # -- children in parallel ----------------------------------------------------------------------------
    def run_parallel(self, pool: Pool) -> None:
        """The children in worker processes or Ray tasks, ``pool.capacity`` at a time, the longest
        expected first (so the sweep does not end waiting for one long child); a failed child is recorded
        and the others go on."""
        costs = [expected_cost(rs, fed) for rs, fed in zip(self.specs, self.feds, strict=True)]
        order = sorted(range(len(self.specs)), key=lambda i: -costs[i])  # stable: ties keep the spec's order
        progress = SweepProgress(len(order), sum(costs), self.echo, enabled=self.progress)
        done: dict[int, RunResult] = {}
        running: dict[int, Prepared] = {}
        pending = list(order)
        try:
            while pending or running:
                while pending and len(running) < pool.capacity:
                    i = pending.pop(0)
                    rs = self.specs[i]
                    prep = self.prepare(rs, self.feds[i])
                    if isinstance(prep, RunResult):
                        done[i] = prep
                        progress.skip(costs[i])
                        continue
                    where = pool.submit(self.task(i, prep))
                    self.open_run = None  # the worker ends it
                    running[i] = prep
                    start = prep.checkpoint["round"] if prep.checkpoint else 0
                    progress.started(i, prep.name, rs.spec.federation.rounds, costs[i], start, where)
                for event in pool.events(0.5):
                    if event[0] == "round":
                        progress.round(event[1], event[2], event[3])
                    elif event[0] == "started":
                        progress.moved(event[1], event[2])
                    elif event[0] == "done":
                        outcome: ChildOutcome = event[1]
                        prep = running.pop(outcome.index)
                        self.child_ended(prep, outcome, progress)
                        if outcome.result is not None:
                            done[outcome.index] = outcome.result
        except KeyboardInterrupt:
            pool.stop()
            for prep in running.values():  # what a worker could not mark itself
                self.tracker.end_run(prep.run_id, "KILLED")
            raise
        finally:
            progress.close()
        self.results = [done[i] for i in range(len(self.specs)) if i in done]

    def task(self, i: int, prep: Prepared) -> ChildTask:
        rs = self.specs[i]
        resume_file = None
        if prep.checkpoint is not None and self.resume is not None:
            resume_file = str(self.resume.run_file(rs.key).resolve())
        spool = Path(self.first.checkpoint.dir).parent / "spool" / checkpoint.safe_part(prep.name)
        return ChildTask(
            index=i,
            rs=rs,
            label=prep.name,
            run_id=prep.run_id,
            tracking_uri=self.tracker.uri,
            experiment=self.first.tracking.experiment,
            spool_dir=str(spool.resolve()),
            checkpoint_file=str(prep.checkpoint_file.resolve()) if prep.checkpoint_file else None,
            resume_file=resume_file,
            logged_through=prep.logged_through,
            threads=rs.spec.execution.threads or 1,
            fingerprint=checkpoint.fingerprint(rs.resolved_dict()),
        )

    def child_ended(self, prep: Prepared, outcome: ChildOutcome, progress: SweepProgress) -> None:
        rs = self.specs[outcome.index]
        if outcome.status == "FINISHED":
            progress.ended(outcome.index, outcome.status, self.headline(rs, prep.name, outcome.result))
        else:
            # a worker that died could not end its run: end it here (again, harmlessly, otherwise)
            self.tracker.set_tags(prep.run_id, {"fedreg.failure": (outcome.reason or outcome.status)[:5000]})
            self.tracker.end_run(prep.run_id, "FAILED" if outcome.status != "KILLED" else "KILLED")
            self.failed.append((prep.name, outcome.reason or outcome.status))
            progress.ended(outcome.index, outcome.status, f"{prep.name}: {outcome.status}: {outcome.reason}")
        if outcome.spool:
            self.echo(
                f"warning: {prep.name}: tracking calls that could not be delivered are kept in "
                f"'{outcome.spool}'; send them with: fedreg replay {outcome.spool}"
            )

    def start_child(self, rs: ResolvedSpec, fed: FederatedData, name: str) -> str:
        """A new MLflow run for one variant, with its tags, parameters, resolved spec and partition."""
        tags = {
            **self.base_tags,
            **component_tags(rs),
            "fedreg.role": "child" if self.parent else "single",
            "fedreg.dataset.md5": fed.dataset.checksum,
            "fedreg.dataset": fed.dataset.name,
        }
        if rs.variant:
            tags["fedreg.variant"] = rs.variant
        tags[DESCRIPTION] = describe_child(rs, overrides_of(self.original, rs.variant))
        tags["fedreg.seed"] = str(rs.spec.seed)
        tags.update(grid_tags(rs))
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
            listed = "\n".join(f"  - {name}: {why}" for name, why in self.failed)
            cmd = self.resume_command()
            how = (
                f"Fix the cause, then continue the failed ones from their checkpoints with: {cmd}"
                + (f" --jobs {self.job_count}" if self.job_count and self.job_count > 1 else "")
                if cmd
                else "Fix the cause and run the spec again"
            )
            raise SweepFailed(
                f"{len(self.failed)} of {len(self.specs)} child runs failed (parent run {self.parent}; the "
                f"others finished):\n{listed}\n{how}"
            )
        return ExperimentResult(self.parent, self.results, self.tracker.uri)

    def resume_command(self) -> str | None:
        """The command that continues this experiment after an interruption (None when nothing can be
        continued: no checkpoint folder was made). ``fedreg resume ID`` finds the folder from the run's tag
        in the tracking store, so the store is named when it is not the one found by default."""
        exp = self.exp_dir or self.resume
        if exp is None:
            return None
        cmd = f"fedreg resume {exp.path.name}"
        uri = self.tracker.uri if hasattr(self, "tracker") else None
        if uri and uri != tracking_uri(None):
            cmd += f" --tracking-uri {shlex.quote(uri)}"
        return cmd

    def interrupted(self) -> str:
        """What an interruption (Ctrl-C, SIGTERM) left, and how to go on."""
        cmd = self.resume_command()
        if cmd is not None:
            return f"the MLflow runs were marked KILLED; what was logged stays logged. Continue with: {cmd}"
        if not (self.parent or self.meta.get("runs")):
            return "nothing was recorded; run it again"
        if not self.first.checkpoint.every:
            return (
                "the MLflow runs were marked KILLED; checkpoints are off (checkpoint.every: 0): run it again"
            )
        return (
            "the MLflow runs were marked KILLED before their first checkpoint folder was made: run it again"
        )

    def close_tracker(self) -> None:
        """Deliver what is queued; say what could not be delivered, or that the server was unreachable."""
        tracker = self.tracker
        spool = tracker.close()
        if spool is not None:
            self.echo(
                f"warning: {tracker.pending} tracking calls could not be delivered to {tracker.uri}; "
                f"they are kept in '{spool}'. Send them when the server is back with: fedreg replay {spool}"
            )
        elif tracker.outages:
            self.echo(
                f"the tracking server was unreachable {tracker.outages} time(s); "
                "everything was delivered later"
            )


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
