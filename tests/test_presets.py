"""Method presets: one name in a spec for a method's objective and aggregation."""

from __future__ import annotations

import pytest

from fedreg.errors import SpecError
from fedreg.outputs import TIMING_KEYS
from fedreg.spec import load_yaml, resolve
from fedreg.testing import tiny_federation
from testhelpers import REPO, base_spec


def parts(rs) -> tuple:
    d = rs.resolved_dict()
    return d["training"]["objective"], d["federation"]["aggregation"]


def spec_with(**over) -> dict:
    raw = base_spec(**over)
    raw["training"].pop("objective")
    raw["federation"].pop("aggregation")
    return raw


def test_preset_expands_into_its_parts_with_its_params(registry):
    (rs,) = resolve(spec_with(method={"name": "fedkper", "params": {"tau": 2.0}}), registry)
    assert parts(rs) == (
        {"name": "adaptive_kd", "params": {"tau": 2.0, "lambda_max": 10.0}},
        {"name": "reliability_diversity", "params": {"eps": 1e-6, "eval_batch_size": 256}},
    )
    assert rs.resolved_dict()["method"] == {
        "name": "fedkper",
        "params": {"tau": 2.0, "lambda_max": 10.0, "eps": 1e-6},
    }
    (rs,) = resolve(spec_with(method="scaffold"), registry)
    assert parts(rs) == (
        {"name": "scaffold", "params": {"divisor": "momentum"}},
        {"name": "scaffold", "params": {"weighting": "uniform", "global_lr": 1.0}},
    )


def test_a_part_the_spec_sets_wins_and_partial_params_merge(registry):
    raw = spec_with(method="fedkper")
    raw["federation"]["aggregation"] = "fedavg"  # KD-only
    (rs,) = resolve(raw, registry)
    assert [p["name"] for p in parts(rs)] == ["adaptive_kd", "fedavg"]
    raw = spec_with(method="fedkper")
    raw["training"]["objective"] = {"params": {"lambda_max": 3.0}}  # only a parameter of the preset's part
    (rs,) = resolve(raw, registry)
    assert parts(rs)[0] == {"name": "adaptive_kd", "params": {"tau": 1.0, "lambda_max": 3.0}}


def test_unknown_preset_and_bad_params_are_spec_errors(registry):
    with pytest.raises(SpecError) as exc:
        resolve(spec_with(method="fedkpr"), registry)
    assert "method" in str(exc.value) and "fedkper" in str(exc.value)  # did you mean
    with pytest.raises(SpecError) as exc:
        resolve(spec_with(method={"name": "fedprox", "params": {"mu": -1}}), registry)
    assert "method.params.mu" in str(exc.value)


def test_a_base_part_that_would_shadow_a_variants_preset_is_refused(registry):
    raw = base_spec(
        variants={
            "scaffold": {"method": "scaffold"},
            "kd": {"method": "fedkper", "federation.aggregation": "fedavg"},
        }
    )
    with pytest.raises(SpecError) as exc:
        resolve(raw, registry)
    msg = str(exc.value)
    assert "variants.scaffold.method" in msg and "the base spec sets training.objective" in msg
    assert "variants.kd.method" in msg  # the base's objective would replace adaptive_kd; its own swap is fine


def test_every_preset_is_in_the_all_methods_spec(registry):
    raw = load_yaml(REPO / "specs" / "baselines" / "all-methods.yaml")
    used = set()
    for override in raw["variants"].values():
        m = override.get("method")
        used.add(m["name"] if isinstance(m, dict) else m)
    assert set(registry.names("method")) <= used


def test_a_preset_runs_exactly_as_its_parts(one_thread):
    explicit = tiny_federation(
        {"training.objective": "scaffold", "federation.aggregation": {"name": "scaffold", "params": {}}}
    )
    preset = tiny_federation(
        {"method": "scaffold", "training.objective": None, "federation.aggregation": None}
    )

    def untimed(history):
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]

    assert untimed(preset.history) == untimed(explicit.history)
    assert preset.final["final_global_acc"] == explicit.final["final_global_acc"]
