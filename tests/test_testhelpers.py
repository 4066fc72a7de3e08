"""The helpers that start the tests' child processes (testhelpers.child): a child reacts to SIGINT and SIGTERM
however pytest was started (a background job starts it with SIGINT ignored), and neither it nor what it
started outlives the test, even when the test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testhelpers import child, deadline, run_child, signal_handler

SHOW_SIGNALS = (
    "import signal; "
    "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, "
    "signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "
    "sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []) "
    "if s in (signal.SIGINT, signal.SIGTERM)))"
)


def test_a_child_starts_with_sigint_and_sigterm_at_their_defaults():
    # this process as a background job (or a careless launcher) leaves it: both ignored, and blocked
    with signal_handler(signal.SIGINT, signal.SIG_IGN), signal_handler(signal.SIGTERM, signal.SIG_IGN):
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT, signal.SIGTERM])
        try:
            plain = subprocess.run([sys.executable, "-c", SHOW_SIGNALS], capture_output=True, text=True)
            helped = run_child([sys.executable, "-c", SHOW_SIGNALS], 60)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    assert plain.stdout.split(None, 2)[:2] == ["False", "False"]  # what the helper is there for
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.strip() == "True True []"  # Python's Ctrl-C handler installed, SIGTERM at default


def test_a_child_interrupted_by_sigint_raises_keyboard_interrupt():
    code = "import sys, time; print('ready', flush=True); time.sleep(60)"
    with signal_handler(signal.SIGINT, signal.SIG_IGN):
        with child([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
    # Python ends on an uncaught KeyboardInterrupt by SIGINT, after printing its traceback
    assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, err


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_failing_test_leaves_neither_its_child_nor_the_childs_children():
    # the child starts a grandchild (as fedreg starts sweep workers or an MLflow server) and ignores SIGTERM
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(g.pid, flush=True); time.sleep(600)"
    )
    with pytest.raises(AssertionError, match="the test fails"):
        with child([sys.executable, "-c", code], stdout=subprocess.PIPE) as proc:
            grandchild = int(proc.stdout.readline())
            raise AssertionError("the test fails")
    assert proc.returncode == -signal.SIGKILL  # reaped
    deadline = time.monotonic() + 10
    while not gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(grandchild)


def test_a_timeout_kills_the_child():
    with pytest.raises(subprocess.TimeoutExpired):
        with child([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.PIPE) as proc:
            proc.communicate(timeout=0.5)
    assert proc.returncode == -signal.SIGKILL


def test_a_deadline_ends_a_read_from_a_silent_child():
    t0 = time.monotonic()
    with child([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.PIPE) as proc:
        with deadline(proc, 0.5):
            assert proc.stdout.read() == ""  # EOF once the deadline killed it
        assert proc.wait(10) == -signal.SIGKILL
    assert time.monotonic() - t0 < 60


def test_an_in_process_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with signal_handler(signal.SIGINT, signal.default_int_handler):
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before
