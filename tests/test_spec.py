"""Spec validation: good specs pass, bad ones report every problem at once with its path."""

from __future__ import annotations

import copy

import pytest
import yaml

from fedreg.errors import SpecError
from fedreg.spec import apply_overrides, load_spec, merge_variant, parse_overrides, resolve
from testhelpers import REPO, base_spec


def problems(raw, registry, **kw) -> dict[str, str]:
    with pytest.raises(SpecError) as ei:
        resolve(raw, registry, **kw)
    return {i.path: i.message for i in ei.value.issues}


@pytest.mark.parametrize("path", sorted((REPO / "specs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_validate(path, registry):
    specs = load_spec(path, registry)
    assert specs and all(rs.spec.federation.rounds >= 1 for rs in specs)


def test_minimal_spec_fills_defaults(registry):
    raw = {
        "data": {"dataset": "bloodmnist", "num_clients": 5},
        "federation": {"rounds": 2, "clients_per_round": 1},
    }
    (rs,) = resolve(raw, registry)
    d = rs.resolved_dict()
    assert d["training"]["objective"] == {"name": "cross_entropy", "params": {}}
    assert d["federation"]["aggregation"]["name"] == "fedavg"
    assert d["data"]["partition"] == {
        "name": "dirichlet",
        "params": {"alpha": 0.5, "min_samples": 10, "cap": False},
    }
    assert d["data"]["local_test"] == {"rule": "stratified", "fraction": 0.2}
    assert [m["name"] for m in d["metrics"]] == ["global_accuracy"]


BAD = [
    # (mutation, path, fragment of message)
    (lambda s: s.update(epochs=3), "epochs", "unknown key"),
    (lambda s: s["training"].update(local_epoch=3), "training.local_epoch", "unknown key"),
    (lambda s: s["training"].update(batch_size="twelve"), "training.batch_size", "valid integer"),
    (lambda s: s["training"]["optimizer"].update(lr=-1), "training.optimizer.lr", "greater than 0"),
    (lambda s: s["training"]["optimizer"].update(momentum=1.5), "training.optimizer.momentum", "less than 1"),
    (lambda s: s["federation"].update(rounds=0), "federation.rounds", "greater than or equal to 1"),
    (lambda s: s["federation"].pop("rounds"), "federation.rounds", "required key is missing"),
    (lambda s: s["data"].update(local_test={"fraction": 1.0}), "data.local_test.fraction", "less than 1"),
    (lambda s: s["data"].update(size=32), "data.size", "28, 64, 128 or 224"),
    (lambda s: s["federation"].update(clients_per_round=9), "federation.clients_per_round", "only 4 clients"),
    (
        lambda s: s["federation"].update(aggregation="fedavgg"),
        "federation.aggregation",
        "unknown aggregation 'fedavgg'. Registered aggregation components: fedadam, fedavg, fedavg_shared, "
        "fedavgm",
    ),
    (lambda s: s["data"].update(dataset="bloodmnst"), "data.dataset", "Did you mean 'bloodmnist'?"),
    (
        lambda s: s["data"]["partition"]["params"].update(alpha=0),
        "data.partition.params.alpha",
        "greater than 0",
    ),
    (lambda s: s["data"]["partition"]["params"].update(beta=1), "data.partition.params.beta", "unknown key"),
    (
        lambda s: s["training"].update(objective={"name": "adaptive_kd", "params": {"tau": "hot"}}),
        "training.objective.params.tau",
        "valid number",
    ),
    (lambda s: s.update(metrics=["global_accuracy", "nfr"]), "metrics.1", "unknown metric 'nfr'"),
    (lambda s: s.update(metrics=["global_accuracy", "global_accuracy"]), "metrics.1", "listed twice"),
    (lambda s: s.update(seed=-1), "seed", "greater than or equal to 0"),
    (lambda s: s["tracking"].update(log_model="maybe"), "tracking.log_model", "valid boolean"),
]


@pytest.mark.parametrize("mutate,path,fragment", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_spec_reports_path_and_message(mutate, path, fragment, registry):
    raw = base_spec()
    mutate(raw)
    found = problems(raw, registry)
    assert path in found, found
    assert fragment in found[path], found[path]


def test_all_errors_reported_at_once(registry):
    raw = base_spec()
    raw["training"]["batch_size"] = 0
    raw["federation"]["aggregation"] = "nope"
    raw["data"]["partition"]["params"]["alpha"] = -2
    raw["typo"] = 1
    with pytest.raises(SpecError) as ei:
        resolve(raw, registry, source="x.yaml")
    paths = {i.path for i in ei.value.issues}
    assert {"training.batch_size", "federation.aggregation", "data.partition.params.alpha", "typo"} <= paths
    text = str(ei.value)
    assert text.startswith(f"{len(ei.value.issues)} problems in x.yaml:")
    assert "  - typo: unknown key" in text


def test_malformed_yaml_names_line(tmp_path, registry):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  dataset: bloodmnist\n  num_clients: [4\nfederation: {}\n")
    with pytest.raises(SpecError, match=r"malformed YAML at line \d+"):
        load_spec(p, registry)


def test_spec_must_be_mapping(tmp_path, registry):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(p, registry)


def test_missing_spec_file(tmp_path, registry):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml", registry)


def test_yaml_is_data_only(tmp_path, registry):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        load_spec(p, registry)


def test_set_overrides_any_field(tmp_path, registry):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(base_spec()))
    (rs,) = load_spec(
        p,
        registry,
        overrides=[
            "federation.rounds=7",
            "training.optimizer.lr=0.5",
            "training.objective.name=adaptive_kd",
            "training.objective.params.tau=2",
            "metrics.0=local_accuracy",
        ],
    )
    assert rs.spec.federation.rounds == 7
    assert rs.spec.training.optimizer.lr == 0.5
    assert rs.components["objective"].name == "adaptive_kd"
    assert rs.components["objective"].params.tau == 2
    assert [m.name for m in rs.metrics] == ["local_accuracy"]


def test_set_on_shorthand_component_keeps_name(registry):
    raw = apply_overrides(base_spec(), parse_overrides(["federation.aggregation.params.eps=0.1"]))
    assert raw["federation"]["aggregation"] == {"name": "fedavg", "params": {"eps": 0.1}}
    found = problems(raw, registry)
    assert "unknown key" in found["federation.aggregation.params.eps"]


def test_bad_set_syntax():
    with pytest.raises(SpecError, match="expected path.to.key=value"):
        parse_overrides(["federation.rounds"])


def test_variants_override_components_and_fields(registry):
    raw = base_spec(
        variants={
            "fedavg": {},
            "kd": {"training.objective": {"name": "adaptive_kd", "params": {"tau": 2.0}}},
            "agg": {"federation": {"aggregation": "reliability_diversity"}, "seed": 5},
        }
    )
    specs = {rs.variant: rs for rs in resolve(raw, registry)}
    assert set(specs) == {"fedavg", "kd", "agg"}
    assert specs["kd"].components["objective"].params.tau == 2.0
    assert specs["kd"].components["aggregation"].name == "fedavg"
    assert specs["agg"].components["aggregation"].name == "reliability_diversity"
    assert specs["agg"].spec.seed == 5 and specs["fedavg"].spec.seed == 1
    only = resolve(raw, registry, only=["kd"])
    assert [rs.variant for rs in only] == ["kd"]


def test_variant_errors_carry_variant_path(registry):
    raw = base_spec(
        variants={"ok": {}, "bad": {"training.objective": "adaptive_kdd", "training": {"batch_size": -1}}}
    )
    found = problems(raw, registry)
    assert "Did you mean 'adaptive_kd'?" in found["variants.bad.training.objective"]
    assert "variants.bad.training.batch_size" in found
    assert not any(p.startswith("variants.ok") for p in found)


def test_base_error_reported_once_not_per_variant(registry):
    raw = base_spec(variants={"a": {}, "b": {}})
    raw["training"]["batch_size"] = 0
    found = problems(raw, registry)
    assert list(found) == ["training.batch_size"]


def test_unknown_variant_requested(registry):
    found = problems(base_spec(variants={"a": {}}), registry, only=["zzz"])
    assert "unknown variant 'zzz'" in found["--variant"]


def test_merge_variant_replaces_named_component_whole():
    base = {"training": {"objective": {"name": "adaptive_kd", "params": {"tau": 3}}, "batch_size": 12}}
    out = merge_variant(base, {"training": {"objective": {"name": "cross_entropy"}}})
    assert out["training"] == {"objective": {"name": "cross_entropy"}, "batch_size": 12}
    assert base == copy.deepcopy(base)


def test_component_cross_field_check_at_validation(registry):
    raw = base_spec()
    raw["federation"]["aggregation"] = {"name": "krum", "params": {"f": 1}}
    found = problems(raw, registry)
    assert "needs at least 2f+3 = 5 clients per round" in found["federation.aggregation"]
    assert "raise federation.clients_per_round to 5" in found["federation.aggregation"]


# --- defaults come from the plugins, never from the core ---------------------------------------------------


def _objective_plugin(default: bool):
    import types

    import fedreg
    from fedreg_baselines.fedavg import CrossEntropy

    class Other(CrossEntropy):  # a subclass of the default objective is not a default itself
        name = "test_other_objective"

    if default:
        Other.default = True

    mod = types.SimpleNamespace()

    @fedreg.hookimpl
    def fedreg_register_objectives(register):
        register(Other)

    mod.fedreg_register_objectives = fedreg_register_objectives
    return mod


def _minimal():
    return {
        "name": "x",
        "data": {"dataset": "bloodmnist", "num_clients": 4},
        "federation": {"rounds": 2, "clients_per_round": 2},
    }


def test_missing_components_get_the_defaults_plugins_mark(registry):
    rs = resolve(_minimal(), registry)[0]
    assert rs.spec.training.objective.name == "cross_entropy"  # marked default by fedreg_baselines
    assert [m.name for m in rs.spec.metrics] == ["global_accuracy"]  # the filled spec shows what runs
    from fedreg.registry import build_registry

    sub = build_registry(extra_plugins=[("sub", _objective_plugin(default=False))])
    assert resolve(_minimal(), sub)[0].spec.training.objective.name == "cross_entropy"


def test_two_defaults_for_one_kind_is_an_error_naming_both():
    from fedreg.registry import build_registry

    reg = build_registry(extra_plugins=[("other", _objective_plugin(default=True))])
    with pytest.raises(SpecError) as e:
        resolve(_minimal(), reg)
    msg = str(e.value)
    assert "training.objective: no objective is named here and several plugins mark a default" in msg
    assert "'cross_entropy'" in msg and "'test_other_objective'" in msg and "Field required" not in msg
    spec = _minimal()
    spec["training"] = {"objective": "cross_entropy"}  # naming one settles it
    assert resolve(spec, reg)[0].spec.training.objective.name == "cross_entropy"


def test_no_default_installed_asks_for_a_name(monkeypatch, registry):
    from fedreg_baselines.fedavg import FedAvg

    monkeypatch.setattr(FedAvg, "default", False)
    with pytest.raises(SpecError, match=r"federation\.aggregation: no aggregation is named here and no "):
        resolve(_minimal(), registry)
