"""Where a sweep's child runs run (:mod:`fedreg.sweep`): worker processes on this machine
(:class:`ProcessPool`) or Ray tasks (:class:`RayPool`), behind one interface (:class:`Pool`) that the
parent process (:class:`fedreg.experiment.Experiment`) submits children to and reads events from."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from fedreg.errors import FedregError
from fedreg.sweep import ChildOutcome, ChildTask, ParentGone, failure_reason, work


class Pool(Protocol):
    """Where child runs run. ``events`` returns messages: ``("started", index, where)``,
    ``("round", index, round, shown)`` and ``("done", ChildOutcome)``."""

    capacity: int

    def submit(self, task: ChildTask) -> str: ...

    def events(self, timeout: float) -> list[tuple]: ...

    def stop(self, grace_s: float = 30.0) -> list[int]: ...


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _process_main(task: ChildTask, conn: Connection) -> None:
    """A worker process: one child, its messages and outcome over ``conn``; SIGTERM as Ctrl-C."""
    from fedreg.signals import sigterm_as_interrupt

    def send(msg: tuple) -> None:
        # plain pickle: multiprocessing's own would share tensors through this process, which ends soon
        try:
            conn.send_bytes(pickle.dumps(msg))
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:  # nobody reads: the parent is gone
            raise ParentGone() from exc

    try:
        with sigterm_as_interrupt():
            outcome = work(task, send)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM during the set-up (training ends its run itself)
        outcome = ChildOutcome(task.index, "KILLED", reason="interrupted")
    except BaseException as exc:  # noqa: BLE001 - whatever happened, the parent hears of it
        outcome = ChildOutcome(task.index, "FAILED", reason=failure_reason(exc))
        traceback.print_exc(file=sys.stderr)
    try:
        send(("done", outcome))
    except ParentGone:
        pass  # what it would have said is in the tracking store
    conn.close()


class ProcessPool:
    """Up to ``jobs`` worker processes on this machine, one per child (``forkserver`` start method)."""

    def __init__(self, jobs: int):
        import multiprocessing as mp

        self.capacity = jobs
        self.ctx = mp.get_context("forkserver")
        # the server imports these (and builds the plugin registry) once, starting now, while the parent
        # opens the first child runs; each worker is forked from it with them loaded
        self.ctx.set_forkserver_preload(["fedreg._worker_preload"])
        from multiprocessing import forkserver

        forkserver.ensure_running()
        self.procs: dict[int, tuple[Any, Connection, bool]] = {}

    def submit(self, task: ChildTask) -> str:
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_process_main, args=(task, send), name=f"fedreg {task.label}")
        proc.start()
        send.close()
        self.procs[task.index] = (proc, recv, False)
        return f"pid {proc.pid}"

    def events(self, timeout: float) -> list[tuple]:
        if not self.procs:
            return []
        waitables: list[Any] = [c for _, c, _ in self.procs.values()]
        waitables += [p.sentinel for p, _, _ in self.procs.values()]
        wait(waitables, timeout)
        out: list[tuple] = []
        for index, (proc, conn, done) in list(self.procs.items()):
            alive = proc.is_alive()  # before reading: what a worker sent before it ended is read below
            done = self._drain(conn, out) or done
            self.procs[index] = (proc, conn, done)
            if alive:
                continue
            proc.join()
            if not done:
                out.append(
                    (
                        "done",
                        ChildOutcome(
                            index,
                            "FAILED",
                            reason=f"its worker process ({proc.pid}) ended with {_exit_text(proc.exitcode)} "
                            "before the run finished",
                        ),
                    )
                )
            conn.close()
            del self.procs[index]
        return out

    @staticmethod
    def _drain(conn: Connection, out: list[tuple]) -> bool:
        """Read what ``conn`` holds into ``out``; True if that included the outcome."""
        done = False
        try:
            while conn.poll():
                msg = pickle.loads(conn.recv_bytes())
                out.append(msg)
                done = done or msg[0] == "done"
        except (EOFError, OSError):
            pass
        return done

    def stop(self, grace_s: float = 30.0) -> list[int]:
        """Interrupt every worker (SIGTERM: each marks its run KILLED), wait up to ``grace_s``, then kill
        what is left; the indices of the children that were running."""
        running = list(self.procs)
        for proc, _, _ in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc, conn, _ in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self.procs.clear()
        return running


def local_store(uri: str) -> bool:
    """Whether a tracking URI names a store on this machine's disk (a folder, ``file:`` or ``sqlite:``)."""
    from mlflow.utils.uri import get_uri_scheme

    try:
        return get_uri_scheme(uri) in ("", "file", "sqlite")
    except Exception:  # noqa: BLE001 - a URI MLflow cannot parse is not a local store it could open
        return False


