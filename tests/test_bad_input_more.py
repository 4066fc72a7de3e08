"""More bad input (issue 14): each case exits 2 through the real CLI with a message naming the problem and
the fix, no traceback, and nothing left behind (no MLflow run, no checkpoint). Same contract as
``test_bad_input.py``; the cases here need their own world (a dataset of 14x14 images, a plugin that
registers a badly named component) or raw spec text."""

from __future__ import annotations

import time

import pytest
import torch
from mlflow.tracking import MlflowClient

import fedreg.registry
from fedreg import hookimpl
from fedreg.cli import main
from fedreg.components import Dataset, DatasetTensors, Metric
from fedreg.registry import build_registry
from testhelpers import small_medmnist_spec, write_spec


class TinyImages(Dataset):
    """14x14 grey images, 3 classes."""

    name = "test_tiny_images"

    def load(self, root, download, size):
        g = torch.Generator().manual_seed(0)
        return DatasetTensors(
            name=self.name,
            train_x=torch.randn(60, 1, 14, 14, generator=g),
            train_y=torch.arange(60) % 3,
            test_x=torch.randn(12, 1, 14, 14, generator=g),
            test_y=torch.arange(12) % 3,
            num_classes=3,
            in_channels=1,
            image_size=14,
        )


class DottedMetric(Metric):
    name = "my.metric"

    def update(self, ev):
        raise NotImplementedError


@hookimpl
def fedreg_register_datasets(register):
    register(TinyImages)


class BadNames:
    """A second plugin, 'badnames': it registers a metric named with a dot (so the registry sets it aside)."""

    @hookimpl
    def fedreg_register_metrics(self, register):
        register(DottedMetric)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A working spec on a small MedMNIST-format file, a temporary store and checkpoint folder; the
    registry holds this module's plugins 'more' and 'badnames'."""
    monkeypatch.chdir(tmp_path)
    raw, md5 = small_medmnist_spec(tmp_path, n_train=200, n_test=40)
    raw["federation"]["rounds"] = 2
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "bad"}
    raw["checkpoint"] = {"dir": str(tmp_path / "ck")}
    reg = build_registry(
        extra_plugins=[("more", __import__(__name__, fromlist=["x"])), ("badnames", BadNames())]
    )
    monkeypatch.setattr(fedreg.registry, "_DEFAULT", reg)
    return tmp_path, raw


def set_(path, value):
    def f(raw, tmp):
        target = raw
        keys = path.split(".")
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value(tmp) if callable(value) else value

    return f


def append(text):
    """Write the working spec, then this text after it (duplicate keys that a dict cannot hold)."""
    return ("APPEND", text)


def alias_nest(levels: int, width: int = 10) -> str:
    """A YAML flow list nested ``levels`` deep through aliases: ``width ** levels`` values."""
    node = "&l0 [" + ", ".join(["1"] * width) + "]"
    for i in range(1, levels):
        node = f"&l{i} [{node}" + f", *l{i - 1}" * (width - 1) + "]"
    return node


