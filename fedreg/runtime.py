"""The federated round loop.

One round: select clients -> broadcast -> local training (objective) + client report (aggregator) ->
aggregate -> evaluate -> metrics -> log. Each step is a component method or a small function in
:mod:`fedreg.engine`; the loop only moves data between them and keeps the run's state explicit in
:class:`RunState`.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

import fedreg
from fedreg import checkpoint, seeding
from fedreg.components import (
    GLOBAL_ON_LOCAL,
    GLOBAL_TEST,
    LOCAL,
    ClientFailure,
    MetricResult,
    NonFiniteLoss,
    Predictions,
    RoundEvaluation,
    RunInfo,
    StateDict,
    clone_state,
)
from fedreg.data import FederatedData, build_federated_data, plot_label_histogram
from fedreg.engine import call, check_state, predict
from fedreg.errors import ComponentFailure, FedregError, PluginError, describe
from fedreg.execution import (
    Backend,
    ClientJob,
    ClientRunner,
    ModelBuilder,
    RoundInput,
    TrainingConfig,
    backend_class,
)
from fedreg.spec import ResolvedSpec
from fedreg.tracking import RunTracker, Tracker, flatten, git_commit

#: per-round metrics that measure time, not learning: they differ between identical runs
TIMING_KEYS = ("round_time_s", "elapsed_s")


@dataclass
class RunState:
    """Everything a run needs to continue: explicit, and made of checkpointable values."""

    round: int  # rounds completed
    global_state: StateDict
    client_states: dict[int, dict[str, Any]] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # evaluated rounds' scalars


@dataclass
class RunResult:
    run_id: str
    variant: str | None
    final: dict[str, float]
    history: list[dict[str, float]]
    wall_time_s: float
    global_state: StateDict | None = None
    client_states: dict[int, dict[str, Any]] = field(default_factory=dict)


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


def check_device(device: str) -> str:
    """The spec's execution.device, checked against this machine."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise FedregError(
            f"execution.device: '{device}' is not a device ({exc}); use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FedregError(
            f"execution.device is '{device}' but no CUDA device is visible on this machine; "
            f"set execution.device: cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise FedregError(f"execution.device: '{device}' is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    return device


def _select(selector, r: int, infos, k: int, seed: int) -> list[int]:
    # streams are indexed by rounds completed (r - 1), so round 1 draws from stream 0
    chosen = call(selector, "select", r, None, r, infos, k, seeding.rng(seed, seeding.SAMPLING, r - 1))
    try:
        chosen = [int(c) for c in chosen]
    except (TypeError, ValueError):
        raise PluginError(
            f"{describe(selector)}: select must return client ids, got {chosen!r} (round {r})"
        ) from None
    if len(chosen) != k or len(set(chosen)) != k or any(c < 0 or c >= len(infos) for c in chosen):
        raise PluginError(
            f"{describe(selector)} broke the rule 'return {k} distinct client ids in "
            f"0..{len(infos) - 1}': got {chosen} (round {r})"
        )
    return chosen


