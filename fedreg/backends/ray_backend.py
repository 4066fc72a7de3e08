"""The ``ray`` execution backend: a round's clients train in parallel on Ray actors, on this machine or on
a Ray cluster.

Design:

- **Workers are actors**, created once per run and kept until :meth:`RayBackend.close`. Each receives the
  run's :class:`~fedreg.clients.ClientRunner` once (one ``ray.put``; it pickles with the
  :class:`~fedreg.data.FederatedData`, i.e. the dataset tensors and the partition, but without its work
  model), builds its own work model and keeps it between rounds. The driver loads the data; workers never
  read dataset files, so only the driver needs them.
- **Resources**: each actor reserves ``execution.cpus_per_client`` CPUs and ``execution.gpus_per_client``
  GPUs, and trains with ``max(1, int(cpus_per_client))`` torch threads (on ``cuda`` when it has a GPU
  share). ``execution.workers`` actors, or by default as many as the cluster's CPUs (and GPUs) hold, at
  most ``clients_per_round``.
- **One round**: the :class:`~fedreg.clients.RoundInput` (global weights, broadcast, objective and
  aggregator instances) is put in the object store once, so every client sees the components as they were
  at the start of the round. Jobs go to free actors largest client first (training-set size), so that
  unequal clients (e.g. a Dirichlet partition) balance across workers; results come back in job order.
  Component state changed on a worker stays there: per-client state travels in ``ctx.state`` (returned
  with the result), server state belongs in the aggregator's ``aggregate``/``broadcast``.
- **Failures are data**: a component failing on a worker comes back as ``ClientResult.failure`` (a
  :class:`~fedreg.errors.ComponentFailure`, which pickles); a worker process that dies becomes a
  :class:`WorkerFailure` for its client and the actor is replaced, so the spec's ``faults`` policy applies.
  A user error raised on a worker (:class:`~fedreg.errors.FedregError`, e.g. a plugin breaking the
  contract) is re-raised on the driver as the same exception, with the worker's traceback as a note.
- **Ray's lifetime**: ``start`` joins ``execution.address``, else ``$RAY_ADDRESS``, else starts Ray on this
  machine with all its CPUs (no dashboard, worker logs not forwarded), unless Ray is already initialised
  (then it uses that). ``close`` kills the actors but leaves Ray running for the next run of a multi-variant
  invocation; a Ray this backend started is shut down when the process exits.
- **Determinism**: clients draw their shuffling streams from (seed, round, client), so with
  ``cpus_per_client: 1`` the metrics equal the local backend's run on one torch thread.
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import logging
import math
import os
import socket
from collections import deque
from typing import Any, cast

import torch

from fedreg.clients import Backend, ClientJob, ClientResult, ClientRunner, RoundInput
from fedreg.data import FederatedData
from fedreg.errors import ComponentFailure, FedregError

try:
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError
except ImportError:  # pragma: no cover - exercised only without the extra
    HAVE_RAY = False
else:
    HAVE_RAY = True

#: seconds ``start`` waits for every worker to come up (placement, import, receiving the data)
STARTUP_TIMEOUT_S = 300.0

_QUIET: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}


class WorkerDied(RuntimeError):
    """The process training a client exited (crash, out of memory, lost node)."""


class WorkerFailure(ComponentFailure):
    """A client whose worker died: recorded (stage ``worker``) or fatal, as ``faults.client_failure`` says."""

    def __init__(self, round: int, client: int, exc: BaseException):
        Exception.__init__(self, f"worker for client {client} died: {exc} (round {round})")
        self.component, self.method, self.round, self.client, self.original = (
            None,
            "worker",
            round,
            client,
            exc,
        )
        self.detail = str(exc)


class ClientWorker:
    """A Ray actor's state: the run's client runner, configured for the actor's resources."""

    def __init__(self, runner: ClientRunner, threads: int, device: str):
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        if runner.config.device != device:
            runner = copy.copy(runner)
            runner.config = dataclasses.replace(runner.config, device=device)
        self.runner = runner

    def ready(self) -> int:
        return os.getpid()

    def run(self, job: ClientJob, rin: RoundInput) -> ClientResult:
        return self.runner.run(job, rin)


