"""The command line as users call it."""

from __future__ import annotations

import json
import subprocess
import sys

from testhelpers import REPO, base_spec, write_spec


def fedreg(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "fedreg", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_validate_ok():
    r = fedreg("validate", str(REPO / "specs" / "fedavg-bloodmnist.yaml"), "--set", "federation.rounds=3")
    assert r.returncode == 0, r.stderr
    assert "ok: fedavg-bloodmnist" in r.stdout and "3 rounds" in r.stdout


def test_validate_bad_spec_exit_2_all_errors_no_traceback(tmp_path):
    raw = base_spec()
    raw["federation"]["aggregation"] = "fedprox_typo"
    raw["training"]["batch_size"] = 0
    p = write_spec(tmp_path / "bad.yaml", raw)
    r = fedreg("validate", str(p))
    assert r.returncode == 2
    assert "2 problems in" in r.stderr
    assert "federation.aggregation: unknown aggregation 'fedprox_typo'" in r.stderr
    assert "training.batch_size: Input should be greater than or equal to 1" in r.stderr
    assert "Traceback" not in r.stderr


def test_plugins_lists_components_with_provider():
    r = fedreg("plugins")
    assert r.returncode == 0
    assert "aggregation:" in r.stdout and "fedavg" in r.stdout and "fedreg 0.1.0" in r.stdout
    r = fedreg("plugins", "--json")
    data = json.loads(r.stdout)
    by = {(c["kind"], c["name"]): c for c in data["components"]}
    kd = by[("objective", "adaptive_kd")]
    assert kd["distribution"] == "fedreg" and kd["hooks"] == ["functional_loss"]
    assert kd["params"]["tau"]["default"] == 1.0 and kd["params"]["lambda_max"]["default"] == 10.0
    assert data["broken"] == []
    assert {b["name"] for b in data["backends"]} >= {"local", "ray", "vectorized", "flower"}
    assert "execution backend (execution.backend):" in fedreg("plugins").stdout


def test_plugin_commands_come_from_entry_points(monkeypatch, capsys):
    """Sub-commands are added from the fedreg.commands entry points (fedreg_report's 'report' among the
    installed ones); a broken one is skipped with a warning and the rest of the CLI keeps working."""
    import fedreg.cli as cli

    assert "report" in cli.build_parser()._subparsers._group_actions[0].choices  # the real entry point

    ran = []
    good = cli.Command(
        "hello", "say hello", lambda sp: sp.add_argument("who"), lambda a: ran.append(a.who) or 0
    )

    class EP:
        def __init__(self, name, obj):
            self.name, self.value, self.obj = name, f"pkg:{name}", obj
            self.dist = None  # as importlib.metadata's, for an entry point of no known distribution

        def load(self):
            if isinstance(self.obj, Exception):
                raise self.obj
            return self.obj

    eps = [EP("hello", good), EP("boom", ImportError("no module")), EP("odd", object()), EP("run", good)]
    monkeypatch.setattr(cli.md, "entry_points", lambda group: eps if group == cli.COMMAND_GROUP else [])
    assert cli.main(["hello", "world"]) == 0 and ran == ["world"]
    err = capsys.readouterr().err
    assert "fedreg command 'boom' (pkg:boom) failed to load: no module" in err
    assert "'odd' (pkg:odd) is not a fedreg.cli.Command; skipped" in err
    assert "'run' (pkg:run) reuses a taken name; skipped" in err


def test_the_parser_is_built_without_the_heavy_libraries():
    """`fedreg --help` (and every command's parser) loads the plugins' commands; the report command must not
    import MLflow, matplotlib, SciPy or torch to say what its arguments are (it took 7 s here)."""
    code = (
        "import sys; from fedreg.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('mlflow', 'matplotlib', 'scipy', 'torch', 'jinja2') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert "report" in fedreg("--help").stdout


def test_validating_a_spec_with_a_sqlite_store_does_not_import_mlflow(tmp_path):
    """Validation checks a tracking URI of MLflow's own stores (sqlite:///, http(s)://) without importing
    MLflow (3 s at every start of a process that stops at validation); another scheme is still checked
    against MLflow's registry of stores."""
    spec = tmp_path / "v.yaml"
    uri = f"sqlite:///{tmp_path / 'v.db'}"
    spec.write_text(
        "name: v\ndata: {dataset: bloodmnist, num_clients: 4}\nmodel: cnn\n"
        "federation: {rounds: 2, clients_per_round: 2}\n"
        f"tracking: {{uri: '{uri}'}}\n"
    )
    code = (
        f"import sys; from fedreg.cli import main; rc = main(['validate', {str(spec)!r}]); "
        "print(rc, 'mlflow' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "0 False"
    spec.write_text(spec.read_text().replace(uri, "bogus://x"))
    r = fedreg("validate", str(spec))
    assert r.returncode == 2 and "unknown scheme 'bogus:' for an MLflow tracking store" in r.stderr
