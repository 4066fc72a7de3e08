"""Every hook specification is documented in docs/plugins.md under a heading with its signature."""

from __future__ import annotations

import ast
import inspect
import re

import pytest

from fedreg import hookspecs
from fedreg.components import KIND_BASES
from testhelpers import REPO

HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("fedreg_")]


def test_there_are_hooks():
    assert len(HOOKS) >= 7


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_documented(hook):
    doc = (REPO / "docs" / "plugins.md").read_text()
    sig = str(inspect.signature(getattr(hookspecs, hook)))
    assert re.search(rf"^#+ +`?{re.escape(hook + sig)}`?\s*$", doc, re.M), f"{hook}{sig} has no heading"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_docstring_says_when_and_none(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert "Called" in doc and ":param register:" in doc and "None" in doc


@pytest.mark.parametrize("kind", sorted(KIND_BASES))
def test_contract_in_the_guide_matches_the_code(kind):
    """The plugin guide shows each kind's base class with its contract tuple, as the code defines it."""
    doc = (REPO / "docs" / "plugins.md").read_text()
    base = KIND_BASES[kind]
    block = re.search(rf"class {base.__name__}\(Component\):\n(.*?)```", doc, re.S)
    assert block, f"docs/plugins.md shows no class {base.__name__}(Component)"
    assert f'kind = "{kind}"' in block.group(1)
    shown = re.search(r"contract = (\(.*?\))", block.group(1), re.S)
    assert shown and ast.literal_eval(shown.group(1)) == base.contract, (
        f"the guide's contract of {base.__name__} differs from the code's {base.contract}"
    )


def test_the_readme_spec_is_valid(registry):
    """The spec shown in README.md's "A spec" section validates, every variant included."""
    import yaml

    from fedreg.spec import resolve

    readme = (REPO / "README.md").read_text()
    block = re.search(r"## A spec\n+```yaml\n(.*?)```", readme, re.S)
    assert block, "README.md has no yaml block under '## A spec'"
    resolved = resolve(yaml.safe_load(block.group(1)), registry)
    # its grid crosses fedkper with 4 values of tau; every run once per seed, seed by seed
    first_seed = [r for r in resolved if r.spec.seed == 1]
    assert [r.key for r in first_seed] == [
        "fedkper.tau=0.5.seed1",
        "fedkper.tau=1.seed1",
        "fedkper.tau=2.seed1",
        "fedkper.tau=4.seed1",
        "kd-only.seed1",
    ]
    assert len(resolved) == 15
    aggregations = [r.components["aggregation"].name for r in first_seed]
    assert aggregations == ["reliability_diversity"] * 4 + ["fedavg"]
    assert [r.components["objective"].params.tau for r in first_seed[:4]] == [0.5, 1, 2, 4]