def init_ray(address: str | None) -> bool:
    """Connect to Ray unless already connected; True when this call started a local Ray."""
    if not HAVE_RAY:
        raise FedregError(
            "execution.backend is 'ray' but Ray is not installed; install it with: pip install 'fedreg[ray]'"
        )
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        try:
            _probe(address)  # Ray itself retries an unreachable address for many minutes
            ray.init(address=address, **_QUIET)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError, ...
            raise FedregError(
                f"could not join the Ray cluster at '{address}' ({type(exc).__name__}: {exc}). "
                "Start the cluster first (head node: 'ray start --head'; "
                "other nodes: 'ray start --address=HEAD_IP:6379'), or fix "
                "execution.address / $RAY_ADDRESS; unset both to start Ray on this machine"
            ) from exc
        return False
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **_QUIET)
    atexit.register(_shutdown)
    return True


#: what a client sends first on an HTTP/2 connection with prior knowledge (gRPC without TLS, as Ray's head
#: and Ray Client serve): the connection preface, then an empty SETTINGS frame
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _probe(address: str, timeout: float = 10.0) -> None:
    """Raise ConnectionError when ``address`` names a host and port that accept no TCP connection, or whose
    server does not speak gRPC (an HTTP/2 server answers the preface with its SETTINGS frame; an HTTP/1
    server, such as a web server or MLflow, answers otherwise or not at all): Ray would retry either for
    minutes."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local", a bare host: Ray resolves these itself, and fails fast
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} ({exc})") from exc
    reply, silent = b"", False
    try:
        conn.sendall(_H2_PREFACE)
        reply = conn.recv(64)  # a SETTINGS frame starts with its 9-byte header
    except TimeoutError:
        silent = True
    except OSError:
        pass  # reset: said below as a connection closed
    finally:
        conn.close()
    if len(reply) < 4 or reply[3] != 4:  # the frame type of SETTINGS
        said = (
            f"it replied {reply[:40]!r}"
            if reply
            else f"it sent nothing back within {timeout:g} s"
            if silent
            else "it closed the connection without a word"
        )
        raise ConnectionError(
            f"{host}:{port} answers but is not a Ray cluster: it does not speak gRPC ({said}); it may be "
            "another server, such as a web server or an MLflow server. Ray's head listens on port 6379 by "
            "default (ray://HOST:10001 for Ray Client)"
        )


def _shutdown() -> None:
    if HAVE_RAY and ray.is_initialized():
        ray.shutdown()


class RayBackend(Backend):
    """Clients in parallel on Ray actors that live for the whole run (see the module docstring)."""

    name = "ray"

    def __init__(self, execution, runner: ClientRunner, clients_per_round: int):
        super().__init__(execution, runner, clients_per_round)
        self.actors: list = []
        self.pids: list[int] = []
        self._runner_ref: ray.ObjectRef[ClientRunner] | None = None
        self._actor_class: ray.actor.ActorClass[ClientWorker] | None = None
        self._sizes: dict[int, int] = {}

    # -- workers -----------------------------------------------------------------------------------------
    def worker_count(self) -> int:
        """``execution.workers``, else as many workers as the cluster's CPUs (and GPUs) hold, at most
        ``clients_per_round``."""
        ex = self.execution
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))
        fit = math.floor(cpus / ex.cpus_per_client + 1e-9)
        if ex.gpus_per_client > 0:
            fit = min(fit, math.floor(gpus / ex.gpus_per_client + 1e-9))
        need = f"{ex.cpus_per_client:g} CPU" + (
            f" and {ex.gpus_per_client:g} GPU" if ex.gpus_per_client else ""
        )
        has = f"{cpus:g} CPUs" + (f" and {gpus:g} GPUs" if ex.gpus_per_client else "")
        if ex.workers is not None:
            if ex.workers > fit:
                raise FedregError(
                    f"execution.workers={ex.workers} workers of {need} each do not fit the Ray "
                    f"cluster ({has}); lower execution.workers or the per-client resources, or add "
                    f"nodes"
                )
            return ex.workers
        if fit < 1:
            raise FedregError(
                f"a worker needs {need} but the Ray cluster has {has}; lower "
                f"execution.cpus_per_client / gpus_per_client, or add nodes"
            )
        return max(1, min(self.clients_per_round, fit))

    def _spawn(self) -> ray.actor.ActorProxy[ClientWorker]:
        assert self._actor_class is not None, "workers are spawned only after start"
        return self._actor_class.remote(
            self._runner_ref,
            max(1, int(self.execution.cpus_per_client)),
            "cuda" if self.execution.gpus_per_client > 0 else "cpu",
        )

    def start(self) -> None:
        init_ray(self.execution.address)
        ex = self.execution
        n = self.worker_count()
        self._actor_class = ray.remote(ClientWorker).options(
            num_cpus=ex.cpus_per_client, num_gpus=ex.gpus_per_client
        )
        self._runner_ref = ray.put(self.runner)  # the data travels once, to every worker
        self.actors = [self._spawn() for _ in range(n)]
        try:
            refs = [a.ready.remote() for a in self.actors]
            _, waiting = ray.wait(refs, num_returns=len(refs), timeout=STARTUP_TIMEOUT_S)
            if waiting:
                raise FedregError(
                    f"only {n - len(waiting)} of {n} Ray workers started within "
                    f"{STARTUP_TIMEOUT_S:g} s (free resources: {ray.available_resources()}); lower "
                    f"execution.workers or the per-client resources"
                )
            self.pids = ray.get(refs)
        except RayActorError as exc:
            self.close()
            raise FedregError(
                f"the Ray workers could not start: {exc}. Every node needs the same Python "
                f"environment, with fedreg and the spec's plugins installed"
            ) from exc
        except BaseException:
            self.close()
            raise

    def _replace(self, slot: int) -> None:
        try:
            ray.kill(self.actors[slot])
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.actors[slot] = self._spawn()

    def close(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone, or Ray shut down
                pass
        self.actors, self.pids, self._runner_ref = [], [], None

    # -- one round ---------------------------------------------------------------------------------------
    def client_size(self, cid: int) -> int:
        """The client's training-set size (to schedule large clients first)."""
        if cid not in self._sizes:
            fed = getattr(self.runner.tensors, "__self__", None)
            if isinstance(fed, FederatedData):
                self._sizes[cid] = len(fed.clients[cid].train_idx)
            else:
                self._sizes[cid] = len(self.runner.tensors(cid)[1])
        return self._sizes[cid]

    def train(self, jobs: list[ClientJob], rin: RoundInput) -> list[ClientResult]:
        rin_ref = ray.put(rin)  # once per round: the components as they are at the round's start
        queue = deque(sorted(range(len(jobs)), key=lambda i: (-self.client_size(jobs[i].cid), i)))
        free = deque(range(len(self.actors)))
        running: dict = {}  # object ref -> (job index, actor slot)
        results: list[ClientResult | None] = [None] * len(jobs)
        errors: dict[int, BaseException] = {}
        while queue or running:
            while queue and free and not errors:  # after a user error: no new jobs, drain the running ones
                i, slot = queue.popleft(), free.popleft()
                running[self.actors[slot].run.remote(jobs[i], rin_ref)] = (i, slot)
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i, slot = running.pop(ref)
                job = jobs[i]
                try:
                    results[i] = ray.get(ref)
                except RayTaskError as exc:  # the worker raised: a user error, or a bug
                    errors[i] = _remote_cause(exc)
                except RayError as exc:  # the worker process (or its node, or the result) is gone
                    died = WorkerDied(_first_line(exc))
                    results[i] = ClientResult(job.cid, failure=WorkerFailure(job.round, job.cid, died))
                    self._replace(slot)
                free.append(slot)
        if errors:
            raise errors[min(errors)]  # the first in job order, as the local backend would raise
        return cast(list[ClientResult], results)  # without errors, every job has its result


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _remote_cause(exc: RayTaskError) -> BaseException:
    """The exception a worker raised (same type and message), with the worker's traceback as a note."""
    cause = getattr(exc, "cause", None)
    if not isinstance(cause, BaseException):
        return exc
    tb = getattr(exc, "traceback_str", "")
    if tb and hasattr(cause, "add_note"):
        cause.add_note(f"raised on a Ray worker:\n{tb}")
    return cause
