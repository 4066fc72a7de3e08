"""Data at real sites (Flower deployment): each site's own file at its node, aggregates at the server.

A site's SuperNode is started with ``--node-config 'client-id=N data-file="/path/to/its.npz"'``. Its
ClientApp reads the file with the spec's dataset plugin (:meth:`fedreg.components.Dataset.load_site`) and
carves the site's local test set from it by the spec's ``data.local_test`` rule, from the client's own
stream of the spec's seed. The server, which holds no client data, learns of each site only what
:func:`site_report` says (sample counts and label counts, the dataset's classes, channels and image
size) and evaluates the global model on its own copy of the dataset's test split
(:class:`ReportedData`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from fedreg import seeding
from fedreg.components import DatasetTensors
from fedreg.data import ClientSplit, FederatedData, carve_local_test
from fedreg.errors import DataError, FedregError

#: node-config keys of a site
CLIENT_ID, DATA_FILE = "client-id", "data-file"


def is_site(node_config: dict[str, Any]) -> bool:
    """Whether a node is a real site (its own data file), not a simulation's virtual node."""
    return DATA_FILE in node_config


class SiteData(FederatedData):
    """One site's data as a :class:`~fedreg.data.FederatedData` of the spec's clients, of which only the
    site's own (client ``cid``) has data."""

    def __init__(self, dataset: DatasetTensors, cid: int, split: ClientSplit):
        super().__init__(dataset, [split])
        self.cid = cid

    def client_tensors(self, cid: int):
        if cid != self.cid:
            raise FedregError(f"this site holds client {self.cid}'s data, not client {cid}'s")
        return super().client_tensors(0)


def site_data(rs, node_config: dict[str, Any], cid: int) -> SiteData:
    """The site's own data: the node config's ``data-file`` read by the spec's dataset plugin, its local
    test set carved by the spec's rule from client ``cid``'s own stream of the spec's seed."""
    spec = rs.spec
    ds = rs.components["dataset"].instantiate().load_site(str(node_config[DATA_FILE]), spec.data.size)
    if not isinstance(ds, DatasetTensors):
        raise FedregError(f"dataset '{spec.data.dataset.name}': load_site returned {type(ds).__name__}")
    if len(ds.train_y) < 2:
        raise DataError(
            f"site file '{node_config[DATA_FILE]}' holds {len(ds.train_y)} samples: a site needs at least 2"
        )
    labels = ds.train_y.numpy()
    rng = seeding.rng(spec.seed, seeding.LOCAL_TEST, cid)
    local = spec.data.local_test
    train, test = carve_local_test(np.arange(len(labels)), labels, local.fraction, rng, local.rule)
    return SiteData(ds, cid, ClientSplit(cid, train, test))


def site_report(fed: SiteData) -> dict[str, Any]:
    """What a site tells the server about its data: aggregates only (counts, no sample)."""
    ds, c = fed.dataset, fed.clients[0]
    return {
        "client": fed.cid,
        "train": len(c.train_idx),
        "local_test": len(c.test_idx),
        "train_label_counts": [int(v) for v in fed.label_counts(c.train_idx)],
        "local_test_label_counts": [int(v) for v in fed.label_counts(c.test_idx)],
        "dataset": ds.name,
        "num_classes": ds.num_classes,
        "in_channels": ds.in_channels,
        "image_size": ds.image_size,
        "checksum": ds.checksum,
    }


class ReportedData(FederatedData):
    """The server's view of a deployment: its own copy of the dataset's test split (for the global model)
    and each site's report; no client sample. Clients' index sets are placeholders of the reported sizes
    (their tensors are at the sites)."""

    def __init__(self, dataset: DatasetTensors, reports: dict[int, dict[str, Any]]):
        clients = [
            ClientSplit(
                c, np.full(r["train"], -1, dtype=np.int64), np.full(r["local_test"], -1, dtype=np.int64)
            )
            for c, r in sorted(reports.items())
        ]
        super().__init__(dataset, clients)
        self.reports = reports

    def client_rows(self) -> list[dict]:
        keys = ("train", "local_test", "train_label_counts", "local_test_label_counts")
        return [{"client": c, **{k: r[k] for k in keys}} for c, r in sorted(self.reports.items())]

    def client_tensors(self, cid: int):
        raise FedregError(f"client {cid}'s data is at its site: the server has none")


def reported_data(rs, reports: dict[int, dict[str, Any]]) -> ReportedData:
    """The server's view of a deployment: its own copy of the spec's dataset (of which it keeps the test
    split) and the sites' reports, checked against the dataset and the spec's clients."""
    spec = rs.spec
    n = spec.data.num_clients
    missing = sorted(set(range(n)) - set(reports))
    if missing:
        raise FedregError(f"no site reported for clients {missing}; the spec has data.num_clients: {n}")
    ds = rs.components["dataset"].instantiate().load(spec.data.root, spec.data.download, spec.data.size)
    for cid, r in sorted(reports.items()):
        theirs = (r["dataset"], r["num_classes"], r["in_channels"], r["image_size"])
        ours = (ds.name, ds.num_classes, ds.in_channels, ds.image_size)
        if theirs != ours:
            raise FedregError(
                f"the site of client {cid} holds {theirs[0]} data with {theirs[1]} classes, {theirs[2]} "
                f"channels, {theirs[3]} px; the spec's dataset has {ours[1]}, {ours[2]}, {ours[3]} px: "
                "give the site a file of the spec's dataset"
            )
        if r["train"] < 1:
            raise DataError(f"the site of client {cid} has no training sample left after its local test set")
    empty = ds.train_x[:0]
    return ReportedData(replace(ds, train_x=empty, train_y=ds.train_y[:0]), reports)
