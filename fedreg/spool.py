"""When the tracking store cannot take a call: why (:func:`_problem`: a server that cannot be reached, a
database locked, its disk full or read-only; all retried), a SQLite store refused before it is opened
(:func:`check_local_store`), and the spool: the calls a run could not deliver, kept on disk and sent later
with ``fedreg replay``. A spool folder ``<time>/`` holds ``calls.jsonl`` (one call a line, in order),
``files/`` (the files those calls log) and ``target.json`` (the tracking store)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from fedreg.errors import EnvironmentProblem, FedregError


def _is_outage(exc: BaseException) -> bool:
    """A tracking server that cannot be reached (as opposed to a request it rejected), or a SQLite store
    still locked by other writers after MLflow's own wait (parallel sweeps): either is retried later."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError):
        return True
    text = str(exc)
    if "database is locked" in text:
        return True
    return isinstance(exc, MlflowException) and any(
        s in text
        for s in (
            "Max retries exceeded",
            "Connection refused",
            "Failed to establish",
            "failed with exception",
            "Read timed out",
            "Connection aborted",
            "RemoteDisconnected",
        )
    )


#: what a store that cannot be written says: errno, or words of SQLite / the OS, and the short reason
STORAGE = {
    errno.ENOSPC: "its disk is full",
    errno.EDQUOT: "its disk quota is exceeded",
    errno.EROFS: "it is read-only",
}
STORAGE_WORDS = {
    "database or disk is full": "its disk is full",
    "No space left on device": "its disk is full",
    "Disk quota exceeded": "its disk quota is exceeded",
    "readonly database": "it is read-only",
    "Read-only file system": "it is read-only",
}
STORAGE_FIX = {
    "its disk is full": "Free space on its disk, or point tracking.uri / MLFLOW_TRACKING_URI at a store "
    "on another disk",
    "it is read-only": "Make it writable (remount its disk read-write, or fix its permissions), or point "
    "tracking.uri / MLFLOW_TRACKING_URI at another store",
}
STORAGE_FIX["its disk quota is exceeded"] = STORAGE_FIX["its disk is full"]


def storage_problem(exc: BaseException) -> str | None:
    """Why a store cannot be written (``its disk is full``, ``it is read-only``...), or None: another
    failure. Retried like an outage: space may be freed, a disk remounted."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in STORAGE:
            return STORAGE[seen.errno]
        seen = seen.__cause__ or seen.__context__
    return next((why for words, why in STORAGE_WORDS.items() if words in str(exc)), None)


def _problem(exc: BaseException) -> str | None:
    """Why a tracking call failed that is worth retrying later (None: it is not)."""
    if _is_outage(exc):
        return "the database is locked" if "database is locked" in str(exc) else "unreachable"
    return storage_problem(exc)


class _RetriedQuietly(logging.Filter):
    """Drops MLflow's own error log (with its traceback) of a failure fedreg retries and reports once."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or _problem(exc) is None


def _quiet_mlflow() -> None:
    log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _RetriedQuietly) for f in log.filters):
        log.addFilter(_RetriedQuietly())


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None: not one, or in memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def check_local_store(uri: str) -> None:
    """Refuse at once a SQLite store that cannot be written: an existing database file (or its folder,
    where SQLite writes its journal) read-only, or, for a new one, the folder it would be made in (MLflow
    would retry for minutes, then fail with a traceback)."""
    path = sqlite_file(uri)
    if path is None:
        return
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # MLflow makes the missing folders
    try:
        if path.exists():
            os.close(os.open(path, os.O_RDWR))
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".fedreg-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        machine = exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, *STORAGE)
        cls = EnvironmentProblem if machine else FedregError
        if path.exists():
            raise cls(
                f"the MLflow tracking store '{uri}' is a read-only database: '{path}' cannot be written "
                f"({exc.strerror or exc}), so no run can be recorded in it. Make it writable (remount its "
                f"disk read-write, or fix the permissions of the file and of its folder '{folder}'), or "
                f"point tracking.uri / MLFLOW_TRACKING_URI at another store"
            ) from None
        why = "read-only" if exc.errno == errno.EROFS else f"not writable ({exc.strerror or exc})"
        raise cls(
            f"cannot create the MLflow tracking store '{uri}': its folder '{folder}' is {why}. Make the "
            f"folder writable, or point tracking.uri / MLFLOW_TRACKING_URI at a store in a writable folder "
            f"(e.g. sqlite:///mlflow.db in the working directory)"
        ) from None


