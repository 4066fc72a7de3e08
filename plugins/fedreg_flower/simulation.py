"""Flower's simulation runtime (``flwr.simulation.run_simulation``, on a local Ray) running in a thread of
this process, its ServerApp handing the grid to fedreg's round loop.

Starting it costs about 20 s here (Ray, one worker process per ClientApp slot, each importing fedreg and
loading the data), so one simulation serves every run of an invocation with the same federation (a spec's
variants and seeds; a node keeps each run's client state under the run's id): it stops when a run needs
another federation, or when the process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import threading
import time
from typing import Any

from fedreg.errors import FedregError

#: seconds to wait for every client's node to register (and answer which client it is)
NODES_TIMEOUT_S = float(os.environ.get("FEDREG_FLOWER_NODES_TIMEOUT", "300"))


class Simulation:
    """``num_nodes`` virtual SuperNodes (node ``partition-id`` N is fedreg client N), each ClientApp on
    ``cpus`` CPUs and ``gpus`` GPUs."""

    def __init__(self, num_nodes: int, cpus: float, gpus: float):
        try:
            from flwr.serverapp import ServerApp
            from flwr.simulation import run_simulation
        except ImportError:
            raise FedregError(
                "execution.backend: flower needs Flower's simulation runtime: pip install -e '.[flower]'"
            ) from None
        from fedreg_flower.client import app as client_app

        self.key = (num_nodes, cpus, gpus)
        self.errors: list[BaseException] = []
        self.nodes: dict[int, int] = {}  # client id -> node id, once discovered
        self._stop = threading.Event()
        self._pythonpath = os.environ.get("PYTHONPATH")
        handed: queue.Queue = queue.Queue()
        server = ServerApp()

        @server.main()
        def main(grid, context):  # in Flower's server thread: hand the grid over, wait for stop()
            handed.put(grid)
            self._stop.wait()

        def target():
            try:
                run_simulation(
                    server,
                    client_app,
                    num_supernodes=num_nodes,
                    backend_config={
                        "client_resources": {"num_cpus": cpus, "num_gpus": gpus},
                        "init_args": {"log_to_driver": False, "logging_level": "ERROR"},
                    },
                )
            except BaseException as exc:  # noqa: BLE001 - reported by the constructor or by stop()
                self.errors.append(exc)
            finally:
                handed.put(None)

        self._thread = threading.Thread(target=target, name="flower-simulation", daemon=True)
        self._thread.start()
        self.grid = handed.get()
        if self.grid is None:
            raise FedregError(f"Flower's simulation runtime did not start: {self.errors or 'it ended'}")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        # Flower's Ray backend put this process's sys.path into $PYTHONPATH, which later children inherit
        if self._pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = self._pythonpath


_CURRENT: Simulation | None = None


def simulation(num_nodes: int, cpus: float, gpus: float) -> Simulation:
    """The running simulation of this federation, started (or restarted) when needed."""
    global _CURRENT
    key = (num_nodes, cpus, gpus)
    if _CURRENT is not None and (_CURRENT.key != key or not _CURRENT.alive):
        stop()
    if _CURRENT is None:
        _CURRENT = Simulation(num_nodes, cpus, gpus)
    return _CURRENT


def stop() -> None:
    """Stop the running simulation, if any (also at exit)."""
    global _CURRENT
    if _CURRENT is not None:
        sim, _CURRENT = _CURRENT, None
        sim.stop()


atexit.register(stop)


def discover(
    grid, n: int, known: dict[int, int] | None = None, facts: dict | None = None, reports: dict | None = None
) -> dict[int, int]:
    """Client id -> node id for clients ``0..n-1``: each node answers a ``query`` with the client it is.
    Waits up to :data:`NODES_TIMEOUT_S` for all of them; ``known`` mappings of nodes still online are
    kept without asking again. With a run's ``facts`` (its spec), real sites also report on their data:
    each client's report goes into ``reports``."""
    from flwr.app import ConfigRecord, Message, RecordDict

    online = set(grid.get_node_ids())
    nodes = {c: nid for c, nid in (known or {}).items() if nid in online}
    asked = set(nodes.values())
    deadline = time.monotonic() + NODES_TIMEOUT_S
    while len(nodes) < n:
        fresh = [nid for nid in grid.get_node_ids() if nid not in asked]
        if fresh:
            content = RecordDict({"fedreg": ConfigRecord(facts)} if facts else {})
            replies = grid.send_and_receive([Message(content, nid, "query") for nid in fresh], timeout=120)
            for reply in replies:
                if reply.has_content() and "node" in reply.content.config_records:
                    cid = int(reply.content.config_records["node"]["client"])
                    _take(nodes, cid, reply, n)
                    if reports is not None and "report" in reply.content.config_records:
                        reports[cid] = json.loads(reply.content.config_records["report"]["report"])
                elif reply.has_content() and "error" in reply.content.config_records:
                    raise FedregError(
                        f"a SuperNode cannot serve: {reply.content.config_records['error']['message']}"
                    )
            asked.update(fresh)
        elif time.monotonic() > deadline:
            missing = sorted(set(range(n)) - set(nodes))
            raise FedregError(
                f"clients {missing} have no SuperNode after {NODES_TIMEOUT_S:.0f} s: start their nodes "
                "(flower-supernode --node-config 'client-id=N ...')"
            )
        else:
            time.sleep(0.1)
    return nodes


def _take(nodes: dict[int, int], cid: int, reply: Any, n: int) -> None:
    src = reply.metadata.src_node_id
    if not 0 <= cid < n:
        raise FedregError(f"a SuperNode says it is client {cid}; the spec's clients are 0..{n - 1}")
    if cid in nodes and nodes[cid] != src:
        raise FedregError(f"two SuperNodes say they are client {cid}: give each site its own client-id")
    nodes[cid] = src
