"""A round's evaluation: the predictions the run's metrics require, wherever they are made, their site
parts' numbers, and the metrics' update.

The global model is evaluated on the server's copy of the global test split. Predictions on the clients'
local test sets (``LOCAL``, ``GLOBAL_ON_LOCAL``, ``FINAL_LOCAL``) are made in this process by fedreg's own
backends (the server holds the data) and summarised here by the metrics' site parts
(:class:`fedreg.site.SiteMetrics`, whose per-client states are part of the run's checkpoint); a backend
whose predictions stay at the clients' sites (``Backend.predictions_at_sites``) hands over the site parts'
numbers instead (:class:`~fedreg.components.SiteSummary`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fedreg.clients import Backend, ClientRunner, RoundInput
from fedreg.components import (
    FINAL_LOCAL,
    GLOBAL_ON_LOCAL,
    GLOBAL_TEST,
    LOCAL,
    MetricResult,
    Predictions,
    RoundEvaluation,
    SiteSummary,
    StateDict,
)
from fedreg.errors import FedregError, PluginError, describe
from fedreg.evaluation import add_scalars, call, evaluation_set, predict
from fedreg.site import SiteMetrics, by_metric, missing_site_parts

#: what a client's predictions come back as: the predictions, or their site summary
Evaluated = Predictions | SiteSummary


class Evaluator:
    """The run's metrics, what they require and how it is evaluated."""

    def __init__(
        self, fed: Any, metrics: list[Any], spec: Any, runner: ClientRunner, role: str, at_sites: bool
    ):
        """``fed``: the run's FederatedData; ``role``: the objective's ``local_model_role``; ``at_sites``:
        whether the backend keeps the clients' predictions at their sites (then metrics that need them must
        have site parts)."""
        self.fed, self.metrics, self.spec, self.runner = fed, metrics, spec, runner
        self.role = role
        needs = set().union(*(m.requires for m in metrics)) if metrics else set()
        self.need_global_test = GLOBAL_TEST in needs
        self.need_local = LOCAL in needs
        self.need_global_on_local = GLOBAL_ON_LOCAL in needs
        self.need_final_local = FINAL_LOCAL in needs
        self.at_sites = at_sites
        missing = missing_site_parts(metrics) if at_sites else []
        if missing:
            raise FedregError(
                "the run's backend keeps the clients' predictions at their sites, but "
                + "; ".join(missing)
                + ". Drop the metric from 'metrics', or give it a site part (Metric.site_roles and at_site; "
                "docs/plugins.md)"
            )
        self.site = SiteMetrics(metrics)
        self.local_test_sizes = [len(c.test_idx) for c in fed.clients]
        # one batched pass: the global test split, then (where they are here) every client's local test set
        self.eval_x, self.eval_y = evaluation_set(
            fed, self.need_global_test, self.need_global_on_local and not at_sites, runner.device
        )

    def _summaries(
        self, role: str, results: dict[int, Evaluated], preds: dict[int, Predictions], r: int
    ) -> dict[int, SiteSummary]:
        """The clients' summaries of ``role``: those the backend made at the sites, and those of the
        predictions made here (kept in ``preds`` for metrics that read them)."""
        out = {}
        for cid, got in results.items():
            if isinstance(got, SiteSummary):
                out[cid] = got
            else:
                preds[cid] = got
                out[cid] = self.site.summarize(role, cid, got, r)
        return out

    def evaluate(
        self,
        r: int,
        chosen: list[int],
        eval_model: torch.nn.Module,
        local: dict[int, Evaluated],
        backend: Backend | None = None,
        evaluated: StateDict | None = None,
    ) -> tuple[RoundEvaluation, dict[str, dict[str, dict]]]:
        """Round ``r``'s evaluation of the model in ``eval_model`` (the evaluated global weights, also given
        as ``evaluated`` for a backend that evaluates at the sites) and the participants' ``local``
        results; with the site parts' numbers of each metric (``[metric][role][client]``)."""
        ev = RoundEvaluation(
            round=r,
            participants=list(chosen),
            num_classes=self.fed.dataset.num_classes,
            local_model_role=self.role,
        )
        sites: dict[str, dict[str, dict]] = {}
        by_metric(LOCAL, self._summaries(LOCAL, local, ev.local, r), sites)
        if self.need_global_on_local and self.at_sites:
            assert backend is not None and evaluated is not None, "a backend at the sites evaluates there"
            by_metric(GLOBAL_ON_LOCAL, backend.global_on_local(r, evaluated), sites)
        if self.eval_x is None or self.eval_y is None:
            return ev, sites
        allp = predict(eval_model, self.eval_x, self.eval_y, self.spec.evaluation.batch_size)
        if not self.runner.on_cpu:
            allp = allp.to("cpu")
        offset = 0
        if self.need_global_test:
            n = len(self.fed.dataset.test_y)
            ev.global_test = allp.subset(slice(0, n))
            offset = n
        if self.need_global_on_local and not self.at_sites:
            here: dict[int, Evaluated] = {}
            for cid, n in enumerate(self.local_test_sizes):
                here[cid] = allp.subset(slice(offset, offset + n))
                offset += n
            by_metric(GLOBAL_ON_LOCAL, self._summaries(GLOBAL_ON_LOCAL, here, ev.global_on_local, r), sites)
        return ev, sites

    def final_local(
        self, ev: RoundEvaluation, sites: dict, backend: Backend, rin: RoundInput, states: dict, lr: float
    ) -> None:
        """After the last round: every client's end-of-run model (``Objective.eval_model`` without training,
        from the final global weights in ``rin`` and the client's state) on its own local test set."""
        got = backend.final_eval(range(len(self.local_test_sizes)), rin, states, lr)
        by_metric(FINAL_LOCAL, self._summaries(FINAL_LOCAL, got, ev.final_local, ev.round), sites)

    def update(
        self, ev: RoundEvaluation, sites: dict, scalars: dict[str, float], rows: list[dict[str, Any]]
    ) -> None:
        """Give each metric the round's evaluation with its own site numbers: its scalars join ``scalars``
        (a name another metric returned this round is an error), its per-client values join ``rows``."""
        owners: dict[str, str] = {}  # scalar -> the metric that returned it this round
        r = ev.round
        for metric in self.metrics:
            res = call(metric, "update", r, None, replace(ev, site=sites.get(metric.name, {})))
            if not isinstance(res, MetricResult):
                raise PluginError(
                    f"{describe(metric)}: update must return a MetricResult, got {type(res).__name__}"
                )
            add_scalars(scalars, owners, metric, res.scalars, r)
            for cid, vals in res.per_client.items():
                rows.extend({"round": r, "client": cid, "metric": k, "value": v} for k, v in vals.items())
