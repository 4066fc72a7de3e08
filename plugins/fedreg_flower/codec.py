"""What travels between fedreg's round loop and a Flower ClientApp, as Flower records: plain functions, each
with its inverse, tested without a federation.

- weights (a state dict) <-> ``ArrayRecord``: every tensor as a NumPy array of its own dtype and shape, so
  float32 weights arrive bit for bit (bfloat16, which NumPy lacks, travels as float32 and is cast back);
- everything else a component exchanges (the broadcast, an objective's payload, a client report, a
  client's state, the run's facts) <-> ``bytes`` written by ``torch.save`` inside a ``ConfigRecord``, read
  back with ``torch.load(weights_only=True)``: tensors, numbers, strings and lists, tuples and dicts of them.
  Never code: a node does not unpickle objects the server sends, nor the server a node's.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import asdict
from typing import Any

import torch

from fedreg.components import ClientInfo, RunInfo, SiteSummary, StateDict
from fedreg.errors import PluginError


def pack(obj: Any, what: str = "value") -> bytes:
    """``obj`` (tensors, numbers, strings, None, and lists, tuples and dicts of them) as bytes."""
    buf = io.BytesIO()
    try:
        torch.save(obj, buf)
    except Exception as exc:  # noqa: BLE001 - whatever torch.save refuses
        raise PluginError(f"the {what} cannot travel to or from a Flower node: {exc}") from None
    return buf.getvalue()


def unpack(data: bytes, what: str = "value") -> Any:
    """The inverse of :func:`pack`; loads data only (``weights_only``), never objects with code."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler refuses anything but data
        raise PluginError(
            f"the {what} holds objects other than tensors, numbers, strings, lists, tuples and dicts "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); a component whose "
            "broadcast, payload, report or client state travels to Flower nodes must use those types"
        ) from None


def weights_record(state: StateDict):
    """A state dict as an ``ArrayRecord`` (dtypes and shapes kept; bfloat16 travels as float32)."""
    from flwr.app import ArrayRecord

    return ArrayRecord(
        OrderedDict(
            (k, (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu()) for k, v in state.items()
        )
    )


def record_weights(record, like: StateDict | None = None) -> StateDict:
    """The state dict an ``ArrayRecord`` holds; with ``like``, each tensor in the dtype of ``like``'s."""
    state = record.to_torch_state_dict()
    if like is not None:
        state = OrderedDict((k, v.to(like[k].dtype)) for k, v in state.items())
    return dict(state)


def numbers_record(summary: SiteSummary):
    """A client's site summary (each metric's numbers) as a ``MetricRecord``: ``<metric>/<name>`` keys, float
    values. Numbers only: what the site parts of metrics say of a client's predictions, never the
    predictions."""
    from flwr.app import MetricRecord

    return MetricRecord(
        {f"{metric}/{k}": float(v) for metric, nums in summary.numbers.items() for k, v in nums.items()}
    )


def record_numbers(record, metrics: list[str] | None = None) -> SiteSummary:
    """The inverse of :func:`numbers_record`; ``metrics``: the names of metrics whose summaries are expected
    even when empty."""
    out = SiteSummary({m: {} for m in metrics or ()})
    for key, v in record.items():
        metric, _, name = str(key).partition("/")
        out.numbers.setdefault(metric, {})[name] = float(v)
    return out


def run_info_dict(info: RunInfo) -> dict[str, Any]:
    d = asdict(info)
    d["clients"] = [[c.client_id, c.num_train, c.num_test, list(c.label_counts)] for c in info.clients]
    return d


def dict_run_info(d: dict[str, Any]) -> RunInfo:
    clients = tuple(
        ClientInfo(int(a), int(b), int(c), tuple(int(x) for x in lc)) for a, b, c, lc in d["clients"]
    )
    return RunInfo(
        clients, int(d["num_classes"]), int(d["clients_per_round"]), int(d["rounds"]), int(d["seed"])
    )
