"""Real sites without a federation: a site's data file read by the dataset plugin, what a site reports and
what the server builds from the reports, the Flower App fedreg writes, the audit of what a node sends, and
metrics that cannot run where predictions stay at the sites."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest
import torch

from fedreg.components import LOCAL, Metric, MetricResult
from fedreg.errors import DataError, FedregError
from fedreg.registry import build_registry, get_registry
from fedreg.spec import resolve
from testhelpers import make_medmnist_npz

flwr = pytest.importorskip("flwr")  # the flower extra; without it these tests are skipped


def spec(root, md5: str, **more) -> dict:
    return {
        "name": "sites",
        "seed": 4,
        "data": {
            "dataset": {"name": "organcmnist", "params": {"md5": md5}},
            "root": str(root),
            "num_clients": 3,
            "local_test": {"fraction": 0.2, "rule": "per_class_equal"},
        },
        "model": {"name": "cnn", "params": {"hidden": 8}},
        "method": "fedkper",
        "federation": {"rounds": 2, "clients_per_round": 2},
        "metrics": ["global_accuracy", "local_accuracy", "flips", "bwt"],
        "execution": {"backend": "flower"},
        **more,
    }


@pytest.fixture
def official(tmp_path):
    """A small file in the official layout (the server's copy) and its resolved spec."""
    md5 = make_medmnist_npz(tmp_path, "organcmnist", n_train=120, n_test=40)
    (rs,) = resolve(spec(tmp_path, md5), get_registry())
    return rs


def site_npz(path, images, labels):
    np.savez(path, train_images=images, train_labels=labels.reshape(-1, 1))
    return path


def test_a_site_file_is_preprocessed_as_the_official_splits(tmp_path, official):
    from fedreg_flower.sites import site_data, site_report

    ds = official.components["dataset"].instantiate()
    full = ds.load(str(tmp_path), False, 28)
    with np.load(tmp_path / "organcmnist.npz") as npz:
        images, labels = npz["train_images"][:50], npz["train_labels"][:50].reshape(-1)
    path = site_npz(tmp_path / "site.npz", images, labels)
    mine = ds.load_site(str(path), 28)
    assert torch.equal(mine.train_x, full.train_x[:50]) and torch.equal(mine.train_y, full.train_y[:50])
    assert len(mine.test_y) == 0 and mine.test_x.shape == (0, 1, 28, 28)
    assert (mine.num_classes, mine.in_channels, mine.image_size) == (11, 1, 28)
    data = site_data(official, {"client-id": 1, "data-file": str(path)}, 1)
    c = data.clients[0]
    assert len(c.train_idx) + len(c.test_idx) == 50 and not set(c.train_idx) & set(c.test_idx)
    assert len(c.test_idx) == 10  # int(0.2 * 50), split equally over the site's classes
    x, y, tx, ty = data.client_tensors(1)
    assert len(y) == 40 and len(ty) == 10
    with pytest.raises(FedregError, match="holds client 1's data, not client 0's"):
        data.client_tensors(0)
    report = site_report(data)
    assert report["train"] == 40 and report["local_test"] == 10 and sum(report["train_label_counts"]) == 40
    assert all(isinstance(v, int | str | list) for v in report.values())  # counts and names, no sample


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "not found"),
        ({"images": np.zeros((4, 28, 28), np.uint8)}, "cannot read"),
        ({"train_images": np.zeros((4, 32, 32), np.uint8), "train_labels": np.zeros(4)}, r"\(4, 32, 32\)"),
        ({"train_images": np.zeros((4, 28, 28), np.float32), "train_labels": np.zeros(4)}, "float32"),
        ({"train_images": np.zeros((4, 28, 28), np.uint8), "train_labels": np.full(4, 11)}, "outside 0..10"),
    ],
)
def test_a_bad_site_file_names_the_problem_and_the_format(tmp_path, official, content, problem):
    path = tmp_path / "site.npz"
    if content is not None:
        np.savez(path, **content)
    with pytest.raises(DataError, match=problem):
        official.components["dataset"].instantiate().load_site(str(path), 28)


