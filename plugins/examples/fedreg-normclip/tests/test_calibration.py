"""The example's ECE metric: the formula on hand-computed arrays, and the metric in a small federation run
by fedreg's own test helper, found through this distribution's entry point.

    pip install -e plugins/examples/fedreg-normclip --no-deps   # into fedreg's environment
    python -m pytest plugins/examples/fedreg-normclip/tests
"""

from __future__ import annotations

import importlib.metadata as md
import math

import pytest
from fedreg_normclip.calibration import ece

from fedreg.registry import build_registry
from fedreg.testing import tiny_federation


def test_ece_hand_computed():
    # confidences .95 (right), .65 (wrong) and .62 (right): bins (.9, 1] and (.6, .7]
    probs = [[0.95, 0.05], [0.35, 0.65], [0.62, 0.38]]
    want = 1 / 3 * abs(1 - 0.95) + 2 / 3 * abs(0.5 - (0.65 + 0.62) / 2)
    assert ece([0, 0, 0], probs) == pytest.approx(want)
    assert ece([1], [[0.0, 1.0]]) == 0.0
    assert math.isnan(ece([], [[]]))


def test_registered_through_the_entry_point():
    assert "normclip" in {ep.name for ep in md.entry_points(group="fedreg")}
    info = build_registry().lookup("metric", "ece10")
    assert info.distribution == "fedreg-normclip"


def test_in_a_federation():
    res = tiny_federation({"metrics": ["global_accuracy", "ece10"], "federation.rounds": 2})
    assert 0.0 <= res.final["final_ece10"] <= 1.0
    assert len([row for row in res.history if "ece10" in row]) == 2
