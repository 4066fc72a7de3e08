"""Bad input meets a clear error: exit code 2, a message naming the problem and the fix, no traceback, and
nothing written that could be mistaken for a result (no MLflow run, no checkpoint)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import fedreg.registry
from fedreg import hookimpl
from fedreg.cli import main
from fedreg.components import Partition
from fedreg.registry import build_registry
from testhelpers import small_medmnist_spec, write_spec


class Lopsided(Partition):
    name = "test_lopsided"

    def split(self, labels, num_clients, num_classes, rng):
        parts = [np.arange(len(labels))] + [np.empty(0, dtype=np.int64)] * (num_clients - 1)
        return parts


@hookimpl
def fedreg_register_partitions(register):
    register(Lopsided)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A working spec on a small MedMNIST-format file, a temporary store and checkpoint folder."""
    monkeypatch.chdir(tmp_path)
    raw, md5 = small_medmnist_spec(tmp_path, n_train=200, n_test=40)
    raw["federation"]["rounds"] = 2
    raw["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "bad"}
    raw["checkpoint"] = {"dir": str(tmp_path / "ck")}
    reg = build_registry(extra_plugins=[("lopsided", __import__(__name__, fromlist=["x"]))])
    monkeypatch.setattr(fedreg.registry, "_DEFAULT", reg)
    return tmp_path, raw, md5


def truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def set_(path, value):
    def f(raw, tmp):
        target = raw
        keys = path.split(".")
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value(tmp) if callable(value) else value

    return f


# (id, how to break the spec or its world, extra CLI args, expected message fragment)
CASES = [
    ("malformed-yaml", "RAW:data: {dataset: [\n", [], "malformed YAML at line"),
    ("unsafe-yaml-tag", "RAW:name: !!python/object/apply:os.system [echo]\n", [], "malformed YAML"),
    ("not-a-mapping", "RAW:- 1\n- 2\n", [], "a spec must be a mapping"),
    ("unknown-key", set_("epochs", 3), [], "epochs: unknown key (remove it or check its spelling)"),
    ("unknown-nested-key", set_("training.lr", 0.1), [], "training.lr: unknown key"),
    (
        "wrong-type",
        set_("training.batch_size", "big"),
        [],
        "training.batch_size: Input should be a valid integer",
    ),
    (
        "out-of-range",
        set_("training.optimizer.lr", 0),
        [],
        "training.optimizer.lr: Input should be greater than 0",
    ),
    (
        "unknown-objective",
        set_("training.objective", "fedproxx"),
        [],
        "unknown objective 'fedproxx'. Registered objective components:",
    ),
    ("unknown-dataset", set_("data.dataset", "bloodmist"), [], "Did you mean 'bloodmnist'?"),
    (
        "bad-component-param",
        set_("federation.aggregation", {"name": "fedavgm", "params": {"momentum": 2}}),
        [],
        "federation.aggregation.params.momentum: Input should be less than 1",
    ),
    (
        "too-many-per-round",
        set_("federation.clients_per_round", 9),
        [],
        "9 clients per round but only 4 clients",
    ),
    ("krum-too-few", set_("federation.aggregation", "krum"), [], "krum with f=1 needs at least 2f+3 = 5"),
    (
        "objective-not-vectorizable",
        set_("execution", {"backend": "vectorized"}),
        ["--set", "training.objective=moon"],
        "execution.backend: objective 'moon' cannot run on the vectorized backend",
    ),
    ("bad-set", None, ["--set", "rounds"], "expected path.to.key=value"),
    ("unknown-variant", None, ["--variant", "nope"], "unknown variant 'nope'"),
    (
        "missing-data-file",
        set_("data.dataset", {"name": "pathmnist"}),
        [],
        "pathmnist.npz' not found. Put pathmnist.npz (from https://zenodo.org",
    ),
    (
        "md5-mismatch",
        set_("data.dataset.params.md5", "0" * 32),
        [],
        "is corrupt, truncated or another version",
    ),
    ("truncated-npz", "TRUNCATE", [], "is corrupt, truncated or another version"),
    ("corrupt-npz", "CORRUPT", [], "as a MedMNIST file"),
    (
        "more-clients-than-samples",
        set_("data.num_clients", 500),
        ["--set", "federation.clients_per_round=2"],
        "500 clients but the training set has only 200 samples; lower data.num_clients",
    ),
    (
        "client-with-no-data",
        set_("data.partition", "test_lopsided"),
        [],
        "partition 'test_lopsided' left client 1 with no data",
    ),
    (
        "unwritable-output",
        set_("checkpoint.dir", lambda tmp: str(tmp / "afile" / "ck")),
        [],
        "cannot write checkpoints to",
    ),
    (
        "tracking-unreachable",
        set_("tracking.uri", lambda tmp: f"http://127.0.0.1:{free_port()}"),
        [],
        "the server cannot be reached. "
        "Start it, or point tracking.uri / MLFLOW_TRACKING_URI at a running one",
    ),
    ("resume-nothing", None, ["--resume"], "nothing to resume: no unfinished run of spec 't'"),
    ("missing-spec-file", "MISSING", [], "does not exist"),
]


@pytest.mark.parametrize("case,breaker,args,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, breaker, args, message, env, capsys):
    tmp, raw, md5 = env
    spec = tmp / "spec.yaml"
    (tmp / "afile").write_text("a file where a folder is expected")
    if isinstance(breaker, str) and breaker.startswith("RAW:"):
        spec.write_text(breaker[4:])
    elif breaker == "MISSING":
        spec = tmp / "no-such-spec.yaml"
    else:
        if breaker == "TRUNCATE":
            truncate(tmp / "organsmnist.npz")
        elif breaker == "CORRUPT":
            (tmp / "organsmnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
            raw["data"]["dataset"]["params"]["md5"] = hashlib.md5(
                (tmp / "organsmnist.npz").read_bytes()
            ).hexdigest()
        elif breaker is not None:
            breaker(raw, tmp)
        write_spec(spec, raw)
    code = main(["run", str(spec), "--no-progress", *args])
    err = capsys.readouterr().err
    print(f"[{case}] " + " / ".join(err.strip().splitlines()))  # `pytest -rA` shows each message
    assert code == 2, err
    assert message in err, err
    assert err.startswith("error: ") and "Traceback" not in err
    # nothing partially written that could be mistaken for a result
    db = tmp / "mlflow.db"
    if db.exists():
        c = MlflowClient(f"sqlite:///{db}")
        assert c.search_runs([e.experiment_id for e in c.search_experiments()]) == []
    assert not list((tmp / "ck").rglob("*.pt")) if (tmp / "ck").exists() else True


def test_debug_shows_traceback(env, capsys):
    tmp, raw, _ = env
    raw["data"]["dataset"] = "pathmnist"
    write_spec(tmp / "s.yaml", raw)
    assert main(["--debug", "run", str(tmp / "s.yaml")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_the_table_is_big_enough():
    assert len(CASES) >= 20
