"""The ClientApp: fedreg clients on Flower SuperNodes.

A node is one fedreg client: in simulation the client whose number is the node's ``partition-id`` (its data
is that client's part of the spec's partition); at a real site the ``client-id`` of its node config, its
data the site's own file (``data-file``, :mod:`fedreg_flower.sites`). Each message carries the run's facts
(the spec, its fingerprint and ``start_run``'s :class:`~fedreg.components.RunInfo`); the ClientApp resolves
the spec with the plugins installed on its own machine (refusing a spec that resolves differently from the
server's) and runs the client's part with :class:`fedreg.clients.ClientRunner`, the per-client code of every
fedreg backend.

Predictions never leave the node: the site parts of the run's metrics
(:meth:`fedreg.components.Metric.at_site`) turn them into numbers here, with each metric's state of this
client kept in ``context.state``. The client's own state (personal models, control variates, FedKPer's
reliability history) is kept there too, under the run's id; it changes only when the client's round
succeeds, as with every fedreg backend. What each message carries is listed in docs/flower.md.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

import torch

from fedreg import checkpoint
from fedreg.clients import ClientJob, ClientRunner, ModelBuilder, RoundInput, TrainingConfig
from fedreg.components import FINAL_LOCAL, GLOBAL_ON_LOCAL, LOCAL, NonFiniteLoss, Predictions, SiteSummary
from fedreg.data import DataCache, FederatedData
from fedreg.errors import ComponentFailure, FedregError
from fedreg.evaluation import predict
from fedreg.site import SiteMetrics, evaluated
from fedreg_flower import audit, codec, sites

#: ``context.state`` keys of a run's client state and of its metrics' site state (``<prefix><run id>``)
STATE_PREFIX, SITE_PREFIX = "fedreg.state.", "fedreg.site."


class Site:
    """What a node process keeps of one run between messages (a simulation's worker serves many nodes and
    rounds; a site's ClientApp process lives for one message): the resolved spec, the data, its runner."""

    def __init__(self, spec_json: str, fingerprint: str, node_config: dict[str, Any]):
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
        self.fed: FederatedData
        if sites.is_site(node_config):
            self.fed = sites.site_data(rs, node_config, client_id(node_config))
        else:
            self.fed = _DATA.get(rs)
        ds = self.fed.dataset
        self.build = ModelBuilder(
            rs.components["model"].instantiate(), ds.in_channels, ds.num_classes, ds.image_size
        )
        self.needs_local = any(LOCAL in m.info.cls.requires for m in rs.metrics)
        self.runner = ClientRunner(
            TrainingConfig.from_spec(rs.spec, ds.num_classes, self.needs_local),
            self.build,
            self.fed.client_tensors,
        )
        self.threads = max(
            1, int(rs.spec.execution.cpus_per_client)
        )  # as a Ray worker of fedreg's ray backend
        self.started = False

    def start(self, info_bytes: bytes) -> None:
        """The run's client-side components, told the run's facts (``start_run``) once."""
        if self.started:
            return
        info = codec.dict_run_info(codec.unpack(info_bytes))
        comps = self.rs.components
        self.objective = comps["objective"].instantiate()
        self.aggregator = comps["aggregation"].instantiate()
        self.metrics = [m.instantiate() for m in self.rs.metrics]
        for comp in (self.objective, self.aggregator, *self.metrics):
            comp.start_run(info)
        self.site_metrics = SiteMetrics(self.metrics)
        self.started = True

    def evaluated(self, round: int) -> bool:
        spec = self.rs.spec
        return evaluated(round, spec.evaluation.every, spec.federation.rounds)

    def summarize(
        self, context, run: str, role: str, cid: int, preds: Predictions, round: int
    ) -> SiteSummary:
        """``preds`` summarised by the metrics' site parts with this client's metric state (in
        ``context.state``), which is saved back."""
        self.site_metrics.states = {cid: load(context, SITE_PREFIX, run)}
        out = self.site_metrics.summarize(role, cid, preds, round)
        save(context, SITE_PREFIX, run, self.site_metrics.states[cid])
        return out


_DATA = DataCache()  # per process: a simulation worker serves many nodes and runs from one loaded dataset
_SITES: dict[tuple, Site] = {}


def site(facts, context) -> Site:
    key = (facts["run"], facts["fingerprint"], sites.is_site(context.node_config))
    if key not in _SITES:
        while len(_SITES) >= 4:
            _SITES.pop(next(iter(_SITES)))
        _SITES[key] = Site(facts["spec"], facts["fingerprint"], context.node_config)
    s = _SITES[key]
    if "info" in facts:
        s.start(facts["info"])
    torch.set_num_threads(s.threads)
    torch.set_flush_denormal(True)  # as every fedreg worker process
    return s


def client_id(node_config: dict[str, Any]) -> int:
    """The fedreg client a node is: its ``client-id`` (a site), else its ``partition-id`` (simulation)."""
    for key in (sites.CLIENT_ID, "partition-id"):
        if key in node_config:
            return int(node_config[key])
    raise FedregError("this SuperNode has no client-id: start it with --node-config 'client-id=N ...'")


def load(context, prefix: str, run: str) -> dict[str, Any]:
    rec = context.state.config_records.get(prefix + run)
    return {} if rec is None else codec.unpack(rec["state"], "client state")


def save(context, prefix: str, run: str, state: dict[str, Any]) -> None:
    from flwr.app import ConfigRecord

    context.state[prefix + run] = ConfigRecord({"state": codec.pack(state, "client state")})


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


def _job(content, context) -> tuple[Site, Any, int, str]:
    facts = content.config_records["fedreg"]
    s = site(facts, context)
    cid = client_id(context.node_config)
    if cid != int(facts["client"]):
        raise FedregError(f"the server sent client {facts['client']}'s job to the node of client {cid}")
    return s, facts, cid, str(facts["run"])


def train_content(content, context) -> Any:
    """A train message's reply: the trained weights, the update's numbers, the client report and (in an
    evaluated round) the site summary of the local evaluation; or the client's failure."""
    from flwr.app import ConfigRecord, RecordDict

    s, facts, cid, run = _job(content, context)
    global_state = codec.record_weights(content.array_records["global"])
    broadcast = codec.unpack(facts["broadcast"], "broadcast")
    job = ClientJob(int(facts["round"]), cid, float(facts["lr"]), load(context, STATE_PREFIX, run))
    rin = RoundInput(job.round, global_state, broadcast, s.objective, s.aggregator)
    res = s.runner.run(job, rin)
    if res.failure is not None:
        return RecordDict({"failure": failure_record(res.failure, s)})
    update = res.update
    assert update is not None
    save(context, STATE_PREFIX, run, res.state)
    fields: dict[str, Any] = {
        "num_samples": int(update.num_samples),
        "train_loss": float(update.train_loss),
        "report": codec.pack(update.report, "client report"),
        "payload": codec.pack(update.payload, "objective's payload"),
    }
    out = RecordDict({"weights": codec.weights_record(update.state), "update": ConfigRecord(fields)})
    if isinstance(res.local_eval, Predictions) and s.evaluated(job.round):
        out["local"] = codec.numbers_record(s.summarize(context, run, LOCAL, cid, res.local_eval, job.round))
    return out


def global_content(content, context) -> Any:
    """An ``evaluate.global`` message's reply: the evaluated global weights on the client's local test set,
    as the metrics' site summary (``GLOBAL_ON_LOCAL``)."""
    from flwr.app import RecordDict

    s, facts, cid, run = _job(content, context)
    _, _, tx, ty = s.fed.client_tensors(cid)
    if not len(ty):
        return RecordDict({})
    model = s.runner.new_model()
    model.load_state_dict(codec.record_weights(content.array_records["global"]))
    with s.runner.config.autocast():
        preds = predict(model, tx, ty, s.runner.config.eval_batch_size)
    r = int(facts["round"])
    return RecordDict(
        {"global_on_local": codec.numbers_record(s.summarize(context, run, GLOBAL_ON_LOCAL, cid, preds, r))}
    )


def final_eval_content(content, context) -> Any:
    """An ``evaluate`` message's reply: the client's end-of-run model on its local test set, as the metrics'
    site summary (``FINAL_LOCAL``)."""
    from flwr.app import RecordDict

    s, facts, cid, run = _job(content, context)
    global_state = codec.record_weights(content.array_records["global"])
    r = int(facts["round"])
    rin = RoundInput(r, global_state, {}, s.objective, s.aggregator)
    preds = s.runner.final_eval(cid, rin, load(context, STATE_PREFIX, run), float(facts["lr"]))
    if preds is None:
        return RecordDict({})
    return RecordDict({"final": codec.numbers_record(s.summarize(context, run, FINAL_LOCAL, cid, preds, r))})


def report_content(content, context) -> Any:
    """A ``query`` message's reply: which client this node is; with the run's facts (a deployment's
    discovery), also the site's report on its data (aggregates only)."""
    from flwr.app import ConfigRecord, RecordDict

    cid = client_id(context.node_config)
    out = RecordDict({"node": ConfigRecord({"client": cid})})
    records = content.config_records
    if "fedreg" in records and sites.is_site(context.node_config):
        s = site(records["fedreg"], context)
        assert isinstance(s.fed, sites.SiteData), "a site's node holds its own data"
        out["report"] = ConfigRecord({"report": json.dumps(sites.site_report(s.fed))})
    return out


def state_content(content, context) -> Any:
    """For the server's checkpoint: the client's state; in simulation also its metrics' site state (at a real
    site that stays at the site: it is made of the client's per-sample results)."""
    from flwr.app import ConfigRecord, RecordDict

    run = str(content.config_records["fedreg"]["run"])
    state = {"client": load(context, STATE_PREFIX, run)}
    if not sites.is_site(context.node_config):
        state["site"] = load(context, SITE_PREFIX, run)
    return RecordDict({"state": ConfigRecord({"state": codec.pack(state, "client state")})})


def restore_content(content, context) -> Any:
    """A resumed run's client state from the server's checkpoint (a site keeps its own metric state)."""
    from flwr.app import ConfigRecord, RecordDict

    facts = content.config_records["fedreg"]
    run = str(facts["run"])
    state = codec.unpack(facts["state"], "client state")
    save(context, STATE_PREFIX, run, state.get("client", {}))
    if "site" in state and not sites.is_site(context.node_config):
        save(context, SITE_PREFIX, run, state["site"])
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
    audit.record(context.node_config, msg, content)
    return Message(content, reply_to=msg)


def _make_app():
    from flwr.clientapp import ClientApp

    app = ClientApp()
    routes = {
        ("query", "default"): report_content,
        ("query", "state"): state_content,  # for the server's checkpoint
        ("query", "restore"): restore_content,  # a resumed run's state from the server's checkpoint
        ("train", "default"): train_content,
        ("evaluate", "global"): global_content,
        ("evaluate", "default"): final_eval_content,
    }
    for (kind, action), handler in routes.items():
        getattr(app, kind)(action)(_route(handler))
    return app


def _route(handler):
    def answer(msg, context):
        return _answer(handler, msg, context)

    answer.__name__ = handler.__name__
    return answer


app = _make_app()
