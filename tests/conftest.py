from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedreg.registry import build_registry

# Tests run in their own folders (see _in_tmp_dir): a relative data root is taken from where pytest started.
if os.environ.get("FEDREG_DATA_DIR"):
    os.environ["FEDREG_DATA_DIR"] = str(Path(os.environ["FEDREG_DATA_DIR"]).resolve())


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Each test runs in its own folder: checkpoints and spools it writes by default stay out of the repo."""
    monkeypatch.chdir(tmp_path)


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
    """A temporary MLflow store for this test (never one in the repo)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
