"""Helpers for testing plugins: a tiny in-memory federation, no files, no MLflow.

    from fedreg.testing import tiny_federation
    result = tiny_federation(
        {"federation.aggregation": "my_aggregator"}, plugins=[("mine", my_plugin_module)]
    )
    assert result.final["final_global_acc"] > 0.5

The synthetic dataset is learnable: each class lights up its own block of the image.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch

from fedreg.components import (
    FINAL_LOCAL,
    GLOBAL_ON_LOCAL,
    LOCAL,
    DatasetTensors,
    Metric,
    MetricResult,
    RoundEvaluation,
)
from fedreg.data import build_federated_data
from fedreg.evaluation import predict
from fedreg.registry import build_registry
from fedreg.rounds import FederatedRun, RunResult
from fedreg.site import SiteMetrics, by_metric
from fedreg.spec import merge_variant, resolve


def synthetic_dataset(
    n_train: int = 480,
    n_test: int = 160,
    num_classes: int = 4,
    channels: int = 1,
    seed: int = 0,
    noise: float = 0.6,
) -> DatasetTensors:
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = torch.randn(n, channels, 28, 28, generator=g) * noise
        for c in range(num_classes):
            r, col = divmod(c, 4)
            x[y == c, :, r * 7 : (r + 1) * 7, col * 7 : (col + 1) * 7] += 1.5
        return x.contiguous(memory_format=torch.channels_last), y

    tr_x, tr_y = split(n_train)
    te_x, te_y = split(n_test)
    return DatasetTensors(
        "synthetic",
        tr_x,
        tr_y,
        te_x,
        te_y,
        num_classes,
        channels,
        28,
        [f"class {c}" for c in range(num_classes)],
        checksum="synthetic",
    )


TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "data": {
        "dataset": "bloodmnist",
        "num_clients": 4,
        "partition": {"name": "dirichlet", "params": {"alpha": 1.0, "min_samples": 5}},
    },
    "model": {"name": "cnn", "params": {"hidden": 32}},
    "training": {
        "objective": "cross_entropy",
        "local_epochs": 1,
        "batch_size": 16,
        "optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    },
    "federation": {"rounds": 3, "clients_per_round": 2, "selection": "uniform", "aggregation": "fedavg"},
    "metrics": ["global_accuracy", "local_accuracy"],
}


class NullTracker:
    """Stands in for MLflow in tests: records metrics in memory, writes nothing."""

    uri = "memory"

    def __init__(self):
        self.metrics: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, run_id, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def __getattr__(self, name):  # log_file, log_text, set_tags, ...
        return lambda *a, **k: None


def _tiny_run(overrides, plugins, dataset, registry) -> FederatedRun:
    reg = registry or build_registry(extra_plugins=list(plugins))
    raw = merge_variant(copy.deepcopy(TINY_SPEC), overrides or {})
    (rs,) = resolve(raw, reg)
    ds = dataset or synthetic_dataset(num_classes=4)
    fed = build_federated_data(
        ds,
        rs.components["partition"].instantiate(),
        rs.spec.data.num_clients,
        rs.spec.data.local_test.fraction,
        rs.spec.seed,
        rs.spec.data.local_test.rule,
    )
    return FederatedRun(rs, fed, NullTracker(), run_id="tiny", progress=False)


def tiny_federation(
    overrides: dict[str, Any] | None = None,
    *,
    plugins: Iterable[tuple[str, object]] = (),
    dataset: DatasetTensors | None = None,
    registry=None,
) -> RunResult:
    """Run a small federation in memory: ``TINY_SPEC`` with ``overrides`` merged in (dotted keys allowed,
    as in spec variants), components from the installed plugins plus ``plugins`` ((name, module) pairs).
    Returns the :class:`fedreg.rounds.RunResult` (``final``, ``history``, ``global_state``)."""
    return _tiny_run(overrides, plugins, dataset, registry).run()


def initial_accuracy(overrides: dict[str, Any] | None = None, dataset: DatasetTensors | None = None) -> float:
    """Accuracy of the initial global model on the test split, for 'improves on its start' checks."""
    run = _tiny_run(overrides, (), dataset, None)
    model = run.build_model()
    model.load_state_dict(run.initial_state().global_state)
    return predict(model, run.fed.dataset.test_x, run.fed.dataset.test_y).accuracy()


__all__ = ["tiny_federation", "synthetic_dataset", "initial_accuracy", "NullTracker", "TINY_SPEC"]


def update_metric(metric: Metric, ev: RoundEvaluation, site: SiteMetrics | None = None) -> MetricResult:
    """``metric.update(ev)`` as a round calls it, for testing a metric without a federation: first its site
    part (:meth:`~fedreg.components.Metric.at_site`) on ``ev``'s per-client predictions, with the clients'
    states held in ``site`` (pass the same :class:`~fedreg.site.SiteMetrics` across rounds; a new one each
    call if None), then ``update`` with those numbers in ``ev.site``."""
    site = SiteMetrics([metric]) if site is None else site
    numbers: dict[str, dict[str, dict]] = {}
    for role, preds in (
        (LOCAL, ev.local),
        (GLOBAL_ON_LOCAL, ev.global_on_local),
        (FINAL_LOCAL, ev.final_local),
    ):
        for cid, p in preds.items():
            by_metric(role, {cid: site.summarize(role, cid, p, ev.round)}, numbers)
    return metric.update(replace(ev, site=numbers.get(metric.name, {})))
