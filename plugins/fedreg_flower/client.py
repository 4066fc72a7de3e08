"""The ClientApp: fedreg clients on Flower SuperNodes.

A node is one fedreg client: in simulation the client whose number is the node's ``partition-id``; at a site
the ``client-id`` of its node config. Each ``train`` message carries the round's job (round, client,
learning rate), the global weights, the server's broadcast, the run's facts (``start_run``'s
:class:`~fedreg.components.RunInfo`) and the spec. The ClientApp resolves the spec with the plugins
installed on its own machine (refusing a spec that resolves differently from the server's), trains with
:class:`fedreg.clients.ClientRunner` (the per-client code of every fedreg backend) on the client's own data,
and answers with the trained weights, the update's numbers, the client report and the local evaluation.

The client's state (personal models, control variates, FedKPer's reliability history) stays on the node,
in ``context.state`` under the run's id; it changes only when the client's round succeeds, as with every
fedreg backend. What each message carries is listed in docs/flower.md.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

import torch

from fedreg import checkpoint
from fedreg.clients import ClientJob, ClientResult, ClientRunner, ModelBuilder, RoundInput, TrainingConfig
from fedreg.components import LOCAL, NonFiniteLoss, RunInfo
from fedreg.data import DataCache
from fedreg.errors import ComponentFailure, FedregError
from fedreg_flower import codec

#: ``context.state`` key prefix of a run's client state (``fedreg.state.<run id>``)
STATE_PREFIX = "fedreg.state."


class Site:
    """What a node keeps of one run between messages (in a simulation's worker, across rounds; at a site,
    within one message): the resolved spec, its runner and the client-side components."""

    def __init__(self, spec_json: str, fingerprint: str, info: RunInfo):
        from fedreg.registry import get_registry
        from fedreg.spec.resolve import validate_one

        msg = json.loads(spec_json)
        rs, issues = validate_one(msg["raw"], get_registry(), variant=msg["variant"])
        if rs is None:
            problems = "; ".join(f"{i.path}: {i.message}" for i in issues)
            raise FedregError(
                f"this node cannot resolve the run's spec ({problems}): install the plugins the server has"
            )
        if checkpoint.fingerprint(rs.resolved_dict()) != fingerprint:
            raise FedregError(
                "this node resolves the run's spec differently from the server (other fedreg or plugin "
                "versions, or other defaults): install the same versions at every site"
            )
        self.rs = rs
        fed = _DATA.get(rs)
        ds = fed.dataset
        comps = rs.components
        build = ModelBuilder(comps["model"].instantiate(), ds.in_channels, ds.num_classes, ds.image_size)
        metrics = [m.instantiate() for m in rs.metrics]
        needs = set().union(*(m.requires for m in metrics)) if metrics else set()
        self.runner = ClientRunner(
            TrainingConfig.from_spec(rs.spec, ds.num_classes, LOCAL in needs), build, fed.client_tensors
        )
        self.objective = comps["objective"].instantiate()
        self.aggregator = comps["aggregation"].instantiate()
        for comp in (self.objective, self.aggregator):
            comp.start_run(info)
        self.threads = max(
            1, int(rs.spec.execution.cpus_per_client)
        )  # as a Ray worker of fedreg's ray backend


_DATA = DataCache()  # per process: a simulation worker serves many nodes and runs from one loaded dataset
_SITES: dict[tuple[str, str], Site] = {}


def site(facts: dict[str, Any]) -> Site:
    key = (facts["run"], facts["fingerprint"])
    if key not in _SITES:
        while len(_SITES) >= 4:
            _SITES.pop(next(iter(_SITES)))
        _SITES[key] = Site(
            facts["spec"], facts["fingerprint"], codec.dict_run_info(codec.unpack(facts["info"]))
        )
    return _SITES[key]


def client_id(node_config: dict[str, Any]) -> int:
    """The fedreg client a node is: its ``client-id`` (a site), else its ``partition-id`` (simulation)."""
    for key in ("client-id", "partition-id"):
        if key in node_config:
            return int(node_config[key])
    raise FedregError("this SuperNode has no client-id: start it with --node-config 'client-id=N ...'")


def load_state(state_records, run: str) -> dict[str, Any]:
    rec = state_records.get(STATE_PREFIX + run)
    return {} if rec is None else codec.unpack(rec["state"], "client state")


def save_state(context, run: str, state: dict[str, Any]) -> None:
    from flwr.app import ConfigRecord

    context.state[STATE_PREFIX + run] = ConfigRecord({"state": codec.pack(state, "client state")})


def failure_record(exc: ComponentFailure, s: Site):
    from flwr.app import ConfigRecord

    original = exc.original
    return ConfigRecord(
        {
            "component": "aggregation" if exc.component is s.aggregator else "objective",
            "message": str(exc),
            "method": exc.method,
            "round": int(exc.round),
            "client": -1 if exc.client is None else int(exc.client),
            "error_type": type(original).__name__,
            "error": str(original),
            "detail": exc.detail,
            "diverged": isinstance(original, NonFiniteLoss),
        }
    )


def train_content(content, context) -> Any:
    """A train message's reply content (weights, update, or the client's failure)."""
    from flwr.app import ConfigRecord, RecordDict

    facts = content.config_records["fedreg"]
    s = site(facts)
    torch.set_num_threads(s.threads)
    torch.set_flush_denormal(True)  # as every fedreg worker process
    cid = client_id(context.node_config)
    if cid != int(facts["client"]):
        raise FedregError(f"the server sent client {facts['client']}'s job to the node of client {cid}")
    run = str(facts["run"])
    global_state = codec.record_weights(content.array_records["global"])
    broadcast = codec.unpack(facts["broadcast"], "broadcast")
    job = ClientJob(
        int(facts["round"]), cid, float(facts["lr"]), load_state(context.state.config_records, run)
    )
    rin = RoundInput(job.round, global_state, broadcast, s.objective, s.aggregator)
    res: ClientResult = s.runner.run(job, rin)
    if res.failure is not None:
        return RecordDict({"failure": failure_record(res.failure, s)})
    update = res.update
    assert update is not None
    save_state(context, run, res.state)
    fields: dict[str, Any] = {
        "num_samples": int(update.num_samples),
        "train_loss": float(update.train_loss),
        "report": codec.pack(update.report, "client report"),
        "payload": codec.pack(update.payload, "objective's payload"),
    }
    if res.local_eval is not None:
        fields["local_eval"] = codec.pack(codec.predictions_dict(res.local_eval), "local evaluation")
    return RecordDict({"weights": codec.weights_record(update.state), "update": ConfigRecord(fields)})


def final_eval_content(content, context) -> Any:
    """An evaluate message's reply: the client's end-of-run model on its local test set."""
    from flwr.app import ConfigRecord, RecordDict

    facts = content.config_records["fedreg"]
    s = site(facts)
    torch.set_num_threads(s.threads)
    cid = client_id(context.node_config)
    global_state = codec.record_weights(content.array_records["global"])
    rin = RoundInput(int(facts["round"]), global_state, {}, s.objective, s.aggregator)
    state = load_state(context.state.config_records, str(facts["run"]))
    preds = s.runner.final_eval(cid, rin, state, float(facts["lr"]))
    fields: dict[str, Any] = {} if preds is None else {"preds": codec.pack(codec.predictions_dict(preds))}
    return RecordDict({"final": ConfigRecord(fields)})


def state_content(content, context) -> Any:
    from flwr.app import ConfigRecord, RecordDict

    rec = context.state.config_records.get(STATE_PREFIX + str(content.config_records["fedreg"]["run"]))
    return RecordDict({"state": ConfigRecord({} if rec is None else {"state": rec["state"]})})


def restore_content(content, context) -> Any:
    from flwr.app import ConfigRecord, RecordDict

    facts = content.config_records["fedreg"]
    save_state(context, str(facts["run"]), codec.unpack(facts["state"], "client state"))
    return RecordDict({"restored": ConfigRecord({})})


def error_content(exc: BaseException) -> Any:
    """A user error (the spec, a plugin's contract) or a bug on the node, for the server to raise."""
    from flwr.app import ConfigRecord, RecordDict

    user = isinstance(exc, FedregError)
    return RecordDict(
        {
            "error": ConfigRecord(
                {
                    "user": user,
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "traceback": "".join(traceback.format_exception(exc)),
                }
            )
        }
    )


def _answer(handler, msg, context):
    from flwr.app import Message

    try:
        content = handler(msg.content, context)
    except Exception as exc:  # noqa: BLE001 - the server decides: it raises a user error, reports a bug
        content = error_content(exc)
    return Message(content, reply_to=msg)


def _make_app():
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def query(msg, context):
        try:
            content = RecordDict({"node": ConfigRecord({"client": client_id(context.node_config)})})
        except Exception as exc:  # noqa: BLE001
            content = error_content(exc)
        return Message(content, reply_to=msg)

    @app.query("state")
    def state(msg, context):  # for the server's checkpoint
        return _answer(state_content, msg, context)

    @app.query("restore")
    def restore(msg, context):  # a resumed run's state from the server's checkpoint
        return _answer(restore_content, msg, context)

    @app.train()
    def train(msg, context):
        return _answer(train_content, msg, context)

    @app.evaluate()
    def evaluate(msg, context):
        return _answer(final_eval_content, msg, context)

    return app


app = _make_app()