def _write_into(partial: Path, folder: Path, calls: list[tuple[str, tuple]], uri: str) -> None:
    """Write the spool into ``partial``, naming its files as they will be once it is renamed ``folder``."""
    (partial / "files").mkdir(parents=True)
    with (partial / "calls.jsonl").open("w") as f:
        for i, (op, args) in enumerate(calls):
            saved = list(args)
            if op == "log_file":  # a folder per file: the artifact keeps its name
                name = Path("files", str(i), Path(saved[1]).name)
                (partial / name).parent.mkdir()
                shutil.copy2(saved[1], partial / name)
                saved[1] = str(folder / name)
            f.write(json.dumps({"op": op, "args": saved}) + "\n")
    (partial / "target.json").write_text(json.dumps({"tracking_uri": uri}))


def write(root: str | os.PathLike, calls: list[tuple[str, tuple]], uri: str) -> Path:
    """Keep ``calls`` in a new folder under ``root``; when that cannot be written (its disk full or
    read-only, e.g. the one the store is on), under ``.fedreg/spool`` of the working directory, then the
    temporary folder. A folder is written as ``<name>.<pid>.tmp`` and renamed when complete: no partial
    spool is left behind."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    bases = [Path(root), Path.cwd() / ".fedreg" / "spool", Path(tempfile.gettempdir()) / "fedreg-spool"]
    tried: list[str] = []
    for base in dict.fromkeys(b.resolve() for b in bases):
        folder, n = base / stamp, 1
        while folder.exists():
            folder, n = base / f"{stamp}-{n}", n + 1
        partial = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        try:
            shutil.rmtree(partial, ignore_errors=True)
            _write_into(partial, folder, calls, uri)
            partial.rename(folder)
            return folder
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            tried.append(f"'{base}' ({exc.strerror or exc})")
    raise EnvironmentProblem(
        f"{len(calls)} tracking calls could not be delivered to {uri}, and no spool folder could be written "
        f"to keep them: {'; '.join(tried)}. Free space on one of these disks and run again"
    )


def delivery_report(tracker: Any, folder: Path | None) -> str | None:
    """What a closed :class:`~fedreg.tracking.Tracker` has to say: the calls it kept in ``folder`` (what
    its ``close`` returned), or that the server was unreachable and everything was delivered later; None
    when there was nothing to say."""
    if folder is not None:
        return warning(tracker.pending, tracker.uri, tracker.problem, folder, tracker.unended)
    if tracker.outages:
        return f"the tracking server was unreachable {tracker.outages} time(s); all was delivered later"
    return None


def warning(n: int, uri: str, problem: str | None, folder: Path, unended: dict[str, bool]) -> str:
    """The one warning for calls kept in ``folder``: why, where, how to send them, and the status the runs
    whose end is among them have in MLflow meanwhile (``unended``: run id -> whether it was ended anyway)."""
    fix = {
        "its disk is full": " (free space on its disk)",
        "its disk quota is exceeded": " (free space on its disk)",
        "it is read-only": " (make it writable)",
    }.get(problem or "", "")
    status = ""
    if running := [r for r, ended in unended.items() if not ended]:
        status = (
            f" MLflow shows run {', '.join(running)} as RUNNING until they are sent (its end could not be "
            f"recorded either): the replay ends it."
        )
    elif unended:
        status = f" Run {', '.join(unended)} was ended in MLflow anyway; the replay adds what it lacks."
    return (
        f"warning: {n} tracking calls could not be delivered to {uri} ({problem or 'unreachable'}); they are "
        f"kept in '{folder}'.{status} Send them once the store works again{fix} with: "
        f"fedreg replay {shlex.quote(str(folder))}"
    )


def _rewrite(path: Path, calls: list[dict]) -> None:
    """Replace ``path`` with ``calls`` atomically: a failed write leaves it as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("".join(json.dumps(c) + "\n" for c in calls))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
