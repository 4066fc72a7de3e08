"""Local training: the objective kind (:class:`Objective`), what a client's training may use
(:class:`LocalContext`, :class:`FunctionalContext`) and what it returns (:class:`TrainOutput`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fedreg.components.base import Component, StateDict
from fedreg.errors import ComponentFailure, FedregError, call_component


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
    weight_decay: float = 0.0  # the optimizer's weight decay (contract version 5)
    #: the mean training loss of this round's local training (``TrainOutput.loss``): set after training,
    #: before ``Aggregator.client_report`` runs (NaN before; contract version 4)
    train_loss: float = float("nan")
    #: True in the end-of-run evaluation (``eval_model`` called once per client after the last round,
    #: without training); False during a round (contract version 5)
    final: bool = False
    #: () -> the run's initial global weights; read it through :meth:`initial_state`
    load_initial: Callable[[], StateDict] | None = None
    _global_model: nn.Module | None = None
    _functional: FunctionalContext | None = None

    @property
    def num_samples(self) -> int:
        return int(self.train_y.shape[0])

    def initial_state(self) -> StateDict:
        """The run's initial global weights (what every client received in round 1; do not modify): derived
        from the spec's seed, so every backend, worker and site computes the same weights. For methods whose
        client-side models start there (Ditto's and APFL's personal models, as in their authors' code)."""
        if self.load_initial is None:
            raise FedregError("this context was built without the run's initial weights (load_initial)")
        return self.load_initial()

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
    #: what the aggregated (global) weights are for this method, recorded as the run tag
    #: ``fedreg.global_model_role``: "global" (a model of the method, ranked by global metrics) or "none"
    #: (not a model the method defines, e.g. a shared body with the initial head, or the initial weights of
    #: local-only training): global metrics are still logged, and reports leave them out of rankings
    global_model_role: ClassVar[str] = "global"

    @classmethod
    def relative_cost(cls, params: Any, spec: Any) -> float:
        """The training work of a client's round per training sample and local epoch, relative to one
        forward and backward pass of the model (plain cross-entropy: 1.0; an extra forward pass of a model
        counts about 1/3, an extra epoch of training 1). Only orders a sweep's children longest first and
        scales its ETA; it never changes a result. ``spec`` is the run spec (a
        :class:`fedreg.spec.RunSpec`). Default 1.0."""
        return 1.0

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
        """The model whose local accuracy this client reports (personalised methods return their own).

        Called after the client's training in a round, and, when a metric requires ``final_local``, once
        per client after the last round without any training: ``ctx.model`` then holds the final global
        weights, ``ctx.state`` the client's state (empty for a client that never trained), ``ctx.broadcast``
        is empty and ``ctx.round`` is the last round. Build the model from those alone."""
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
        optimizer: Mapping[str, Any] | None = None,
    ) -> tuple[float, int]:
        """The one local-training loop: ``epochs`` (default ``ctx.epochs``) passes over ``ctx.batches()``;
        per batch the method ``loss_method`` (called as ``loss(model, x, y, ctx)``), backward,
        ``before_step``, an optimizer step over ``params`` (default all of ``model``'s) at ``lr`` (default
        the round's) with the spec's SGD settings, or those ``optimizer`` replaces (``momentum``,
        ``weight_decay``, ``nesterov``: passed to ``ctx.make_optimizer``). The loss method may return a
        pair (the loss to minimise, the loss to report), as APFL does with its two models. A failure is
        named after the method that raised; a non-finite loss is a ``NonFiniteLoss`` failure of
        ``loss_method``. Returns (sum of the reported losses, steps)."""
        chosen = list(model.parameters() if params is None else params)
        opt = ctx.make_optimizer(chosen, **optimizer) if optimizer else ctx.make_optimizer(chosen)
        if lr is not None:
            for group in opt.param_groups:
                group["lr"] = lr
        model.train()
        total, steps = 0.0, 0
        for _ in range(ctx.epochs if epochs is None else epochs):
            for x, y in ctx.batches():
                opt.zero_grad(set_to_none=True)
                loss = self.call(loss_method, ctx, model, x, y, ctx)
                reported = loss
                if isinstance(loss, tuple):  # (loss to minimise, loss to report), e.g. two models' losses
                    loss, reported = loss
                    if not math.isfinite(float(loss.detach())):
                        reported = loss
                value = float(reported.detach())
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
