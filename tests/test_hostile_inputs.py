"""Hostile inputs (issue 25): each case goes through the real command line (``python -m fedreg`` as a child
process, with plugins from real installed distributions on its path and a temporary SQLite store) and ends
in a message that names the problem and the fix, with the exit status of the conventions (2: the input, 1:
the machine), no traceback, and no MLflow run where the input is refused before running."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from testhelpers import REPO, child, run_child, small_medmnist_spec, write_spec

#: a third-party distribution with one hostile component of each case
HOSTILE = '''
"""Hostile components for fedreg's tests (issue 25)."""

import torch
from torch import nn

import fedreg
from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, Metric, MetricResult, Model, Params, Selector
from fedreg.figures import Figure


class GlobalEce(Metric):
    """Declares and returns 'global_ece', which the first-party metric 'ece' declares too."""

    name = "global_ece"
    figures = (Figure("global_ece", "plugin ECE", curve=True, tracked_as="probabilities/global_ece"),)

    def update(self, ev):
        return MetricResult({"global_ece": 0.5})


class Sneaky(Metric):
    """Returns 'global_acc' without declaring it: the first-party 'global_accuracy' returns it."""

    name = "sneaky"

    def update(self, ev):
        return MetricResult({"global_acc": 0.0})


class Clock(Metric):
    """Returns 'cpu_s', a timing scalar the round loop sets after the metrics."""

    name = "clock"

    def update(self, ev):
        return MetricResult({"cpu_s": 0.0})


class HugeParams(Params):
    gigabytes: float = 2.0
    eager: bool = False  # allocate the memory at once on the CPU (no estimate possible)


class Huge(Model):
    """A wide two-layer perceptron of about `gigabytes` of parameters."""

    name = "huge"
    Params = HugeParams

    def build(self, in_channels, num_classes, image_size):
        if self.params.eager:
            torch.empty(int(self.params.gigabytes * 1e9 / 4), device="cpu")
        inputs = in_channels * image_size * image_size
        hidden = int(self.params.gigabytes * 1e9 / 4 / (inputs + num_classes))
        return nn.Sequential(nn.Flatten(), nn.Linear(inputs, hidden), nn.Linear(hidden, num_classes))


class PickyParams(Params):
    fail: bool = False  # raise in aggregate: a child that fails because of its spec
    tag: int = 0  # does nothing (something to grid over)


class Picky(Aggregator):
    """The mean of the updates, or a failure when its spec says so."""

    name = "picky"
    Params = PickyParams

    def aggregate(self, round, global_state, updates, failures):
        if self.params.fail:
            raise ValueError("picky: params.fail is true")
        return weighted_average([u.state for u in updates], [1.0] * len(updates))


class Forgetful(Selector):
    """Uniform selection whose state cannot be saved."""

    name = "forgetful"

    def select(self, round, clients, k, rng):
        return sorted(int(c) for c in rng.choice(len(clients), size=k, replace=False))

    def state_dict(self):
        raise RuntimeError("forgetful: my state cannot be saved")


@fedreg.hookimpl
def fedreg_register_metrics(register):
    register(GlobalEce)
    register(Sneaky)
    register(Clock)


@fedreg.hookimpl
def fedreg_register_models(register):
    register(Huge)


@fedreg.hookimpl
def fedreg_register_aggregators(register):
    register(Picky)


@fedreg.hookimpl
def fedreg_register_selectors(register):
    register(Forgetful)
