"""Layer selection by module-name prefix as plain functions: the personal or frozen layers of FedPer, FedRep
and FedBABU."""

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
