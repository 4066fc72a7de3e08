"""Checkpoints: everything a run needs to continue exactly, written atomically (write, then rename) and read
with ``torch.load(..., weights_only=True)`` (tensors and plain containers only; no code is unpickled).

Layout: ``<checkpoint.dir>/<spec name>/<experiment id>/`` holds ``experiment.json`` (the spec as written,
the identity of each of its runs, the MLflow run ids, the tracking store), ``lock`` (see
:class:`fedreg.locks.FolderLock`) and one ``<variant>.pt`` per run (``run.pt`` without variants). The
experiment id is the parent run id, or the run id of a spec without variants. The spec name and the variant
are made single path components (:func:`safe_part`), so no name can put a file outside ``checkpoint.dir``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shlex
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedreg.errors import EnvironmentProblem, FedregError
from fedreg.spec.loading import flatten

FORMAT = 1
IGNORED_FOR_IDENTITY = ("checkpoint", "tracking", "variant", "execution")
#: settings added after checkpoints were first written: left out at their default value, so older
#: checkpoints stay resumable
LATER_DEFAULTS = {"training.precision": "fp32", "data.subset": "1.0"}


def identity(resolved: dict[str, Any]) -> dict[str, str]:
    """The flattened resolved spec that decides whether a checkpoint belongs to it (where clients train
    is not part of it: a run may continue on another backend)."""
    return identity_of_params(flatten(resolved))


def identity_of_params(params: dict[str, str]) -> dict[str, str]:
    """:func:`identity` of a spec already flattened, as a run's MLflow params hold it."""
    return {
        k: v
        for k, v in params.items()
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


#: a disk that cannot take a file: the errno and how to say it
DISK_ERRORS = {errno.ENOSPC: "no space left on its disk", errno.EDQUOT: "the disk quota is exceeded"}
DISK_ERRORS[errno.EROFS] = "its disk is read-only"


class _Recorder:
    """The file ``torch.save`` writes to, keeping the ``OSError`` of a failed write (torch raises only
    ``unexpected pos``)."""

    def __init__(self, f):
        self.f, self.error, self.flush = f, None, f.flush

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise


def save(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: written to ``<name>.tmp``, synced to the disk, then renamed, so a reader sees the previous
    checkpoint or this one, never a partial file. On a failure (or an interruption) the ``.tmp`` file is
    removed and the previous checkpoint stays as it was; a full or read-only disk is an
    :class:`~fedreg.errors.EnvironmentProblem` naming the file, the space and how to go on."""
    tmp, out = path.with_name(path.name + ".tmp"), None
    try:
        with open(tmp, "wb") as f:
            out = _Recorder(f)
            torch.save({"format": FORMAT, **payload}, out)  # type: ignore[arg-type]  # a writable file object
            f.flush()
            os.fsync(f.fileno())  # a disk that fills is told now, not after the rename
        os.replace(tmp, path)
    except BaseException as exc:
        cause = out.error if out is not None and out.error is not None else exc
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(cause, OSError) and cause.errno in DISK_ERRORS:
            raise disk_problem(path, cause) from None
        interrupt = _interruption(exc)
        if interrupt is not None and interrupt is not exc:
            raise interrupt from None  # Ctrl-C or SIGTERM mid-write, not torch's error while it unwound
        raise


def _interruption(exc: BaseException | None) -> BaseException | None:
    """The KeyboardInterrupt (Ctrl-C, or SIGTERM as :mod:`fedreg.signals` turns it) that ``exc`` is or was
    raised while handling, if any."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc, seen = exc.__context__, seen + 1
    return None


def save_run(path: Path, resolved: dict[str, Any], state: dict[str, Any]) -> None:
    """:func:`save` a run's ``state`` with what resuming checks and restores: the fingerprint and identity
    of its resolved spec, and the random number generators' states."""
    save(
        path,
        {"fingerprint": fingerprint(resolved), "identity": identity(resolved), "rng": rng_states(), **state},
    )


def disk_problem(path: Path, exc: OSError) -> EnvironmentProblem:
    """Why ``path`` (a checkpoint, or ``experiment.json``, in an experiment folder) could not be written, what
    is kept, and how to go on: free space (or move the folder), then ``fedreg resume``."""
    folder, what, space = path.parent, DISK_ERRORS[exc.errno], []  # type: ignore[index]
    if exc.errno != errno.EROFS:
        with suppress(OSError):
            space.append(f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free in '{folder}'")
        if path.suffix == ".pt" and path.exists():
            space.append(f"a checkpoint of this run takes about {path.stat().st_size / 1e6:.1f} MB")
    what += f" ({'; '.join(space)})" if space else ""
    good = path.suffix == ".pt" and path.exists()
    return EnvironmentProblem(
        f"cannot write '{path}': {what}. "
        f"{f'The last good checkpoint {path.name} is kept' if good else 'What was written before is kept'}. "
        f"{'Make that disk writable again' if exc.errno == errno.EROFS else 'Free space on that disk'}, or "
        f"move the folder '{folder.parent}' into a folder NEW_DIR on a disk with room and add "
        f"--checkpoint-dir NEW_DIR below; then continue with: {resume_command(folder)}"
    )


def resume_command(folder: Path) -> str:
    """``fedreg resume <experiment id>``, with the tracking store recorded in ``folder`` unless default."""
    from fedreg.tracking import tracking_uri

    uri = None
    with suppress(OSError, ValueError):
        uri = json.loads((folder / "experiment.json").read_text()).get("tracking_uri")
    extra = f" --tracking-uri {shlex.quote(uri)}" if uri and uri != tracking_uri(None) else ""
    return f"fedreg resume {folder.name}{extra}"


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
    probe = folder / ".write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        with suppress(OSError):
            probe.unlink(missing_ok=True)
        raise (EnvironmentProblem if exc.errno in DISK_ERRORS else FedregError)(
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
        """Atomic, as :func:`save`: a failed write leaves the previous ``experiment.json`` and no ``.tmp``."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_name("experiment.json.tmp")
        try:
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, self.meta_path)
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            if exc.errno in DISK_ERRORS:
                raise disk_problem(self.meta_path, exc) from None
            raise

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
