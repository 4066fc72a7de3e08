"""Third-party components through real installed distributions, and safe failure when a plugin misbehaves."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from fedreg import hookimpl
from fedreg.components import Aggregator, Metric, Selector
from fedreg.errors import ComponentFailure, PluginError, SpecError
from fedreg.registry import build_registry
from fedreg.testing import initial_accuracy, tiny_federation
from fedreg_baselines.fedavg import FedAvg
from testhelpers import REPO

EXAMPLE = REPO / "plugins" / "examples" / "fedreg-normclip"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example distribution installed by pip into a fresh folder (a real .dist-info)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


@pytest.fixture
def on_path(site, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    yield site
    for mod in [m for m in sys.modules if m.startswith("fedreg_normclip")]:
        del sys.modules[mod]


def fedreg_cli(*args, pythonpath: Path | None = None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "fedreg", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_installed_distribution_is_real(site):
    (info,) = site.glob("fedreg_normclip-0.1.0.dist-info")
    assert "normclip = fedreg_normclip" in (info / "entry_points.txt").read_text()


def test_discovered_through_entry_points_with_its_distribution(on_path):
    assert "normclip" in {ep.name for ep in md.entry_points(group="fedreg")}
    reg = build_registry()
    agg = reg.lookup("aggregation", "normclip")
    sel = reg.lookup("selection", "size_weighted")
    assert (agg.distribution, agg.version, agg.plugin) == ("fedreg-normclip", "0.1.0", "normclip")
    assert sel.distribution == "fedreg-normclip"
    assert reg.lookup("aggregation", "fedavg").distribution == "fedreg"  # the rest is untouched
    assert not reg.broken


def test_fedreg_plugins_lists_it(site):
    out = fedreg_cli("plugins", pythonpath=site)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("normclip"))
    assert "fedreg-normclip 0.1.0" in line and "[aggregate]" in line and "max_norm=10.0" in line
    data = json.loads(fedreg_cli("plugins", "--json", pythonpath=site).stdout)
    (row,) = [c for c in data["components"] if c["name"] == "size_weighted"]
    assert row == {
        **row,
        "kind": "selection",
        "distribution": "fedreg-normclip",
        "version": "0.1.0",
        "plugin": "normclip",
        "hooks": ["select"],
    }


def test_a_spec_uses_it_by_name(on_path):
    over = {
        "federation.aggregation": {"name": "normclip", "params": {"max_norm": 5.0}},
        "federation.selection": "size_weighted",
        "federation.rounds": 3,
        "metrics": ["global_accuracy", "ece10"],  # the example's metric, from the class probabilities
    }
    res = tiny_federation(over, registry=build_registry())
    assert res.final["final_global_acc"] > initial_accuracy() + 0.2
    assert 0.0 <= res.final["final_ece10"] <= 1.0


def test_the_examples_own_tests_pass(site):
    """The example distribution's tests (written against fedreg.testing) pass with it installed."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")},
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 passed" in out.stdout


# --- hand-made distributions on sys.path --------------------------------------------------------------------


def make_dist(root: Path, dist: str, module: str, code: str, ep: str, version: str = "0.1") -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[fedreg]\n{ep} = {module}\n")