'''


def make_dist(site: Path, dist: str, module: str, code: str, entry_points: dict[str, dict[str, str]]) -> None:
    """An installed distribution in ``site``: the package ``module`` and its .dist-info with entry points."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(textwrap.dedent(code))
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    eps = "".join(
        f"[{g}]\n" + "".join(f"{n} = {v}\n" for n, v in names.items()) for g, names in entry_points.items()
    )
    (info / "entry_points.txt").write_text(eps)
    (info / "RECORD").write_text("")


class World:
    """A working spec on a small MedMNIST-format file, a temporary store and checkpoint folder, and the
    hostile distribution installed in ``site`` (on the children's path)."""

    def __init__(self, tmp: Path):
        self.tmp, self.site = tmp, tmp / "site"
        make_dist(
            self.site, "fedreg-hostile", "fedreg_hostile", HOSTILE, {"fedreg": {"hostile": "fedreg_hostile"}}
        )
        self.raw, _ = small_medmnist_spec(tmp, n_train=200, n_test=40)
        self.raw["federation"]["rounds"] = 1
        self.uri = f"sqlite:///{tmp / 'mlflow.db'}"
        self.raw["tracking"] = {"uri": self.uri, "experiment": "hostile"}
        self.raw["checkpoint"] = {"dir": str(tmp / "ck")}

    def cli(self, *args, timeout: float = 400, prefix: str = ""):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(self.site), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [sys.executable, "-m", "fedreg", *map(str, args)]
        if prefix:  # a shell line before the command (e.g. a ulimit)
            cmd = ["bash", "-c", f"{prefix} && exec " + " ".join(f"'{c}'" for c in cmd)]
        return run_child(cmd, timeout, cwd=self.tmp, env=env)

    def spec(self, raw: dict | None = None, name: str = "spec.yaml") -> Path:
        return write_spec(self.tmp / name, raw if raw is not None else self.raw)

    def runs(self) -> list:
        if not (self.tmp / "mlflow.db").exists():
            return []
        client = MlflowClient(self.uri)
        return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


def refused(out, code: int, *fragments: str) -> str:
    """The child's stderr, checked: exit status ``code``, an 'error:' line, no traceback, each fragment."""
    err = out.stderr
    assert out.returncode == code, (out.returncode, out.stdout[-3000:], err[-3000:])
    assert "error: " in err and "Traceback" not in err, err[-3000:]
    for fragment in fragments:
        assert fragment in err, (fragment, err[-3000:])
    return err


# --- 1, 3a, 3b: refused at validation -----------------------------------------------------------------------


def test_scalar_clash_long_names_and_too_many_runs_are_spec_errors(world):
    """A plugin metric declaring 'global_ece' beside 'ece', a 300-character variant name and a grid of
    10,000 points: all three reported at once by 'fedreg validate', and 'fedreg run' starts nothing."""
    raw = world.raw
    raw["metrics"] = ["global_accuracy", "ece", "global_ece"]
    long_name = "v" * 300
    raw["variants"] = {"short": {}, long_name: {}}
    raw["grid"] = {
        "training.optimizer.lr": [0.001 * i for i in range(1, 101)],
        "federation.rounds": list(range(1, 101)),
    }
    spec = world.spec()
    for command in ("validate", "run"):
        err = refused(
            world.cli(command, spec),
            2,
            "metrics.2: metric 'global_ece' declares the scalar 'global_ece', which metric 'ece' also",
            "also declares: one would overwrite the other",
            "Keep one of the two metrics",
            "this spec makes 20,000 child runs (2 variants x 10,000 grid points (100 x 100 values)), more "
            "than execution.max_runs (1,000, its default)",
            "--set execution.max_runs=20000",
            f"the variant name '{long_name[:37]}...' is 300 bytes long",
            "MLflow runs (at most 250 characters)",
            "at most 248 characters",
        )
        assert len(err) < 5000  # not one line per grid point
    assert world.runs() == [] and not (world.tmp / "ck").exists()


def test_raising_max_runs_lets_a_bigger_sweep_validate(world):
    world.raw["grid"] = {"training.optimizer.lr": [0.01, 0.02, 0.03]}
    spec = world.spec()
    refused(world.cli("validate", spec, "--set", "execution.max_runs=2"), 2, "makes 3 child runs")
    out = world.cli("validate", spec, "--set", "execution.max_runs=3")
    assert out.returncode == 0 and out.stdout.count("ok: ") == 3, out.stderr


def test_spec_name_not_ascii_says_ascii(world):
    world.raw["name"] = "tb-café"
    refused(
        world.cli("validate", world.spec()), 2, "ASCII letters (a-z, A-Z), digits (0-9)", "'é' (not ASCII)"
    )


# --- 1: an undeclared scalar returned twice -----------------------------------------------------------------


@pytest.mark.parametrize(
    "metric, taken",
    [
        ("sneaky", "'global_acc' by metric 'global_accuracy'"),
        # the round loop sets its timing scalars after the metrics': the check must not miss them
        ("clock", "'cpu_s' by the round loop"),
    ],
)
def test_undeclared_scalar_taken_by_another_metric_fails_the_run(world, metric, taken):
    world.raw["metrics"] = ["global_accuracy", metric]
    key = taken.split("'")[1]
    refused(
        world.cli("run", world.spec(), "--no-progress"),
        2,
        f"metric '{metric}' (plugin 'hostile', fedreg-hostile 0.1.0) returned the scalar '{key}' in "
        f"round 1, already taken this round ({taken}",
        "it would overwrite it",
    )
    (run,) = world.runs()
    assert run.info.status == "FAILED"
    assert "accuracy/global" not in run.data.metrics  # nothing overwritten, nothing logged for the round


def test_the_plugin_guide_lists_the_first_party_scalar_names():
    from fedreg.registry import build_registry

    guide = (REPO / "docs" / "plugins.md").read_text()
    start = guide.index("choose names no other metric uses")
    section = guide[start : start + 3000]
    keys = {
        f.key
        for i in build_registry().all()
        if i.kind == "metric" and i.distribution == "fedreg"
        for f in i.cls.figures
    }
    assert keys and all(f"`{k}`" in section for k in keys), sorted(k for k in keys if f"`{k}`" not in section)


# --- 2: first-party plugin names ----------------------------------------------------------------------------

SHADOW = """
import fedreg
from fedreg.components import Metric, MetricResult


class Shadow(Metric):
    name = "{name}_metric"

    def update(self, ev):
        return MetricResult({{}})


@fedreg.hookimpl
def fedreg_register_metrics(register):
    register(Shadow)
"""


def test_a_distribution_named_after_a_first_party_plugin_cannot_replace_it(world):
    """'fedreg-standard' and 'fedreg-report' (what 'fedreg new-plugin standard' / 'report' wrote): their
    modules fedreg_standard and fedreg_report come first on the path, their entry points take the names
    'standard' and 'report'. Neither is loaded; both are listed as broken with the fix; the shipped specs and
    the report command keep working."""
    for name in ("standard", "report"):
        make_dist(
            world.site,
            f"fedreg-{name}",
            f"fedreg_{name}",
            SHADOW.format(name=name),
            {"fedreg": {name: f"fedreg_{name}"}},
        )
    out = world.cli("plugins")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    broken = out.stdout.split("broken plugins:")[1]
    for name in ("standard", "report"):
        assert (
            f"{name} (fedreg-{name} 0.1.0): its entry point '{name}' has the name of fedreg's own plugin"
            in broken
        )
        assert f"rename its entry point '{name} = fedreg_{name}' in its pyproject.toml" in broken
        assert f"{name}_metric" not in out.stdout  # not loaded
    assert "bloodmnist" in out.stdout and "dirichlet" in out.stdout  # fedreg's own 'standard' is
    for spec in ("fedavg-bloodmnist.yaml", "fedkper-bloodmnist.yaml"):
        out = world.cli("validate", REPO / "specs" / spec)
        assert out.returncode == 0 and out.stdout.startswith("ok: "), out.stderr
    out = world.cli("report", "--help")
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr


def test_new_plugin_refuses_reserved_long_names_and_unwritable_folders(world):
    refused(
        world.cli("new-plugin", "standard"),
        2,
        "plugin name 'standard' is reserved: fedreg's own plugin 'standard' (module fedreg_standard) has it",
        "Choose another name, e.g. 'my_standard'; reserved: baselines, fedkper, flower, local, metrics, ray, "
        "report, standard, vectorized",
    )
    refused(world.cli("new-plugin", "a" * 60), 2, "it has 60 characters, at most 40 are allowed")
    err = refused(
        world.cli("new-plugin", "kit", "--dir", "/proc/nope"), 2, "cannot write the plugin into '/proc/nope'"
    )
    assert "the folder '/proc' does not take a new folder 'nope'" in err and "--dir" in err
    assert not (world.tmp / "fedreg-standard").exists() and not (world.tmp / "fedreg-kit").exists()


# --- 3c: workers --------------------------------------------------------------------------------------------


def test_more_workers_than_the_machine_holds_is_refused(world):
    from fedreg.limits import cpu_count

    n = cpu_count() + 1
    world.raw["variants"] = {f"v{i}": {"training.optimizer.lr": 0.01 * (i + 1)} for i in range(n)}
    err = refused(
        world.cli("run", world.spec(), "--jobs", 1000, "--no-progress"),
        2,
        f"--jobs 1000 asks for {n} worker processes at once (the sweep has {n} child runs), but this machine "
        "holds at most",
        f"{cpu_count()} CPU",
        "GB of available memory at about 1.0 GB per worker",
    )
    assert "Use --jobs" in err
    assert world.runs() == []


def test_the_worker_cap_counts_memory(monkeypatch):
    from fedreg import limits
    from fedreg.errors import FedregError

    monkeypatch.setattr(limits, "cpu_count", lambda: 64)
    monkeypatch.setattr(limits, "available_memory", lambda: int(3.5 * limits.WORKER_MEMORY))
    limits.check_workers("--jobs 3", 3, 10, 1)
    with pytest.raises(
        FedregError, match=r"--jobs 4 asks for 4 worker processes .* holds at most 3: 64 CPUs"
    ):
        limits.check_workers("--jobs 4", 4, 10, 1)
    limits.check_workers("--jobs 1000", 1000, 1, 1)  # one child: one process


# --- 3d, 3j: a sweep whose children failed because of its spec ----------------------------------------------


def test_a_fixed_spec_resumes_its_failed_children_and_lists_stay_short(world):
    raw = world.raw
    raw["federation"]["aggregation"] = "picky"
    raw["variants"] = {
        "ok": {},
        "bad": {"federation.aggregation": {"name": "picky", "params": {"fail": True}}},
    }
    raw["grid"] = {"variants": ["bad"], "params": {"federation.aggregation.params.tag": list(range(1, 12))}}
    spec = world.spec()
    out = world.cli("run", spec, "--no-progress")
    err = refused(out, 1, "11 of 12 child runs failed", "picky: params.fail is true", "  - and 1 more")
    assert err.count("  - bad.tag=") == 10
    assert f"correct it, then run: fedreg run {spec} --resume" in err and "fedreg resume " in err
    first = {r.info.run_name: r for r in world.runs() if r.data.tags.get("fedreg.role") == "child"}
    assert first["ok"].info.status == "FINISHED" and first["bad.tag=3"].info.status == "FAILED"

    # a spec that makes other runs than the folder holds: refused, the runs listed briefly
    changed = yaml.safe_load(spec.read_text())
    changed["grid"]["params"]["federation.aggregation.params.tag"] = list(range(21, 32))
    err = refused(
        world.cli("run", world.spec(changed, "changed.yaml"), "--resume", "--no-progress"),
        2,
        "belongs to another spec: bad.tag=21, bad.tag=22",
        "and 1 more are not runs of that invocation (it has bad.tag=1, bad.tag=10",
    )
    assert len(err) < 2000

    # the spec fixed: the failed children start again, the finished one is kept
    out = world.cli(
        "run",
        spec,
        "--resume",
        "--no-progress",
        "--set",
        "variants.bad.federation.aggregation.params.fail=false",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok: finished before, kept as it is" in out.stdout
    assert (
        f"bad.tag=3: its spec changed: starting again from round 1 (run {first['bad.tag=3'].info.run_id} "
        "stays" in out.stdout
    )
    kids = [r for r in world.runs() if r.data.tags.get("fedreg.role") == "child"]
    assert sorted(r.info.status for r in kids) == ["FAILED"] * 11 + ["FINISHED"] * 12
    assert {r.info.run_id for r in kids if r.info.run_name == "ok"} == {first["ok"].info.run_id}
    (meta,) = (world.tmp / "ck").rglob("experiment.json")
    meta = json.loads(meta.read_text())
    assert meta["status"] == "FINISHED"
    assert meta["original"]["variants"]["bad"]["federation.aggregation"]["params"]["fail"] is False


def test_the_parent_description_stays_within_mlflow_limits():
    from fedreg.describe import DESCRIPTION_MAX, describe_parent

    rows = [[f"kd.tau={i}.seed1", "training.objective=adaptive_kd", "0.5000"] for i in range(10_000)]
    text = describe_parent("big", "big.yaml", "1", "abc", ["variant", "overrides", "acc"], rows, 40)
    assert len(text) <= DESCRIPTION_MAX
    assert "| kd.tau=0.seed1 |" in text and "more runs: the whole table is `compare/table.json`" in text


# --- 3e: memory ---------------------------------------------------------------------------------------------


def test_a_model_too_big_for_memory_is_refused_before_any_run(world):
    world.raw["model"] = {"name": "huge", "params": {"gigabytes": 2.0}}
    err = refused(
        world.cli("run", world.spec(), "--no-progress", prefix="ulimit -v 8000000"),
        1,
        "model 'huge' does not fit in memory: it has 500,",
        "a run holds at least 7 copies of them at once",
        "'ulimit -v'",
    )
    assert "does not fit dataset" not in err and "data.size" not in err
    # allocates at once, past the 8 GB the process may map: the allocation itself fails
    world.raw["model"]["params"].update(eager=True, gigabytes=16.0)
    refused(
        world.cli("run", world.spec(), "--no-progress", prefix="ulimit -v 8000000"),
        1,
        "out of memory: RuntimeError",
        "can't allocate memory",
        "Use a smaller model",
    )
    assert world.runs() == []


# --- 3f: images of another size than the dataset declares ---------------------------------------------------


def test_images_of_another_size_are_named_before_any_run(world):
    rng = np.random.default_rng(0)
    folder = world.tmp / "small"
    folder.mkdir()
    arrays = {}
    for split, n in (("train", 200), ("val", 20), ("test", 40)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 14, 14)).astype(np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 11, (n, 1)).astype(np.uint8)
    np.savez(folder / "organsmnist.npz", **arrays)
    world.raw["data"]["root"] = str(folder)
    world.raw["data"]["dataset"]["params"]["md5"] = hashlib.md5(
        (folder / "organsmnist.npz").read_bytes()
    ).hexdigest()
    refused(
        world.cli("run", world.spec(), "--no-progress"),
        2,
        "model 'cnn' does not fit dataset 'organsmnist': its images are 14x14 with 1 channel, but the "
        "dataset declares 28x28 with 1 channel (data.size: 28",
        "the model, built for 28x28, fails on one of them",
        "Use a dataset file of 28x28 images",
    )
    assert world.runs() == []


# --- 3g, 3k: tiny local test sets, a state_dict that fails --------------------------------------------------


def test_tiny_local_test_sets_are_said_once_and_a_failing_state_dict_is_named(world):
    raw = world.raw
    raw["data"]["num_clients"] = 100  # 2 samples each
    raw["data"]["local_test"] = {"fraction": 0.5}
    raw["metrics"] = ["global_accuracy", "local_accuracy"]
    raw["federation"]["selection"] = "forgetful"
    out = world.cli("run", world.spec(), "--no-progress")
    refused(
        out,
        2,
        "selection 'forgetful' (plugin 'hostile', fedreg-hostile 0.1.0): state_dict raised RuntimeError: "
        "forgetful: my state cannot be saved (round 1)",
    )
    warning = [line for line in out.stdout.splitlines() if line.startswith("warning: of 100 clients")]
    assert len(warning) == 1, out.stdout
    assert "no local test sample" in warning[0] and " one: metric(s) local_accuracy" in warning[0]
    assert (
        "raise it, or give every client more data" in warning[0]
        and "data.local_test.fraction (0.5" in warning[0]
    )
    assert "and " in warning[0] and "more)" in warning[0]  # the clients listed briefly


# --- RAY_ADDRESS at a server that is not Ray ------------------------------------------------------------


def test_a_ray_address_at_a_web_server_is_refused_at_once(world, monkeypatch):
    """An HTTP server on 127.0.0.1 accepts the TCP connection Ray would retry against for minutes: fedreg
    asks it for gRPC's HTTP/2 settings, hears HTTP/1, and says so before any run starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with child(cmd, cwd=world.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        up = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < up, "the web server did not start"
                time.sleep(0.2)
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        world.raw["variants"] = {"a": {}, "b": {"training.optimizer.lr": 0.02}}
        t0 = time.monotonic()
        err = refused(
            world.cli("run", world.spec(), "--sweep", "ray", "--no-progress", timeout=300),
            2,
            f"could not join the Ray cluster at '127.0.0.1:{port}'",
            # Python's web server answers the HTTP/2 preface in HTTP/0.9 style: a page, no status line
            "answers but is not a Ray cluster: it does not speak gRPC (it replied b'<!DOCTYPE",
            "Ray's head listens on port 6379",
        )
        assert time.monotonic() - t0 < 120, err  # not Ray's minutes of retries
    assert world.runs() == []
