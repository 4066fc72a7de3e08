"""The federated round loop of one run.

One round: select clients -> broadcast -> local training (objective) + client report (aggregator) ->
aggregate -> evaluate -> metrics -> log. Each step is a component method, client training (a backend of
:mod:`fedreg.backends`) or a small function in :mod:`fedreg.evaluation`; the loop moves data between them
and keeps the run's state explicit in :class:`RunState`, which it checkpoints and restores."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fedreg import checkpoint, environment
from fedreg.backends import backend_class
from fedreg.clients import (
    Backend,
    ClientJob,
    ClientRunner,
    ModelBuilder,
    RoundInput,
    TrainingConfig,
    initial_weights,
)
from fedreg.components import LOCAL, ClientFailure, NonFiniteLoss, RunInfo, StateDict
from fedreg.data import FederatedData
from fedreg.errors import ComponentFailure, FedregError, describe
from fedreg.evaluation import call, check_state, select_clients
from fedreg.evaluator import Evaluator
from fedreg.figures import figures_of, progress_keys
from fedreg.outputs import TRAIN_LOSS, MetricNames, log_run_outputs, summarize
from fedreg.site import evaluated
from fedreg.spec import ResolvedSpec
from fedreg.timelimit import TimeLimitReached, past
from fedreg.tracking import RunTracker


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
        logged_through: int = 0,
        on_round: Callable[[int, dict[str, float]], None] | None = None,
        backend: Backend | None = None,
        deadline: float | None = None,
    ):
        """``logged_through``: the last round the run's tracking history already holds (a resumed run's
        rounds up to there are run again from the checkpoint but not logged again, see :meth:`run`).
        ``on_round(round, scalars)``: after each round (a sweep's progress display). ``backend``: where
        clients train (default: the spec's ``execution.backend``); :meth:`run` starts and closes it.
        ``deadline``: a ``time.time()`` after which the run stops at a round's end, with a checkpoint of
        that round (:mod:`fedreg.timelimit`)."""
        self.rs, self.spec, self.fed = rs, rs.spec, fed
        self.checkpoint_file, self.resume = checkpoint_file, resume
        self.logged_through = logged_through
        self.env_parts: list[dict] = []  # the environments the run computed in (fedreg.environment.extend)
        self.on_round, self.deadline = on_round, deadline
        self.backend = backend
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
        self.figures = figures_of(type(m) for m in self.metrics)  # how their scalars read
        self.names = MetricNames(self.figures)  # their names in MLflow
        self.constants = {f.key for f in self.figures if f.constant}  # logged once, as tags
        self.constants_logged: dict[str, float] = {}
        needs = set().union(*(m.requires for m in self.metrics)) if self.metrics else set()
        self.infos = fed.infos()
        self.per_client_rows: list[dict[str, Any]] = []
        self.failure_rows: list[dict[str, Any]] = []
        self.config = TrainingConfig.from_spec(self.spec, fed.dataset.num_classes, LOCAL in needs)
        # clients are index sets into the dataset's tensors: a client's tensors are gathered when it trains
        self.runner = ClientRunner(self.config, self.build_model, fed.client_tensors)
        kind = type(backend) if backend else backend_class(self.spec.execution.backend)
        at_sites = kind.predictions_at_sites
        role = self.objective.local_model_role
        self.evaluator = Evaluator(fed, self.metrics, self.spec, self.runner, role, at_sites)
        self.eval_x, self.eval_y = self.evaluator.eval_x, self.evaluator.eval_y

    # -- models ----------------------------------------------------------------------------------------
    def initial_state(self) -> RunState:
        return RunState(round=0, global_state=initial_weights(self.spec.seed, self.build_model))

    def evaluated_state(self, st: RunState) -> StateDict:
        """The weights evaluated as the global model after round ``st.round``: the aggregator's
        ``evaluated_state`` where it names other weights than those it sends (FedDyn's reported models),
        else the global weights."""
        r = st.round
        chosen = call(self.aggregator, "evaluated_state", r, None, r, st.global_state)
        if chosen is None:
            return st.global_state
        return check_state(chosen, st.global_state, describe(self.aggregator), "evaluated_state")

    def lr_at(self, r: int) -> float:
        """Learning rate of round ``r`` (1-based): lr * gamma ** ((r - 1) // step_rounds)."""
        t = self.spec.training
        return t.optimizer.lr * t.lr_schedule.gamma ** ((r - 1) // t.lr_schedule.step_rounds)

    # -- one round ---------------------------------------------------------------------------------------
    def run_round(self, st: RunState, backend: Backend, eval_model) -> dict[str, float]:
        r = st.round + 1  # rounds are numbered from 1, as MLflow steps
        spec = self.spec
        chosen = select_clients(self.selector, r, self.infos, spec.federation.clients_per_round, spec.seed)
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
                {"round": r, "client": cid, "metric": TRAIN_LOSS, "value": update.train_loss}
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
            TRAIN_LOSS: float(np.mean([u.train_loss for u in updates])),
            "lr": lr,
            "clients_ok": float(len(updates)),
            "clients_failed": float(len(failures)),
        }
        if evaluated(r, spec.evaluation.every, spec.federation.rounds):
            chosen_state = self.evaluated_state(st)
            eval_model.load_state_dict(chosen_state)
            ev_ = self.evaluator
            with self.config.autocast():
                ev, sites = ev_.evaluate(r, chosen, eval_model, local_preds, backend, chosen_state)
            if r == spec.federation.rounds and ev_.need_final_local:
                rin = RoundInput(r, chosen_state, {}, self.objective, self.aggregator)
                ev_.final_local(ev, sites, backend, rin, st.client_states, lr)
            ev_.update(ev, sites, scalars, self.per_client_rows)
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

    def evaluate(self, r: int, chosen, eval_model, local_preds):
        """Round ``r``'s evaluation of ``eval_model`` (see :meth:`Evaluator.evaluate`)."""
        return self.evaluator.evaluate(r, chosen, eval_model, local_preds)[0]

    # -- checkpoints -------------------------------------------------------------------------------------
    def components(self) -> dict[str, Any]:
        return {
            "selection": self.selector,
            "objective": self.objective,
            "aggregation": self.aggregator,
            **{f"metric.{m.name}": m for m in self.metrics},
        }

    def save_checkpoint(self, st: RunState, elapsed: float, cpu: float | None, backend: Backend) -> None:
        assert self.checkpoint_file is not None, "checkpoints are saved only when checkpointing is on"
        checkpoint.save_run(
            self.checkpoint_file,
            self.rs.resolved_dict(),
            {
                "run_id": self.run_id,
                "variant": self.rs.variant,
                "round": st.round,
                "finished": st.round >= self.spec.federation.rounds,
                "global_state": st.global_state,
                "client_states": backend.client_states(st.client_states),
                "history": st.history,
                "components": {
                    k: call(c, "state_dict", st.round, None) for k, c in self.components().items()
                },
                "site_metrics": self.evaluator.site.state_dict(),
                "per_client_rows": self.per_client_rows,
                "failure_rows": self.failure_rows,
                "elapsed_s": elapsed,
                "environments": self.env_parts,
                **({"cpu_s": cpu} if cpu is not None else {}),
            },
        )

    def restore(self, ck: dict[str, Any]) -> RunState:
        for key, comp in self.components().items():
            call(comp, "load_state_dict", ck["round"], None, ck["components"].get(key, {}))
        self.evaluator.site.load_state_dict(ck.get("site_metrics", {}))
        self.per_client_rows = list(ck["per_client_rows"])
        self.failure_rows = list(ck["failure_rows"])
        checkpoint.restore_rng_states(ck["rng"])
        return RunState(
            round=ck["round"],
            global_state=ck["global_state"],
            client_states=ck["client_states"],
            history=list(ck["history"]),
        )

    def log_round(self, r: int, scalars: dict[str, float]) -> None:
        """One round's metrics; a constant figure's value is a run tag, written when it is first seen (or
        changes), not a metric."""
        consts = {k: v for k, v in scalars.items() if k in self.constants}
        changed = {k: v for k, v in consts.items() if self.constants_logged.get(k) != v}
        if changed:
            self.tracker.set_tags(self.run_id, {f"fedreg.constant.{k}": f"{v:g}" for k, v in changed.items()})
            self.constants_logged.update(changed)
        per_round = {k: v for k, v in scalars.items() if k not in self.constants}
        self.tracker.log_metrics(self.run_id, self.names.per_round(per_round), step=r)

    # -- whole run ---------------------------------------------------------------------------------------
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
        self.info = info  # also for the backend (Backend.prepare)
        return self.restore(self.resume) if self.resume is not None else self.initial_state()

    def run(self) -> RunResult:
        spec = self.spec
        t0, started = time.perf_counter(), time.process_time()
        c0: float | None = started  # None where the run's CPU time is unknown
        st = self.start()
        if self.resume is not None:
            t0 -= float(self.resume["elapsed_s"])
            # a checkpoint of a fedreg that did not measure CPU time: the run's CPU time stays unknown
            c0 = started - float(self.resume["cpu_s"]) if "cpu_s" in self.resume else None

        def cpu() -> float | None:  # this process's CPU time (all threads) in the run, resumed parts included
            return None if c0 is None else time.process_time() - c0

        every = spec.checkpoint.every if self.checkpoint_file is not None else 0
        threads_before = torch.get_num_threads()
        if spec.execution.threads:
            torch.set_num_threads(spec.execution.threads)
        here = environment.current(self.runner.device)  # after the threads are set: they are recorded
        self.env_parts = environment.extend((self.resume or {}).get("environments", []), st.round, here)
        self.tracker.set_tags(self.run_id, environment.tags(self.env_parts))
        eval_model = self.runner.new_model()
        fl, ex = spec.federation, spec.execution
        backend = self.backend or backend_class(ex.backend)(ex, self.runner, fl.clients_per_round)
        backend.prepare(self.run_id, self.rs, self.info)
        backend.start()
        if self.resume is not None:  # a backend that keeps the clients' states gets them back
            backend.restore_client_states(st.client_states)
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
                if (used := cpu()) is not None:
                    scalars["cpu_s"] = used
                st.history.append({"round": st.round, **scalars})
                # a resumed run re-runs the rounds after its checkpoint; those its history already holds
                # (logged before the interruption) are not logged twice: each step is recorded once
                if st.round > self.logged_through:
                    self.log_round(st.round, scalars)
                if every and (st.round % every == 0 or st.round == spec.federation.rounds):
                    self.save_checkpoint(st, time.perf_counter() - t0, cpu(), backend)
                bar.update(1)
                shown: dict[str, str] = {
                    k: f"{scalars[k]:.4f}" for k in progress_keys(self.figures) if k in scalars
                }
                if shown:
                    bar.set_postfix(shown)
                if self.on_round is not None:
                    self.on_round(st.round, scalars)
                if past(self.deadline) and st.round < spec.federation.rounds:
                    if self.checkpoint_file is not None and not (every and st.round % every == 0):
                        self.save_checkpoint(st, time.perf_counter() - t0, cpu(), backend)
                    raise TimeLimitReached(st.round)
        finally:
            bar.close()
            backend.close()
            torch.set_num_threads(threads_before)
        wall = time.perf_counter() - t0
        final = summarize(st.history)
        final["wall_time_s"] = wall
        if (used := cpu()) is not None:
            final["cpu_time_s"] = used
        evaluated = sum(1 for h in st.history if any(f.key in h for f in self.figures))
        self.tracker.log_metrics(
            self.run_id, self.names.summary(final, self.figures, evaluated or None), step=0
        )
        log_run_outputs(
            self.tracker,
            self.run_id,
            self.label,
            st.history,
            self.evaluated_state(st),
            self.per_client_rows,
            self.failure_rows,
            log_model=self.spec.tracking.log_model,
            figures=self.figures,
        )
        return RunResult(
            self.run_id, self.rs.variant, final, st.history, wall, st.global_state, st.client_states
        )