def test_broken_plugin_reported_others_keep_working(tmp_path, monkeypatch):
    make_dist(
        tmp_path,
        "fedreg-brokenagg",
        "fedreg_brokenagg_mod",
        "import not_a_module_anywhere_xyz\n",
        "brokenagg",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = build_registry()
    (b,) = reg.broken
    assert (b.plugin, b.distribution, b.version) == ("brokenagg", "fedreg-brokenagg", "0.1")
    assert "ModuleNotFoundError: No module named 'not_a_module_anywhere_xyz'" in b.error
    assert reg.lookup("aggregation", "fedavg")
    out = fedreg_cli("plugins", pythonpath=tmp_path)
    assert out.returncode == 0
    assert "broken plugins:" in out.stdout
    assert (
        "brokenagg (fedreg-brokenagg 0.1): failed to import 'fedreg_brokenagg_mod': ModuleNotFoundError"
        in out.stdout
    )
    assert "fedavg" in out.stdout
    # a spec that names the broken plugin's component fails with that error
    with pytest.raises(SpecError) as ei:
        tiny_federation({"federation.aggregation": "brokenagg"}, registry=reg)
    (issue,) = ei.value.issues
    assert issue.path == "federation.aggregation"
    assert "plugin 'brokenagg' (fedreg-brokenagg 0.1) is broken" in issue.message
    assert "not_a_module_anywhere_xyz" in issue.message


DUPE = """
import fedreg
from fedreg.components import Aggregator
from fedreg.aggregate import weighted_average

class MyFedAvg(Aggregator):
    '''Another fedavg.'''
    name = "fedavg"

    def aggregate(self, round, global_state, updates, failures):
        return weighted_average([u.state for u in updates], [1.0] * len(updates))

@fedreg.hookimpl
def fedreg_register_aggregators(register):
    register(MyFedAvg)
"""


def test_same_name_from_two_distributions(tmp_path, monkeypatch):
    make_dist(tmp_path, "fedreg-dupe", "fedreg_dupe_mod", DUPE, "dupe")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = build_registry()
    with pytest.raises(SpecError) as ei:
        tiny_federation({}, registry=reg)
    (issue,) = ei.value.issues
    assert issue.path == "federation.aggregation"
    assert (
        "registered by more than one distribution: 'fedreg' (plugin 'baselines') and 'fedreg-dupe' (plugin "
        "'dupe')" in issue.message
    )
    assert "provider: <distribution>" in issue.message
    ours = tiny_federation({"federation.aggregation": {"name": "fedavg", "provider": "fedreg"}}, registry=reg)
    theirs = tiny_federation(
        {"federation.aggregation": {"name": "fedavg", "provider": "fedreg-dupe"}}, registry=reg
    )
    assert not all(torch.equal(ours.global_state[k], theirs.global_state[k]) for k in ours.global_state)
    with pytest.raises(SpecError, match="not provided by 'fedreg-nope'"):
        tiny_federation(
            {"federation.aggregation": {"name": "fedavg", "provider": "fedreg-nope"}}, registry=reg
        )


# --- plugins that return the wrong thing -------------------------------------------------------------------


def plugin_with(**classes) -> list[tuple[str, object]]:
    mod = types.ModuleType("misbehaving")
    kinds = {
        "aggregation": "fedreg_register_aggregators",
        "selection": "fedreg_register_selectors",
        "metric": "fedreg_register_metrics",
    }
    for kind, hook in kinds.items():
        mine = [c for c in classes.values() if c.kind == kind]
        if mine:

            def register_all(register, _mine=mine):
                for c in _mine:
                    register(c)

            register_all.__name__ = hook
            setattr(mod, hook, hookimpl(register_all))
    return [("misbehaving", mod)]


def bad_aggregator(transform):
    class Bad(FedAvg):
        name = "bad_agg"

        def aggregate(self, round, global_state, updates, failures):
            return transform(super().aggregate(round, global_state, updates, failures))

    return Bad


def drop_bias(s):
    return {k: v for k, v in s.items() if k != "fc.bias"}


def reshape(s):
    return {**s, "fc.bias": s["fc.bias"][:-1]}


def retype(s):
    return {**s, "fc.weight": s["fc.weight"].double()}


def poison(s):
    return {**s, "fc.weight": s["fc.weight"] * float("nan")}


@pytest.mark.parametrize(
    "transform,message",
    [
        (
            drop_bias,
            "broke the rule 'return every parameter tensor, no others' in aggregate: missing ['fc.bias']",
        ),
        (
            reshape,
            "broke the rule 'keep shapes and dtypes' in aggregate: "
            "'fc.bias' is (3,) torch.float32, expected (4,)",
        ),
        (
            retype,
            "broke the rule 'keep shapes and dtypes' in aggregate: 'fc.weight' is (4, 32) torch.float64",
        ),
        (poison, "broke the rule 'all values finite' in aggregate: 'fc.weight' holds NaN or Inf"),
        (lambda s: [1, 2], "returned list from aggregate, expected a state dict"),
    ],
    ids=["missing", "shape", "dtype", "nan", "type"],
)
def test_bad_aggregate_output_is_caught_at_the_boundary(transform, message):
    cls = bad_aggregator(transform)
    with pytest.raises(PluginError) as ei:
        tiny_federation({"federation.aggregation": "bad_agg"}, plugins=plugin_with(a=cls))
    text = str(ei.value)
    assert text.startswith("aggregation 'bad_agg' (plugin 'misbehaving'")
    assert message in text


def test_weights_that_do_not_sum_to_a_positive_number():
    class ZeroWeights(Aggregator):
        name = "zero_weights"

        def aggregate(self, round, global_state, updates, failures):
            from fedreg.aggregate import weighted_average

            return weighted_average([u.state for u in updates], [0.0] * len(updates))

    with pytest.raises(ComponentFailure) as ei:
        tiny_federation({"federation.aggregation": "zero_weights"}, plugins=plugin_with(a=ZeroWeights))
    text = str(ei.value)
    assert "aggregation 'zero_weights' (plugin 'misbehaving'" in text
    assert (
        "aggregate raised ValueError: weights must be finite, non-negative and sum to a positive number"
        in text
    )
    assert "(round 1)" in text


def test_selector_returning_duplicates():
    class Twice(Selector):
        name = "twice"

        def select(self, round, clients, k, rng):
            return [0] * k

    with pytest.raises(
        PluginError,
        match=r"selection 'twice' \(plugin 'misbehaving'.*broke the rule 'return 2 "
        r"distinct client ids in 0..3': got \[0, 0\] \(round 1\)",
    ):
        tiny_federation({"federation.selection": "twice"}, plugins=plugin_with(s=Twice))


def test_client_report_must_be_numbers():
    class Chatty(FedAvg):
        name = "chatty"

        def client_report(self, ctx, model):
            return {"note": "hello"}

    with pytest.raises(
        PluginError,
        match=r"aggregation 'chatty' .*client_report must return a dict of numbers, "
        r"got \{'note': 'hello'\} \(round 1, client \d\)",
    ):
        tiny_federation({"federation.aggregation": "chatty"}, plugins=plugin_with(a=Chatty))


@pytest.mark.parametrize("backend", ["local", "vectorized"])
def test_client_report_sees_the_training_loss(backend, one_thread):
    """Contract version 4: ``ctx.train_loss`` is the client's mean training loss when client_report runs."""
    seen = []

    class LossReporting(FedAvg):
        name = "loss_reporting"
        api_version = 4

        def client_report(self, ctx, model):
            return {"loss": ctx.train_loss}

        def aggregate(self, round, global_state, updates, failures):
            seen.extend((u.report["loss"], u.train_loss) for u in updates)
            return super().aggregate(round, global_state, updates, failures)

    over = {"federation.aggregation": "loss_reporting", "execution.backend": backend, "federation.rounds": 2}
    tiny_federation(over, plugins=plugin_with(a=LossReporting))
    assert len(seen) == 4 and all(r == t and 0 < r < 10 for r, t in seen)


def test_metric_must_return_metric_result():
    class Loose(Metric):
        name = "loose"

        def update(self, ev):
            return {"acc": 1.0}

    with pytest.raises(PluginError, match=r"metric 'loose' .*update must return a MetricResult, got dict"):
        tiny_federation({"metrics": ["loose"]}, plugins=plugin_with(m=Loose))
