"""Metric components of the global model's class probabilities on the official test split: AUC, ECE and
Brier score (thin wrappers over :mod:`fedreg_metrics.formulas`)."""

from __future__ import annotations

from fedreg.components import GLOBAL_TEST, Metric, MetricResult, RoundEvaluation
from fedreg.figures import Figure
from fedreg_metrics.formulas import auc_ovr_macro, brier_score, expected_calibration_error


def _global_probs(ev: RoundEvaluation, metric: str):
    """(labels, probabilities) of the global model on the global test set, as numpy arrays."""
    p = ev.global_test
    if p is None or p.probs is None:
        raise ValueError(
            f"metric '{metric}' needs the global model's class probabilities (Predictions.probs)"
        )
    return p.labels.numpy(), p.probs.numpy()


class GlobalAUC(Metric):
    """Global model on the official test split: one-vs-rest macro AUC of the class probabilities. Classes
    absent from the test split are skipped; ``global_auc_classes`` counts the classes averaged."""

    name = "auc"
    figures = (
        Figure(
            "global_auc",
            "global AUC",
            column=True,
            order=50,
            tracked_as="probabilities/global_auc",
            note=(
                "Global AUC is the one-vs-rest AUC of the global model's class probabilities on the test "
                "split, averaged over the classes present in it (absent classes are skipped)."
            ),
        ),
        Figure("global_auc_classes", "classes in the global AUC", order=53, constant=True),
    )
    requires = frozenset({GLOBAL_TEST})

    def update(self, ev: RoundEvaluation) -> MetricResult:
        auc, used = auc_ovr_macro(*_global_probs(ev, self.name))
        return MetricResult({"global_auc": auc, "global_auc_classes": float(len(used))})


class GlobalECE(Metric):
    """Global model on the official test split: expected calibration error (15 equal-width confidence
    bins)."""

    name = "ece"
    figures = (
        Figure(
            "global_ece",
            "global ECE",
            higher_is_better=False,
            column=True,
            order=51,
            tracked_as="probabilities/global_ece",
            note=(
                "ECE: expected calibration error of the global model on the test split, 15 equal-width "
                "bins of the top-class probability (0 is perfectly calibrated)."
            ),
        ),
    )
    requires = frozenset({GLOBAL_TEST})

    def update(self, ev: RoundEvaluation) -> MetricResult:
        return MetricResult({"global_ece": expected_calibration_error(*_global_probs(ev, self.name))})


class GlobalBrier(Metric):
    """Global model on the official test split: multi-class Brier score of the class probabilities."""

    name = "brier"
    figures = (
        Figure(
            "global_brier",
            "global Brier",
            higher_is_better=False,
            column=True,
            order=52,
            tracked_as="probabilities/global_brier",
            note="Brier: mean over test samples of sum_c (p_c - [y = c])^2, global model (0 is perfect).",
        ),
    )
    requires = frozenset({GLOBAL_TEST})

    def update(self, ev: RoundEvaluation) -> MetricResult:
        return MetricResult({"global_brier": brier_score(*_global_probs(ev, self.name))})
