"""Federated view of a dataset: clients are index sets into tensors held once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedreg.components import ClientInfo, DatasetTensors, Partition
from fedreg.errors import DataError, PluginError

if TYPE_CHECKING:
    from fedreg.spec import ResolvedSpec


@dataclass
class ClientSplit:
    client_id: int
    train_idx: np.ndarray  # into dataset.train_x
    test_idx: np.ndarray  # into dataset.train_x (the local test set is carved from the client's own data)


def stratified_local_test(indices: np.ndarray, labels: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Local test indices mirroring the client's label mix: of each class with n samples,
    ``round(fraction * n)`` go to the test set, keeping at least one for training."""
    test = []
    for c in np.unique(labels[indices]):
        idx = rng.permutation(indices[labels[indices] == c])
        k = min(int(round(fraction * len(idx))), len(idx) - 1)
        test.append(idx[:k])
    return np.concatenate(test) if test else np.empty(0, dtype=np.int64)


def per_class_equal_local_test(indices: np.ndarray, labels: np.ndarray, fraction: float, rng) -> np.ndarray:
    """Local test indices close to class-balanced, as the FedKPer authors' protocol carves them: the test
    set's size is ``int(fraction * n)``; each class present on the client gives an equal share
    ``int(size / classes present)``, drawn without replacement in class order; a class holding fewer
    samples than the share gives ``int(fraction * its count)`` instead (so rare classes go mostly to the
    test set). If that leaves the test set empty, ``int(fraction * n)`` samples are drawn from all of the
    client's data. Draws go through ``rng.choice(..., replace=False)`` on the indices in the order the
    partition returned them."""
    indices = np.asarray(indices)
    size = int(len(indices) * fraction)
    present = np.unique(labels[indices])
    share = int(size / len(present)) if len(present) else 0
    picked = []
    for c in present:
        of_class = indices[labels[indices] == c]
        take = share if share <= len(of_class) else int(fraction * len(of_class))
        picked.append(rng.choice(of_class, size=take, replace=False))
    test = np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)
    if len(test) == 0:
        test = rng.choice(indices, size=int(fraction * len(indices)), replace=False)
    return test


#: how a client's local test set is carved from its data (``data.local_test.rule``)
LOCAL_TEST_RULES = {"stratified": stratified_local_test, "per_class_equal": per_class_equal_local_test}


