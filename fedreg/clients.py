"""How a round's clients train: the per-client code and the execution backends' interface.

A backend receives the round's client jobs and returns one :class:`ClientResult` per job, in job order.
Failures are data (``ClientResult.failure``), never exceptions: the round loop applies the spec's fault
policy. Every backend runs the same per-client code, :class:`ClientRunner`; they differ in where and how
many clients train at once: ``local`` (one after another in this process), ``ray`` (on Ray actors,
:mod:`fedreg.backends.ray_backend`), ``vectorized`` (in lock-step with ``torch.func``), a plugin's.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedreg import seeding
from fedreg.components import (
    Aggregator,
    ClientUpdate,
    LocalContext,
    NonFiniteLoss,
    Objective,
    Predictions,
    SiteSummary,
    StateDict,
    TrainOutput,
    clone_state,
)
from fedreg.devices import check_device, to_device
from fedreg.errors import ComponentFailure, PluginError, call_component, describe
from fedreg.evaluation import call, non_finite_key, predict
from fedreg.site import evaluated

if TYPE_CHECKING:
    from collections.abc import Iterable

    from fedreg.components import RunInfo
    from fedreg.spec import ResolvedSpec, RunSpec


@dataclass
class ClientJob:
    """One client's work in one round."""

    round: int
    cid: int
    lr: float
    state: dict[str, Any]  # the client's persistent state (a copy: committed only if the client succeeds)


@dataclass
class RoundInput:
    """What every client of a round receives."""

    round: int
    global_state: StateDict
    broadcast: dict[str, Any]
    objective: Objective
    aggregator: Aggregator


@dataclass
class ClientResult:
    cid: int
    update: ClientUpdate | None = None
    #: the trained client's model on its local test set (its site summary where predictions stay at sites)
    local_eval: Predictions | SiteSummary | None = None
    state: dict[str, Any] = field(default_factory=dict)
    failure: ComponentFailure | None = None


@dataclass
class TrainingConfig:
    """The run's fixed training settings, shipped once to wherever clients train."""

    seed: int
    epochs: int
    batch_size: int
    momentum: float
    weight_decay: float
    nesterov: bool
    num_classes: int
    eval_local: bool
    eval_batch_size: int
    precision: str = "fp32"
    device: str = "cpu"  # where clients train; results come back to the CPU
    eval_every: int = 1  # evaluation.every: clients evaluate locally only in the rounds that are evaluated
    rounds: int = 0  # federation.rounds (the last round is always evaluated)

    @classmethod
    def from_spec(cls, spec: RunSpec, num_classes: int, eval_local: bool) -> TrainingConfig:
        """The settings of ``spec`` (a validated run spec), its device checked against this machine."""
        t, o = spec.training, spec.training.optimizer
        return cls(
            seed=spec.seed,
            epochs=t.local_epochs,
            batch_size=t.batch_size,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.nesterov,
            num_classes=num_classes,
            eval_local=eval_local,
            eval_batch_size=spec.evaluation.batch_size,
            precision=t.precision,
            device=check_device(spec.execution.device),
            eval_every=spec.evaluation.every,
            rounds=spec.federation.rounds,
        )

    def make_optimizer_factory(self, lr: float):
        def make(params, **overrides):
            """SGD at ``lr`` with the spec's settings; ``overrides`` (``lr``, ``momentum``,
            ``weight_decay``, ``nesterov``) replace them for a method's own optimizer (FedBABU's
            fine-tuning)."""
            unknown = set(overrides) - {"lr", "momentum", "weight_decay", "nesterov"}
            if unknown:
                raise TypeError(f"make_optimizer got unknown settings {sorted(unknown)}")
            s: dict[str, Any] = {"lr": lr, "momentum": self.momentum, "weight_decay": self.weight_decay}
            s |= {"nesterov": self.nesterov} | overrides
            return sgd(params, s["lr"], s["momentum"], s["weight_decay"], bool(s["nesterov"]))

        return make

    def autocast(self):
        """bf16 autocast when the spec asks for it (changed numerics, faster on CPUs with bf16 units)."""
        if self.precision == "bf16":
            # the region spans whole local training, where the optimizer updates weights in place: autocast's
            # cache of cast weights would go stale after the first step, so it is off
            return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()


#: devices whose fused SGD kernel torch has
FUSED_SGD_DEVICES = ("cpu", "cuda")


def sgd(params, lr: float, momentum: float, weight_decay: float, nesterov: bool) -> torch.optim.SGD:
    """Clients' SGD. Torch's fused kernel where the parameters allow it: one pass over each tensor for weight
    decay, momentum and the update instead of three or four (about 1.4x faster steps of the reference network
    at one thread); its results are bit for bit those of the default per-tensor loop
    (tests/test_optimizer.py)."""
    params = list(params)
    tensors = [t for g in params for t in (g["params"] if isinstance(g, dict) else [g])]  # tensors or groups
    fused = bool(tensors) and all(
        isinstance(t, torch.Tensor)
        and t.is_floating_point()
        and t.device.type in FUSED_SGD_DEVICES
        and not t.is_sparse
        for t in tensors
    )
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, fused=fused or None
    )


