"""Execution pieces of a round, each small and stateless: evaluate a model, run one client, check what a
plugin returned at the boundary."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedreg.components import (
    Aggregator,
    ClientUpdate,
    Component,
    LocalContext,
    NonFiniteLoss,
    Objective,
    Predictions,
    StateDict,
    clone_state,
)
from fedreg.errors import ComponentFailure, FedregError, PluginError, describe


def call(component: Component, method: str, round: int, client: int | None, *args, **kwargs) -> Any:
    try:
        return getattr(component, method)(*args, **kwargs)
    except (KeyboardInterrupt, ComponentFailure, FedregError):
        raise  # FedregError is a user-facing problem the component already explained
    except Exception as exc:  # noqa: BLE001
        raise ComponentFailure(component, method, round, client, exc) from exc


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> Predictions:
    was_training = model.training
    model.eval()
    preds, losses = [], []
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        preds.append(logits.argmax(1))
        losses.append(F.cross_entropy(logits, y[start:start + batch_size], reduction="none"))
    model.train(was_training)
    if not preds:
        empty = torch.empty(0)
        return Predictions(y, empty.long(), empty)
    return Predictions(y, torch.cat(preds), torch.cat(losses))


def check_state(new: Any, ref: StateDict, who: str, what: str) -> StateDict:
    """The boundary check on weights a plugin returns: same keys, shapes and dtypes, all finite."""
    if not isinstance(new, dict):
        raise PluginError(f"{who} returned {type(new).__name__} from {what}, expected a state dict "
                          f"(dict of parameter name -> tensor)")
    missing = [k for k in ref if k not in new]
    extra = [k for k in new if k not in ref]
    if missing or extra:
        raise PluginError(f"{who} broke the rule 'return every parameter tensor, no others' in {what}: "
                          f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}")
    for k, v in ref.items():
        t = new[k]
        if not isinstance(t, torch.Tensor):
            raise PluginError(f"{who} returned {type(t).__name__} for '{k}' in {what}, expected a tensor")
        if t.shape != v.shape or t.dtype != v.dtype:
            raise PluginError(f"{who} broke the rule 'keep shapes and dtypes' in {what}: '{k}' is "
                              f"{tuple(t.shape)} {t.dtype}, expected {tuple(v.shape)} {v.dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PluginError(f"{who} broke the rule 'all values finite' in {what}: '{k}' holds NaN or Inf")
    return new


def non_finite_key(state: StateDict) -> str | None:
    """The first floating tensor holding NaN or Inf, or None."""
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k
    return None


@dataclass
class ClientOutcome:
    update: ClientUpdate
    local_eval: Predictions | None


def run_client(*, round: int, cid: int, work_model: nn.Module, global_state: StateDict, objective: Objective,
               aggregator: Aggregator, tensors, num_classes: int, epochs: int, batch_size: int, lr: float,
               make_optimizer: Callable, generator: torch.Generator, state: dict, broadcast: dict,
               build_model: Callable[[], nn.Module], eval_local: bool, eval_batch_size: int,
               momentum: float = 0.0) -> ClientOutcome:
    """Local training of one client: load the global weights, train with the objective, report."""
    train_x, train_y, test_x, test_y = tensors
    work_model.load_state_dict(global_state)
    ctx = LocalContext(round=round, client_id=cid, model=work_model, global_state=global_state,
                       train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, num_classes=num_classes,
                       epochs=epochs, batch_size=batch_size, lr=lr, make_optimizer=make_optimizer,
                       generator=generator, state=state, broadcast=broadcast, build_model=build_model,
                       momentum=momentum)
    try:
        out = objective.train(ctx)
    except (KeyboardInterrupt, ComponentFailure, FedregError):
        raise
    except Exception as exc:  # noqa: BLE001
        raise ComponentFailure(objective, "train", round, cid, exc) from exc
    if not math.isfinite(out.loss):
        raise ComponentFailure(objective, "train", round, cid, NonFiniteLoss(f"mean loss is {out.loss}"))
    report = call(aggregator, "client_report", round, cid, ctx, work_model) or {}
    if not isinstance(report, dict) or not all(isinstance(v, int | float) for v in report.values()):
        raise PluginError(f"{describe(aggregator)}: client_report must return a dict of numbers, "
                          f"got {report!r} (round {round}, client {cid})")
    local_eval = None
    if eval_local and len(test_y):
        model = call(objective, "eval_model", round, cid, ctx)
        local_eval = predict(model, test_x, test_y, eval_batch_size)
    weights = clone_state(work_model.state_dict())
    update = ClientUpdate(client_id=cid, num_samples=int(len(train_y)), state=weights,
                          report={k: float(v) for k, v in report.items()}, payload=out.payload,
                          train_loss=float(out.loss))
    return ClientOutcome(update, local_eval)