def carve_local_test(
    indices: np.ndarray, labels: np.ndarray, fraction: float, rng, rule: str = "stratified"
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into (local train, local test), both sorted, by ``rule``."""
    indices = np.asarray(indices, dtype=np.int64)
    test = np.sort(np.asarray(LOCAL_TEST_RULES[rule](indices, labels, fraction, rng), dtype=np.int64))
    train = np.sort(indices[~np.isin(indices, test)])
    return train, test


def check_partition(parts: list[np.ndarray], n: int, num_clients: int, who: str) -> None:
    if not isinstance(parts, list | tuple) or len(parts) != num_clients:
        raise PluginError(
            f"partition '{who}' returned {len(parts) if hasattr(parts, '__len__') else parts!r} "
            f"parts, expected {num_clients}"
        )
    allidx = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.empty(0)
    if len(allidx) != n or len(np.unique(allidx)) != n or (n and (allidx.min() < 0 or allidx.max() >= n)):
        raise PluginError(f"partition '{who}' did not return disjoint index sets covering all {n} samples")


@dataclass
class FederatedData:
    dataset: DatasetTensors
    clients: list[ClientSplit]

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def label_counts(self, idx: np.ndarray) -> np.ndarray:
        y = self.dataset.train_y.numpy()
        return np.bincount(y[idx], minlength=self.dataset.num_classes)

    def infos(self) -> list[ClientInfo]:
        return [
            ClientInfo(r["client"], r["train"], r["local_test"], tuple(r["train_label_counts"]))
            for r in self.client_rows()
        ]

    def client_tensors(self, cid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.clients[cid]
        ds = self.dataset
        tr = torch.from_numpy(c.train_idx)
        te = torch.from_numpy(c.test_idx)
        return ds.train_x[tr], ds.train_y[tr], ds.train_x[te], ds.train_y[te]

    def client_rows(self) -> list[dict]:
        """Each client's sample counts and label counts (training and local test set)."""
        return [
            {
                "client": c.client_id,
                "train": int(len(c.train_idx)),
                "local_test": int(len(c.test_idx)),
                "train_label_counts": [int(v) for v in self.label_counts(c.train_idx)],
                "local_test_label_counts": [int(v) for v in self.label_counts(c.test_idx)],
            }
            for c in self.clients
        ]

    def stats(self) -> dict:
        rows = self.client_rows()
        sizes = np.array([r["train"] for r in rows])
        return {
            "dataset": self.dataset.name,
            "num_classes": self.dataset.num_classes,
            "class_names": self.dataset.class_names,
            "num_clients": len(rows),
            "train_size_min": int(sizes.min()),
            "train_size_max": int(sizes.max()),
            "train_size_mean": float(sizes.mean()),
            "clients": rows,
        }


#: the stream of ``data.subset``'s draw: fixed, so that every seed and variant of a spec keeps the same
#: samples
SUBSET_SEED = 20260701


def subset_dataset(ds: DatasetTensors, fraction: float) -> DatasetTensors:
    """``ds`` with ``fraction`` of each split kept (``data.subset``): of each class a split holds,
    ``round(fraction * n)`` samples and at least one, drawn from :data:`SUBSET_SEED`'s stream and kept in
    their original order. ``fraction`` 1 returns ``ds`` itself."""
    if fraction >= 1:
        return ds
    rng = np.random.default_rng(SUBSET_SEED)

    def keep(y: torch.Tensor) -> torch.Tensor:
        labels = y.numpy()
        picked = []
        for c in np.unique(labels):
            of_class = np.flatnonzero(labels == c)
            picked.append(rng.choice(of_class, size=max(1, round(fraction * len(of_class))), replace=False))
        return torch.from_numpy(np.sort(np.concatenate(picked)))

    tr, te = keep(ds.train_y), keep(ds.test_y)
    return replace(
        ds, train_x=ds.train_x[tr], train_y=ds.train_y[tr], test_x=ds.test_x[te], test_y=ds.test_y[te]
    )


def build_federated_data(
    dataset: DatasetTensors,
    partition: Partition,
    num_clients: int,
    local_test_fraction: float,
    seed: int,
    local_test_rule: str = "stratified",
) -> FederatedData:
    """A pure function of (dataset, partition spec, local-test rule, seed)."""
    labels = dataset.train_y.numpy()
    if num_clients > len(labels):
        raise DataError(
            f"{num_clients} clients but the training set has only {len(labels)} samples; "
            f"lower data.num_clients"
        )
    part_rng, test_rng = partition.random_streams(seed)
    parts = partition.split(labels, num_clients, dataset.num_classes, part_rng)
    check_partition(parts, len(labels), num_clients, partition.name)
    clients = []
    for cid, idx in enumerate(parts):
        idx = np.asarray(idx, dtype=np.int64)
        if len(idx) == 0:
            raise DataError(
                f"partition '{partition.name}' left client {cid} with no data; change the "
                f"partition's parameters so that every client gets samples, or lower data.num_clients"
            )
        tr, te = carve_local_test(idx, labels, local_test_fraction, test_rng, local_test_rule)
        clients.append(ClientSplit(cid, tr, te))
    return FederatedData(dataset, clients)


def plot_label_histogram(stats: dict, path: str) -> None:
    """Stacked bar chart of each client's training label counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = stats["clients"]
    counts = np.array([r["train_label_counts"] for r in rows])
    n_clients, n_classes = counts.shape
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * n_clients + 2), 4))
    bottom = np.zeros(n_clients)
    cmap = plt.get_cmap("tab20" if n_classes > 10 else "tab10")
    names = stats.get("class_names") or [str(i) for i in range(n_classes)]
    for c in range(n_classes):
        label = f"{c}: {names[c][:24]}" if c < len(names) else str(c)
        ax.bar(range(n_clients), counts[:, c], bottom=bottom, color=cmap(c % cmap.N), label=label)
        bottom += counts[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("training samples")
    ax.set_title(f"{stats['dataset']}: label counts per client")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class DataCache:
    """Datasets and partitions shared by the variants of one invocation (a partition is a pure function of
    dataset, partition spec and seed, so equal keys give equal data)."""

    def __init__(self):
        self._datasets: dict[tuple, Any] = {}
        self._feds: dict[tuple, FederatedData] = {}

    def get(self, rs: ResolvedSpec) -> FederatedData:
        s = rs.spec
        ds_comp = rs.components["dataset"]
        dkey = (ds_comp.name, ds_comp.params.model_dump_json(), s.data.root, s.data.size, s.data.subset)
        if dkey not in self._datasets:
            loaded = ds_comp.instantiate().load(s.data.root, s.data.download, s.data.size)
            self._datasets[dkey] = subset_dataset(loaded, s.data.subset)
        part = rs.components["partition"]
        fkey = dkey + (
            part.name,
            part.params.model_dump_json(),
            s.data.num_clients,
            s.data.local_test.rule,
            s.data.local_test.fraction,
            s.seed,
        )
        if fkey not in self._feds:
            self._feds[fkey] = build_federated_data(
                self._datasets[dkey],
                part.instantiate(),
                s.data.num_clients,
                s.data.local_test.fraction,
                s.seed,
                s.data.local_test.rule,
            )
        return self._feds[fkey]