class FederatedRun:
    """One run (one variant) of a spec."""

    def __init__(
        self,
        rs: ResolvedSpec,
        fed: FederatedData,
        tracker: RunTracker,
        run_id: str,
        progress: bool = True,
        label: str | None = None,
        checkpoint_file: Path | None = None,
        resume: dict[str, Any] | None = None,
    ):
        self.rs, self.spec, self.fed = rs, rs.spec, fed
        self.checkpoint_file, self.resume = checkpoint_file, resume
        self.tracker, self.run_id = tracker, run_id
        self.progress, self.label = progress, label or rs.key or rs.spec.name
        comps = rs.components
        self.build_model = ModelBuilder(
            comps["model"].instantiate(),
            fed.dataset.in_channels,
            fed.dataset.num_classes,
            fed.dataset.image_size,
        )
        self.objective = comps["objective"].instantiate()
        self.selector = comps["selection"].instantiate()
        self.aggregator = comps["aggregation"].instantiate()
        self.metrics = [m.instantiate() for m in rs.metrics]
        needs = set().union(*(m.requires for m in self.metrics)) if self.metrics else set()
        self.need_global_test = GLOBAL_TEST in needs
        self.need_local = LOCAL in needs
        self.need_global_on_local = GLOBAL_ON_LOCAL in needs
        ds = fed.dataset
        self.infos = fed.infos()
        self.local_test_sizes = [len(c.test_idx) for c in fed.clients]
        self.per_client_rows: list[dict[str, Any]] = []
        self.failure_rows: list[dict[str, Any]] = []
        t, o = self.spec.training, self.spec.training.optimizer
        self.config = TrainingConfig(
            seed=self.spec.seed,
            epochs=t.local_epochs,
            batch_size=t.batch_size,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.nesterov,
            num_classes=ds.num_classes,
            eval_local=self.need_local,
            eval_batch_size=self.spec.evaluation.batch_size,
            precision=t.precision,
            device=check_device(self.spec.execution.device),
        )
        # clients are index sets into the dataset's tensors: a client's tensors are gathered when it trains
        self.runner = ClientRunner(self.config, self.build_model, fed.client_tensors)

        parts_x, parts_y = [], []
        if self.need_global_test:
            parts_x.append(ds.test_x)
            parts_y.append(ds.test_y)
        if self.need_global_on_local:
            # all local test sets, evaluated in one batched pass with the global test set
            idx = torch.from_numpy(np.concatenate([c.test_idx for c in fed.clients]))
            parts_x.append(ds.train_x[idx])
            parts_y.append(ds.train_y[idx])
        self.eval_x = torch.cat(parts_x).to(self.runner.device) if parts_x else None
        self.eval_y = torch.cat(parts_y).to(self.runner.device) if parts_y else None

    # -- models ----------------------------------------------------------------------------------------
    def initial_state(self) -> RunState:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeding.rng(self.spec.seed, seeding.MODEL_INIT).integers(2**62)))
            model = self.build_model()
        return RunState(round=0, global_state=clone_state(model.state_dict()))

    def lr_at(self, r: int) -> float:
        """Learning rate of round ``r`` (1-based): lr * gamma ** ((r - 1) // step_rounds)."""
        t = self.spec.training
        return t.optimizer.lr * t.lr_schedule.gamma ** ((r - 1) // t.lr_schedule.step_rounds)

    # -- one round ---------------------------------------------------------------------------------------
    def run_round(self, st: RunState, backend: Backend, eval_model) -> dict[str, float]:
        r = st.round + 1  # rounds are numbered from 1, as MLflow steps
        spec = self.spec
        chosen = _select(self.selector, r, self.infos, spec.federation.clients_per_round, spec.seed)
        broadcast = call(self.aggregator, "broadcast", r, None, r, st.global_state) or {}
        lr = self.lr_at(r)
        rin = RoundInput(r, st.global_state, broadcast, self.objective, self.aggregator)
        # each client's state is a copy, committed only if its round succeeds
        jobs = [ClientJob(r, cid, lr, dict(st.client_states.get(cid, {}))) for cid in chosen]
        updates, failures, local_preds = [], [], {}
        for res in backend.train(jobs, rin):
            cid = res.cid
            if res.failure is not None:
                failures.append(self.handle_failure(res.failure, r, cid))
                continue
            update = res.update
            assert update is not None, "a result without a failure carries its update"
            if res.state:
                st.client_states[cid] = res.state
            else:
                st.client_states.pop(cid, None)  # keep state only for clients that have it
            updates.append(update)
            if res.local_eval is not None:
                local_preds[cid] = res.local_eval
            self.per_client_rows.append(
                {"round": r, "client": cid, "metric": "train_loss", "value": update.train_loss}
            )
            for k, v in update.report.items():
                self.per_client_rows.append({"round": r, "client": cid, "metric": f"report.{k}", "value": v})
        if len(updates) < spec.faults.min_clients:
            detail = "; ".join(f"client {f.client_id}: {f.error}" for f in failures)
            raise FedregError(
                f"round {r}: {len(updates)} of {len(chosen)} clients succeeded, fewer than "
                f"faults.min_clients={spec.faults.min_clients}. Failures: {detail}"
            )
        new_state = call(self.aggregator, "aggregate", r, None, r, st.global_state, updates, failures)
        st.global_state = check_state(new_state, st.global_state, describe(self.aggregator), "aggregate")
        st.round = r
        scalars = {
            "train_loss": float(np.mean([u.train_loss for u in updates])),
            "lr": lr,
            "clients_ok": float(len(updates)),
            "clients_failed": float(len(failures)),
        }
        last = st.round == spec.federation.rounds
        if st.round % spec.evaluation.every == 0 or last:
            eval_model.load_state_dict(st.global_state)
            with self.config.autocast():
                ev = self.evaluate(st.round, chosen, eval_model, local_preds)
            for metric in self.metrics:
                res = call(metric, "update", r, None, ev)
                if not isinstance(res, MetricResult):
                    raise PluginError(
                        f"{describe(metric)}: update must return a MetricResult, got {type(res).__name__}"
                    )
                scalars.update(res.scalars)
                for cid, vals in res.per_client.items():
                    for k, v in vals.items():
                        self.per_client_rows.append(
                            {"round": st.round, "client": cid, "metric": k, "value": v}
                        )
        return scalars

    def handle_failure(self, exc: ComponentFailure, r: int, cid: int) -> ClientFailure:
        """Apply the spec's fault policy to a failed client: re-raise to stop, or record and skip it."""
        diverged = isinstance(exc.original, NonFiniteLoss)
        policy = self.spec.faults.divergence if diverged else self.spec.faults.client_failure
        if policy == "stop":
            if diverged:
                raise FedregError(
                    f"client {cid} diverged in round {r}: {exc}. The update was not aggregated; "
                    f"lower the learning rate, or set faults.divergence: reject to drop such "
                    f"updates and continue"
                ) from exc
            raise exc
        failure = ClientFailure(cid, "divergence" if diverged else exc.method, str(exc))
        self.failure_rows.append({"round": r, "client": cid, "stage": failure.stage, "error": failure.error})
        return failure

    def evaluate(self, round_no: int, chosen, eval_model, local_preds) -> RoundEvaluation:
        ev = RoundEvaluation(
            round=round_no,
            participants=list(chosen),
            num_classes=self.fed.dataset.num_classes,
            local=local_preds,
            local_model_role=self.objective.local_model_role,
        )
        if self.eval_x is None or self.eval_y is None:
            return ev
        allp = predict(eval_model, self.eval_x, self.eval_y, self.spec.evaluation.batch_size)
        if not self.runner.on_cpu:
            allp = Predictions(allp.labels.cpu(), allp.preds.cpu(), allp.loss.cpu())
        offset = 0
        if self.need_global_test:
            n = len(self.fed.dataset.test_y)
            ev.global_test = Predictions(allp.labels[:n], allp.preds[:n], allp.loss[:n])
            offset = n
        if self.need_global_on_local:
            for cid, n in enumerate(self.local_test_sizes):
                sl = slice(offset, offset + n)
                ev.global_on_local[cid] = Predictions(allp.labels[sl], allp.preds[sl], allp.loss[sl])
                offset += n
        return ev

    # -- whole run ---------------------------------------------------------------------------------------
    # -- checkpoints -------------------------------------------------------------------------------------
    def components(self) -> dict[str, Any]:
        return {
            "selection": self.selector,
            "objective": self.objective,
            "aggregation": self.aggregator,
            **{f"metric.{m.name}": m for m in self.metrics},
        }

    def save_checkpoint(self, st: RunState, elapsed: float) -> None:
        assert self.checkpoint_file is not None, "checkpoints are saved only when checkpointing is on"
        checkpoint.save(
            self.checkpoint_file,
            {
                "fingerprint": checkpoint.fingerprint(self.rs.resolved_dict()),
                "identity": checkpoint.identity(self.rs.resolved_dict()),
                "run_id": self.run_id,
                "variant": self.rs.variant,
                "round": st.round,
                "finished": st.round >= self.spec.federation.rounds,
                "global_state": st.global_state,
                "client_states": st.client_states,
                "history": st.history,
                "components": {k: c.state_dict() for k, c in self.components().items()},
                "per_client_rows": self.per_client_rows,
                "failure_rows": self.failure_rows,
                "rng": checkpoint.rng_states(),
                "elapsed_s": elapsed,
            },
        )

    def restore(self, ck: dict[str, Any]) -> RunState:
        for key, comp in self.components().items():
            call(comp, "load_state_dict", ck["round"], None, ck["components"].get(key, {}))
        self.per_client_rows = list(ck["per_client_rows"])
        self.failure_rows = list(ck["failure_rows"])
        checkpoint.restore_rng_states(ck["rng"])
        return RunState(
            round=ck["round"],
            global_state=ck["global_state"],
            client_states=ck["client_states"],
            history=list(ck["history"]),
        )

    def start(self) -> RunState:
        """Tell every component the run's facts (``start_run``), then the state to go on from: the
        checkpoint's when resuming, else the initial weights."""
        spec = self.spec
        info = RunInfo(
            tuple(self.infos),
            self.fed.dataset.num_classes,
            spec.federation.clients_per_round,
            spec.federation.rounds,
            spec.seed,
        )
        for comp in (self.selector, self.objective, self.aggregator, *self.metrics):
            call(comp, "start_run", 0, None, info)
        return self.restore(self.resume) if self.resume is not None else self.initial_state()

    def run(self) -> RunResult:
        spec = self.spec
        t0 = time.perf_counter()
        st = self.start()
        if self.resume is not None:
            t0 -= float(self.resume["elapsed_s"])
        every = spec.checkpoint.every if self.checkpoint_file is not None else 0
        threads_before = torch.get_num_threads()
        if spec.execution.threads:
            torch.set_num_threads(spec.execution.threads)
        eval_model = self.runner.new_model()
        backend = backend_class(spec.execution.backend)(
            spec.execution, self.runner, spec.federation.clients_per_round
        )
        backend.start()
        bar = tqdm(
            total=spec.federation.rounds,
            initial=st.round,
            desc=self.label,
            disable=not self.progress,
            unit="round",
            dynamic_ncols=True,
            leave=True,
        )
        try:
            while st.round < spec.federation.rounds:
                rt = time.perf_counter()
                scalars = self.run_round(st, backend, eval_model)
                now = time.perf_counter()
                scalars["round_time_s"] = now - rt
                scalars["elapsed_s"] = now - t0  # wall time since the run started, for accuracy-vs-time plots
                st.history.append({"round": st.round, **scalars})
                self.tracker.log_metrics(self.run_id, scalars, step=st.round)
                if every and (st.round % every == 0 or st.round == spec.federation.rounds):
                    self.save_checkpoint(st, time.perf_counter() - t0)
                bar.update(1)
                shown: dict[str, str] = {
                    k: f"{scalars[k]:.4f}" for k in ("global_acc", "local_acc_mean") if k in scalars
                }
                if shown:
                    bar.set_postfix(shown)
        finally:
            bar.close()
            backend.close()
            torch.set_num_threads(threads_before)
        wall = time.perf_counter() - t0
        final = summarize(st.history)
        final["wall_time_s"] = wall
        self.tracker.log_metrics(self.run_id, final, step=st.round)
        self.log_outputs(st)
        return RunResult(
            self.run_id, self.rs.variant, final, st.history, wall, st.global_state, st.client_states
        )

    def log_outputs(self, st: RunState) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            tables = (
                ("per_client.csv", self.per_client_rows, ["round", "client", "metric", "value"]),
                ("failures.csv", self.failure_rows, ["round", "client", "stage", "error"]),
            )
            for name, rows, fields in tables:
                if rows:
                    write_csv(d / name, rows, fields)
                    self.tracker.log_file(self.run_id, d / name, "metrics")
            p = d / "history.json"
            p.write_text(json.dumps(st.history))
            self.tracker.log_file(self.run_id, p, "metrics")
            if st.history:
                p = d / "curves.png"
                plot_curves({self.label: st.history}, p)
                self.tracker.log_file(self.run_id, p, "plots")
            if self.spec.tracking.log_model:
                p = d / "global_weights.pt"
                torch.save(st.global_state, p)
                self.tracker.log_file(self.run_id, p, "model")


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def summarize(history: list[dict[str, float]], window: int = 10) -> dict[str, float]:
    """final_<m> (last evaluated round) and last10_<m> (mean over the last ``window`` evaluated rounds)."""
    out: dict[str, float] = {}
    keys = sorted({k for h in history for k in h if k not in ("round", "lr", *TIMING_KEYS)})
    for k in keys:
        vals = [h[k] for h in history if k in h and not (isinstance(h[k], float) and math.isnan(h[k]))]
        if vals:
            out[f"final_{k}"] = float(vals[-1])
            out[f"last{window}_{k}"] = float(np.mean(vals[-window:]))
    return out


def plot_curves(
    histories: dict[str, list[dict[str, float]]],
    path,
    keys=("global_acc", "local_acc_mean", "local_acc_worst", "global_nfr"),
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in keys if any(k in h for hist in histories.values() for h in hist)]
    if not present:
        present = ["train_loss"]
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.4), squeeze=False)
    for ax, key in zip(axes[0], present, strict=True):
        for label, hist in histories.items():
            pts = [(h["round"], h[key]) for h in hist if key in h]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=label, linewidth=1.1)
        ax.set_title(key)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# Experiments: one invocation of `fedreg run`, one or more variants
