"""``fedreg replay``: send the tracking calls a run could not deliver (kept by :mod:`fedreg.spool`) to the
store they were meant for."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedreg.errors import EnvironmentProblem, FedregError
from fedreg.spool import STORAGE_FIX, _quiet_mlflow, _rewrite, check_local_store, storage_problem
from fedreg.tracking import Tracker, checked_uri


def replay(folder: str | os.PathLike, uri: str | None = None) -> int:
    """Send the calls a run could not deliver (``fedreg replay``); returns how many were sent. When one
    fails, the ones not yet sent are kept in the folder for the next try."""
    folder = Path(folder)
    try:
        target = json.loads((folder / "target.json").read_text())
        calls = [
            json.loads(line) for line in (folder / "calls.jsonl").read_text().splitlines() if line.strip()
        ]
    except (OSError, ValueError) as exc:
        raise FedregError(f"'{folder}' is not a fedreg spool folder: {exc}") from None
    t = Tracker.__new__(Tracker)
    t.uri = checked_uri(uri or target["tracking_uri"], "--tracking-uri (or the spool's target.json)")
    check_local_store(t.uri)
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    t.client = MlflowClient(tracking_uri=t.uri)
    for i, call in enumerate(calls):
        try:
            t._send(call["op"], tuple(call["args"]))
        except Exception as exc:  # noqa: BLE001
            _rewrite(folder / "calls.jsonl", calls[i:])
            why = storage_problem(exc)
            because = f"the store cannot take it, {why}: {STORAGE_FIX[why].lower()}" if why else exc
            raise (EnvironmentProblem if why else FedregError)(
                f"replay stopped at call {i + 1} of {len(calls)} ({because}); the remaining calls are "
                f"kept in '{folder}', run the same command again"
            ) from None
    _rewrite(folder / "calls.jsonl", [])
    return len(calls)


__all__ = ["replay"]
