"""``fedreg ui`` stops every process it started on Ctrl-C and on SIGTERM, and refuses a port another server
holds (issues 24 and 25). Real processes: ``fedreg ui`` on a temporary store, its MLflow server, a real HTTP
server on 127.0.0.1 for the busy port."""

from __future__ import annotations

import http.server
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testhelpers import child

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    parent_of = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent_of[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_ui_stops_every_process_it_started(tmp_path, sig):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    port = free_port()
    cmd = [sys.executable, "-m", "fedreg", "ui", "--tracking-uri", uri, "--port", str(port)]
    with child(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        t0 = time.monotonic()
        assert proc.stdout is not None
        for line in proc.stdout:
            if re.search(r"MLflow UI ready in", line):
                break
        else:
            raise AssertionError(f"fedreg ui ended (exit {proc.wait()}) without saying it was ready")
        started = descendants(proc.pid)
        assert started, "fedreg ui started no server process"
        # one MLflow launcher and one uvicorn worker: no job-runner consumers, no extra workers
        assert len(started) <= 2, f"fedreg ui started {len(started)} processes: {sorted(started)}"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 15
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(started), f"left running after {sig.name}: {sorted(alive(started))}"
        assert port_free(port), f"port {port} still answers after {sig.name}"
        print(f"{sig.name}: ready after {time.monotonic() - t0:.1f} s, {len(started)} server processes")


def test_ui_on_a_busy_port_says_so_and_starts_nothing(tmp_path):
    """A real HTTP server holds the port: exit status 1 (the machine, not the input), a message that names
    the port and the fix, and no MLflow server left behind."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        cmd = [sys.executable, "-m", "fedreg", "ui", "--tracking-uri", uri, "--port", str(port)]
        with child(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 1, (out, err)
            assert f"127.0.0.1:{port}" in err and "--port" in err, err
            assert "Traceback" not in err
            assert "starting the MLflow UI" not in err  # refused before any server was started
    finally:
        server.shutdown()
        server.server_close()