# ---------------------------------------------------------------------------------------------------------


def component_tags(rs: ResolvedSpec) -> dict[str, str]:
    tags = {}
    for kind, comp in rs.components.items():
        tags[f"fedreg.{kind}"] = comp.name
        tags[f"fedreg.{kind}.provider"] = comp.info.provider
    tags["fedreg.metrics"] = ",".join(m.name for m in rs.metrics)
    tags["fedreg.local_model_role"] = rs.components["objective"].info.cls.local_model_role
    for m in rs.metrics:
        tags[f"fedreg.metric.{m.name}.provider"] = m.info.provider
    return tags


@dataclass
class ExperimentResult:
    parent_run_id: str | None
    results: list[RunResult]
    tracking_uri: str


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
    first = specs[0].spec
    for rs in specs[1:]:
        if (rs.spec.tracking.uri, rs.spec.tracking.experiment, rs.spec.checkpoint) != (
            first.tracking.uri,
            first.tracking.experiment,
            first.checkpoint,
        ):
            raise FedregError(
                "all variants must share 'tracking' and 'checkpoint'; move them out of the variants"
            )
    torch.set_flush_denormal(True)
    meta = resume.read() if resume else None
    checkpoints = {}
    if resume is not None and meta is not None:
        for rs in specs:
            f = resume.run_file(rs.key)
            if f.exists():
                ck = checkpoint.load(f)
                if ck["fingerprint"] != checkpoint.fingerprint(rs.resolved_dict()):
                    raise FedregError(
                        f"the checkpoint '{f}' belongs to another spec: "
                        f"{checkpoint.differences(ck['identity'], checkpoint.identity(rs.resolved_dict()))}. "
                        f"Run without --resume to start afresh, or restore the spec it was made with"
                    )
                checkpoints[rs.key] = ck
    # everything that can fail on input happens before anything is written: data, partitions, folders, store
    cache = DataCache()
    feds = [cache.get(rs) for rs in specs]
    ck_root = Path(first.checkpoint.dir) / first.name
    if first.checkpoint.every:
        checkpoint.ensure_writable(ck_root)
    tracker = Tracker(
        meta["tracking_uri"] if meta else first.tracking.uri,
        first.tracking.experiment,
        spool_dir=Path(first.checkpoint.dir).parent / "spool",
    )
    try:
        return _run_variants(
            specs, feds, tracker, source, echo, original, resume, meta, ck_root, checkpoints, progress
        )
    finally:
        spool = tracker.close()
        if spool is not None:
            echo(
                f"warning: {tracker.pending} tracking calls could not be delivered to {tracker.uri}; "
                f"they are kept in '{spool}'. Send them when the server is back with: fedreg replay {spool}"
            )
        elif tracker.outages:
            echo(
                f"the tracking server was unreachable {tracker.outages} time(s); "
                "everything was delivered later"
            )