# (id, command, how to break the spec or its world, extra args, expected message fragments)
CASES = [
    ("spec-is-a-folder", "run", "FOLDER", [], ["is a folder, not a spec file"]),
    ("binary-spec", "run", ("BYTES", b"\x89PNG\r\n\x1a\n\x00\x00\xff"), [], ["is not a UTF-8 text file"]),
    ("latin1-spec", "validate", ("BYTES", "name: caf\xe9\n".encode("latin-1")), [], ["save it as UTF-8"]),
    (
        "unknown-tracking-scheme",
        "validate",
        set_("tracking.uri", "foo://bar"),
        [],
        ["tracking.uri: Value error, unknown scheme 'foo:'", "sqlite:///mlflow.db"],
    ),
    (
        "alias-bomb",
        "validate",
        append(f"description: {alias_nest(9)}\n"),
        [],
        ["description: this value expands to more than 100,000 values", "alias bomb"],
    ),
    (
        "alias-bomb-in-set",
        "validate",
        None,
        ["--set", f"seed={alias_nest(9)}"],
        ["expands to more than 100,000 values"],
    ),
    (
        "big-value-echoed-short",
        "validate",
        ("REPLACE", "seed: 1\n", f"seed: {alias_nest(4)}\n"),
        [],
        ["seed: Input should be a valid integer (got [[[[...], [...], [...]", "...)"],
    ),
    ("empty-experiment", "run", set_("tracking.experiment", ""), [], ["tracking.experiment: String should"]),
    (
        "data-root-is-the-file",
        "run",
        set_("data.root", lambda tmp: str(tmp / "organsmnist.npz")),
        [],
        ["data.root must be the folder holding organsmnist.npz, not a file", "use data.root: "],
    ),
    (
        "infinite-lr",
        "run",
        set_("training.optimizer.lr", float("inf")),
        [],
        ["training.optimizer.lr: Input should be a finite number"],
    ),
    (
        "nan-component-param",
        "validate",
        set_("federation.aggregation", {"name": "fedavgm", "params": {"momentum": float("nan")}}),
        [],
        ["federation.aggregation.params.momentum: Input should be a finite number"],
    ),
    (
        "duplicate-key",
        "run",
        append("seed: 7\n"),
        [],
        ["seed: duplicate key at line", "(first at line 2)", "Remove one of them"],
    ),
    (
        "duplicate-variant",
        "validate",
        append("variants:\n  a: {seed: 2}\n  a: {seed: 3}\n"),
        [],
        ["variants.a: duplicate key at line"],
    ),
    (
        "local-metric-without-local-test",
        "run",
        lambda raw, tmp: raw.update(
            metrics=["global_accuracy", "local_accuracy"],
            data={**raw["data"], "local_test": {"fraction": 0}},
        ),
        [],
        ["data.local_test.fraction: 0 leaves every client without a local test set", "local_accuracy"],
    ),
    (
        "shards-more-classes-than-exist",
        "run",
        set_("data.partition", {"name": "shards", "params": {"classes_per_client": 12}}),
        [],
        ["gives each client 12 classes but the dataset has only 11", "classes_per_client to at most 11"],
    ),
    (
        "component-name-with-space",
        "validate",
        set_("training.objective", "cross entropy"),
        [],
        ["unknown objective 'cross entropy'", "lowercase letters, digits and '_' only"],
    ),
    (
        "badly-named-plugin-component",
        "validate",
        set_("metrics", ["global_accuracy", "my.metric"]),
        [],
        ["metric 'my.metric' is unavailable: plugin 'badnames'", "rename it (e.g. 'my_metric')"],
    ),
    (
        "spec-name-with-slash",
        "validate",
        set_("name", "../elsewhere"),
        [],
        ["name: Value error, the spec's name names its checkpoint folder", "(got '../elsewhere')"],
    ),
    (
        "spec-name-with-space",
        "run",
        set_("name", "my run"),
        [],
        ["(no accented letters, spaces or '/')", "has ' '"],
    ),
    (
        "model-too-big-for-images",
        "run",
        set_("data.dataset", "test_tiny_images"),
        [],
        [
            "model 'cnn' does not fit dataset 'test_tiny_images' (14x14 images with 1 channel and 3 classes)",
            "at least 16x16, got 14x14",
            "params.padding: 2",
        ],
    ),
]


@pytest.mark.parametrize("case,command,breaker,args,messages", CASES, ids=[c[0] for c in CASES])
def test_bad_input_more(case, command, breaker, args, messages, env, capsys):
    tmp, raw = env
    spec = tmp / "spec.yaml"
    if breaker == "FOLDER":
        spec = tmp / "specs"
        spec.mkdir()
    elif isinstance(breaker, tuple) and breaker[0] == "BYTES":
        spec.write_bytes(breaker[1])
    elif isinstance(breaker, tuple) and breaker[0] == "APPEND":
        write_spec(spec, raw)
        spec.write_text(spec.read_text() + breaker[1])
    elif isinstance(breaker, tuple) and breaker[0] == "REPLACE":
        write_spec(spec, raw)
        assert breaker[1] in spec.read_text()
        spec.write_text(spec.read_text().replace(breaker[1], breaker[2]))
    else:
        if breaker is not None:
            breaker(raw, tmp)
        write_spec(spec, raw)
    extra = ["--no-progress"] if command == "run" else []
    started = time.monotonic()
    code = main([command, str(spec), *extra, *args])
    err = capsys.readouterr().err
    print(f"[{case}] " + " / ".join(err.strip().splitlines()))  # `pytest -rA` shows each message
    assert time.monotonic() - started < 30
    assert code == 2, err
    for message in messages:
        assert message in err, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err) < 4000  # no value echoed whole
    db = tmp / "mlflow.db"
    if db.exists():
        c = MlflowClient(f"sqlite:///{db}")
        assert c.search_runs([e.experiment_id for e in c.search_experiments()]) == []
    assert not list((tmp / "ck").rglob("*.pt")) if (tmp / "ck").exists() else True


