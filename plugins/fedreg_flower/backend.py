"""The ``flower`` execution backend (``execution.backend: flower``): a round's clients train on Flower
SuperNodes, each node one fedreg client.

fedreg's round loop stays where it is (selection, broadcast, aggregation, failure policy, evaluation,
metrics, MLflow); this backend turns a round's jobs into Flower ``train`` messages, one per selected client,
and their replies back into :class:`fedreg.clients.ClientResult`, in job order whatever order the replies
come in. The ClientApp (:mod:`fedreg_flower.client`) runs the spec's objective and client report with
fedreg's :class:`~fedreg.clients.ClientRunner` and keeps each client's state on its node.

- **Simulation** (a plain ``fedreg run`` of a spec with ``execution.backend: flower``): Flower's simulation
  runtime with one virtual SuperNode per client and ``execution.cpus_per_client`` CPUs per ClientApp,
  running in a thread of this process (:mod:`fedreg_flower.simulation`) and kept for the next run.
- **Deployment** (real sites): the ServerApp of :mod:`fedreg_flower.server` runs fedreg's experiment on
  its grid (:data:`DEPLOYMENT`), each client's node at its site.

Predictions stay on the nodes (``predictions_at_sites``): the site parts of the run's metrics summarise them
there, and the global model is evaluated on the clients' local test sets by ``evaluate.global`` messages.

A node that answers with a Flower error (gone, timed out, its ClientApp crashed) is that client's failure,
handled by the spec's ``faults.client_failure``; a component failing on a node likewise. A user error on a
node (a spec the node cannot resolve, a plugin breaking the contract) is raised here as a
:class:`~fedreg.errors.FedregError` naming the node's client.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from fedreg import checkpoint
from fedreg.clients import Backend, ClientJob, ClientResult, RoundInput
from fedreg.components import ClientUpdate, NonFiniteLoss, Predictions, RunInfo, SiteSummary, StateDict
from fedreg.errors import ComponentFailure, FedregError, PluginError
from fedreg_flower import codec, simulation

log = logging.getLogger(__name__)

#: seconds a round waits for its clients' replies; a client without a reply by then has failed
ROUND_TIMEOUT_S = float(os.environ.get("FEDREG_FLOWER_ROUND_TIMEOUT", "3600"))


class NodeError(RuntimeError):
    """A client's node did not deliver its round: Flower's error code and reason."""


class NodeFailure(ComponentFailure):
    """A client whose node failed (gone, timed out, ClientApp crashed): stage ``node`` under
    ``faults.client_failure``."""

    def __init__(self, round: int, client: int, exc: BaseException):
        Exception.__init__(self, f"the node of client {client} failed: {exc} (round {round})")
        self.component, self.method, self.round, self.client, self.original = None, "node", round, client, exc
        self.detail = str(exc)


class RemoteError(RuntimeError):
    """An exception a component raised on a node: its type name and message (the node's traceback is the
    failure's detail)."""


class Deployment:
    """The grid of a running ServerApp at real sites and the nodes it found (client id -> node id), set by
    :mod:`fedreg_flower.server` for the experiment it runs; None grid: simulation."""

    grid: Any = None
    nodes: dict[int, int] = {}


DEPLOYMENT = Deployment()


def spec_facts(rs) -> dict[str, Any]:
    """What a node needs to resolve a run's spec as the server did: the spec and its fingerprint."""
    raw = {"raw": rs.raw, "variant": rs.variant}
    return {
        "spec": json.dumps(raw, sort_keys=True, default=str),
        "fingerprint": checkpoint.fingerprint(rs.resolved_dict()),
    }


class FlowerBackend(Backend):
    name = "flower"
    predictions_at_sites = True

    def __init__(self, execution, runner, clients_per_round, grid=None):
        super().__init__(execution, runner, clients_per_round)
        self.grid = grid if grid is not None else DEPLOYMENT.grid  # simulation: set by start()
        self.nodes: dict[int, int] = {}  # fedreg client id -> Flower node id
        self.facts: dict[str, Any] = {}
        self.num_clients = 0
        self.tolerant = False  # faults.client_failure skips: a node lost outside training is left out

    # -- the run ---------------------------------------------------------------------------------------
    def prepare(self, run_id: str, rs, info: RunInfo) -> None:
        self.facts = {"run": run_id, **spec_facts(rs), "info": codec.pack(codec.run_info_dict(info))}
        self.num_clients = info.num_clients
        self.tolerant = rs.spec.faults.client_failure != "stop"

    def start(self) -> None:
        if not self.facts:
            raise FedregError("the flower backend needs the run's facts: FederatedRun calls prepare() first")
        if self.grid is None:  # simulation: one virtual SuperNode per client, kept for the next run
            ex = self.execution
            sim = simulation.simulation(self.num_clients, ex.cpus_per_client, ex.gpus_per_client)
            self.grid = sim.grid
            self.nodes = sim.nodes = simulation.discover(self.grid, self.num_clients, sim.nodes)
        else:
            known = DEPLOYMENT.nodes if self.grid is DEPLOYMENT.grid else None
            self.nodes = simulation.discover(self.grid, self.num_clients, known)

    # -- one round -------------------------------------------------------------------------------------
    def _facts(self, **more) -> Any:
        from flwr.app import ConfigRecord

        return ConfigRecord({**self.facts, **more})

    def _exchange(self, msgs: list, what: str) -> dict[int, Any]:
        """Send ``msgs`` (one per client) and return each client's reply (or a NodeError), in the order of
        ``msgs`` whatever order the replies came in."""
        by_node = {nid: c for c, nid in self.nodes.items()}
        replies = {
            r.metadata.reply_to_message_id: r
            for r in self.grid.send_and_receive(msgs, timeout=ROUND_TIMEOUT_S)
        }
        out: dict[int, Any] = {}
        for m in msgs:
            cid = by_node[m.metadata.dst_node_id]
            reply = replies.get(m.metadata.message_id)
            if reply is None:
                out[cid] = NodeError(f"no {what} reply within {ROUND_TIMEOUT_S:.0f} s")
            elif reply.has_error():
                out[cid] = NodeError(f"Flower error {reply.error.code}: {reply.error.reason}")
            else:
                out[cid] = reply.content
        return out

    def train(self, jobs: list[ClientJob], rin: RoundInput) -> list[ClientResult]:
        from flwr.app import Message, RecordDict

        weights = codec.weights_record(rin.global_state)
        broadcast = codec.pack(rin.broadcast, "aggregator's broadcast")
        msgs = [
            Message(
                RecordDict(
                    {
                        "global": weights,
                        "fedreg": self._facts(
                            round=job.round, client=job.cid, lr=job.lr, broadcast=broadcast
                        ),
                    }
                ),
                self.nodes[job.cid],
                "train",
                group_id=f"{self.facts['run']}:{job.round}",
            )
            for job in jobs
        ]
        replies = self._exchange(msgs, "train")
        results = []
        for job in jobs:
            results.append(self._result(job, rin, replies[job.cid]))
        return results

    def _result(self, job: ClientJob, rin: RoundInput, content) -> ClientResult:
        if isinstance(content, NodeError):
            return ClientResult(job.cid, failure=NodeFailure(job.round, job.cid, content))
        records = content.config_records
        if "error" in records:
            raise _raised_on_node(records["error"], job.cid)
        if "failure" in records:
            return ClientResult(job.cid, failure=_component_failure(records["failure"], rin))
        fields = records["update"]
        update = ClientUpdate(
            client_id=job.cid,
            num_samples=int(fields["num_samples"]),
            state=codec.record_weights(content.array_records["weights"], like=rin.global_state),
            report=dict(codec.unpack(fields["report"], "client report")),
            payload=codec.unpack(fields["payload"], "objective's payload"),
            train_loss=float(fields["train_loss"]),
        )
        local = None
        if "local" in content.metric_records:
            local = codec.record_numbers(content.metric_records["local"])
        return ClientResult(job.cid, update=update, local_eval=local, state={})

    def _evaluate(self, action: str, state: StateDict, r: int, what: str, record: str, **more):
        """Every client's node evaluates ``state`` (``evaluate.<action>``): each client's site summary."""
        from flwr.app import Message, RecordDict

        weights = codec.weights_record(state)
        kind = "evaluate" if action == "default" else f"evaluate.{action}"
        msgs = [
            Message(
                RecordDict({"global": weights, "fedreg": self._facts(round=r, client=cid, **more)}),
                nid,
                kind,
                group_id=f"{self.facts['run']}:{r}:{action}",
            )
            for cid, nid in sorted(self.nodes.items())
        ]
        replies = self._ask(msgs, what)
        return {
            c: codec.record_numbers(rep.metric_records[record]) for c, rep in replies.items() if record in rep
        }

    def global_on_local(self, round: int, evaluated: StateDict) -> dict[int, SiteSummary]:
        """The evaluated global weights on every client's local test set, summarised on its node."""
        return self._evaluate("global", evaluated, round, "evaluation of the global model", "global_on_local")

    def final_eval(self, cids, rin: RoundInput, states, lr: float) -> dict[int, Predictions | SiteSummary]:
        """Each client's end-of-run model, evaluated on its node (where its state is)."""
        got = self._evaluate("default", rin.global_state, rin.round, "end-of-run evaluation", "final", lr=lr)
        wanted = set(cids)
        return {c: v for c, v in got.items() if c in wanted}

    def _ask(self, msgs: list, what: str, record: str | None = None) -> dict[int, Any]:
        """Each client's reply (its record ``record``) to ``msgs``. A node that fails here (an evaluation, a
        checkpoint) stops the run under ``faults.client_failure: stop``; otherwise the client is left out."""
        out = {}
        for cid, content in self._exchange(msgs, what).items():
            if isinstance(content, NodeError):
                if self.tolerant:
                    log.warning("client %s left out of the %s: its node failed (%s)", cid, what, content)
                    continue
                raise FedregError(f"client {cid}'s {what} failed on its node: {content}")
            if "error" in content.config_records:
                raise _raised_on_node(content.config_records["error"], cid)
            out[cid] = content if record is None else content.config_records[record]
        return out

    def client_states(self, held):
        """For a checkpoint: every client's state, gathered from its node (the round loop holds none)."""
        from flwr.app import ConfigRecord, Message, RecordDict

        msgs = [
            Message(RecordDict({"fedreg": ConfigRecord({"run": self.facts["run"]})}), nid, "query.state")
            for nid in self.nodes.values()
        ]
        replies = self._ask(msgs, "state for the checkpoint", "state")
        return {c: codec.unpack(f["state"], "client state") for c, f in replies.items() if "state" in f}

    def restore_client_states(self, states) -> None:
        """A resumed run: each client's checkpointed state back to its node."""
        from flwr.app import ConfigRecord, Message, RecordDict

        run = self.facts["run"]
        msgs = [
            Message(
                RecordDict({"fedreg": ConfigRecord({"run": run, "state": codec.pack(states.get(cid, {}))})}),
                nid,
                "query.restore",
            )
            for cid, nid in self.nodes.items()
        ]
        self._ask(msgs, "restoring of its checkpointed state", "restored")

    def close(self) -> None:
        """Nothing to release: a simulation stays up for the invocation's next run (and stops at exit)."""


def _component_failure(fields, rin: RoundInput) -> ComponentFailure:
    """A component's failure on a node, with the node's message, as the server's own instance of that
    component would have raised it."""
    component = rin.aggregator if fields["component"] == "aggregation" else rin.objective
    error = f"{fields['error_type']}: {fields['error']}"
    original = NonFiniteLoss(str(fields["error"])) if fields["diverged"] else RemoteError(error)
    client = int(fields["client"])
    exc = ComponentFailure(
        component, str(fields["method"]), int(fields["round"]), client if client >= 0 else None, original
    )
    exc.args = (str(fields["message"]),)  # word for word what the node's failure said
    exc.detail = str(fields["detail"])
    return exc


def _raised_on_node(fields, cid: int) -> BaseException:
    where = f"on the node of client {cid}"
    if fields["user"]:
        return FedregError(f"{fields['message']} ({where})")
    exc = PluginError(f"{fields['type']}: {fields['message']} ({where})")
    exc.add_note(f"raised {where}:\n{fields['traceback']}")
    return exc
