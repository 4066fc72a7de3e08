"""A site's record of what its node sent: with ``audit-log="/path/to/file.jsonl"`` in a SuperNode's node
config, every reply of its ClientApp is described in one JSON line (the message type, the run and round, and
for each record its arrays' names, shapes and dtypes, its numbers' names, and the structure of every packed
value: tensors by shape and dtype, numbers, strings by length). A site's staff can read what left the site;
the deployment tests read it to check that nothing per-sample does."""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from fedreg_flower import codec

#: node-config key of the audit log's path
AUDIT_LOG = "audit-log"


def describe_value(v: Any) -> Any:
    """The structure of a value that travels: tensors by shape and dtype, containers by their items."""
    if isinstance(v, torch.Tensor):
        return {"tensor": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
    if isinstance(v, dict):
        return {str(k): describe_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [describe_value(x) for x in v]
    if isinstance(v, str):
        return {"str": len(v)}
    if isinstance(v, bool | int | float) or v is None:
        return type(v).__name__
    return {"other": type(v).__name__}


def describe_content(content) -> dict[str, Any]:
    """Every record of a reply's content, described (see the module's docstring)."""
    out: dict[str, Any] = {}
    for name, rec in content.array_records.items():
        out[name] = {"arrays": {k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in rec.items()}}
    for name, rec in content.metric_records.items():
        out[name] = {"numbers": sorted(rec)}
    for name, rec in content.config_records.items():
        fields: dict[str, Any] = {}
        for k, v in rec.items():
            if isinstance(v, bytes):
                try:
                    fields[k] = {"packed": describe_value(codec.unpack(v))}
                except Exception:  # noqa: BLE001 - not a packed value: its size
                    fields[k] = {"bytes": len(v)}
            elif isinstance(v, str) and v[:1] in "{[":
                fields[k] = {"json": describe_value(json.loads(v))} if _is_json(v) else {"str": len(v)}
            else:
                fields[k] = describe_value(v)
        out[name] = {"config": fields}
    return out


def _is_json(v: str) -> bool:
    try:
        json.loads(v)
    except ValueError:
        return False
    return True


def record(node_config: dict[str, Any], msg, content) -> None:
    """Append the description of a reply to the node's audit log, if it keeps one."""
    path = node_config.get(AUDIT_LOG)
    if not path:
        return
    facts = msg.content.config_records.get("fedreg", {})
    line = {
        "time": time.time(),
        "message_type": msg.metadata.message_type,
        "run": str(facts.get("run", "")),
        "round": int(facts["round"]) if "round" in facts else None,
        "records": describe_content(content),
    }
    with open(str(path), "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
