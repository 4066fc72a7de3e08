"""Metric components of accuracy and forgetting (thin wrappers over :mod:`fedreg_metrics.formulas`);
the global model's probability metrics are in :mod:`fedreg_metrics.probabilities`."""

from __future__ import annotations

import torch

from fedreg.components import (
    GLOBAL_ON_LOCAL,
    GLOBAL_TEST,
    LOCAL,
    Metric,
    MetricResult,
    Predictions,
    RoundEvaluation,
)
from fedreg.figures import Figure
from fedreg_metrics.formulas import (
    backward_transfer,
    balanced_accuracy,
    flip_rates,
    mean_and_worst,
)


class GlobalAccuracy(Metric):
    """Global model on the official test split: accuracy, balanced accuracy and loss."""

    name = "global_accuracy"
    default = True  # used where a spec names no component of this kind
    figures = (
        Figure(
            "global_acc",
            "global acc",
            curve=True,
            column=True,
            final=True,
            progress=True,
            order=10,
            tracked_as="accuracy/global",
            percent=True,
        ),
        Figure(
            "global_bacc",
            "global balanced acc",
            order=11,
            tracked_as="balanced_accuracy/global",
            percent=True,
        ),
        Figure(
            "global_loss",
            "global loss",
            higher_is_better=False,
            order=12,
            tracked_as="probabilities/global_loss",
        ),
    )
    requires = frozenset({GLOBAL_TEST})

    def update(self, ev: RoundEvaluation) -> MetricResult:
        p = ev.global_test
        assert p is not None, "evaluated on the global test set (requires GLOBAL_TEST)"
        return MetricResult(
            {
                "global_acc": p.accuracy(),
                "global_bacc": balanced_accuracy(p.labels.numpy(), p.preds.numpy()),
                "global_loss": float(p.loss.mean()),
            }
        )


class LocalAccuracy(Metric):
    """Each participating client's trained model (its personal model for personalised methods) on its own
    local test set: per client, and the mean and the worst participant of the round, plain and class-balanced.

    ``local_acc_worst`` is the worse of the round's participants, not the worst client of the federation.
    ``worst_client_acc`` is that: each client's local accuracy at its last participation so far (kept as the
    metric's state), the minimum over every client that has participated; its final value is the run's
    worst-client figure, as ``fedreg report`` defines it. The worst participant's id is not logged as a
    scalar: a per-round id summarised like a metric (its last-10 mean) means nothing, and per_client.csv
    already says which participant it was."""

    name = "local_accuracy"
    figures = (
        Figure(
            "worst_client_acc",
            "worst-client local acc (at last participation)",
            column=True,
            final=True,
            mean=False,
            percent=True,
            order=19,
            tracked_as="accuracy/worst_client",
            note=(
                "Worst-client local acc (at last participation): each client's local accuracy in the last "
                "round it trained, the minimum over all clients that trained (per round: so far)."
            ),
        ),
        Figure(
            "local_acc_mean",
            "local acc mean",
            curve=True,
            column=True,
            progress=True,
            order=20,
            tracked_as="accuracy/local_mean",
            note=(
                "Local accuracy is each round's participating clients' trained models on their own local "
                "test sets (personal models where the method has them); 'worst participant of the round' "
                "is the worse of that round's sampled clients, not the worst client of the federation: "
                "'fedreg report' gives the worst client (each client at its last participation, the "
                "minimum over all clients)."
            ),
            percent=True,
        ),
        Figure(
            "local_acc_worst",
            "worst participant of the round, local acc",
            curve=True,
            column=True,
            order=21,
            tracked_as="accuracy/local_worst",
            percent=True,
        ),
        Figure(
            "local_bacc_mean",
            "local balanced acc mean",
            order=22,
            tracked_as="balanced_accuracy/local_mean",
            percent=True,
        ),
        Figure(
            "local_bacc_worst",
            "worst participant of the round, local balanced acc",
            order=23,
            tracked_as="balanced_accuracy/local_worst",
            percent=True,
        ),
    )
    requires = frozenset({LOCAL})
    site_roles = frozenset({LOCAL})
    api_version = 6  # its numbers come from its site part (RoundEvaluation.site)

    def __init__(self, params=None):
        super().__init__(params)
        self.last: dict[int, float] = {}  # each client's local accuracy at its last participation

    def state_dict(self):
        return {"last": dict(self.last)}

    def load_state_dict(self, state):
        self.last = {int(c): float(v) for c, v in (state.get("last") or {}).items()}

    def at_site(self, role: str, client: int, preds: Predictions, state) -> dict[str, float]:
        return {"acc": preds.accuracy(), "bacc": balanced_accuracy(preds.labels.numpy(), preds.preds.numpy())}

    def update(self, ev: RoundEvaluation) -> MetricResult:
        local = ev.site.get(LOCAL, {})
        acc = {c: v["acc"] for c, v in local.items()}
        self.last.update(acc)
        bacc = {c: v["bacc"] for c, v in local.items()}
        mean, worst, _ = mean_and_worst(acc)
        bmean, bworst, _ = mean_and_worst(bacc)
        out = MetricResult(
            {
                "local_acc_mean": mean,
                "local_acc_worst": worst,
                "local_bacc_mean": bmean,
                "local_bacc_worst": bworst,
                "worst_client_acc": min(self.last.values()) if self.last else float("nan"),
            }
        )
        out.per_client = {
            c: {f"local_acc[{ev.local_model_role}]": acc[c], f"local_bacc[{ev.local_model_role}]": bacc[c]}
            for c in acc
        }
        return out


