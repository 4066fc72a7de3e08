"""Metric formulas on plain arrays of per-sample correctness."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def flip_rates(prev_correct, now_correct) -> dict[str, float]:
    """Negative flip rate (correct before, wrong now), positive flip rate (wrong before, correct now) and
    consistency (correctness unchanged), as fractions of the samples."""
    prev = np.asarray(prev_correct, dtype=bool)
    now = np.asarray(now_correct, dtype=bool)
    if prev.shape != now.shape:
        raise ValueError(f"evaluations differ in size: {prev.shape} vs {now.shape}")
    n = prev.size
    if n == 0:
        return {"nfr": float("nan"), "pfr": float("nan"), "consistency": float("nan")}
    return {
        "nfr": float(np.sum(prev & ~now)) / n,
        "pfr": float(np.sum(~prev & now)) / n,
        "consistency": float(np.sum(prev == now)) / n,
    }


def backward_transfer(now_acc: Mapping[int, float], acc_when_last_sampled: Mapping[int, float]) -> float:
    """Mean over clients sampled before of (accuracy now - accuracy when the client was last sampled)."""
    diffs = [now_acc[c] - acc_when_last_sampled[c] for c in acc_when_last_sampled if c in now_acc]
    return float(np.mean(diffs)) if diffs else float("nan")


def balanced_accuracy(labels, preds) -> float:
    labels = np.asarray(labels)
    preds = np.asarray(preds)
    if labels.size == 0:
        return float("nan")
    return float(np.mean([np.mean(preds[labels == c] == c) for c in np.unique(labels)]))


def mean_and_worst(values: Mapping[int, float]) -> tuple[float, float, int | None]:
    vals = {c: v for c, v in values.items() if not np.isnan(v)}
    if not vals:
        return float("nan"), float("nan"), None
    worst = min(vals, key=lambda c: (vals[c], c))
    return float(np.mean(list(vals.values()))), float(vals[worst]), worst