@dataclass
class ModelBuilder:
    """Builds a fresh model for the run's dataset (picklable, so workers can build their own)."""

    factory: Any  # the spec's Model component
    in_channels: int
    num_classes: int
    image_size: int

    def __call__(self) -> nn.Module:
        m = self.factory.build(self.in_channels, self.num_classes, self.image_size)
        return m.to(memory_format=torch.channels_last)


def initial_weights(seed: int, build_model: ModelBuilder) -> StateDict:
    """The run's initial global weights: the spec's model built under a torch seed drawn from the run's
    ``MODEL_INIT`` stream (the caller's torch random state is left as it was). The server starts from
    them, and any client can compute them alone (``LocalContext.initial_state``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seeding.rng(seed, seeding.MODEL_INIT).integers(2**62)))
        model = build_model()
    return clone_state(model.state_dict())


class ClientRunner:
    """The per-client code every backend runs: build the client's context, train it with the objective,
    then report (aggregator), evaluate locally and package the update."""

    def __init__(self, config: TrainingConfig, build_model: ModelBuilder, tensors):
        self.config = config
        self.build_model = build_model  # () -> a fresh model (channels_last)
        self.tensors = tensors  # cid -> (train_x, train_y, test_x, test_y), e.g. FederatedData.client_tensors
        self._work_model: nn.Module | None = None
        self._initial: StateDict | None = None

    def __getstate__(self):
        return {**self.__dict__, "_work_model": None, "_initial": None}  # workers build their own

    def initial_state(self) -> StateDict:
        """The run's initial weights on this runner's device, computed once per process."""
        if self._initial is None:
            self._initial = to_device(initial_weights(self.config.seed, self.build_model), self.device)
        return self._initial

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def new_model(self) -> nn.Module:
        return self.build_model().to(self.device)

    @property
    def work_model(self) -> nn.Module:
        if self._work_model is None:
            self._work_model = self.new_model()
        return self._work_model

    def context(self, job: ClientJob, rin: RoundInput, model: nn.Module) -> LocalContext:
        """The client's context; off the CPU, with its data, weights and state moved to the device."""
        c = self.config
        tensors, global_state, state, broadcast = (
            self.tensors(job.cid),
            rin.global_state,
            job.state,
            rin.broadcast,
        )
        if not self.on_cpu:
            tensors, global_state, state, broadcast = to_device(
                (tensors, global_state, state, broadcast), self.device
            )
        train_x, train_y, test_x, test_y = tensors
        return LocalContext(
            round=job.round,
            client_id=job.cid,
            model=model,
            global_state=global_state,
            train_x=train_x,
            train_y=train_y,
            test_x=test_x,
            test_y=test_y,
            num_classes=c.num_classes,
            epochs=c.epochs,
            batch_size=c.batch_size,
            lr=job.lr,
            make_optimizer=c.make_optimizer_factory(job.lr),
            generator=seeding.torch_generator(c.seed, seeding.CLIENT_SHUFFLE, job.round - 1, job.cid),
            state=state,
            broadcast=broadcast,
            build_model=self.new_model,
            momentum=c.momentum,
            weight_decay=c.weight_decay,
            load_initial=self.initial_state,
        )

    def run(self, job: ClientJob, rin: RoundInput) -> ClientResult:
        """Train one client; a failing component becomes ``ClientResult.failure``."""
        model = self.work_model
        model.load_state_dict(rin.global_state)
        ctx = self.context(job, rin, model)
        try:
            with self.config.autocast():
                out = call_train(rin.objective, ctx)
            return self.finish(ctx, rin, out)
        except ComponentFailure as exc:
            return ClientResult(job.cid, failure=exc)

    def final_eval(self, cid: int, rin: RoundInput, state: dict[str, Any], lr: float) -> Predictions | None:
        """After the last round, without training: ``Objective.eval_model`` of a context holding the final
        global weights (``rin.global_state``) and the client's state, on its local test set (None when that
        set is empty). Its batches come from the client's own ``FINAL_EVAL`` stream."""
        model = self.work_model
        model.load_state_dict(rin.global_state)
        ctx = self.context(ClientJob(rin.round, cid, lr, dict(state)), rin, model)
        if not len(ctx.test_y):
            return None
        ctx.final = True
        ctx.generator = seeding.torch_generator(self.config.seed, seeding.FINAL_EVAL, cid)
        with self.config.autocast():
            chosen = call(rin.objective, "eval_model", rin.round, cid, ctx)
            preds = predict(chosen, ctx.test_x, ctx.test_y, self.config.eval_batch_size)
        return preds if self.on_cpu else preds.to("cpu")

    def finish(self, ctx: LocalContext, rin: RoundInput, out: TrainOutput) -> ClientResult:
        """After training (``ctx.model`` holds the trained weights): check, report, evaluate, package."""
        r, cid = ctx.round, ctx.client_id
        if not math.isfinite(out.loss):
            raise ComponentFailure(rin.objective, "train", r, cid, NonFiniteLoss(f"mean loss is {out.loss}"))
        bad = non_finite_key(ctx.model.state_dict())
        if bad is not None:
            raise ComponentFailure(
                rin.objective,
                "train",
                r,
                cid,
                NonFiniteLoss(f"the trained weights hold NaN or Inf in '{bad}'"),
            )
        ctx.train_loss = float(out.loss)  # what client_report may read besides the trained model
        report = call(rin.aggregator, "client_report", r, cid, ctx, ctx.model) or {}
        if not isinstance(report, dict) or not all(isinstance(v, int | float) for v in report.values()):
            raise PluginError(
                f"{describe(rin.aggregator)}: client_report must return a dict of numbers, "
                f"got {report!r} (round {r}, client {cid})"
            )
        local_eval = None
        cfg = self.config
        if cfg.eval_local and len(ctx.test_y) and evaluated(r, cfg.eval_every, cfg.rounds):
            model = call(rin.objective, "eval_model", r, cid, ctx)
            with cfg.autocast():
                local_eval = predict(model, ctx.test_x, ctx.test_y, cfg.eval_batch_size)
        update = ClientUpdate(
            client_id=cid,
            num_samples=ctx.num_samples,
            state=clone_state(ctx.model.state_dict()),
            report={k: float(v) for k, v in report.items()},
            payload=out.payload,
            train_loss=float(out.loss),
        )
        result = ClientResult(cid, update=update, local_eval=local_eval, state=ctx.state)
        if not self.on_cpu:
            update.state, update.payload, result.state = to_device(
                (update.state, update.payload, result.state), "cpu"
            )
            if local_eval is not None:
                result.local_eval = local_eval.to("cpu")
        return result


