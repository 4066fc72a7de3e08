"""``fedreg ui``: MLflow's UI on fedreg's tracking store, opened at a comparison.

One ``mlflow ui`` server with one worker and MLflow's background job runner switched off
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: fedreg uses no MLflow jobs, and the runner's consumer
processes would outlive a SIGTERM), started in a process group of its own, which Ctrl-C and SIGTERM end as a
whole. The printed links are the saved views of :mod:`fedreg.mlflow_view` (written for a comparison that has
none, such as one logged by an older fedreg).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from fedreg.errors import EnvironmentProblem, FedregError
from fedreg.mlflow_app import open_url

#: how long the server's processes get to end after SIGTERM before they are killed
STOP_GRACE_S = 10.0


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot take the server (None: it can)."""
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        return f"{host}:{port} cannot be used ({exc.strerror or exc})"
    return None


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> float | None:
    """Seconds until ``url``/health answers (None: the server ended or did not answer in time)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except OSError:
            time.sleep(0.1)
    return None


def latest_parent(client: Any) -> Any | None:
    """The latest parent run in the store (None: it has none)."""
    ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    if not ids:
        return None
    runs = client.search_runs(
        ids, "tags.`fedreg.role` = 'parent'", order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def comparison_links(
    uri: str, base: str, parent_id: str | None = None, ready: threading.Event | None = None
) -> dict[str, str] | None:
    """The links of a comparison (the latest, or ``parent_id``), its saved views written first (again: a
    comparison logged by an older fedreg gets this one's); None when the store holds no comparison or cannot
    be read."""
    from mlflow.tracking import MlflowClient

    from fedreg.mlflow_view import links, write_views
    from fedreg.registry import installed_figures
    from fedreg.tracking import EXPERIMENT_TAGS

    try:
        figures = installed_figures()  # imports the plugins: the slow part, done while the server starts
        if ready is not None:
            ready.wait()  # the server creates or migrates a new store: never two of them at once
        client = MlflowClient(tracking_uri=uri)
        parent = client.get_run(parent_id) if parent_id else latest_parent(client)
        if parent is None:
            return None
        exp_id, pid = parent.info.experiment_id, parent.info.run_id
        exp = client.get_experiment(exp_id)
        for k, v in EXPERIMENT_TAGS.items():
            if exp.tags.get(k) != v:
                client.set_experiment_tag(exp_id, k, v)
        title = parent.data.tags.get("mlflow.runName", pid[:8])
        write_views(client, exp_id, pid, title, figures)  # this fedreg's view, always
        return links(base, exp_id, pid)
    except Exception:  # noqa: BLE001 - the UI starts anyway; only the comparison's links are missing
        return None


def server_command(uri: str, host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",  # one is plenty for one user, and ready in seconds (MLflow's default 4 is not)
        "1",
        "--app-name",  # MLflow's server with fedreg's /fedreg/open page (fedreg.mlflow_app)
        "fedreg",
    ]


def stop(proc: subprocess.Popen) -> None:
    """End the server's whole process group: SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        try:  # the launcher ended: end what it left in the group (uvicorn)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def run_ui(uri: str, host: str, port: int, run: str | None = None, open_browser: bool = False) -> int:
    """Serve the UI until Ctrl-C or SIGTERM (exit 0) or until the server ends (its exit status)."""
    from fedreg.signals import sigterm_as_interrupt

    if not 1 <= port <= 65535:
        raise FedregError(f"--port {port} is not a TCP port; use a number from 1 to 65535 (default 5000)")
    problem = port_problem(host, port)
    if problem:
        raise EnvironmentProblem(
            f"{problem}: another server may be listening there. Stop it, or pass a free port with --port"
        )
    base = f"http://{host}:{port}"
    print(f"starting the MLflow UI on {base} for {uri}", file=sys.stderr)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with sigterm_as_interrupt():
        proc = subprocess.Popen(server_command(uri, host, port), env=env, start_new_session=True)
        found: dict[str, Any] = {}
        up = threading.Event()
        # the links (and the saved views) come from the store; the plugins load while the server starts
        worker = threading.Thread(
            target=lambda: found.update(comparison_links(uri, base, run, up) or {}), daemon=True
        )
        worker.start()
        try:
            ready = wait_ready(base, proc)
            up.set()
            if ready is None:
                code = proc.poll()
                raise EnvironmentProblem(
                    f"the MLflow server on {base} did not start (exit status {code}); its output is above"
                )
            worker.join()
            url = found["runs"] if found else open_url(base, "/experiments?workflowType=machine_learning")
            print(f"MLflow UI ready in {ready:.1f} s. Latest comparison: {url}", flush=True)
            if found:
                print(f"  its charts: {found['runs charts']}", flush=True)
                print(f"  mean over seeds (grouped by fedreg.group): {found['groups']}", flush=True)
            if open_browser:
                import webbrowser

                webbrowser.open(url)
            return proc.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            stop(proc)
