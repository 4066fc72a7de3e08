"""Checkpoints: everything a run needs to continue exactly, written atomically (write, then rename) and read
with ``torch.load(..., weights_only=True)`` (tensors and plain containers only; no code is unpickled).

Layout: ``<checkpoint.dir>/<spec name>/<experiment id>/`` holds ``experiment.json`` (the spec as written,
the MLflow run ids, the tracking store) and one ``<variant>.pt`` per run (``run.pt`` without variants). The
experiment id is the parent run id, or the run id of a spec without variants.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedreg.errors import FedregError
from fedreg.tracking import flatten

FORMAT = 1
IGNORED_FOR_IDENTITY = ("checkpoint", "tracking", "variant", "execution")
#: settings added after checkpoints were first written: left out at their default value, so older
#: checkpoints stay resumable
LATER_DEFAULTS = {"training.precision": "fp32"}


def identity(resolved: dict[str, Any]) -> dict[str, str]:
    """The flattened resolved spec that decides whether a checkpoint belongs to it (where clients train
    is not part of it: a run may continue on another backend)."""
    return {
        k: v
        for k, v in flatten(resolved).items()
        if k.split(".")[0] not in IGNORED_FOR_IDENTITY and LATER_DEFAULTS.get(k, object()) != v
    }


def fingerprint(resolved: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity(resolved), sort_keys=True).encode()).hexdigest()


def differences(stored: dict[str, str], current: dict[str, str], limit: int = 6) -> str:
    keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    shown = [f"{k}: {stored.get(k, '(absent)')} -> {current.get(k, '(absent)')}" for k in keys[:limit]]
    return "; ".join(shown) + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def rng_states() -> dict[str, Any]:
    """Global RNG states, for plugins that draw from them (fedreg's own streams are derived from the seed)."""
    # legacy=True is numpy's default, spelled out: the legacy tuple (the global RandomState is MT19937)
    state = np.random.get_state(legacy=True)
    assert isinstance(state, tuple), "the global RandomState is an MT19937, whose legacy state is a tuple"
    kind, keys, pos, has_gauss, gauss = state
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": [list(random.getstate()[1]), random.getstate()[0]],
    }


def restore_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    internal, version = state["python"]
    random.setstate((version, tuple(internal), None))


def save(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: a reader sees the previous checkpoint or this one, never a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise FedregError(
            f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}); delete it to start "
            f"that run again from round 1"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FedregError(f"'{path}' is not a fedreg checkpoint of format {FORMAT}")
    return data


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise FedregError(
            f"cannot write checkpoints to '{folder}' ({exc.strerror or exc}); set checkpoint.dir to a "
            f"writable folder, or checkpoint.every: 0 to run without checkpoints"
        ) from None


class ExperimentDir:
    """The checkpoint folder of one invocation (all its variants)."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def meta_path(self) -> Path:
        return self.path / "experiment.json"

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise FedregError(f"'{self.meta_path}' cannot be read: {exc}") from None

    def write(self, meta: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_name("experiment.json.tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, self.meta_path)

    def run_file(self, variant: str | None) -> Path:
        return self.path / f"{variant or 'run'}.pt"


def find_unfinished(root: Path, spec_name: str) -> ExperimentDir | None:
    """The most recent experiment of this spec name whose runs did not all finish."""
    folder = root / spec_name
    candidates = sorted(folder.glob("*/experiment.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for meta in candidates:
        exp = ExperimentDir(meta.parent)
        if exp.read().get("status") != "FINISHED":
            return exp
    return None


def find_by_run_id(root: Path, run_id: str) -> ExperimentDir | None:
    for meta in root.glob(f"*/{run_id}/experiment.json"):
        return ExperimentDir(meta.parent)
    for meta in root.glob("*/*/experiment.json"):  # a child run id
        exp = ExperimentDir(meta.parent)
        if run_id in exp.read().get("runs", {}).values():
            return exp
    return None