def call_train(objective: Objective, ctx: LocalContext) -> TrainOutput:
    return call_component(objective, "train", ctx.round, ctx.client_id, ctx)


class Backend:
    """Where a round's clients train. ``start`` once per run, ``train`` once per round, ``close`` at the
    end."""

    name = "local"
    #: whether the clients' predictions stay where they train (their sites): then the backend returns
    #: :class:`~fedreg.components.SiteSummary` numbers instead of predictions, and evaluates the global model
    #: on the clients' local test sets itself (:meth:`global_on_local`)
    predictions_at_sites = False

    def __init__(self, execution, runner: ClientRunner, clients_per_round: int):
        self.execution = execution  # the spec's ExecutionSpec
        self.runner = runner
        self.clients_per_round = clients_per_round

    def prepare(self, run_id: str, rs: ResolvedSpec, info: RunInfo) -> None:
        """Before :meth:`start`: the run's tracking id, its resolved spec and the facts every component's
        ``start_run`` received. A backend whose clients train in another program (Flower's ClientApps)
        sends them what they need from these; the default ignores them."""

    def start(self) -> None:
        """Prepare once per run (start workers, ship data)."""

    def train(self, jobs: list[ClientJob], rin: RoundInput) -> list[ClientResult]:
        raise NotImplementedError

    def final_eval(
        self, cids: Iterable[int], rin: RoundInput, states: dict[int, dict[str, Any]], lr: float
    ) -> dict[int, Predictions | SiteSummary]:
        """After the last round, without training: each client's end-of-run model (``Objective.eval_model``
        from the final global weights ``rin.global_state`` and the client's state in ``states``) on its
        local test set; a client whose set is empty is left out. Default: :meth:`ClientRunner.final_eval`
        in this process, one client after another. A backend that keeps the clients' states where they
        train evaluates there."""
        preds = {cid: self.runner.final_eval(cid, rin, states.get(cid, {}), lr) for cid in cids}
        return {cid: p for cid, p in preds.items() if p is not None}

    def global_on_local(self, round: int, evaluated: StateDict) -> dict[int, SiteSummary]:
        """A backend whose predictions stay at the sites (:attr:`predictions_at_sites`): the evaluated
        global weights of round ``round`` on every client's local test set, summarised there by the metrics'
        site parts (``GLOBAL_ON_LOCAL``); a client with an empty set may be left out."""
        raise NotImplementedError(
            f"the {self.name} backend leaves the clients' local test sets to the server"
        )

    def client_states(self, held: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """The clients' states for a checkpoint: ``held``, those the round loop holds, unless this backend
        keeps them where clients train (then it gathers them)."""
        return held

    def restore_client_states(self, states: dict[int, dict[str, Any]]) -> None:
        """A resumed run's client states from its checkpoint, for a backend that keeps them where clients
        train (called after :meth:`start`); the default keeps none."""

    def close(self) -> None:
        """Release what ``start`` acquired."""


class LocalBackend(Backend):
    """Clients one after another in this process, reusing one work model."""

    name = "local"

    def train(self, jobs, rin):
        return [self.runner.run(job, rin) for job in jobs]