def check_cluster_store(uri: str, nodes: int, client_mode: bool) -> None:
    """Refuse a local tracking store for a Ray sweep on more than one node (or through Ray Client, where
    tasks run on the cluster, not here): each node would write its own copy."""
    if (nodes > 1 or client_mode) and local_store(uri):
        where = f"{nodes} nodes" if nodes > 1 else "a cluster joined through Ray Client"
        raise FedregError(
            f"the tracking store '{uri}' is a file on this machine, but the sweep's child runs run on "
            f"{where}, which cannot share it. Start a tracking server that every node reaches (for example "
            "'mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri sqlite:///mlflow.db' on the head "
            "node) and point tracking.uri (or MLFLOW_TRACKING_URI) at it: http://HEAD_IP:5000"
        )


def _ray_main(task: ChildTask, queue: Any) -> ChildOutcome:
    """A Ray task: one child; progress through a Ray queue."""

    def send(msg: tuple) -> None:
        queue.put_nowait(msg)

    send(("started", task.index, f"Ray node {os.uname().nodename}, pid {os.getpid()}"))
    return work(task, send)


class RayPool:
    """Each child a Ray task on a local Ray or a cluster; at most ``jobs`` at once (default: as many as the
    cluster's CPUs allow at ``threads`` CPUs each)."""

    def __init__(self, address: str | None, jobs: int | None, threads: int, uri: str):
        from fedreg.backends.ray_backend import init_ray

        init_ray(address)
        import ray
        from ray.util.queue import Queue

        client_mode = (address or os.environ.get("RAY_ADDRESS") or "").startswith("ray://")
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        check_cluster_store(uri, nodes, client_mode)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        self.capacity = jobs or max(1, int(cpus // threads))
        self.ray = ray
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.remote = ray.remote(_ray_main)
        self.refs: dict[Any, int] = {}

    def submit(self, task: ChildTask) -> str:
        ref = self.remote.options(num_cpus=task.threads, max_retries=0, name=f"fedreg {task.label}").remote(
            task, self.queue
        )
        self.refs[ref] = task.index
        return "Ray task"

    def _drain(self) -> list[tuple]:
        n = self.queue.qsize()
        return list(self.queue.get_nowait_batch(n)) if n else []

    def events(self, timeout: float) -> list[tuple]:
        out = self._drain()
        if not self.refs:
            return out
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        out += self._drain()
        for ref in ready:
            index = self.refs.pop(ref)
            try:
                outcome = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a crashed worker or node: this child failed
                outcome = ChildOutcome(index, "FAILED", reason=f"its Ray task failed: {failure_reason(exc)}")
            out.append(("done", outcome))
        return out

    def stop(self, grace_s: float = 30.0) -> list[int]:
        running = list(self.refs.values())
        for ref in self.refs:
            self.ray.cancel(ref)
        deadline = time.monotonic() + grace_s
        while self.refs and time.monotonic() < deadline:
            ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=1.0)
            for ref in ready:
                self.refs.pop(ref)
        self.refs.clear()
        return running
