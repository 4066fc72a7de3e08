"""Every method of the zoo trains on real BloodMNIST at small scale and improves on its start.

The federation runs in memory (fedreg.testing) on a class-balanced-at-random subset of the real training
split; the variants of specs/baselines/all-methods.yaml (method presets) give the components of each
method."""

from __future__ import annotations

import pytest
import torch

from fedreg.components import DatasetTensors
from fedreg.registry import build_registry
from fedreg.spec import load_spec
from fedreg.testing import initial_accuracy, tiny_federation
from fedreg_standard.medmnist_data import load_medmnist
from testhelpers import REPO

pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _method_parts() -> dict[str, dict]:
    """Each variant's objective and aggregation, as the spec's presets expand them."""
    out = {}
    for rs in load_spec(REPO / "specs" / "baselines" / "all-methods.yaml", build_registry()):
        d = rs.resolved_dict()
        out[rs.variant] = {
            "training.objective": d["training"]["objective"],
            "federation.aggregation": d["federation"]["aggregation"],
        }
    return out


VARIANTS = _method_parts()


@pytest.fixture(scope="module")
def blood_subset(data_dir) -> DatasetTensors:
    ds = load_medmnist("bloodmnist", str(data_dir), download=False, size=28)
    g = torch.Generator().manual_seed(0)
    tr = torch.randperm(len(ds.train_y), generator=g)[:2400]
    te = torch.randperm(len(ds.test_y), generator=g)[:600]
    return DatasetTensors(
        "bloodmnist-subset",
        ds.train_x[tr],
        ds.train_y[tr],
        ds.test_x[te],
        ds.test_y[te],
        ds.num_classes,
        ds.in_channels,
        28,
        ds.class_names,
        ds.checksum,
    )


def test_every_registered_method_has_a_variant(registry):
    reg = registry
    used = {
        v["training.objective"]["name"]
        if isinstance(v["training.objective"], dict)
        else v["training.objective"]
        for v in VARIANTS.values()
    }
    used |= {
        v["federation.aggregation"]["name"]
        if isinstance(v["federation.aggregation"], dict)
        else v["federation.aggregation"]
        for v in VARIANTS.values()
    }
    assert set(reg.names("objective")) <= used
    assert set(reg.names("aggregation")) <= used


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_method_improves_on_its_start(variant, blood_subset, registry):
    over = {
        **VARIANTS[variant],
        "data.num_clients": 6,
        "federation.clients_per_round": 5,
        "federation.rounds": 3,
        "model": "cnn",
        "training.batch_size": 32,
        "training.optimizer": {"lr": 0.02, "momentum": 0.9, "weight_decay": 1e-5},
        "data.partition": {"name": "dirichlet", "params": {"alpha": 1.0, "min_samples": 10}},
        "metrics": ["global_accuracy", "local_accuracy"],
    }
    if variant in ("krum", "multi-krum"):
        # Krum keeps the m clients closest to the others: under label skew that is a few clients' classes
        # (its papers assume honest clients of one distribution), so it is checked on IID clients
        over["data.partition"] = "iid"
    if variant == "fedrep":  # of 3 local epochs, 2 for the head and the last for the body (rep_epochs 1)
        params = {"personal_layers": ["fc"], "rep_epochs": 1}
        over["training.objective"] = {"name": "fedrep", "params": params}
        over["training.local_epochs"] = 3
    start = initial_accuracy({"model": "cnn", "data.num_clients": 6}, dataset=blood_subset)
    res = tiny_federation(over, dataset=blood_subset)
    obj = res.history and tiny_objective_role(registry, over)
    key = "final_local_acc_mean" if obj == "personal" else "final_global_acc"
    # 8 classes; the untrained model sits near chance
    assert res.final[key] > start + 0.15, (variant, start, res.final)


def tiny_objective_role(reg, over) -> str:
    ref = over["training.objective"]
    name = ref["name"] if isinstance(ref, dict) else ref
    return reg.lookup("objective", name).cls.local_model_role
