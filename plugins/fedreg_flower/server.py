"""The ServerApp of a deployment at real sites: fedreg's experiment on the Flower grid.

``flwr run`` of a Flower App written by :mod:`fedreg_flower.app` starts it on the SuperLink's machine, with
the spec's YAML in the run config (``spec``; optionally ``tracking-uri`` and ``variant``). It resolves the
spec with the plugins installed there, finds each client's SuperNode (their node configs say which client
each is), asks every site for its report (sample and label counts: :func:`fedreg_flower.sites.site_report`)
and runs the experiment exactly as ``fedreg run`` does (parent and child runs, checkpoints, figures) with the
``flower`` backend on the grid. The server holds no client data: it evaluates the global model on its own
copy of the dataset's test split (``data.root`` or ``FEDREG_DATA_DIR`` on this machine); everything per
client is computed at the sites.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from fedreg.errors import FedregError

#: a child of Flower's logger, whose handlers send the ServerApp's log to the SuperLink (``flwr log RUN_ID``)
log = logging.getLogger("flwr.fedreg")

#: seconds the server waits for the parts (weights) of a reply a node has begun to send; a node that dies
#: while sending fails its client after this. Flower 1.42 waits 7200 s by default.
OBJECT_TIMEOUT_S = float(os.environ.get("FEDREG_FLOWER_OBJECT_TIMEOUT", "300"))


def bound_object_pulls(seconds: float = OBJECT_TIMEOUT_S) -> None:
    """Make the grid give up on a reply whose parts never arrive after ``seconds``.

    Flower's ``HttpGrid.pull_messages`` fetches a reply's objects (its arrays) with ``pull_objects``, which
    retries a missing object for ``PULL_MAX_TIME`` (7200 s, bound as a keyword default, not a setting). A
    SuperNode killed while it uploads its reply leaves such an object behind, and the round would hang for
    two hours. With a bound, Flower turns the reply into an error message, which is the client's failure
    under ``faults.client_failure``."""
    from flwr.supercore.inflatable import inflatable_utils

    defaults = inflatable_utils.pull_objects.__kwdefaults__
    if defaults is None or "max_time" not in defaults:
        raise FedregError(
            "this Flower version's pull_objects has no max_time: use flwr 1.42 (the flower extra)"
        )
    defaults["max_time"] = seconds


def run_config_specs(run_config: dict[str, Any]):
    """The resolved specs of a run config's ``spec`` (YAML text), with ``tracking-uri`` applied."""
    from fedreg.registry import get_registry
    from fedreg.spec import resolve
    from fedreg.spec.loading import parse_yaml

    text = run_config.get("spec")
    if not isinstance(text, str) or not text.strip():
        raise FedregError(
            "the Flower App's run config has no 'spec': write the app with "
            "python -m fedreg_flower.app SPEC DIR"
        )
    raw = parse_yaml(text, "the run config's spec")
    if run_config.get("tracking-uri"):
        raw.setdefault("tracking", {})["uri"] = str(run_config["tracking-uri"])
    variant = run_config.get("variant") or None
    specs = resolve(raw, get_registry(), only=[str(variant)] if variant else None, source=None)
    wrong = sorted({rs.spec.execution.backend for rs in specs} - {"flower"})
    if wrong:
        raise FedregError(
            f"the spec runs on execution.backend {', '.join(wrong)}; at real sites it must be "
            "execution.backend: flower"
        )
    return raw, specs


def main(grid, context) -> None:
    """Run the experiment of the run config's spec on ``grid``."""
    from fedreg.experiment import Experiment
    from fedreg_flower import backend, simulation, sites

    raw, specs = run_config_specs(dict(context.run_config))
    bound_object_pulls()

    def data(rs):
        """Each client's node, and the sites' reports on their data for this spec."""
        reports: dict[int, dict] = {}
        facts = {"run": "discovery", **backend.spec_facts(rs)}
        n = rs.spec.data.num_clients
        backend.DEPLOYMENT.nodes = simulation.discover(grid, n, facts=facts, reports=reports)
        return sites.reported_data(rs, reports)

    backend.DEPLOYMENT.grid = grid
    try:
        exp = Experiment(specs, None, False, log.info, raw, jobs=1, sweep="local", data=data)
        res = exp.run()
    finally:
        backend.DEPLOYMENT.grid, backend.DEPLOYMENT.nodes = None, {}
    runs = ", ".join(r.run_id for r in res.results)
    log.info("fedreg: finished run(s) %s in %s", runs, res.tracking_uri)


def _make_app():
    from flwr.serverapp import ServerApp

    server = ServerApp()
    server.main()(main)
    return server


app = _make_app()
