"""Small stateless pieces of a round: call a component (naming it when it fails), draw the round's clients
from the seeded sampling stream, evaluate a model, update the metrics, check what a plugin returned at the
boundary. Client training itself is in :mod:`fedreg.clients`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedreg import seeding
from fedreg.components import Component, Predictions, StateDict
from fedreg.errors import PluginError, call_component, describe


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


#: per-round metrics that measure time, not learning: they differ between identical runs. The round loop
#: sets them after the metrics' scalars, so a metric may not return these names either
TIMING_KEYS = ("round_time_s", "elapsed_s", "cpu_s")


def add_scalars(
    scalars: dict[str, float], owners: dict[str, str], metric: Component, new: dict, r: int
) -> None:
    """Add a metric's scalars of round ``r`` to the round's ``scalars``; a key the round already holds (the
    round loop's own, or another metric's: ``owners`` says whose) or one of the :data:`TIMING_KEYS` the
    round loop sets after the metrics is a :class:`PluginError` instead of a silent overwrite."""
    taken = sorted(k for k in new if k in scalars or k in TIMING_KEYS)
    if taken:
        who = "; ".join(f"'{k}' by {owners.get(k, 'the round loop')}" for k in taken[:5])
        raise PluginError(
            f"{describe(metric)} returned the scalar{'s' if len(taken) > 1 else ''} "
            f"{', '.join(repr(k) for k in taken[:5])} in round {r}, already taken this round ({who}): it "
            "would overwrite it. A metric's scalars need names no other metric of the run uses: rename them "
            "in the plugin (and declare them in its 'figures'), or keep one of the two metrics in 'metrics'"
        )
    scalars.update(new)
    owners.update(dict.fromkeys(new, describe(metric)))


def select_clients(selector: Component, r: int, infos: Any, k: int, seed: int) -> list[int]:
    """Round ``r``'s ``k`` clients, from ``selector`` on the run's seeded sampling stream (streams are
    indexed by rounds completed, so round 1 draws from stream 0: every variant of a comparison with the same
    seed draws the same stream); its answer checked."""
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


def evaluation_set(
    fed: Any, global_test: bool, global_on_local: bool, device: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The images and labels the global model is evaluated on, in one batched pass: the global test set
    and (after it) every client's local test set, as the metrics need (``fed``: FederatedData)."""
    ds = fed.dataset
    parts_x, parts_y = [], []
    if global_test:
        parts_x.append(ds.test_x)
        parts_y.append(ds.test_y)
    if global_on_local:
        idx = torch.from_numpy(np.concatenate([c.test_idx for c in fed.clients]))
        parts_x.append(ds.train_x[idx])
        parts_y.append(ds.train_y[idx])
    if not parts_x:
        return None, None
    return torch.cat(parts_x).to(device), torch.cat(parts_y).to(device)
