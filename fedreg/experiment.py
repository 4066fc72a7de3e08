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
from fedreg.resume import identities, recorded_identities, run_key
from fedreg.rounds import FederatedRun, RunResult
from fedreg.spec import ResolvedSpec, RunSpec
from fedreg.tracking import Tracker, fedreg_commit, flatten, git_commit, tracking_uri


def headline_keys(rs: ResolvedSpec) -> set[str]:
    """The summary keys printed when a run ends: its metrics' final-column figures and the wall time."""
    figures = figures_of(m.info.cls for m in rs.metrics)
    return {k for f in figures if f.final for _, k in f.columns()} | {"wall_time_s"}


@dataclass
class ExperimentResult:
    parent_run_id: str | None
    results: list[RunResult]
    tracking_uri: str


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
            for rs, fed in zip(self.specs, self.feds, strict=True):
                self.results.append(self.run_variant(rs, fed))
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

    def run_variant(self, rs: ResolvedSpec, fed: FederatedData) -> RunResult:
        """One variant: kept as it is when it finished before, else started (or resumed) and trained."""
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
        result = self.train(rs, fed, run_id, self.checkpoint_file(rs, run_id), ck, logged)
        self.echo(
            f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.final.items() if k in headline_keys(rs))
        )
        return result

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

    def train(
        self,
        rs: ResolvedSpec,
        fed: FederatedData,
        run_id: str,
        ck_file: Path | None,
        ck: dict | None,
        logged_through: int = 0,
    ) -> RunResult:
        """Run the variant's rounds; its MLflow run ends FINISHED, KILLED (interrupted) or FAILED."""
        try:
            self.open_run = None  # from here on, this method ends the run whatever happens
            result = FederatedRun(
                rs,
                fed,
                self.tracker,
                run_id,
                progress=self.progress,
                checkpoint_file=ck_file,
                resume=ck,
                logged_through=logged_through,
            ).run()
        except KeyboardInterrupt:
            self.tracker.end_run(run_id, "KILLED")
            raise
        except ComponentFailure as exc:
            self.tracker.end_run(run_id, "FAILED")
            raise PluginError(f"{exc}") from exc
        except BaseException:
            self.tracker.end_run(run_id, "FAILED")
            raise
        self.tracker.end_run(run_id, "FINISHED")
        return result

    def finish(self) -> ExperimentResult:
        if self.parent:
            ParentRun.of(self).finished(self.results)
            self.tracker.end_run(self.parent, "FINISHED")
        if self.exp_dir is not None:
            self.meta["status"] = "FINISHED"
            self.exp_dir.write(self.meta)
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
) -> ExperimentResult:
    """Run every resolved variant; with variants, as MLflow child runs under one parent run (which keeps
    ``original``, the spec as written with its variants and overrides applied). With ``resume``, continue
    the runs recorded there from their checkpoints, in the same MLflow runs."""
    return Experiment(specs, source, progress, echo, original, resume).run()
