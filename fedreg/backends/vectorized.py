"""The ``vectorized`` backend: a round's clients train together, in lock-step, with ``torch.func``.

Every client keeps its own parameters and momentum buffers, stacked along a leading client dimension; one
step computes every active client's loss and gradient at once (``vmap`` of ``grad_and_value`` of the
objective's ``functional_loss`` over ``functional_call``; vectorizable objectives only, see
``Objective.vectorizable``) and applies ``torch.optim.SGD``'s update rule to
the stacks. Results equal the ``local`` backend's within float tolerance:

- each client's context comes from :meth:`ClientRunner.context`, and its batches from its own shuffling
  generator, one :meth:`LocalContext.epoch_order` per epoch, exactly as ``LocalContext.batches`` draws
  them;
- clients are sorted by their number of steps, longest first, so the clients still training at a step
  are a prefix of the stack: a client that has run all its steps drops out of the computation (its
  parameters and momentum buffers are left untouched: no weight decay, no momentum);
- short last batches are padded to the batch size with weight 0 (``functional_loss`` reduces over the
  real samples with :func:`fedreg.losses.sample_mean`);
- clients with different learning rates train in separate lock-step groups (one group in practice).

After training each client's parameters are loaded into the runner's work model and
:meth:`ClientRunner.finish` reports, evaluates and packages the update, as on the other backends. A NaN or
Inf batch loss fails only its own client (``ComponentFailure`` wrapping ``NonFiniteLoss``, method
``loss``, as in the local loop); an exception raised while computing a step fails every client of its
group. The objective's ``setup``, ``loss``, ``before_step``, ``finish`` and ``train`` are not called.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch.func import functional_call, grad_and_value, vmap

from fedreg.clients import Backend, ClientJob, ClientResult, RoundInput
from fedreg.components import FunctionalContext, LocalContext, NonFiniteLoss, TrainOutput
from fedreg.errors import ComponentFailure, FedregError, describe


def sgd_step_(
    params: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    bufs: Mapping[str, torch.Tensor] | None,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """One ``torch.optim.SGD`` step (dampening 0), in place on ``params`` and ``bufs``, with the same
    operations in the same order as torch's own loop. ``bufs`` are the momentum buffers, zeros before the
    first step (``0 * momentum + g`` is exactly torch's first-step buffer ``g``); None when momentum is 0.
    Works on stacked (client-major) tensors as on single ones: every operation is elementwise."""
    for name, p in params.items():
        g = grads[name]
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        if momentum != 0:
            assert bufs is not None, "momentum buffers are given whenever momentum is not 0"
            buf = bufs[name]
            buf.mul_(momentum).add_(g)
            g = g.add(buf, alpha=momentum) if nesterov else buf
        p.add_(g, alpha=-lr)


def batch_plan(
    orders: list[torch.Tensor], num_samples: int, batch_size: int, offset: int, pad: int
) -> torch.Tensor:
    """A client's batches as rows of sample indices: one row per step, epochs one after another, each
    epoch's order cut into batches of ``batch_size`` (the last one short, padded with ``pad``); indices
    shifted by ``offset``. Shape (steps, batch_size), steps = epochs * ceil(num_samples / batch_size)."""
    per_epoch = math.ceil(num_samples / batch_size)
    rows = []
    for order in orders:
        filler = torch.full((per_epoch * batch_size - num_samples,), pad, dtype=torch.long)
        rows.append(torch.cat([order.long() + offset, filler]).view(per_epoch, batch_size))
    return torch.cat(rows) if rows else torch.empty(0, batch_size, dtype=torch.long)


def mean_loss(values: list[float]) -> tuple[float, NonFiniteLoss | None]:
    """The local loop's accounting of a client's batch losses: (sum / steps, None), or the first non-finite
    loss as a NonFiniteLoss with the local loop's message."""
    total = 0.0
    for step, value in enumerate(values):
        if not math.isfinite(value):
            return float("nan"), NonFiniteLoss(f"loss is {value} at step {step}")
        total += value
    return total / max(len(values), 1), None


class VectorizedBackend(Backend):
    """The round's clients in lock-step with ``torch.func`` (vectorizable objectives only)."""

    name = "vectorized"

    def start(self) -> None:
        buffers = [n for n, _ in self.runner.work_model.named_buffers()]
        if buffers:
            raise FedregError(
                f"the vectorized backend trains models without buffers, but this model has "
                f"{', '.join(buffers)} (e.g. BatchNorm statistics); set execution.backend: local "
                f"or ray"
            )

    def train(self, jobs: list[ClientJob], rin: RoundInput) -> list[ClientResult]:
        objective = rin.objective
        if not objective.vectorizable():
            raise FedregError(
                f"{describe(objective)} is not vectorizable (its loss is not a functional_loss alone), "
                f"so the vectorized backend cannot train it; set execution.backend: local or ray"
            )
        runner = self.runner
        model = runner.work_model
        model.load_state_dict(rin.global_state)
        model.train()
        ctxs = [runner.context(job, rin, model) for job in jobs]
        global_params = {n: p.detach().clone() for n, p in model.named_parameters()}

        def teacher(x):  # the received model: its parameters, no gradient (vmap-compatible)
            return functional_call(model, global_params, (x,)).detach()

        results: dict[int, ClientResult] = {}
        for lr in dict.fromkeys(job.lr for job in jobs):
            group = [i for i, job in enumerate(jobs) if job.lr == lr]
            fctx = FunctionalContext(
                round=rin.round,
                num_classes=runner.config.num_classes,
                lr=lr,
                global_params=global_params,
                broadcast=rin.broadcast,
                teacher=teacher,
            )
            trained = self._lockstep([ctxs[i] for i in group], fctx, objective)
            for i, out in zip(group, trained, strict=True):
                results[i] = self._finish(ctxs[i], rin, out)
        return [results[i] for i in range(len(jobs))]

    # -- one group of clients sharing a learning rate ------------------------------------------------------
    def _lockstep(self, ctxs: list[LocalContext], fctx: FunctionalContext, objective) -> list:
        """Train ``ctxs`` together; per client (in ``ctxs`` order), (trained params, TrainOutput) or its
        ComponentFailure."""
        c = self.runner.config
        device, bs = self.runner.device, c.batch_size
        # longest first: the clients still training at any step are a prefix of the stack
        order = sorted(range(len(ctxs)), key=lambda i: -ctxs[i].num_samples)
        ctxs_sorted = [ctxs[i] for i in order]
        total = sum(ctx.num_samples for ctx in ctxs_sorted)
        plans, offset = [], 0
        for ctx in ctxs_sorted:
            orders = [
                ctx.epoch_order() for _ in range(c.epochs)
            ]  # the client's draws, as batches() makes them
            plans.append(batch_plan(orders, ctx.num_samples, bs, offset, pad=total))
            offset += ctx.num_samples
        steps = [len(p) for p in plans]
        n_steps = max(steps, default=0)
        idx = torch.full((len(ctxs), n_steps, bs), total, dtype=torch.long)
        for k, p in enumerate(plans):
            idx[k, : len(p)] = p
        first = ctxs_sorted[0]
        all_x = torch.cat(
            [ctx.train_x for ctx in ctxs_sorted] + [first.train_x.new_zeros(1, *first.train_x.shape[1:])]
        )
        all_y = torch.cat([ctx.train_y for ctx in ctxs_sorted] + [first.train_y.new_zeros(1)])
        weight = (idx != total).to(device=device, dtype=all_x.dtype)  # 1: a real sample, 0: padding
        idx = idx.to(device)

        model = self.runner.work_model
        k_all = len(ctxs)
        params = {n: p.unsqueeze(0).expand(k_all, *p.shape).clone() for n, p in fctx.global_params.items()}
        bufs = {n: torch.zeros_like(p) for n, p in params.items()} if c.momentum != 0 else None
        losses = torch.zeros(
            n_steps, k_all, dtype=torch.float64, device=device
        )  # float(loss), as the local loop
        active = [sum(1 for s in steps if s > step) for step in range(n_steps)]

        def forward(p, x):
            return functional_call(model, p, (x,))

        def loss_fn(p, x, y, w):
            return objective.functional_loss(forward, p, x, y, w, fctx)

        step_fn = vmap(grad_and_value(loss_fn))
        try:
            for step in range(n_steps):
                a = active[step]
                rows = idx[:a, step]
                live = {n: t[:a] for n, t in params.items()}
                with c.autocast():
                    grads, loss = step_fn(live, all_x[rows], all_y[rows], weight[:a, step])
                losses[step, :a] = loss.detach().double()
                with torch.no_grad():
                    sgd_step_(
                        live,
                        grads,
                        None if bufs is None else {n: t[:a] for n, t in bufs.items()},
                        lr=fctx.lr,
                        momentum=c.momentum,
                        weight_decay=c.weight_decay,
                        nesterov=c.nesterov,
                    )
        except (KeyboardInterrupt, FedregError):
            raise
        except Exception as exc:  # noqa: BLE001 - every client of the group failed with it
            return [
                ComponentFailure(objective, "functional_loss", fctx.round, ctx.client_id, exc) for ctx in ctxs
            ]

        losses = losses.cpu()
        trained: list = [None] * len(ctxs)
        for k, i in enumerate(order):
            ctx = ctxs[i]
            value, bad = mean_loss(losses[: steps[k], k].tolist())
            if bad is not None:
                trained[i] = ComponentFailure(objective, "loss", ctx.round, ctx.client_id, bad)
            else:
                trained[i] = ({n: t[k] for n, t in params.items()}, TrainOutput(value, steps[k], {}))
        return trained

    def _finish(self, ctx: LocalContext, rin: RoundInput, out) -> ClientResult:
        if isinstance(out, ComponentFailure):
            return ClientResult(ctx.client_id, failure=out)
        params, train_out = out
        with torch.no_grad():
            for n, p in ctx.model.named_parameters():
                p.copy_(params[n])
        try:
            return self.runner.finish(ctx, rin, train_out)
        except ComponentFailure as exc:
            return ClientResult(ctx.client_id, failure=exc)
