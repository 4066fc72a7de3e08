"""An experiment: one invocation of ``fedreg run``, the variants of one spec.

Everything that can fail on input is checked before anything is written: the variants share tracking and
checkpoint settings, resumed checkpoints belong to their spec, data and partitions load, the checkpoint
folder is writable. Then each variant runs as an MLflow run (a child of one parent run when the spec has
variants); with ``resume``, the runs recorded in an experiment folder continue from their checkpoints, in
the same MLflow runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import fedreg
from fedreg import checkpoint
from fedreg.data import FederatedData, build_federated_data, check_model_fits
from fedreg.errors import ComponentFailure, FedregError, PluginError
from fedreg.figures import figures_of
from fedreg.outputs import component_tags, log_partition, summarize
from fedreg.rounds import FederatedRun, RunResult
from fedreg.spec import ResolvedSpec, RunSpec
from fedreg.tracking import Tracker, fedreg_commit, flatten, git_commit


def headline_keys(rs: ResolvedSpec) -> set[str]:
    """The summary keys printed when a run ends: its metrics' final-column figures and the wall time."""
    figures = figures_of(m.info.cls for m in rs.metrics)
    return {k for f in figures if f.final for _, k in f.columns()} | {"wall_time_s"}


class DataCache:
    """Datasets and partitions shared by the variants of one invocation (a partition is a pure function of
    dataset, partition spec and seed, so equal keys give equal data)."""

    def __init__(self):
        self._datasets: dict[tuple, Any] = {}
        self._feds: dict[tuple, FederatedData] = {}

    def get(self, rs: ResolvedSpec) -> FederatedData:
        s = rs.spec
        ds_comp = rs.components["dataset"]
        dkey = (ds_comp.name, ds_comp.params.model_dump_json(), s.data.root, s.data.size)
        if dkey not in self._datasets:
            self._datasets[dkey] = ds_comp.instantiate().load(s.data.root, s.data.download, s.data.size)
        part = rs.components["partition"]
        fkey = dkey + (
            part.name,
            part.params.model_dump_json(),
            s.data.num_clients,
            s.data.local_test.rule,
            s.data.local_test.fraction,
            s.seed,
        )
        if fkey not in self._feds:
            self._feds[fkey] = build_federated_data(
                self._datasets[dkey],
                part.instantiate(),
                s.data.num_clients,
                s.data.local_test.fraction,
                s.seed,
                s.data.local_test.rule,
            )
        return self._feds[fkey]


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
    parent: str | None = field(init=False, default=None)  # the parent run's id
    base_tags: dict[str, str] = field(init=False, default_factory=dict)
    results: list[RunResult] = field(init=False, default_factory=list)

    @property
    def first(self) -> RunSpec:
        return self.specs[0].spec

    @property
    def ck_root(self) -> Path:
        return Path(self.first.checkpoint.dir) / self.first.name

    def run(self) -> ExperimentResult:
        self.check_shared()
        torch.set_flush_denormal(True)
        self.stored = self.resume.read() if self.resume else None
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
        self.meta = self.stored if self.stored is not None else self.new_meta()
        try:
            for rs, fed in zip(self.specs, self.feds, strict=True):
                self.results.append(self.run_variant(rs, fed))
        except KeyboardInterrupt:
            if self.parent:
                self.tracker.end_run(self.parent, "KILLED")
            raise
        except BaseException:
            if self.parent:
                self.tracker.end_run(self.parent, "FAILED")
            raise
        return self.finish()

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
            self.echo(f"parent run {parent} ({len(self.specs)} variants) -> {self.tracker.uri}")
        return parent

    def new_meta(self) -> dict[str, Any]:
        return {
            "spec_file": str(self.source) if self.source else None,
            "original": self.original,
            "parent_run_id": self.parent,
            "variants": list(dict.fromkeys(rs.variant for rs in self.specs if rs.variant)),
            "runs": {},
            "tracking_uri": self.tracker.uri,
            "status": "RUNNING",
        }

    def run_variant(self, rs: ResolvedSpec, fed: FederatedData) -> RunResult:
        """One variant: kept as it is when it finished before, else started (or resumed) and trained."""
        key = rs.key or "run"
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
        if run_id is None:
            run_id = self.start_child(rs, fed, name)
            self.meta["runs"][key] = run_id
        else:
            self.tracker.set_status(run_id, "RUNNING")
            self.echo(f"{name}: resuming run {run_id} after round {ck['round'] if ck else 0}")
        result = self.train(rs, fed, run_id, self.checkpoint_file(rs, run_id), ck)
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
        tags["fedreg.seed"] = str(rs.spec.seed)
        run_id = self.tracker.start_run(name, tags, parent=self.parent)
        self.tracker.log_params(run_id, flatten(rs.resolved_dict()))
        self.tracker.log_text(run_id, yaml.safe_dump(rs.resolved_dict(), sort_keys=False), "spec.yaml")
        log_partition(self.tracker, run_id, fed)
        return run_id

    def checkpoint_file(self, rs: ResolvedSpec, run_id: str) -> Path | None:
        """Where the variant's checkpoints go (None without checkpointing); writes experiment.json first."""
        if not self.first.checkpoint.every:
            return None
        if self.exp_dir is None:
            self.exp_dir = checkpoint.ExperimentDir(self.ck_root / (self.parent or run_id))
        self.exp_dir.write(self.meta)
        ck_file = self.exp_dir.run_file(rs.key)
        self.tracker.set_tags(run_id, {"fedreg.checkpoint": str(ck_file.resolve())})
        return ck_file

    def train(
        self, rs: ResolvedSpec, fed: FederatedData, run_id: str, ck_file: Path | None, ck: dict | None
    ) -> RunResult:
        """Run the variant's rounds; its MLflow run ends FINISHED, KILLED (interrupted) or FAILED."""
        try:
            result = FederatedRun(
                rs, fed, self.tracker, run_id, progress=self.progress, checkpoint_file=ck_file, resume=ck
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
            self.tracker.end_run(self.parent, "FINISHED")
        if self.exp_dir is not None:
            self.meta["status"] = "FINISHED"
            self.exp_dir.write(self.meta)
        return ExperimentResult(self.parent, self.results, self.tracker.uri)

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
