from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# Two xdist workers on two cores, and tests whose processes run two torch threads: OpenMP threads that spin
# while they wait take the CPU from the other worker (a 2-thread test: 13 s spinning, 5 s passive). Set
# before torch loads, here and in every process a test starts (they inherit the environment).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fedreg.registry import build_registry  # noqa: E402 - after the OpenMP setting

# Tests run in their own folders (see _in_tmp_dir): a relative data root is taken from where pytest started.
if os.environ.get("FEDREG_DATA_DIR"):
    os.environ["FEDREG_DATA_DIR"] = str(Path(os.environ["FEDREG_DATA_DIR"]).resolve())


# Under pytest-xdist (README: `-n 2`, with `--dist loadfile` from pyproject.toml) each test file runs on one
# worker, so that a file's module fixtures (a local Ray, a Flower simulation, a tracking server) start once.
# The files with the longest tests go first: xdist hands out files in this order, so the two workers end
# together instead of one finishing a long file alone.
FIRST = (
    "test_flower_deploy.py",
    "test_sweep.py",
    "test_reliability.py",
    "test_report.py",
    "test_hostile_inputs.py",
    "test_e2e.py",
    "test_storage_failures.py",
    "test_browser.py",
    "test_resume_safety.py",
    "test_ray_backend.py",
    "test_flower.py",
    "test_baselines_realdata.py",
    "test_ui.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: a file's order is kept


@pytest.fixture(scope="session")
def _store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created and migrated by MLflow itself once per session. Creating a store
    runs all of MLflow's schema migrations (4-8 s here, most of a small test's time); a test's new store is
    a copy of this one: the same file MLflow would have made."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def new_store(_store_template) -> Callable[[Path], str]:
    """``new_store(path)``: an empty MLflow store at ``path`` (a copy of the session's template); returns
    its URI. For tests whose subject is not how a store is created."""

    def make(path: Path) -> str:
        shutil.copyfile(_store_template, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch, new_store):
    """Each test runs in its own folder: checkpoints and spools it writes by default stay out of the repo.
    MLflow's default store (``mlflow.db`` in the working folder) is there already, empty, as after its
    first use; a test of how a store is created names another path."""
    monkeypatch.chdir(tmp_path)
    new_store(tmp_path / "mlflow.db")


@pytest.fixture
def one_thread():
    """Tiny federations run faster on one intra-op thread (and leave the other core to the rest)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def registry():
    """A registry of the installed plugins, built afresh for each test (a test that registers extra
    plugins cannot leak them into another)."""
    return build_registry()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding the real bloodmnist.npz. In CI a missing file fails the run instead of skipping."""
    d = os.environ.get("FEDREG_DATA_DIR")
    path = Path(d) / "bloodmnist.npz" if d else None
    if path is None or not path.exists():
        msg = (
            f"real BloodMNIST not found (FEDREG_DATA_DIR={d!r}); "
            "set FEDREG_DATA_DIR to ../shared/data/medmnist"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return Path(d)


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A temporary MLflow store for this test (never one in the repo): the working folder's empty store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
