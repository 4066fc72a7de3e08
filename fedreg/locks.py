"""The lock on an experiment folder: one ``fedreg`` process runs (or continues) its runs at a time."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from fedreg.errors import FedregError

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked
    fcntl = None  # type: ignore[assignment]


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

    @staticmethod
    def alive(holder: dict[str, Any]) -> bool:
        """Whether the process a lock file names still runs: its pid exists on this host (a holder on another
        host cannot be checked from here and counts as alive). For reading only (``fedreg status``):
        whether the lock is held is what ``acquire`` decides."""
        if holder.get("host") != socket.gethostname():
            return bool(holder)
        try:
            os.kill(int(holder["pid"]), 0)
        except (KeyError, TypeError, ValueError, ProcessLookupError):
            return False
        except PermissionError:  # another user's process
            return True
        cmdline = Path(f"/proc/{holder['pid']}/cmdline")
        try:  # a pid the system gave to another program since
            return b"fedreg" in cmdline.read_bytes() if cmdline.parent.exists() else True
        except OSError:
            return False

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


__all__ = ["FolderLock"]
