"""What plugin and spec authors see of their components: `fedreg plugins --json` as JSON Schema, "did you
mean" for a misspelt parameter key, and the fedreg version and commit a run is tagged with."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest

import fedreg
from fedreg.cli import main
from fedreg.describe import provenance_tags
from fedreg.errors import SpecError
from fedreg.spec import resolve
from fedreg.testing import TINY_SPEC
from fedreg.tracking import fedreg_commit
from testhelpers import REPO


def plugins_json(capsys) -> dict[tuple[str, str], dict]:
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    return {(c["kind"], c["name"]): c for c in data["components"]}


def test_plugins_json_gives_json_schema_types_defaults_and_bounds(capsys):
    rows = plugins_json(capsys)
    alpha = rows["partition", "dirichlet"]["params"]["alpha"]
    assert alpha == {**alpha, "type": "number", "default": 0.5, "exclusiveMinimum": 0, "required": False}
    assert alpha["description"]
    assert rows["model", "cnn"]["params"]["padding"] == {
        **rows["model", "cnn"]["params"]["padding"],
        "type": "integer",
        "minimum": 0,
        "maximum": 2,
    }
    md5 = rows["dataset", "bloodmnist"]["params"]["md5"]
    assert md5["anyOf"] == [{"type": "string"}, {"type": "null"}] and md5["default"] is None
    assert rows["selection", "round_robin"]["hooks"] == ["select", "state_dict", "load_state_dict"]


def test_a_misspelt_parameter_key_gets_did_you_mean(registry):
    raw = copy.deepcopy(TINY_SPEC)
    raw["data"]["partition"] = {"name": "dirichlet", "params": {"alpah": 0.5, "colour": 1}}
    with pytest.raises(SpecError) as exc:
        resolve(raw, registry)
    text = str(exc.value)
    assert "data.partition.params.alpah: unknown key (did you mean 'alpha'?)" in text
    assert "data.partition.params.colour: unknown key (remove it or check its spelling)" in text


def test_runs_are_tagged_with_fedregs_version_and_commit(registry):
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    (rs,) = resolve(copy.deepcopy(TINY_SPEC), registry)
    tags = provenance_tags(rs.spec.name, None)
    assert tags["fedreg.version"] == fedreg.__version__
    assert tags["fedreg.commit"] == head == fedreg_commit()


def test_no_commit_tag_outside_a_checkout_of_fedreg(tmp_path):
    """fedreg's folder inside a repository that does not track it (as a virtualenv inside a project): no
    commit, rather than the project's."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "notes.txt").write_text("a project\n")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "notes.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "project"], check=True)
    shutil.copytree(
        REPO / "fedreg", tmp_path / "site" / "fedreg", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fedreg, fedreg.tracking as t; print(fedreg.__file__, t.fedreg_commit())",
        ],
        cwd=tmp_path / "site",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0].startswith(str(tmp_path)) and out[1] == "None"


@pytest.mark.slow
def test_new_plugin_writes_a_distribution_whose_own_tests_pass(tmp_path):
    """`fedreg new-plugin NAME`: a pyproject with the entry point, one component of each kind, and a test
    that passes once the distribution is installed (a real pip install into a fresh folder)."""
    assert main(["new-plugin", "kit", "--dir", str(tmp_path / "fedreg-kit")]) == 0
    root = tmp_path / "fedreg-kit"
    assert 'kit = "fedreg_kit"' in (root / "pyproject.toml").read_text()
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--disable-pip-version-check", "--target", str(site), str(root)], check=True)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(site)},
        timeout=600,
    )
    assert out.returncode == 0 and "3 passed" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]
    assert main(["new-plugin", "kit", "--dir", str(root)]) == 2  # an existing folder is left alone
    assert main(["new-plugin", "Not-A-Name"]) == 2