@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_ui_port_out_of_range(port, env, capsys):
    assert main(["ui", "--port", port, "--tracking-uri", "sqlite:///x.db"]) == 2
    err = capsys.readouterr().err
    assert f"--port {port} is not a TCP port; use a number from 1 to 65535" in err
    assert "Traceback" not in err


def test_ui_unknown_tracking_scheme(env, capsys):
    assert main(["ui", "--tracking-uri", "foo://bar"]) == 2
    err = capsys.readouterr().err
    assert "unknown scheme 'foo:'" in err and "Traceback" not in err


def test_badly_named_component_is_a_broken_plugin(env, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "broken plugins:" in out
    assert "registered the metric DottedMetric as 'my.metric'" in out
    assert "test_tiny_images" in out  # the other plugin is unaffected


def test_tracker_refuses_an_unknown_scheme_from_the_environment(env, monkeypatch, capsys):
    """A URI from $MLFLOW_TRACKING_URI is not in the spec: the tracker checks it before MLflow sees it."""
    tmp, raw = env
    del raw["tracking"]["uri"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    write_spec(tmp / "s.yaml", raw)
    assert main(["run", str(tmp / "s.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot use the MLflow tracking store 'foo://bar': unknown scheme 'foo:'" in err
    assert "Traceback" not in err


def test_tracking_schemes_come_from_mlflow():
    from fedreg.tracking import tracking_schemes

    schemes = tracking_schemes()
    assert {"", "file", "sqlite", "http", "https", "databricks"} <= set(schemes)
    assert "uc" not in schemes


def test_aliases_within_the_budget_still_load(tmp_path):
    from fedreg.spec import load_yaml

    p = tmp_path / "s.yaml"
    p.write_text("base: &b {lr: 0.1}\nother:\n  <<: *b\n  momentum: 0.5\nlist: &l [1, 2]\nagain: *l\n")
    assert load_yaml(p) == {
        "base": {"lr": 0.1},
        "other": {"lr": 0.1, "momentum": 0.5},
        "list": [1, 2],
        "again": [1, 2],
    }


def test_data_dir_env_pointing_at_the_file(env, monkeypatch, capsys):
    tmp, raw = env
    del raw["data"]["root"]
    monkeypatch.setenv("FEDREG_DATA_DIR", str(tmp / "organsmnist.npz"))
    write_spec(tmp / "s.yaml", raw)
    assert main(["run", str(tmp / "s.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "FEDREG_DATA_DIR must be the folder holding organsmnist.npz, not a file" in err
    assert f"use FEDREG_DATA_DIR={tmp}" in err


def test_compare_unknown_tracking_scheme(env, capsys):
    assert main(["compare", "abc", "--tracking-uri", "foo://bar"]) == 2
    err = capsys.readouterr().err
    assert "tracking store 'foo://bar': unknown scheme 'foo:'" in err and "Traceback" not in err


def test_replay_unknown_tracking_scheme(env, capsys):
    tmp, _ = env
    spool = tmp / "spool"
    spool.mkdir()
    (spool / "target.json").write_text('{"tracking_uri": "foo://bar"}')
    (spool / "calls.jsonl").write_text('{"op": "set_status", "args": ["x", "RUNNING"]}\n')
    assert main(["replay", str(spool)]) == 2
    err = capsys.readouterr().err
    assert "unknown scheme 'foo:'" in err and "the spool's target.json" in err and "Traceback" not in err
    assert (spool / "calls.jsonl").read_text().strip()  # nothing was dropped