class GlobalOnLocalAccuracy(Metric):
    """The global model on every client's local test set: mean and worst client."""

    name = "global_on_local"
    figures = (
        Figure(
            "global_on_local_acc_mean",
            "global model on local tests, mean",
            order=30,
            tracked_as="global_on_local/acc_mean",
            percent=True,
        ),
        Figure(
            "global_on_local_acc_worst",
            "global model on local tests, worst client",
            order=31,
            tracked_as="global_on_local/acc_worst",
            percent=True,
        ),
    )
    requires = frozenset({GLOBAL_ON_LOCAL})
    site_roles = frozenset({GLOBAL_ON_LOCAL})
    api_version = 6  # its numbers come from its site part (RoundEvaluation.site)

    def at_site(self, role: str, client: int, preds: Predictions, state) -> dict[str, float]:
        return {"acc": preds.accuracy()} if len(preds.labels) else {}

    def update(self, ev: RoundEvaluation) -> MetricResult:
        acc = {c: v["acc"] for c, v in ev.site.get(GLOBAL_ON_LOCAL, {}).items() if "acc" in v}
        mean, worst, _ = mean_and_worst(acc)
        return MetricResult(
            {"global_on_local_acc_mean": mean, "global_on_local_acc_worst": worst},
            {c: {"global_on_local_acc": v} for c, v in acc.items()},
        )


class Flips(Metric):
    """Negative/positive flip rates and consistency since the previous evaluation of the same model role:
    the global model on the global test set, and each client's local model on its local test set (compared
    with that client's previous local evaluation)."""

    name = "flips"
    figures = (
        Figure(
            "global_nfr",
            "global NFR",
            higher_is_better=False,
            curve=True,
            column=True,
            order=40,
            tracked_as="forgetting/nfr",
            percent=True,
        ),
        Figure("global_pfr", "global PFR", order=43, tracked_as="forgetting/pfr", percent=True),
        Figure(
            "global_consistency",
            "global consistency",
            column=True,
            order=42,
            tracked_as="forgetting/consistency",
            percent=True,
        ),
        Figure(
            "local_nfr",
            "local NFR",
            higher_is_better=False,
            order=44,
            tracked_as="forgetting/local_nfr",
            percent=True,
        ),
        Figure("local_pfr", "local PFR", order=45, tracked_as="forgetting/local_pfr", percent=True),
        Figure(
            "local_consistency",
            "local consistency",
            order=46,
            tracked_as="forgetting/local_consistency",
            percent=True,
        ),
    )
    requires = frozenset({GLOBAL_TEST, LOCAL})
    site_roles = frozenset({LOCAL})
    api_version = 6  # its local flips come from its site part (RoundEvaluation.site)

    def __init__(self, params=None):
        super().__init__(params)
        self.prev_global: torch.Tensor | None = None

    def at_site(self, role: str, client: int, preds: Predictions, state) -> dict[str, float]:
        """The client's local flips since its previous local evaluation (whose per-sample correctness is
        the client's state of this metric, kept where its predictions are)."""
        now, prev = preds.correct, state.get("prev")
        state["prev"] = now.clone()
        if prev is None or len(prev) != len(now):
            return {}
        return flip_rates(prev.numpy(), now.numpy())

    def update(self, ev: RoundEvaluation) -> MetricResult:
        out = MetricResult()
        assert ev.global_test is not None, "evaluated on the global test set (requires GLOBAL_TEST)"
        now = ev.global_test.correct
        if self.prev_global is not None:
            r = flip_rates(self.prev_global.numpy(), now.numpy())
            out.scalars.update(
                {"global_nfr": r["nfr"], "global_pfr": r["pfr"], "global_consistency": r["consistency"]}
            )
        self.prev_global = now.clone()
        local_rates = {c: v for c, v in ev.site.get(LOCAL, {}).items() if v}
        if local_rates:
            for key in ("nfr", "pfr", "consistency"):
                out.scalars[f"local_{key}"] = float(
                    sum(v[key] for v in local_rates.values()) / len(local_rates)
                )
            out.per_client = {c: {f"local_{k}": v for k, v in r.items()} for c, r in local_rates.items()}
        return out

    def state_dict(self):
        return {"prev_global": self.prev_global}

    def load_state_dict(self, state):
        self.prev_global = state.get("prev_global")


class BackwardTransfer(Metric):
    """BwT: mean over clients sampled in earlier rounds of (global model's accuracy on the client's local test
    set now) minus (that accuracy right after the round in which the client was last sampled)."""

    name = "bwt"
    figures = (
        Figure("bwt", "BwT", curve=True, column=True, order=41, tracked_as="forgetting/bwt", percent=True),
    )
    requires = frozenset({GLOBAL_ON_LOCAL})
    site_roles = frozenset({GLOBAL_ON_LOCAL})
    api_version = 6  # its numbers come from its site part (RoundEvaluation.site)

    def __init__(self, params=None):
        super().__init__(params)
        self.at_last_sample: dict[int, float] = {}

    def at_site(self, role: str, client: int, preds: Predictions, state) -> dict[str, float]:
        return {"acc": preds.accuracy()} if len(preds.labels) else {}

    def update(self, ev: RoundEvaluation) -> MetricResult:
        now = {c: v["acc"] for c, v in ev.site.get(GLOBAL_ON_LOCAL, {}).items() if "acc" in v}
        out = MetricResult()
        if self.at_last_sample:
            out.scalars["bwt"] = backward_transfer(now, self.at_last_sample)
            out.per_client = {c: {"bwt": now[c] - a} for c, a in self.at_last_sample.items() if c in now}
        for c in ev.participants:
            if c in now:
                self.at_last_sample[c] = now[c]
        return out

    def state_dict(self):
        return {"at_last_sample": {str(k): v for k, v in self.at_last_sample.items()}}

    def load_state_dict(self, state):
        self.at_last_sample = {int(k): float(v) for k, v in state.get("at_last_sample", {}).items()}
