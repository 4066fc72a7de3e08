"""Helpers shared by the tests (import them from here, not from conftest)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
BLOOD_MD5 = "7053d0359d879ad8a5505303e11de1dc"


def make_medmnist_npz(
    folder: Path,
    flag: str,
    n_train: int = 300,
    n_test: int = 100,
    channels: int = 1,
    num_classes: int = 11,
    seed: int = 0,
) -> str:
    """Write a small file in the MedMNIST npz format (images uint8, labels (N, 1)); return its MD5.
    Class c's images are brighter in a class-specific block so that a model can learn them."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, num_classes, size=n).astype(np.uint8)
        shape = (n, 28, 28) if channels == 1 else (n, 28, 28, channels)
        x = rng.integers(0, 60, size=shape).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 4)
            x[i, r * 7 : (r + 1) * 7, col * 7 : (col + 1) * 7] = 220
        return x, y.reshape(-1, 1)

    tr_x, tr_y = split(n_train)
    va_x, va_y = split(max(n_test // 2, 1))
    te_x, te_y = split(n_test)
    path = folder / f"{flag}.npz"
    np.savez(
        path,
        train_images=tr_x,
        train_labels=tr_y,
        val_images=va_x,
        val_labels=va_y,
        test_images=te_x,
        test_labels=te_y,
    )
    return hashlib.md5(path.read_bytes()).hexdigest()


def small_medmnist_spec(folder: Path, n_train: int = 200, n_test: int = 40) -> tuple[dict, str]:
    """:func:`base_spec` on a small MedMNIST-format 'organsmnist' file written into ``folder`` (4 clients,
    iid); returns (spec, the file's MD5)."""
    md5 = make_medmnist_npz(folder, "organsmnist", n_train=n_train, n_test=n_test)
    raw = base_spec()
    raw["data"] = {
        "dataset": {"name": "organsmnist", "params": {"md5": md5}},
        "root": str(folder),
        "num_clients": 4,
        "partition": "iid",
    }
    return raw, md5


def base_spec(**over) -> dict:
    spec = {
        "name": "t",
        "seed": 1,
        "data": {
            "dataset": "bloodmnist",
            "num_clients": 4,
            "partition": {"name": "dirichlet", "params": {"alpha": 1.0}},
        },
        "model": "cnn",
        "training": {
            "objective": "cross_entropy",
            "local_epochs": 1,
            "batch_size": 32,
            "optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-5},
        },
        "federation": {"rounds": 3, "clients_per_round": 2, "selection": "uniform", "aggregation": "fedavg"},
        "metrics": ["global_accuracy"],
        "tracking": {"experiment": "test"},
    }
    for k, v in over.items():
        spec[k] = v
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- child processes and signals --------------------------------------------------------------------------
# A test that starts a process must not depend on how pytest itself was started, nor leave the process
# behind. A shell starts a background job (``cmd &`` in a script, nohup, some CI runners) with SIGINT and
# SIGQUIT ignored; children inherit ignored signals across exec, and Python installs its Ctrl-C handler
# (KeyboardInterrupt) only where SIGINT is not ignored at start-up, so such a child would never see a test's
# Ctrl-C. Hence every child of a test starts through these helpers.

#: the signals that tests send their children: a child starts with each at its default disposition, unblocked
CHILD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _child_signals_default() -> None:
    """Runs in the child between fork and exec: SIGINT and SIGTERM back to their defaults and unblocked,
    whatever the test process inherited (only C-level calls that take no lock another thread could hold)."""
    for sig in CHILD_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_SIGNALS)


def start_child(cmd: Sequence[str], **popen_kw) -> subprocess.Popen:
    """Start ``cmd`` as a test's child: SIGINT and SIGTERM at their defaults and unblocked in it (so that the
    Python in it installs its Ctrl-C handler, and a test's SIGTERM reaches fedreg's own), in a session and
    process group of its own whose id is its pid (so that :func:`end_child` reaches whatever it starts in
    turn: sweep workers, a tracking server's workers; ``os.killpg(proc.pid, sig)`` signals them all), with
    stdin from /dev/null and text output. Pair it with :func:`end_child`, or use :func:`child`."""
    for key in ("preexec_fn", "start_new_session", "process_group"):
        if key in popen_kw:
            raise TypeError(f"start_child sets {key} itself")
    popen_kw.setdefault("stdin", subprocess.DEVNULL)
    popen_kw.setdefault("text", True)
    return subprocess.Popen(list(cmd), preexec_fn=_child_signals_default, start_new_session=True, **popen_kw)


def end_child(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and its process group (SIGKILL: also a stopped one), close its pipes and reap it. Safe
    to call on a child that has already ended, been reaped, or been killed by the test."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader while any member lives
    except (ProcessLookupError, PermissionError):
        pass  # no member left (PermissionError: the id has since gone to another user's group)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    proc.wait()


@contextmanager
def child(cmd: Sequence[str], **popen_kw) -> Iterator[subprocess.Popen]:
    """``with child(cmd, ...) as proc:`` :func:`start_child`; when the block ends, however it ends (an
    assertion that fails, a timeout, Ctrl-C), :func:`end_child`: no process of the test outlives it."""
    proc = start_child(cmd, **popen_kw)
    try:
        yield proc
    finally:
        end_child(proc)


def run_child(cmd: Sequence[str], timeout: float, **popen_kw) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)``, through :func:`child`:
    on a timeout the whole process group is killed (``subprocess.run`` kills the child alone, leaving what
    it started, such as sweep workers, running)."""
    popen_kw.setdefault("stdout", subprocess.PIPE)
    popen_kw.setdefault("stderr", subprocess.PIPE)
    with child(cmd, **popen_kw) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextmanager
def deadline(proc: subprocess.Popen, seconds: float) -> Iterator[None]:
    """Within the block, ``proc``'s process group is killed once ``seconds`` have passed, so that a read
    from its pipe ends (EOF) instead of waiting forever on a child that never prints what the test awaits."""

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    timer = threading.Timer(seconds, kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@contextmanager
def signal_handler(signum: int, handler) -> Iterator[None]:
    """Within the block, ``handler`` handles ``signum`` in this process and the signal is not blocked; before
    and after, as they were. For an in-process signal test, which cannot rely on the disposition pytest was
    started with (a background job's SIGINT is ignored)."""
    previous = signal.signal(signum, handler)
    was_blocked = signum in signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    try:
        yield
    finally:
        if was_blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signum])
        signal.signal(signum, previous)


def wait_for(pred: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    """Poll ``pred`` every ``every`` seconds until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
