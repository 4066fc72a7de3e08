"""A sweep's child runs in parallel: worker processes on this machine, or Ray tasks.

The child runs of one invocation (variants x grid points x seeds) are independent. The parent process
(:class:`fedreg.experiment.Experiment`) checks every input, opens the parent MLflow run, and opens each
child's MLflow run (tags, params, resolved spec, partition: what a sequential sweep writes) just before the
child starts, recording it in ``experiment.json`` so that ``--resume`` finds it. A worker then loads the
data, trains the child with its own tracking client (MLflow's SQLite store waits for its lock; see
:mod:`fedreg.tracking`), ends the child's run ``FINISHED`` / ``FAILED`` / ``KILLED`` and returns a
:class:`ChildOutcome`. A child that fails, or whose worker dies, is one failed child: the others go on.

Workers:

- :class:`ProcessPool`: ``jobs`` processes from the standard library's ``forkserver`` start method (a server
  process that imported fedreg and torch once forks each worker, so a worker starts in well under a second
  and inherits no torch thread pool); one process per child, so a killed worker ends one child only.
- :class:`RayPool`: each child a Ray task (``max_retries=0``: a failed child is reported, not silently run
  again), on a local Ray or the cluster named by ``execution.address`` / ``$RAY_ADDRESS``. On a cluster of
  more than one node the tracking store must be a server (a SQLite or file store on one node's disk cannot
  be shared): :func:`check_cluster_store`.

Each child trains with ``execution.threads`` intra-op threads, or one when the spec leaves it unset: a child
gives the same metrics, bit for bit, whether it ran alone, in a sequential sweep, in a worker process or on
Ray at the same thread count.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

from fedreg.errors import ComponentFailure, FedregError, PluginError

#: environment variables a worker takes from the parent when it has none of its own (where the data and
#: the tracking store are; a Ray worker on another node keeps its own)
PASSED_ENV = ("FEDREG_DATA_DIR", "MLFLOW_TRACKING_URI")


@dataclass
class ChildTask:
    """One child run for a worker: what to train and where to log it. Picklable."""

    index: int  # position in the invocation's list of runs
    rs: Any  # fedreg.spec.ResolvedSpec
    label: str  # the child's name (its run name)
    run_id: str  # its MLflow run, opened by the parent
    tracking_uri: str
    experiment: str
    spool_dir: str
    checkpoint_file: str | None  # where it checkpoints (None: off)
    resume_file: str | None  # the checkpoint it continues from
    logged_through: int  # the last round its MLflow run holds
    threads: int  # intra-op threads
    fingerprint: str = ""  # of the resolved spec in the parent: the worker must resolve it alike
    cwd: str = field(default_factory=os.getcwd)
    env: dict[str, str] = field(
        default_factory=lambda: {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    )


@dataclass
class ChildOutcome:
    """How a child run ended. ``status``: FINISHED, FAILED or KILLED; ``reason``: why it did not finish;
    ``spool``: the folder of tracking calls it could not deliver (send them with ``fedreg replay``)."""

    index: int
    status: str
    result: Any = None  # fedreg.rounds.RunResult when FINISHED (client states are not sent back)
    reason: str | None = None
    spool: str | None = None


def grid_tags(rs: Any) -> dict[str, str]:
    """A grid child's tags: ``fedreg.grid`` (its point as JSON), ``fedreg.grid_label`` (``tau=2``, as in its
    name) and ``fedreg.grid.<path>`` per gridded path; {} outside a grid. (Its params hold the values at
    their paths as well, for filtering and plotting in the MLflow UI.)"""
    if not rs.grid:
        return {}
    from fedreg.spec.loading import format_value, grid_label

    tags = {"fedreg.grid": json.dumps(rs.grid), "fedreg.grid_label": grid_label(rs.grid)}
    tags.update({f"fedreg.grid.{path}": format_value(v) for path, v in rs.grid.items()})
    return tags


def expected_cost(rs: Any, fed: Any) -> float:
    """A child's expected work, for ordering a sweep longest first: the training samples of the clients its
    selection draws, round by round, x local epochs, plus its evaluations (a forward pass of the test sets,
    counted as a third of a training step). The draws are those of the run's own sampling stream with a
    fresh selector (one that learns from the run is simulated without that feedback); under label skew the
    clients' sizes differ widely, so two seeds of one spec can differ by half in cost."""
    from fedreg.components import RunInfo
    from fedreg.evaluation import call
    from fedreg.rounds import _select

    s = rs.spec
    fr = s.federation
    sizes = [len(c.train_idx) for c in fed.clients]
    try:
        selector = rs.components["selection"].instantiate()
        infos = fed.infos()
        info = RunInfo(tuple(infos), fed.dataset.num_classes, fr.clients_per_round, fr.rounds, s.seed)
        call(selector, "start_run", 0, None, info)
        trained = sum(
            sizes[c]
            for r in range(1, fr.rounds + 1)
            for c in _select(selector, r, infos, fr.clients_per_round, s.seed)
        )
    except Exception:  # noqa: BLE001 - a selector that cannot run ahead: the mean client instead
        trained = sum(sizes) / max(1, len(sizes)) * fr.clients_per_round * fr.rounds
    evaluations = -(-fr.rounds // s.evaluation.every)
    tested = len(fed.dataset.test_y) + sum(len(c.test_idx) for c in fed.clients)
    return trained * s.training.local_epochs + evaluations * tested / 3


def failure_reason(exc: BaseException) -> str:
    """One line saying why a child failed (the component and round for a component's failure)."""
    if isinstance(exc, ComponentFailure):
        return str(PluginError(str(exc))).splitlines()[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, FedregError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def train_child(
    rs: Any,
    fed: Any,
    tracker: Any,
    run_id: str,
    label: str,
    checkpoint_file: Path | None,
    resume: dict[str, Any] | None,
    logged_through: int,
    progress: bool = False,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[str, Any, BaseException | None]:
    """Train one child and end its MLflow run: (status, RunResult or None, the exception it failed with).
    A failure is recorded on the run (tag ``fedreg.failure``) and returned, not raised; an interruption
    (Ctrl-C, SIGTERM) ends the run ``KILLED`` and is raised."""
    from fedreg.rounds import FederatedRun

    try:
        result = FederatedRun(
            rs,
            fed,
            tracker,
            run_id,
            progress=progress,
            label=label,
            checkpoint_file=checkpoint_file,
            resume=resume,
            logged_through=logged_through,
            on_round=on_round,
        ).run()
    except KeyboardInterrupt:
        tracker.end_run(run_id, "KILLED")
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a child is that child's, reported with it
        tracker.set_tags(run_id, {"fedreg.failure": failure_reason(exc)[:5000]})
        tracker.end_run(run_id, "FAILED")
        return "FAILED", None, exc
    tracker.end_run(run_id, "FINISHED")
    return "FINISHED", result, None


def work(task: ChildTask, send: Callable[[tuple], None]) -> ChildOutcome:
    """A worker's whole job for one child: load its data, open a tracking client, train it, deliver what
    is queued. ``send`` carries progress messages to the parent."""
    import torch

    from fedreg import checkpoint
    from fedreg.data import DataCache
    from fedreg.figures import figures_of, progress_keys
    from fedreg.tracking import Tracker

    if Path(task.cwd).is_dir():  # relative paths in the spec mean what they mean to the parent
        os.chdir(task.cwd)
    for k, v in task.env.items():
        os.environ.setdefault(k, v)
    torch.set_num_threads(task.threads)
    torch.set_flush_denormal(True)
    try:
        if task.fingerprint and checkpoint.fingerprint(task.rs.resolved_dict()) != task.fingerprint:
            raise FedregError(
                f"this worker ({os.uname().nodename}) resolves the spec differently from the parent process: "
                "install the same fedreg and plugin versions on every node"
            )
        if task.checkpoint_file and not Path(task.checkpoint_file).parent.is_dir():
            raise FedregError(
                f"the checkpoint folder '{Path(task.checkpoint_file).parent}' does not exist on "
                f"{os.uname().nodename}: put checkpoint.dir on a filesystem every node shares (or set "
                "checkpoint.every: 0)"
            )
        fed = DataCache().get(task.rs)
        tracker = Tracker(task.tracking_uri, task.experiment, spool_dir=task.spool_dir)
        ck = checkpoint.load(Path(task.resume_file)) if task.resume_file else None
    except Exception as exc:  # noqa: BLE001 - reported as this child's failure; the parent ends its run
        return ChildOutcome(
            task.index, "FAILED", reason=f"set-up in the worker failed: {failure_reason(exc)}"
        )
    keys = progress_keys(figures_of(m.info.cls for m in task.rs.metrics))  # what the progress line shows

    def on_round(r: int, scalars: dict[str, float]) -> None:
        send(("round", task.index, r, {k: scalars[k] for k in keys if k in scalars}))

    try:
        status, result, error = train_child(
            task.rs,
            fed,
            tracker,
            task.run_id,
            task.label,
            Path(task.checkpoint_file) if task.checkpoint_file else None,
            ck,
            task.logged_through,
            on_round=on_round,
        )
    except KeyboardInterrupt:
        status, result, error = "KILLED", None, None
    spool = tracker.close()
    if result is not None:
        result.client_states = {}  # not sent back: the checkpoint holds them
    return ChildOutcome(
        task.index,
        status,
        result,
        failure_reason(error) if error is not None else ("interrupted" if status == "KILLED" else None),
        str(spool) if spool is not None else None,
    )


# -- worker pools ----------------------------------------------------------------------------------------


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
        conn.send_bytes(pickle.dumps(msg))

    try:
        with sigterm_as_interrupt():
            outcome = work(task, send)
    except BaseException as exc:  # noqa: BLE001 - whatever happened, the parent hears of it
        outcome = ChildOutcome(task.index, "FAILED", reason=failure_reason(exc))
        traceback.print_exc(file=sys.stderr)
    send(("done", outcome))
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
