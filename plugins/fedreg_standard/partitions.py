"""Label partitions of a training set into clients, as pure functions of (labels, params, rng)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fedreg.components import Params, Partition
from fedreg.errors import DataError


def dirichlet_split(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
                    min_samples: int = 10, max_tries: int = 1000) -> list[np.ndarray]:
    """Dirichlet label skew: for each class, client shares are drawn from Dir(alpha) and the class's
    samples are dealt out accordingly. Redrawn (up to ``max_tries``) until every client holds at least
    ``min_samples``. Smaller alpha gives more skewed clients."""
    labels = np.asarray(labels)
    n = len(labels)
    if num_clients * min_samples > n:
        raise DataError(
            f"{num_clients} clients with at least {min_samples} samples each need {num_clients * min_samples} "
            f"samples, but the training set has {n}; lower data.num_clients or the partition's min_samples")
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            idx = rng.permutation(idx)
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_samples:
            return out
    raise DataError(
        f"Dirichlet partition (alpha={alpha}) left a client with fewer than {min_samples} samples in "
        f"{max_tries} draws; raise alpha, lower data.num_clients or lower min_samples")


def iid_split(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random, equally sized (within one sample) client index sets."""
    if num_clients > n:
        raise DataError(f"{num_clients} clients but only {n} training samples; lower data.num_clients")
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def shard_split(labels: np.ndarray, num_clients: int, classes_per_client: int,
                rng: np.random.Generator) -> list[np.ndarray]:
    """Pathological k-classes-per-client split: samples sorted by label are cut into
    ``num_clients * classes_per_client`` shards and each client gets ``classes_per_client`` shards."""
    labels = np.asarray(labels)
    num_shards = num_clients * classes_per_client
    if num_shards > len(labels):
        raise DataError(f"{num_shards} shards but only {len(labels)} samples; lower data.num_clients "
                        f"or classes_per_client")
    order = np.argsort(labels, kind="stable")
    # shuffle within classes so shards are random samples of their class
    order = np.concatenate([rng.permutation(order[labels[order] == c]) for c in np.unique(labels)])
    shards = np.array_split(order, num_shards)
    perm = rng.permutation(num_shards)
    return [np.sort(np.concatenate([shards[s] for s in perm[k::num_clients]])) for k in range(num_clients)]


class DirichletParams(Params):
    alpha: float = Field(default=0.5, gt=0, description="concentration; smaller is more skewed")
    min_samples: int = Field(default=10, ge=1, description="redraw until every client has this many")


class DirichletPartition(Partition):
    """Dirichlet label skew over classes (alpha)."""

    name = "dirichlet"
    Params = DirichletParams

    def split(self, labels, num_clients, num_classes, rng):
        return dirichlet_split(labels, num_clients, self.params.alpha, rng, self.params.min_samples)


class IIDPartition(Partition):
    """IID: uniformly random clients of equal size."""

    name = "iid"

    def split(self, labels, num_clients, num_classes, rng):
        return iid_split(len(labels), num_clients, rng)


class ShardParams(Params):
    classes_per_client: int = Field(default=2, ge=1)


class ShardPartition(Partition):
    """k classes per client, by label-sorted shards."""

    name = "shards"
    Params = ShardParams

    def split(self, labels, num_clients, num_classes, rng):
        return shard_split(labels, num_clients, self.params.classes_per_client, rng)
