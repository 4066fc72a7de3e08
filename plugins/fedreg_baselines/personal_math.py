"""Math of the personalised-FL baselines as plain functions (layer selection, mixing, losses)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from fedreg.components import StateDict


def matches_prefix(key: str, prefixes: Sequence[str]) -> bool:
    """Whether parameter key ``key`` belongs to a module named by one of ``prefixes``: ``key == p`` or
    ``key.startswith(p + ".")`` (so "fc" matches "fc.weight" but not "fc1.0.weight")."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def split_keys(keys: Iterable[str], prefixes: Sequence[str]) -> tuple[list[str], list[str]]:
    """(keys matching ``prefixes``, the other keys), each in the given order."""
    keys = list(keys)
    return (
        [k for k in keys if matches_prefix(k, prefixes)],
        [k for k in keys if not matches_prefix(k, prefixes)],
    )


def select_state(state: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> StateDict:
    """Detached copies of the entries of ``state`` whose keys match ``prefixes``."""
    return {k: v.detach().clone() for k, v in state.items() if matches_prefix(k, prefixes)}


def mix_states(v: Mapping[str, torch.Tensor], w: Mapping[str, torch.Tensor], alpha: float) -> StateDict:
    """APFL's mixed model: alpha * v + (1 - alpha) * w for every floating key of ``w`` that ``v`` has; every
    other key (buffers ``v`` lacks, integer counters) is taken from ``w``. alpha = 0 gives ``w`` exactly."""
    out: StateDict = {}
    for k, wk in w.items():
        wk = wk.detach()
        if k in v and wk.is_floating_point():
            out[k] = (alpha * v[k].detach() + (1.0 - alpha) * wk).to(wk.dtype)
        else:
            out[k] = wk.clone()
    return out


def mixed_parameters(
    v: Mapping[str, torch.Tensor], w: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """APFL's mixed parameters alpha * v + (1 - alpha) * w with ``w`` detached, so a loss of the mixed model
    differentiates with respect to ``v`` only (the update of v in Deng et al., Algorithm 1)."""
    return {k: alpha * v[k] + (1.0 - alpha) * w[k].detach() for k in v}