def _run_variants(
    specs, feds, tracker, source, echo, original, resume, meta, ck_root, checkpoints, progress
) -> ExperimentResult:
    first = specs[0].spec
    commit = git_commit(Path(source).parent if source else ".")
    base_tags = {"fedreg.version": fedreg.__version__, "fedreg.spec": first.name}
    if source:
        base_tags["fedreg.spec_file"] = str(source)
    if commit:
        base_tags["mlflow.source.git.commit"] = commit
    with_variants = any(rs.key for rs in specs)
    parent = meta["parent_run_id"] if meta else None
    if parent:
        tracker.set_status(parent, "RUNNING")
    elif with_variants:
        parent = tracker.start_run(
            first.tracking.run_name or first.name,
            {
                **base_tags,
                "fedreg.role": "parent",
                "fedreg.variants": ",".join(dict.fromkeys(rs.variant or "" for rs in specs)),
            },
        )
        if original is not None:
            tracker.log_text(parent, yaml.safe_dump(original, sort_keys=False), "spec.yaml")
        echo(f"parent run {parent} ({len(specs)} variants) -> {tracker.uri}")
    exp = resume
    if meta is None:
        meta = {
            "spec_file": str(source) if source else None,
            "original": original,
            "parent_run_id": parent,
            "variants": list(dict.fromkeys(rs.variant for rs in specs if rs.variant)),
            "runs": {},
            "tracking_uri": tracker.uri,
            "status": "RUNNING",
        }
    results: list[RunResult] = []
    try:
        for rs, fed in zip(specs, feds, strict=True):
            key = rs.key or "run"
            name = rs.key or first.tracking.run_name or rs.spec.name
            ck = checkpoints.get(rs.key)
            run_id = meta["runs"].get(key)
            if ck is not None and ck["finished"]:
                echo(f"{name}: finished before, kept as it is (run {run_id})")
                results.append(
                    RunResult(
                        run_id,
                        rs.variant,
                        summarize(ck["history"]),
                        ck["history"],
                        float(ck["elapsed_s"]),
                        ck["global_state"],
                        ck["client_states"],
                    )
                )
                continue
            if run_id is None:
                tags = {
                    **base_tags,
                    **component_tags(rs),
                    "fedreg.role": "child" if parent else "single",
                    "fedreg.dataset.md5": fed.dataset.checksum,
                    "fedreg.dataset": fed.dataset.name,
                }
                if rs.variant:
                    tags["fedreg.variant"] = rs.variant
                tags["fedreg.seed"] = str(rs.spec.seed)
                run_id = tracker.start_run(name, tags, parent=parent)
                tracker.log_params(run_id, flatten(rs.resolved_dict()))
                tracker.log_text(run_id, yaml.safe_dump(rs.resolved_dict(), sort_keys=False), "spec.yaml")
                log_partition(tracker, run_id, fed)
                meta["runs"][key] = run_id
            else:
                tracker.set_status(run_id, "RUNNING")
                echo(f"{name}: resuming run {run_id} after round {ck['round'] if ck else 0}")
            ck_file = None
            if first.checkpoint.every:
                if exp is None:
                    exp = checkpoint.ExperimentDir(ck_root / (parent or run_id))
                exp.write(meta)
                ck_file = exp.run_file(rs.key)
                tracker.set_tags(run_id, {"fedreg.checkpoint": str(ck_file.resolve())})
            try:
                result = FederatedRun(
                    rs, fed, tracker, run_id, progress=progress, checkpoint_file=ck_file, resume=ck
                ).run()
            except KeyboardInterrupt:
                tracker.end_run(run_id, "KILLED")
                raise
            except ComponentFailure as exc:
                tracker.end_run(run_id, "FAILED")
                raise PluginError(f"{exc}") from exc
            except BaseException:
                tracker.end_run(run_id, "FAILED")
                raise
            tracker.end_run(run_id, "FINISHED")
            results.append(result)
            echo(
                f"{name}: "
                + ", ".join(
                    f"{k}={v:.4f}"
                    for k, v in result.final.items()
                    if k in ("final_global_acc", "last10_global_acc", "wall_time_s")
                )
            )
    except KeyboardInterrupt:
        if parent:
            tracker.end_run(parent, "KILLED")
        raise
    except BaseException:
        if parent:
            tracker.end_run(parent, "FAILED")
        raise
    if parent:
        tracker.end_run(parent, "FINISHED")
    if exp is not None:
        meta["status"] = "FINISHED"
        exp.write(meta)
    return ExperimentResult(parent, results, tracker.uri)


def log_partition(tracker: Tracker, run_id: str, fed: FederatedData) -> None:
    stats = fed.stats()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "stats.json").write_text(json.dumps(stats, indent=1))
        with (d / "label_counts.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["client", "split"] + [f"class_{c}" for c in range(stats["num_classes"])])
            for row in stats["clients"]:
                w.writerow([row["client"], "train"] + row["train_label_counts"])
                w.writerow([row["client"], "local_test"] + row["local_test_label_counts"])
        plot_label_histogram(stats, str(d / "label_histogram.png"))
        for name in ("stats.json", "label_counts.csv", "label_histogram.png"):
            tracker.log_file(run_id, d / name, "partition")
    tracker.log_metrics(
        run_id,
        {
            "partition_train_size_min": stats["train_size_min"],
            "partition_train_size_max": stats["train_size_max"],
        },
        step=0,
    )
