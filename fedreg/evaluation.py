"""Small stateless pieces of a round: call a component (naming it when it fails), evaluate a model, check
what a plugin returned at the boundary. Client training itself is in :mod:`fedreg.clients`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedreg.components import Component, Predictions, StateDict
from fedreg.errors import PluginError, call_component


def call(component: Component, method: str, round: int, client: int | None, *args, **kwargs) -> Any:
    """A component call outside client training (see :func:`fedreg.errors.call_component`)."""
    return call_component(component, method, round, client, *args, **kwargs)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> Predictions:
    """``model``'s predictions on ``(x, y)`` in batches: argmax, per-sample cross-entropy and the softmax
    probabilities (float32 even under autocast; an empty set gives ``probs`` of shape (0, 0))."""
    was_training = model.training
    model.eval()
    preds, losses, probs = [], [], []
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        preds.append(logits.argmax(1))
        losses.append(F.cross_entropy(logits, y[start : start + batch_size], reduction="none"))
        probs.append(torch.softmax(logits.float(), dim=1))
    model.train(was_training)
    if not preds:
        empty = torch.empty(0)
        return Predictions(y, empty.long(), empty, torch.empty(0, 0))
    return Predictions(y, torch.cat(preds), torch.cat(losses), torch.cat(probs))


def check_state(new: Any, ref: StateDict, who: str, what: str) -> StateDict:
    """The boundary check on weights a plugin returns: same keys, shapes and dtypes, all finite."""
    if not isinstance(new, dict):
        raise PluginError(
            f"{who} returned {type(new).__name__} from {what}, expected a state dict "
            f"(dict of parameter name -> tensor)"
        )
    missing = [k for k in ref if k not in new]
    extra = [k for k in new if k not in ref]
    if missing or extra:
        raise PluginError(
            f"{who} broke the rule 'return every parameter tensor, no others' in {what}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
        )
    for k, v in ref.items():
        t = new[k]
        if not isinstance(t, torch.Tensor):
            raise PluginError(f"{who} returned {type(t).__name__} for '{k}' in {what}, expected a tensor")
        if t.shape != v.shape or t.dtype != v.dtype:
            raise PluginError(
                f"{who} broke the rule 'keep shapes and dtypes' in {what}: '{k}' is "
                f"{tuple(t.shape)} {t.dtype}, expected {tuple(v.shape)} {v.dtype}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PluginError(f"{who} broke the rule 'all values finite' in {what}: '{k}' holds NaN or Inf")
    return new


def non_finite_key(state: StateDict) -> str | None:
    """The first floating tensor holding NaN or Inf, or None."""
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k
    return None
