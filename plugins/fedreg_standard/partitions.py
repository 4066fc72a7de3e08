"""Label partitions of a training set into clients, as pure functions of (labels, params, rng)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fedreg.components import Params, Partition
from fedreg.errors import DataError


def dirichlet_split(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng,
    min_samples: int = 10,
    max_tries: int = 1000,
    cap: bool = False,
    keep_order: bool = False,
) -> list[np.ndarray]:
    """Dirichlet label skew: class by class, client shares are drawn from Dir(alpha) and the class's
    (shuffled) samples are dealt out accordingly. Smaller alpha gives more skewed clients.

    ``cap``: a client already holding at least ``len(labels) / num_clients`` samples gets no share of the
    remaining classes (the balance cap of the FedKPer and FedML partition code), which leaves more clients
    with few classes. (As in that code, the cumulative shares can sum to just under 1, so the last client may
    still get one sample of a class by rounding.) The whole draw is repeated (up to ``max_tries``) until every
    client holds at least ``min_samples``.

    ``rng`` is a ``numpy.random.Generator`` or ``RandomState``. ``keep_order``: each client's indices are
    returned in the order they were dealt, then shuffled in client order (as code that seeds NumPy's
    global generator does); otherwise sorted."""
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if num_clients * min_samples > n:
        raise DataError(
            f"{num_clients} clients with at least {min_samples} samples each need "
            f"{num_clients * min_samples} samples, but the training set has {n}; "
            "lower data.num_clients or the partition's min_samples"
        )
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            shares = rng.dirichlet(np.full(num_clients, alpha))
            if cap:
                shares = shares * (sizes < n / num_clients)
                shares = shares / shares.sum()
            cuts = (np.cumsum(shares) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
                sizes[k] += len(chunk)
        if sizes.min() >= min_samples:
            out = [np.concatenate(p).astype(np.int64) for p in parts]
            if not keep_order:
                return [np.sort(p) for p in out]
            for p in out:
                rng.shuffle(p)
            return out
    raise DataError(
        f"Dirichlet partition (alpha={alpha}) left a client with fewer than {min_samples} samples in "
        f"{max_tries} draws; raise alpha, lower data.num_clients or lower min_samples"
    )


def iid_split(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random, equally sized (within one sample) client index sets."""
    if num_clients > n:
        raise DataError(f"{num_clients} clients but only {n} training samples; lower data.num_clients")
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def shard_split(
    labels: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Pathological k-classes-per-client split: samples sorted by label are cut into
    ``num_clients * classes_per_client`` shards and each client gets ``classes_per_client`` shards."""
    labels = np.asarray(labels)
    num_shards = num_clients * classes_per_client
    if num_shards > len(labels):
        raise DataError(
            f"{num_shards} shards but only {len(labels)} samples; lower data.num_clients "
            f"or classes_per_client"
        )
    order = np.argsort(labels, kind="stable")
    # shuffle within classes so shards are random samples of their class
    order = np.concatenate([rng.permutation(order[labels[order] == c]) for c in np.unique(labels)])
    shards = np.array_split(order, num_shards)
    perm = rng.permutation(num_shards)
    return [np.sort(np.concatenate([shards[s] for s in perm[k::num_clients]])) for k in range(num_clients)]


class DirichletParams(Params):
    alpha: float = Field(default=0.5, gt=0, description="concentration; smaller is more skewed")
    min_samples: int = Field(default=10, ge=1, description="redraw until every client has this many")
    cap: bool = Field(
        default=False,
        description="no further classes for a client holding N/num_clients samples "
        "(the FedKPer authors' partition)",
    )


class DirichletPartition(Partition):
    """Dirichlet label skew over classes (alpha), optionally with the balance cap."""

    name = "dirichlet"
    default = True  # used where a spec names no component of this kind
    Params = DirichletParams

    def split(self, labels, num_clients, num_classes, rng):
        p = self.params
        return dirichlet_split(labels, num_clients, p.alpha, rng, p.min_samples, cap=p.cap)


class LegacyDirichletParams(Params):
    alpha: float = Field(default=0.5, gt=0, description="concentration; smaller is more skewed")
    min_samples: int = Field(default=10, ge=1, description="redraw until every client has this many")


class NumpyLegacyDirichletPartition(Partition):
    """The capped Dirichlet partition drawn exactly as the FedKPer authors' code draws it: NumPy's legacy
    generator seeded with the run's seed, shared with the local-test split that follows."""

    name = "dirichlet_numpy_legacy"
    Params = LegacyDirichletParams

    def random_streams(self, seed):
        # np.random.seed(seed) followed by partition and local split on the global generator: one
        # RandomState in the same state draws the same numbers, without touching NumPy's global one
        stream = np.random.RandomState(seed)
        return stream, stream

    def split(self, labels, num_clients, num_classes, rng):
        p = self.params
        return dirichlet_split(labels, num_clients, p.alpha, rng, p.min_samples, cap=True, keep_order=True)


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
        k = self.params.classes_per_client
        if k > num_classes:
            raise DataError(
                f"partition 'shards' gives each client {k} classes but the dataset has only {num_classes}; "
                f"set data.partition.params.classes_per_client to at most {num_classes}"
            )
        return shard_split(labels, num_clients, k, rng)
