"""An ECE metric written from the plugin guide alone (docs/plugins.md, "Write a metric"): it reads the class
probabilities fedreg gives every metric since plugin-contract version 4 (``Predictions.probs``)."""

from __future__ import annotations

import numpy as np

from fedreg.components import GLOBAL_TEST, Metric, MetricResult, RoundEvaluation
from fedreg.figures import Figure

BINS = 10


def ece(labels, probs, bins: int = BINS) -> float:
    """Expected calibration error: samples binned by their top-class probability (``bins`` equal-width bins
    over (0, 1]), then sum over bins of (fraction of samples) * |accuracy - mean confidence|."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if labels.size == 0:
        return float("nan")
    conf, correct = probs.max(1), probs.argmax(1) == labels
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    return float(
        sum(
            (which == b).mean() * abs(correct[which == b].mean() - conf[which == b].mean())
            for b in range(bins)
            if (which == b).any()
        )
    )


class ECE10(Metric):
    """Expected calibration error of the global model on the test split, 10 equal-width confidence bins."""

    name = "ece10"
    api_version = 4  # reads Predictions.probs
    requires = frozenset({GLOBAL_TEST})
    figures = (Figure("ece10", "global ECE (10 bins)", higher_is_better=False, column=True),)

    def update(self, ev: RoundEvaluation) -> MetricResult:
        p = ev.global_test
        if p is None or p.probs is None:
            raise ValueError("ece10 needs the class probabilities (fedreg 0.1 with plugin contract 4)")
        return MetricResult({"ece10": ece(p.labels.numpy(), p.probs.numpy())})
