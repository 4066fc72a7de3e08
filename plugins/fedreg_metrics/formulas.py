"""Metric formulas on plain arrays: per-sample correctness, labels and predictions, class probabilities."""

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


def _labels_probs(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probabilities of shape {p.shape} do not match {y.shape[0]} labels (want (n, C))")
    return y, p


def binary_auc(positive, scores) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive``: the probability that a random
    positive scores above a random negative (ties count one half), from the Mann-Whitney rank sum. NaN when
    either class is empty."""
    pos = np.asarray(positive, dtype=bool).reshape(-1)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # here, not at import: scipy.stats takes 1.7 s to import

    ranks = rankdata(np.asarray(scores, dtype=np.float64).reshape(-1), method="average")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_ovr_macro(labels, probs) -> tuple[float, list[int]]:
    """One-vs-rest AUC averaged over the classes (macro): for each class c, the AUC of ``probs[:, c]``
    separating samples of class c from the others. A class absent from ``labels`` (or the only class present)
    has no AUC and is skipped; returns (the mean over the other classes, the classes averaged). NaN and ``[]``
    when no class can be scored."""
    y, p = _labels_probs(labels, probs)
    per_class = {c: binary_auc(y == c, p[:, c]) for c in range(p.shape[1])}
    used = [c for c, v in per_class.items() if not np.isnan(v)]
    return (float(np.mean([per_class[c] for c in used])) if used else float("nan")), used


def expected_calibration_error(labels, probs, bins: int = 15) -> float:
    """ECE with ``bins`` equal-width confidence bins (Guo et al., 2017): the confidence of a sample is its
    largest class probability, its prediction that class; bin b holds confidences in (b/bins, (b+1)/bins]
    and ECE = sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|. NaN for no samples."""
    y, p = _labels_probs(labels, probs)
    if y.size == 0:
        return float("nan")
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.sum() / y.size * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def brier_score(labels, probs) -> float:
    """Multi-class Brier score: the mean over samples of sum_c (p_c - [y = c])^2 (0 is perfect, 2 the worst).
    NaN for no samples."""
    y, p = _labels_probs(labels, probs)
    if y.size == 0:
        return float("nan")
    onehot = np.zeros_like(p)
    onehot[np.arange(y.size), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