def test_the_server_builds_its_view_from_the_reports_alone(tmp_path, official):
    from fedreg_flower.sites import reported_data

    reports = {
        c: {
            "client": c,
            "train": 30 + c,
            "local_test": 5,
            "train_label_counts": [30 + c] + [0] * 10,
            "local_test_label_counts": [5] + [0] * 10,
            "dataset": "organcmnist",
            "num_classes": 11,
            "in_channels": 1,
            "image_size": 28,
            "checksum": "x",
        }
        for c in range(3)
    }
    fed = reported_data(official, reports)
    assert [(i.num_train, i.num_test, i.label_counts[0]) for i in fed.infos()] == [
        (30, 5, 30),
        (31, 5, 31),
        (32, 5, 32),
    ]
    assert len(fed.dataset.train_y) == 0 and len(fed.dataset.test_y) == 40  # the test split only
    assert fed.stats()["clients"][2]["train"] == 32 and fed.stats()["clients"][2]["local_test"] == 5
    with pytest.raises(FedregError, match="client 0's data is at its site"):
        fed.client_tensors(0)
    with pytest.raises(FedregError, match=r"no site reported for clients \[2\]"):
        reported_data(official, {c: reports[c] for c in (0, 1)})
    other = {**reports, 1: {**reports[1], "num_classes": 8, "dataset": "bloodmnist", "in_channels": 3}}
    with pytest.raises(FedregError, match="client 1 holds bloodmnist data with 8 classes"):
        reported_data(official, other)


def test_the_flower_app_holds_the_validated_spec(tmp_path):
    import yaml

    from fedreg import checkpoint
    from fedreg_flower.app import main, write_app
    from fedreg_flower.server import run_config_specs

    md5 = make_medmnist_npz(tmp_path, "organcmnist", n_train=60, n_test=20)
    path = tmp_path / "sites.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path, md5)))
    pyproject = tomllib.loads(write_app(path, tmp_path / "app", ["federation.rounds=5"]).read_text())
    flwr_app = pyproject["tool"]["flwr"]["app"]
    assert flwr_app["components"] == {
        "serverapp": "fedreg_flower.server:app",
        "clientapp": "fedreg_flower.client:app",
    }
    _, specs = run_config_specs(flwr_app["config"])
    (direct,) = resolve(
        spec(tmp_path, md5) | {"federation": {"rounds": 5, "clients_per_round": 2}}, get_registry()
    )
    assert checkpoint.fingerprint(specs[0].resolved_dict()) == checkpoint.fingerprint(direct.resolved_dict())
    # a spec for another backend, and a run config without a spec, are refused with the fix
    assert main([str(path), str(tmp_path / "bad"), "--set", "execution.backend=local"]) == 2
    with pytest.raises(FedregError, match="execution.backend: flower"):
        write_app(path, tmp_path / "bad", ["execution.backend=local"])
    with pytest.raises(FedregError, match="has no 'spec'"):
        run_config_specs({"spec": ""})


def test_the_audit_describes_every_record_without_values(tmp_path):
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from fedreg_flower import audit, codec

    content = RecordDict(
        {
            "weights": ArrayRecord({"w": torch.zeros(3, 4)}),
            "local": MetricRecord({"flips/nfr": 0.25}),
            "update": ConfigRecord({"num_samples": 7, "report": codec.pack({"r": 0.5, "t": torch.ones(2)})}),
            "report": ConfigRecord({"report": json.dumps({"train": 40})}),
        }
    )
    d = audit.describe_content(content)
    assert d["weights"] == {"arrays": {"w": {"shape": [3, 4], "dtype": "float32"}}}
    assert d["local"] == {"numbers": ["flips/nfr"]}
    assert d["update"]["config"]["report"] == {
        "packed": {"r": "float", "t": {"tensor": [2], "dtype": "float32"}}
    }
    assert d["report"]["config"]["report"] == {"json": {"train": "int"}}
    assert "0.25" not in json.dumps(d) and "40" not in json.dumps(d)  # shapes and names, never values


class NeedsLocalPredictions(Metric):
    name = "per_sample_thing"
    requires = frozenset({LOCAL})

    def update(self, ev):
        return MetricResult({"thing": float(len(ev.local))})


def test_a_metric_without_a_site_part_is_refused_where_predictions_stay_at_sites(tmp_path):
    from fedreg import hookimpl
    from fedreg.evaluator import Evaluator
    from fedreg.testing import _tiny_run

    class Plugin:
        @hookimpl
        def fedreg_register_metrics(self, register):
            register(NeedsLocalPredictions)

    registry = build_registry(extra_plugins=[("needs-local", Plugin())])
    run = _tiny_run({"metrics": ["global_accuracy", "per_sample_thing", "flips"]}, (), None, registry)
    with pytest.raises(
        FedregError, match="metric 'per_sample_thing' needs local predictions and has no site part"
    ):
        Evaluator(run.fed, run.metrics, run.spec, run.runner, "local", at_sites=True)
    Evaluator(run.fed, run.metrics[:1] + run.metrics[2:], run.spec, run.runner, "local", at_sites=True)
