"""Component contracts: the base classes plugins subclass and register by name.

A component is a class with a unique ``name`` within its ``kind``, a pydantic ``Params`` model for its
parameters (unknown keys rejected), and the methods of its kind's contract. Math belongs in plain
functions that these methods call; the methods stay thin.

State is explicit: server-side state lives on the aggregator (``state_dict``), per-client state lives in
``LocalContext.state`` (kept by the runtime for the clients that have it), metric state lives on the
metric (``state_dict``). All of it is tensors, numbers, strings, lists and dicts, so a run is checkpointable.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from fedreg import seeding
from fedreg.errors import ComponentFailure, FedregError, call_component

StateDict = dict[str, torch.Tensor]


class Params(BaseModel):
    """Base of every component's parameter model: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: :class:`Params` under a name that the ``Component.Params`` class attribute does not hide: inside a
#: component's class body, ``Params`` in an annotation means that attribute, which is not a type.
_BaseParams = Params


class Component:
    """Base of every component. Subclasses set ``name`` and may override ``Params``."""

    #: The kind of component, its registration hook and where a spec names it: declared once, on the kind's
    #: base class below; the registry, the spec paths and ``KIND_BASES`` derive from these.
    kind: ClassVar[str] = ""
    hook: ClassVar[str] = ""
    spec_path: ClassVar[tuple[str, ...]] = ()  # () for metrics, which a spec lists under ``metrics``
    name: ClassVar[str] = ""
    Params: ClassVar[type[Params]] = Params
    #: Highest fedreg plugin-contract version this component was written against (see HOOK_API_VERSION).
    api_version: ClassVar[int] = 1
    #: Methods of the kind's contract; ``fedreg plugins`` lists those a component overrides.
    contract: ClassVar[tuple[str, ...]] = ()
    #: Set by the registry on instances: "plugin 'p', distribution version" (for error messages).
    origin: str = ""

    def __init__(self, params: _BaseParams | None = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return " ".join(doc.split("\n\n")[0].split()) if doc else ""

    @classmethod
    def implemented_hooks(cls) -> list[str]:
        """The contract methods this class (or a plugin base class of it) defines itself."""
        base = KIND_BASES[cls.kind]
        found = []
        for method in cls.contract:
            for klass in cls.__mro__:
                if klass is base or klass is Component:
                    break
                if method in vars(klass):
                    found.append(method)
                    break
        return found

    @classmethod
    def check_spec(cls, params: _BaseParams, spec: Any) -> list[str]:
        """Cross-field checks against the whole run spec (a :class:`fedreg.spec.RunSpec`), run when the spec
        is validated, before any data is loaded: return one message per problem (name the fix), or ``[]``.
        Example: an aggregator that needs a minimum number of clients per round."""
        return []

    def start_run(self, run: RunInfo) -> None:
        """Called once before the first round with facts about the federation (number of clients, their
        sizes and label counts, clients per round, rounds). Default: nothing."""

    # Checkpointable state (server side and metric state). Default: stateless.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.kind} '{self.name}' is stateless but was given state {sorted(state)}")


@dataclass(frozen=True)
class ClientInfo:
    client_id: int
    num_train: int
    num_test: int
    label_counts: tuple[int, ...]


@dataclass(frozen=True)
class RunInfo:
    """Facts about the federation, given to every component's ``start_run``."""

    clients: tuple[ClientInfo, ...]
    num_classes: int
    clients_per_round: int
    rounds: int
    seed: int

    @property
    def num_clients(self) -> int:
        return len(self.clients)


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DatasetTensors:
    """A whole dataset held once in memory as tensors; clients are index sets into it.

    ``train_x``/``test_x`` are float32 ``(N, C, H, W)`` (normalised), ``train_y``/``test_y`` int64 ``(N,)``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str] = field(default_factory=list)
    checksum: str = ""
    source: str = ""


class Dataset(Component):
    """A dataset: loads the official train and test splits as tensors."""

    kind = "dataset"
    hook = "fedreg_register_datasets"
    spec_path = ("data", "dataset")
    contract = ("check_spec", "load")

    def load(self, root: str | None, download: bool, size: int) -> DatasetTensors:
        raise NotImplementedError


class Partition(Component):
    """Splits training labels into one index array per client."""

    kind = "partition"
    hook = "fedreg_register_partitions"
    spec_path = ("data", "partition")
    contract = ("check_spec", "split", "random_streams")

    def split(
        self, labels: np.ndarray, num_clients: int, num_classes: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """Return ``num_clients`` disjoint index arrays whose union is ``range(len(labels))``. The order of
        each array is kept when the local test set is carved from it (a rule that draws with
        ``rng.choice`` picks by position)."""
        raise NotImplementedError

    def random_streams(self, seed: int) -> tuple[Any, Any]:
        """The random sources of ``split`` and of carving each client's local test set, derived from the
        run's seed. Default: two independent ``numpy.random.Generator`` streams. A partition that must
        reproduce code drawing both from one sequence (NumPy's legacy global generator, say) returns the
        same ``numpy.random.RandomState`` twice; the local-test rules use only methods both types have."""
        return seeding.rng(seed, seeding.PARTITION), seeding.rng(seed, seeding.LOCAL_TEST)


class Model(Component):
    """A model factory."""

    kind = "model"
    hook = "fedreg_register_models"
    spec_path = ("model",)
    contract = ("check_spec", "build")

    def build(self, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------------------


class Selector(Component):
    """Picks the clients of a round."""

    kind = "selection"
    hook = "fedreg_register_selectors"
    spec_path = ("federation", "selection")
    contract = ("check_spec", "start_run", "select")

    def select(
        self, round: int, clients: Sequence[ClientInfo], k: int, rng: np.random.Generator
    ) -> list[int]:
        """Return ``k`` distinct client ids. ``rng`` is the run's sampling stream for this round: it
        depends only on the seed and the round, never on the method being run."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------
# Local training
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LocalContext:
    """Everything a client's local training may use. Built by the runtime for each client and round."""

    round: int
    client_id: int
    model: nn.Module  # loaded with the global weights; train it in place
    global_state: StateDict  # the weights the client received (do not modify)
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    epochs: int
    batch_size: int
    lr: float  # this round's learning rate
    make_optimizer: Callable[..., torch.optim.Optimizer]
    generator: torch.Generator  # this client's and round's shuffling stream
    state: dict[str, Any]  # this client's persistent state for the run (empty the first time)
    broadcast: dict[str, Any]  # server-to-client extras from Aggregator.broadcast
    build_model: Callable[[], nn.Module]
    momentum: float = (
        0.0  # the optimizer's momentum (methods whose math assumes plain SGD may correct for it)
    )
    _global_model: nn.Module | None = None
    _functional: FunctionalContext | None = None

    @property
    def num_samples(self) -> int:
        return int(self.train_y.shape[0])

    def global_model(self) -> nn.Module:
        """A frozen copy of the model the client received (built on first use, in eval mode)."""
        if self._global_model is None:
            m = self.build_model()
            m.load_state_dict(self.global_state)
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
            self._global_model = m
        return self._global_model

    def functional(self) -> FunctionalContext:
        """This client's :class:`FunctionalContext` for ``functional_loss`` in the local loop (built once):
        the received parameters of ``model``, and the frozen :meth:`global_model` as the teacher."""
        if self._functional is None:
            teacher = self.global_model()

            def run_teacher(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return teacher(x)

            self._functional = FunctionalContext(
                round=self.round,
                num_classes=self.num_classes,
                lr=self.lr,
                global_params={n: self.global_state[n] for n, _ in self.model.named_parameters()},
                broadcast=self.broadcast,
                teacher=run_teacher,
            )
        return self._functional

    def epoch_order(self) -> torch.Tensor:
        """One epoch's shuffled order of the training samples (one draw from ``generator``)."""
        return torch.randperm(self.num_samples, generator=self.generator)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled mini-batches of the client's training data (last batch may be short)."""
        n = self.num_samples
        order = self.epoch_order()
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.train_x[idx], self.train_y[idx]


@dataclass
class TrainOutput:
    """What an objective returns from ``train``."""

    loss: float  # mean training loss over all batches
    steps: int
    payload: dict[str, Any] = field(default_factory=dict)  # extras for the aggregator (e.g. control deltas)


class NonFiniteLoss(ArithmeticError):
    """A local objective produced a NaN or Inf loss."""


@dataclass(frozen=True)
class FunctionalContext:
    """What ``Objective.functional_loss`` may use besides the batch: the same for every client of a round
    on the ``vectorized`` backend, one per client in the local loop (:meth:`LocalContext.functional`)."""

    round: int
    num_classes: int
    lr: float  # this round's learning rate
    global_params: dict[str, torch.Tensor]  # the received model's parameters by name (do not modify)
    broadcast: dict[str, Any]  # server-to-client extras from Aggregator.broadcast (read only)
    #: ``teacher(x)``: the received (global) model's output for ``x``, without gradient
    teacher: Callable[[torch.Tensor], torch.Tensor]


class Objective(Component):
    """A local objective: how a client trains the model it received.

    Write its loss once, in one of two forms:

    - ``functional_loss(forward, params, x, y, weight, fctx)``, a pure function of the parameters. It
      serves every backend: the local loop calls it on the module's own parameters with ``weight=None``
      (every sample real), the ``vectorized`` backend under ``torch.func`` with a padding mask. Such an
      objective must not rely on ``setup``, ``before_step``, ``finish``, ``train``, attributes set on
      ``self`` or ``ctx.state``: it is vectorizable iff it defines ``functional_loss`` and none of them.
    - ``loss(model, x, y, ctx)``, imperative, with the hooks ``setup``, ``before_step``, ``finish`` (for
      example a gradient correction): the ``local`` and ``ray`` backends only.
    """

    kind = "objective"
    hook = "fedreg_register_objectives"
    spec_path = ("training", "objective")
    contract = (
        "check_spec",
        "start_run",
        "setup",
        "loss",
        "before_step",
        "finish",
        "train",
        "eval_model",
        "functional_loss",
    )
    #: which model ``eval_model`` returns, recorded with local metrics: "local" (the trained copy of the
    #: global model) or "personal" (a model of the client's own, e.g. Ditto, FedPer, APFL, local-only)
    local_model_role: ClassVar[str] = "local"

    def setup(self, ctx: LocalContext) -> None:
        """Runs before the first batch (e.g. build the frozen global model, load client state)."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        """The scalar loss for one batch. By default ``functional_loss`` on ``model``'s own parameters
        with ``weight=None``; override it only for an imperative objective."""
        if type(self).functional_loss is Objective.functional_loss:
            raise NotImplementedError(f"{type(self).__name__} defines neither loss nor functional_loss")
        own = dict(model.named_parameters())

        def forward(params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
            if params is not own:
                raise FedregError(
                    "in the local loop functional_loss's forward runs the client's own parameters only; "
                    "use fctx.teacher(x) for the received model"
                )
            return model(inputs)

        return self.functional_loss(forward, own, x, y, None, ctx.functional())

    def before_step(self, ctx: LocalContext) -> None:
        """Runs after ``backward`` and before the optimizer step (e.g. gradient corrections)."""

    def finish(self, ctx: LocalContext) -> dict[str, Any]:
        """Runs after the last step; returns the payload sent to the aggregator with the weights."""
        return {}

    def eval_model(self, ctx: LocalContext) -> nn.Module:
        """The model whose local accuracy this client reports (personalised methods return their own)."""
        return ctx.model

    def functional_loss(
        self,
        forward: Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor],
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor | None,
        fctx: FunctionalContext,
    ) -> torch.Tensor:
        """The scalar loss for one batch as a pure function of ``params`` (see the class docstring).

        ``forward(params, x)`` runs the model with the given parameters; ``params`` are the client's current
        parameters by name; ``x, y`` the batch; ``weight`` a float per-sample mask (1 a real sample, 0
        padding of a short batch) on the ``vectorized`` backend, or None in the local loop. Reduce
        per-sample terms with :func:`fedreg.losses.sample_mean` (or :func:`fedreg.losses.cross_entropy`),
        so padding changes nothing; ``fctx.teacher(x)`` is the received model's output. It runs under
        ``torch.func.vmap`` and ``grad``: no Python control flow on tensor values, no ``.item()`` or
        ``float()`` of tensors, no in-place changes of the inputs."""
        raise NotImplementedError

    @classmethod
    def vectorizable(cls) -> bool:
        """Whether the ``vectorized`` backend can train this objective: it defines ``functional_loss`` and
        none of the imperative methods (``loss``, ``setup``, ``before_step``, ``finish``, ``train``)."""
        if cls.functional_loss is Objective.functional_loss:
            return False
        return all(getattr(cls, m) is getattr(Objective, m) for m in IMPERATIVE_METHODS)

    def train(self, ctx: LocalContext) -> TrainOutput:
        """The local training loop: ``setup``, then ``run_epochs`` (per batch ``loss``, backward,
        ``before_step``, optimizer step), then ``finish``. Override it only when the loop itself differs
        (e.g. two models, two phases); reuse ``run_epochs`` and ``call`` there."""
        ctx.model.train()
        self.call("setup", ctx, ctx)
        total, steps = self.run_epochs(ctx, ctx.model)
        payload = self.call("finish", ctx, ctx) or {}
        return TrainOutput(loss=total / max(steps, 1), steps=steps, payload=payload)

    def run_epochs(
        self,
        ctx: LocalContext,
        model: nn.Module,
        params: Iterable[torch.Tensor] | None = None,
        epochs: int | None = None,
        loss_method: str = "loss",
        lr: float | None = None,
    ) -> tuple[float, int]:
        """The one local-training loop: ``epochs`` (default ``ctx.epochs``) passes over ``ctx.batches()``;
        per batch the method ``loss_method`` (called as ``loss(model, x, y, ctx)``), backward,
        ``before_step``, an optimizer step over ``params`` (default all of ``model``'s) at ``lr`` (default
        the round's). A failure is named after the method that raised; a non-finite loss is a
        ``NonFiniteLoss`` failure of ``loss_method``. Returns (sum of the batch losses, steps)."""
        opt = ctx.make_optimizer(list(model.parameters() if params is None else params))
        if lr is not None:
            for group in opt.param_groups:
                group["lr"] = lr
        model.train()
        total, steps = 0.0, 0
        for _ in range(ctx.epochs if epochs is None else epochs):
            for x, y in ctx.batches():
                opt.zero_grad(set_to_none=True)
                loss = self.call(loss_method, ctx, model, x, y, ctx)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise ComponentFailure(
                        self,
                        loss_method,
                        ctx.round,
                        ctx.client_id,
                        NonFiniteLoss(f"loss is {value} at step {steps}"),
                    )
                loss.backward()
                self.call("before_step", ctx, ctx)
                opt.step()
                total += value
                steps += 1
        return total, steps

    def call(self, method: str, ctx: LocalContext, *args):
        """Call one of this objective's methods during client training, naming it if it fails."""
        return call_component(self, method, ctx.round, ctx.client_id, *args)


#: the methods of the imperative form of an objective; one of them makes it non-vectorizable
IMPERATIVE_METHODS = ("loss", "setup", "before_step", "finish", "train")


# ---------------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ClientUpdate:
    """One client's result of a round, as the aggregator sees it."""

    client_id: int
    num_samples: int
    state: StateDict  # trained weights
    report: dict[str, float] = field(default_factory=dict)  # from Aggregator.client_report
    payload: dict[str, Any] = field(default_factory=dict)  # from Objective.finish
    train_loss: float = float("nan")


@dataclass
class ClientFailure:
    client_id: int
    stage: str
    error: str


class Aggregator(Component):
    """Server-side aggregation, with optional server state and client-side reporting."""

    kind = "aggregation"
    hook = "fedreg_register_aggregators"
    spec_path = ("federation", "aggregation")
    contract = (
        "check_spec",
        "start_run",
        "broadcast",
        "client_report",
        "aggregate",
        "state_dict",
        "load_state_dict",
    )

    def broadcast(self, round: int, global_state: StateDict) -> dict[str, Any]:
        """Extras sent to every selected client with the global weights (default: none)."""
        return {}

    def client_report(self, ctx: LocalContext, model: nn.Module) -> dict[str, float]:
        """Runs on the client after local training; what it reports with its weights (default: none)."""
        return {}

    def aggregate(
        self, round: int, global_state: StateDict, updates: list[ClientUpdate], failures: list[ClientFailure]
    ) -> StateDict:
        """Return the new global weights (same keys, shapes and dtypes as ``global_state``)."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------
# Evaluation and metrics
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """A model's predictions on one evaluation set."""

    labels: torch.Tensor  # int64 (N,)
    preds: torch.Tensor  # int64 (N,)
    loss: torch.Tensor  # float32 (N,) per-sample cross-entropy

    @property
    def correct(self) -> torch.Tensor:
        return self.preds == self.labels

    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if len(self.labels) else float("nan")

    def balanced_accuracy(self) -> float:
        if not len(self.labels):
            return float("nan")
        recalls = [float(self.correct[self.labels == c].float().mean()) for c in torch.unique(self.labels)]
        return float(np.mean(recalls))


@dataclass
class RoundEvaluation:
    """What metrics see after a round. Fields a metric did not ``require`` may be empty."""

    round: int
    participants: list[int]
    num_classes: int
    global_test: Predictions | None = None
    #: each participant's model (``Objective.eval_model``) on its own local test set
    local: dict[int, Predictions] = field(default_factory=dict)
    #: the new global model on every client's local test set
    global_on_local: dict[int, Predictions] = field(default_factory=dict)
    local_model_role: str = "local"


@dataclass
class MetricResult:
    scalars: dict[str, float] = field(default_factory=dict)
    per_client: dict[int, dict[str, float]] = field(default_factory=dict)


GLOBAL_TEST = "global_test"
LOCAL = "local"
GLOBAL_ON_LOCAL = "global_on_local"


class Metric(Component):
    """A per-round metric. Declares which predictions it needs in ``requires``."""

    kind = "metric"
    hook = "fedreg_register_metrics"
    spec_path = ()
    contract = ("check_spec", "start_run", "update", "state_dict", "load_state_dict")
    requires: ClassVar[frozenset[str]] = frozenset({GLOBAL_TEST})

    def update(self, ev: RoundEvaluation) -> MetricResult:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------
# Methods: named compositions of components
# ---------------------------------------------------------------------------------------------------------


class Method(Component):
    """A method preset: one name in a spec (``method``) that stands for the components of a method and their
    parameters, so a user need not know which objective goes with which aggregation.

    ``parts()`` returns dotted spec paths and the component references to put there, for example
    ``{"training.objective": {"name": "scaffold", "params": {}}, "federation.aggregation": {...}}``. The spec
    is expanded before it is validated; a path the spec (or variant) sets itself keeps the spec's value, so a
    preset's part can be swapped for an ablation. A preset never runs: the components it names do."""

    kind = "method"
    hook = "fedreg_register_methods"
    spec_path = ("method",)
    contract = ("check_spec", "parts")

    def parts(self) -> dict[str, Any]:
        raise NotImplementedError


#: every component kind, by name: the one list of kinds (registry hooks and spec paths derive from it)
KIND_BASES: dict[str, type[Component]] = {
    c.kind: c for c in (Dataset, Partition, Model, Selector, Objective, Aggregator, Metric, Method)
}


def clone_state(state: StateDict) -> StateDict:
    return {k: v.detach().clone() for k, v in state.items()}


def deepcopy_state(obj: Any) -> Any:
    return copy.deepcopy(obj)
