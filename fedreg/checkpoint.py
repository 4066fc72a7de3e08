"""Checkpoints: everything a run needs to continue exactly, written atomically (write, then rename) and read
with ``torch.load(..., weights_only=True)`` (tensors and plain containers only; no code is unpickled).

Layout: ``<checkpoint.dir>/<spec name>/<experiment id>/`` holds ``experiment.json`` (the spec as written,
the identity of each of its runs, the MLflow run ids, the tracking store), ``lock`` (see :class:`FolderLock`)
and one ``<variant>.pt`` per run (``run.pt`` without variants). The experiment id is the parent run id, or
the run id of a spec without variants. The spec name and the variant are made single path components
(:func:`safe_part`), so no name can put a file outside ``checkpoint.dir``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedreg.errors import FedregError
from fedreg.tracking import flatten

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: folders are not locked
    fcntl = None  # type: ignore[assignment]

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


def spec_differences(recorded: dict[str, dict[str, str]], current: dict[str, dict[str, str]]) -> str | None:
    """How the current runs (run key -> :func:`identity`) differ from those recorded in an experiment
    folder; None when each one equals its recorded identity. A run the folder does not record differs."""
    if not recorded:
        return "the folder does not record the spec it was started with"
    parts = []
    for key, ident in current.items():
        label = f"{key}: " if len(current) > 1 or key != "run" else ""
        if key not in recorded:
            parts.append(f"{label}not a run of that invocation (it has {', '.join(sorted(recorded))})")
        elif recorded[key] != ident:
            parts.append(label + differences(recorded[key], ident))
    return "; ".join(parts) or None


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


def safe_part(name: str) -> str:
    """``name`` as one path component: path separators and control characters become ``_``, and a name
    that is empty, ``.`` or ``..`` becomes ``_`` (``../../escape`` -> ``.._.._escape``)."""
    part = re.sub(r"[/\\\x00-\x1f]", "_", name)
    return "_" if part.strip() in ("", ".", "..") else part


def inside(root: str | os.PathLike, *names: str) -> Path:
    """``root/<name>/...`` with each name made a single path component, checked to resolve inside
    ``root`` (a symbolic link pointing elsewhere is refused)."""
    base = Path(root)
    path = base.joinpath(*(safe_part(n) for n in names))
    if not path.resolve().is_relative_to(base.resolve()):
        raise FedregError(
            f"the checkpoint folder '{path}' resolves to '{path.resolve()}', outside checkpoint.dir "
            f"'{base.resolve()}'; use another spec name, or remove the link"
        )
    return path


def spec_folder(checkpoint_dir: str | os.PathLike, spec_name: str) -> Path:
    """Where the experiment folders of a spec go: ``<checkpoint.dir>/<spec name>``, always inside
    ``checkpoint.dir``."""
    return inside(checkpoint_dir, spec_name)


RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_run_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id):
        raise FedregError(
            f"'{run_id}' is not an MLflow run id (letters, digits, '-' and '_'); use the id printed by "
            f"'fedreg run'"
        )
    return run_id


class FolderLock:
    """An exclusive lock on one experiment folder, held by the one ``fedreg`` process that runs (or
    continues) its runs, from before it writes anything there until it ends: a second ``fedreg run --resume``
    or ``fedreg resume`` of the same runs is refused, naming the holder.

    The lock is ``fcntl.flock`` on ``<folder>/lock``; the file also holds the holder's pid, host, start time
    and command line, for the refusal message. A lock left by a process that died (SIGKILL, a crash, a lost
    node) is never stale: the operating system releases ``flock`` locks when the process that holds them ends,
    so the next process simply takes it over (the file's contents are then overwritten). On a network file
    system the lock works as far as its locking does (Linux maps ``flock`` to NFS byte-range locks). Without
    ``fcntl`` (not POSIX) folders are not locked.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "lock"
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> None:
        """Take the lock or raise :class:`FedregError` naming the process that holds it."""
        if fcntl is None or self._fd is not None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FedregError(
                f"cannot lock '{self.path}' ({exc.strerror or exc}); the checkpoint folder must be writable"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            h = self.holder()
            who = (
                f"pid {h.get('pid', '?')} on {h.get('host', '?')}, running since {h.get('started', '?')}"
                f" ({h.get('command', '?')})"
                if h
                else "a process that has not yet written its name"
            )
            raise FedregError(
                f"the runs in '{self.folder}' are being run by another fedreg process: {who}. Wait for it "
                f"to end, or stop it (e.g. kill {h.get('pid', 'PID')}); a process that has died holds no "
                f"lock, so this one is alive"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["fedreg", *sys.argv[1:]]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays: removing it could let two processes lock two different
        files)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


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
        return inside(self.path, f"{variant or 'run'}.pt")

    def holds(self, run_id: str) -> bool:
        """Whether ``run_id`` is this folder's parent run or one of its runs."""
        if not self.meta_path.exists():
            return False
        meta = self.read()
        return run_id in (self.path.name, meta.get("parent_run_id"), *meta.get("runs", {}).values())


def unfinished(folder: Path) -> list[ExperimentDir]:
    """The experiment folders under a spec's folder (:func:`spec_folder`) whose runs did not all finish,
    the most recently modified first."""
    candidates = sorted(folder.glob("*/experiment.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [
        ExperimentDir(m.parent)
        for m in candidates
        if ExperimentDir(m.parent).read().get("status") != "FINISHED"
    ]


def find_by_run_id(root: Path, run_id: str) -> ExperimentDir | None:
    check_run_id(run_id)
    for meta in root.glob(f"*/{run_id}/experiment.json"):
        return ExperimentDir(meta.parent)
    for meta in root.glob("*/*/experiment.json"):  # a child run id
        exp = ExperimentDir(meta.parent)
        if run_id in exp.read().get("runs", {}).values():
            return exp
    return None


def find_from_tracking(run_id: str, uri: str | None) -> ExperimentDir | None:
    """The experiment folder a run's tags name in the tracking store ``uri`` (default: as for ``fedreg
    run``): ``fedreg.checkpoint_dir`` (the folder, on every run) or ``fedreg.checkpoint`` (a run's checkpoint
    file, on runs made before that tag). None when the store does not have the run, cannot be reached, or
    the folder named there is gone or does not record the run."""
    from mlflow.tracking import MlflowClient

    from fedreg.tracking import tracking_uri

    check_run_id(run_id)
    uri = tracking_uri(uri)
    local = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None
    if local is not None and not Path(local).exists():
        return None  # opening it would create an empty store
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        tags = MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
    except Exception:  # noqa: BLE001 - not in this store, or no store: the caller looks elsewhere
        return None
    folder = tags.get("fedreg.checkpoint_dir") or (
        str(Path(tags["fedreg.checkpoint"]).parent) if tags.get("fedreg.checkpoint") else None
    )
    if folder is None:
        return None
    exp = ExperimentDir(Path(folder))
    return exp if exp.holds(run_id) else None
