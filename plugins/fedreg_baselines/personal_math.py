"""Layer selection by module-name prefix as plain functions (the personal or frozen layers of FedPer, FedRep
and FedBABU), and the server rule that averages only the shared entries (``average_shared``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from fedreg.aggregate import weighted_average
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


def average_shared(
    global_state: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    kept: Iterable[str],
) -> StateDict:
    """The server rule of methods that keep some entries on the client: the ``weights``-weighted average of
    the clients' ``states`` for every entry not in ``kept``; the entries in ``kept`` (each client's own
    layers) are not aggregated and keep their values in ``global_state``. With nothing kept this is
    FedAvg; with everything kept the global weights never change (local-only)."""
    kept = set(kept)
    shared = [k for k in global_state if k not in kept]
    avg = weighted_average([{k: s[k] for k in shared} for s in states], list(weights)) if shared else {}
    return {k: avg[k] if k in avg else global_state[k].detach().clone() for k in global_state}
