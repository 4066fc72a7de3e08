"""fedreg-normclip: norm-clipped mean aggregation, size-weighted client selection and a calibration metric
(ECE from the class probabilities) for fedreg."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

import fedreg
from fedreg.aggregate import normalize_weights
from fedreg.components import Aggregator, Params, Selector
from fedreg_normclip.calibration import ECE10

__version__ = "0.1.0"


def clip_update(update: dict[str, torch.Tensor], max_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """Scale a whole update (all floating tensors together) to an L2 norm of at most ``max_norm``."""
    norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in update.values())))
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: v * scale for k, v in update.items()}, norm


def norm_clipped_mean(global_state, states, weights, max_norm):
    """global + sum_k w_k * clip(state_k - global), over floating tensors (others from the first state)."""
    w = normalize_weights(weights)
    keys = [k for k, v in global_state.items() if v.is_floating_point()]
    out = {k: v.clone() for k, v in states[0].items()}
    for k in keys:
        out[k] = global_state[k].clone()
    norms = []
    for wk, s in zip(w, states, strict=True):
        clipped, norm = clip_update({k: s[k] - global_state[k] for k in keys}, max_norm)
        norms.append(norm)
        for k in keys:
            out[k] += float(wk) * clipped[k]
    return out, norms


class NormClipParams(Params):
    max_norm: float = Field(default=10.0, gt=0, description="largest L2 norm of a client's update")


class NormClip(Aggregator):
    """Norm-clipped mean: client updates clipped to max_norm, then averaged by sample counts."""

    name = "normclip"
    Params = NormClipParams

    def aggregate(self, round, global_state, updates, failures):
        new, self.last_norms = norm_clipped_mean(
            global_state, [u.state for u in updates], [u.num_samples for u in updates], self.params.max_norm
        )
        return new


class SizeWeighted(Selector):
    """Clients drawn without replacement with probability proportional to their training-set size."""

    name = "size_weighted"

    def select(self, round, clients, k, rng):
        sizes = np.array([c.num_train for c in clients], dtype=float)
        return sorted(int(c) for c in rng.choice(len(clients), size=k, replace=False, p=sizes / sizes.sum()))


@fedreg.hookimpl
def fedreg_register_aggregators(register):
    register(NormClip)


@fedreg.hookimpl
def fedreg_register_selectors(register):
    register(SizeWeighted)


@fedreg.hookimpl
def fedreg_register_metrics(register):
    register(ECE10)
