"""Discovery through the `fedreg` entry-point group, provenance, dispatch, and isolation of broken plugins."""

from __future__ import annotations

import importlib.metadata as md
import sys
import types

import pytest

from fedreg import hookimpl
from fedreg.components import Aggregator, Objective
from fedreg.registry import build_registry
from fedreg.spec import resolve
from fedreg_baselines.fedavg import FedAvg
from testhelpers import base_spec


def test_first_party_plugins_come_from_entry_points():
    eps = {ep.name: ep for ep in md.entry_points(group="fedreg")}
    assert {"standard", "baselines", "metrics", "fedkper"} <= set(eps)
    reg = build_registry()
    info = reg.lookup("aggregation", "fedavg")
    assert (info.plugin, info.distribution) == ("baselines", "fedreg")
    assert info.version == md.version("fedreg")
    assert reg.lookup("objective", "adaptive_kd").plugin == "fedkper"
    assert {"bloodmnist", "organcmnist", "organsmnist", "organamnist", "pathmnist", "dermamnist"} <= set(
        reg.names("dataset")
    )
    assert not reg.broken


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


class Median(Aggregator):
    """test aggregator"""

    name = "test_median"

    def aggregate(self, round, global_state, updates, failures):
        return global_state


def test_registration_hooks_are_dispatched_per_plugin():
    calls = []

    @hookimpl
    def fedreg_register_aggregators(register):
        calls.append("agg")
        register(Median)

    reg = build_registry(
        entry_points=[],
        extra_plugins=[("mine", _module("mine", fedreg_register_aggregators=fedreg_register_aggregators))],
    )
    assert calls == ["agg"]
    assert reg.names("aggregation") == ["test_median"]
    assert reg.lookup("aggregation", "test_median").plugin == "mine"
    assert reg.names("objective") == []


def test_broken_import_is_isolated(tmp_path, monkeypatch):
    good = md.EntryPoint(name="baselines", value="fedreg_baselines", group="fedreg")
    bad = md.EntryPoint(name="exploding", value="fedreg_no_such_module_xyz", group="fedreg")
    reg = build_registry(entry_points=[bad, good])
    assert [b.plugin for b in reg.broken] == ["exploding"]
    assert "ModuleNotFoundError" in reg.broken[0].error
    assert reg.lookup("aggregation", "fedavg").cls is FedAvg  # the others keep working


def test_plugin_raising_at_import(tmp_path, monkeypatch):
    (tmp_path / "fedreg_raises_xyz.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = md.EntryPoint(name="raises", value="fedreg_raises_xyz", group="fedreg")
    reg = build_registry(entry_points=[ep])
    assert "RuntimeError: boom at import" in reg.broken[0].error
    sys.modules.pop("fedreg_raises_xyz", None)


def test_registering_a_non_component_marks_plugin_broken():
    @hookimpl
    def fedreg_register_objectives(register):
        register(Median)  # an aggregator registered as an objective

    reg = build_registry(
        entry_points=[],
        extra_plugins=[("wrong", _module("wrong", fedreg_register_objectives=fedreg_register_objectives))],
    )
    assert "not a subclass of fedreg.components.Objective" in reg.broken[0].error


def test_misspelled_hook_is_reported():
    @hookimpl
    def fedreg_register_aggregator(register):  # missing the final s
        pass

    reg = build_registry(
        entry_points=[],
        extra_plugins=[("typo", _module("typo", fedreg_register_aggregator=fedreg_register_aggregator))],
    )
    assert "unknown hook(s) fedreg_register_aggregator" in reg.broken[0].error


def test_duplicate_names_need_a_provider():
    class OtherFedAvg(Aggregator):
        name = "fedavg"

        def aggregate(self, round, global_state, updates, failures):
            return global_state

    @hookimpl
    def fedreg_register_aggregators(register):
        register(OtherFedAvg)

    good = md.EntryPoint(name="baselines", value="fedreg_baselines", group="fedreg")
    reg = build_registry(
        entry_points=[good],
        extra_plugins=[("clone", _module("clone", fedreg_register_aggregators=fedreg_register_aggregators))],
    )
    with pytest.raises(LookupError, match="registered by more than one distribution.*provider"):
        reg.lookup("aggregation", "fedavg")
    assert reg.lookup("aggregation", "fedavg", provider="clone").cls is OtherFedAvg
    raw = base_spec()
    raw["federation"]["aggregation"] = {"name": "fedavg", "provider": "clone"}
    # the registry has no datasets etc.; only check the aggregation path resolves
    from fedreg.errors import SpecError

    with pytest.raises(SpecError) as ei:
        resolve(raw, reg)
    assert "federation.aggregation.name" not in {i.path for i in ei.value.issues}


def test_component_needing_newer_contract_is_refused():
    class Future(Objective):
        name = "future"
        api_version = 99

    @hookimpl
    def fedreg_register_objectives(register):
        register(Future)

    reg = build_registry(
        entry_points=[],
        extra_plugins=[("fut", _module("fut", fedreg_register_objectives=fedreg_register_objectives))],
    )
    assert "needs fedreg plugin contract version 99" in reg.broken[0].error


def test_implemented_hooks_listed():
    from fedreg_fedkper.components import AdaptiveKD, ReliabilityDiversity

    assert AdaptiveKD.implemented_hooks() == ["functional_loss"]
    assert ReliabilityDiversity.implemented_hooks() == ["client_report", "aggregate"]


def test_component_kinds_are_declared_once():
    """Each kind's base class declares its kind, registration hook and spec path; the hook specifications,
    the registry's hook table and the spec's component paths all agree with those declarations."""
    import inspect

    from fedreg import hookspecs
    from fedreg.components import KIND_BASES
    from fedreg.registry import HOOK_KINDS
    from fedreg.spec import COMPONENT_PATHS

    specs = {
        n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("fedreg_register_")
    }
    assert specs == {base.hook for base in KIND_BASES.values()} == set(HOOK_KINDS)
    assert set(COMPONENT_PATHS.values()) | {"metric"} == set(KIND_BASES)
    for kind, base in KIND_BASES.items():
        assert base.kind == kind and HOOK_KINDS[base.hook] == kind
