"""Partition properties: disjoint, complete, deterministic; alpha controls skew; local test carving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedreg import seeding
from fedreg.components import DatasetTensors
from fedreg.data import build_federated_data, carve_local_test
from fedreg.errors import DataError
from fedreg_fedkper.math import normalized_label_entropy
from fedreg_standard.partitions import (
    DirichletParams,
    DirichletPartition,
    dirichlet_split,
    iid_split,
    shard_split,
)

LABELS = np.random.default_rng(0).integers(0, 8, size=4000)


def assert_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n
    assert len(np.unique(allidx)) == n  # disjoint and complete


@pytest.mark.parametrize(
    "split",
    [
        lambda rng: dirichlet_split(LABELS, 20, 0.1, rng),
        lambda rng: dirichlet_split(LABELS, 7, 5.0, rng),
        lambda rng: iid_split(len(LABELS), 13, rng),
        lambda rng: shard_split(LABELS, 10, 2, rng),
    ],
    ids=["dir0.1", "dir5", "iid", "shards"],
)
def test_disjoint_complete_deterministic(split):
    a = split(seeding.rng(3, seeding.PARTITION))
    b = split(seeding.rng(3, seeding.PARTITION))
    c = split(seeding.rng(4, seeding.PARTITION))
    assert_exact_cover(a, len(LABELS))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def mean_entropy(parts):
    return np.mean([normalized_label_entropy(np.bincount(LABELS[p], minlength=8), 8) for p in parts])


def test_alpha_controls_skew():
    ent = {
        a: np.mean([mean_entropy(dirichlet_split(LABELS, 20, a, np.random.default_rng(s))) for s in range(3)])
        for a in (0.05, 0.1, 1.0, 100.0)
    }
    assert ent[0.05] < ent[0.1] < ent[1.0] < ent[100.0]
    assert ent[100.0] > 0.95 and ent[0.1] < 0.6


def test_dirichlet_min_samples_and_errors():
    parts = dirichlet_split(LABELS, 20, 0.1, np.random.default_rng(0), min_samples=10)
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(DataError, match="lower data.num_clients"):
        dirichlet_split(LABELS[:50], 20, 0.1, np.random.default_rng(0), min_samples=10)


def test_iid_sizes_and_shard_classes():
    sizes = [len(p) for p in iid_split(1000, 7, np.random.default_rng(0))]
    assert max(sizes) - min(sizes) <= 1
    parts = shard_split(LABELS, 8, 2, np.random.default_rng(0))
    ncls = [len(np.unique(LABELS[p])) for p in parts]
    assert max(ncls) <= 4  # each of the 2 shards may straddle one class boundary
    assert np.mean(ncls) <= 3.5


def test_carve_local_test_is_stratified():
    idx = np.arange(1000)
    labels = np.repeat(np.arange(5), 200)
    labels[:3] = 4  # class 0 has 197, class 4 has 203
    tr, te = carve_local_test(idx, labels, 0.2, np.random.default_rng(0))
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 1000
    for c in range(5):
        n = np.sum(labels == c)
        assert np.sum(labels[te] == c) == round(0.2 * n)
    # a class with a single sample stays in training
    tr, te = carve_local_test(np.array([0, 1]), np.array([0, 1]), 0.5, np.random.default_rng(0))
    assert len(te) == 0 and len(tr) == 2


def toy_dataset(n=600, classes=6):
    y = torch.from_numpy(np.random.default_rng(1).integers(0, classes, size=n))
    x = torch.zeros(n, 1, 28, 28)
    return DatasetTensors("toy", x, y, x[:10], y[:10], classes, 1, 28)


def test_federated_data_is_pure_function_of_seed():
    ds = toy_dataset()
    part = DirichletPartition(DirichletParams(alpha=0.3, min_samples=5))
    a = build_federated_data(ds, part, 6, 0.2, seed=9)
    b = build_federated_data(ds, part, 6, 0.2, seed=9)
    c = build_federated_data(ds, part, 6, 0.2, seed=10)
    assert [x.train_idx.tolist() for x in a.clients] == [x.train_idx.tolist() for x in b.clients]
    assert [x.test_idx.tolist() for x in a.clients] == [x.test_idx.tolist() for x in b.clients]
    assert [x.train_idx.tolist() for x in a.clients] != [x.train_idx.tolist() for x in c.clients]
    allidx = np.concatenate([np.concatenate([x.train_idx, x.test_idx]) for x in a.clients])
    assert sorted(allidx.tolist()) == list(range(600))
    stats = a.stats()
    assert sum(r["train"] + r["local_test"] for r in stats["clients"]) == 600
    assert all(sum(r["train_label_counts"]) == r["train"] for r in stats["clients"])


def test_more_clients_than_samples():
    with pytest.raises(DataError, match="lower data.num_clients"):
        build_federated_data(toy_dataset(n=30), DirichletPartition(), 50, 0.2, seed=0)
