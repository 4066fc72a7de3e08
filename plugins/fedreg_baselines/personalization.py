"""The end-of-run personalisation figures of personalised-FL papers, for every method: after the last round,
each client's own model (its personal model where the method has one, else the final global model) on its
own local test set, the mean and the worst over ALL clients, participants or not.

The per-round local accuracy (metric ``local_accuracy``) covers only each round's participants, each scored
right after its own training; these figures score every client once, at the end, as pFL papers report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fedreg.components import FINAL_LOCAL, Metric, MetricResult, Predictions, RoundEvaluation
from fedreg.figures import Figure


def mean_and_worst_client(values: Mapping[int, float]) -> tuple[float, float]:
    """(mean, minimum) of the clients' values, NaN values left out; (NaN, NaN) when none is left."""
    vals = [v for v in values.values() if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return sum(vals) / len(vals), min(vals)


class EndOfRunPersonalization(Metric):
    """Every client's end-of-run model (``Objective.eval_model`` from the final global weights and the
    client's state, no training) on its own local test set: mean and worst over all clients, plain and
    class-balanced, logged at the last round."""

    name = "personalization"
    api_version = 6  # its numbers come from its site part (RoundEvaluation.site)
    requires = frozenset({FINAL_LOCAL})
    site_roles = frozenset({FINAL_LOCAL})
    figures = (
        Figure(
            "personalized_acc_mean",
            "end-of-run acc, all clients' own models, mean",
            order=24,
            tracked_as="personalization/acc_mean",
            percent=True,
            note=(
                "End-of-run accuracy: after the last round, every client's own model (its personal model "
                "where the method has one, else the final global model) on its own local test set, the "
                "mean and the worst over all clients, participants or not."
            ),
        ),
        Figure(
            "personalized_acc_worst",
            "end-of-run acc, worst client",
            order=25,
            tracked_as="personalization/acc_worst",
            percent=True,
        ),
        Figure(
            "personalized_bacc_mean",
            "end-of-run balanced acc, mean",
            order=26,
            tracked_as="personalization/bacc_mean",
            percent=True,
        ),
        Figure(
            "personalized_bacc_worst",
            "end-of-run balanced acc, worst client",
            order=27,
            tracked_as="personalization/bacc_worst",
            percent=True,
        ),
    )

    @classmethod
    def check_spec(cls, params, spec):
        if spec.data.local_test.fraction == 0:
            return [
                "metric 'personalization' scores every client on its local test set, but "
                "data.local_test.fraction is 0; set a fraction above 0 or drop the metric"
            ]
        return []

    def at_site(self, role: str, client: int, preds: Predictions, state) -> dict[str, float]:
        return {"acc": preds.accuracy(), "bacc": preds.balanced_accuracy()}

    def update(self, ev: RoundEvaluation) -> MetricResult:
        final = ev.site.get(FINAL_LOCAL, {})
        if not final:  # filled after the last round only
            return MetricResult()
        acc = {c: v["acc"] for c, v in final.items()}
        bacc = {c: v["bacc"] for c, v in final.items()}
        mean, worst = mean_and_worst_client(acc)
        bmean, bworst = mean_and_worst_client(bacc)
        role = ev.local_model_role
        return MetricResult(
            {
                "personalized_acc_mean": mean,
                "personalized_acc_worst": worst,
                "personalized_bacc_mean": bmean,
                "personalized_bacc_worst": bworst,
            },
            {c: {f"personalized_acc[{role}]": acc[c], f"personalized_bacc[{role}]": bacc[c]} for c in acc},
        )
