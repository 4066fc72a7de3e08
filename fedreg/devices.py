"""Devices: the spec's ``execution.device`` checked against this machine, and nested values moved between
devices (a client's data, weights and state go to the device it trains on; results come back to the CPU)."""

from __future__ import annotations

from typing import Any

import torch

from fedreg.errors import FedregError


def check_device(device: str) -> str:
    """The spec's execution.device, checked against this machine."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise FedregError(
            f"execution.device: '{device}' is not a device ({exc}); use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FedregError(
            f"execution.device is '{device}' but no CUDA device is visible on this machine; "
            f"set execution.device: cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise FedregError(f"execution.device: '{device}' is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    return device


def to_device(obj: Any, device: str | torch.device) -> Any:
    """``obj`` with every tensor inside dicts, lists and tuples moved to ``device`` (others unchanged)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return type(obj)(to_device(v, device) for v in obj)
    return obj
