from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedreg.registry import get_registry

REPO = Path(__file__).resolve().parents[1]
BLOOD_MD5 = "7053d0359d879ad8a5505303e11de1dc"

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


@pytest.fixture(scope="session")
def registry():
    return get_registry()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding the real bloodmnist.npz. In CI a missing file fails the run instead of skipping."""
    d = os.environ.get("FEDREG_DATA_DIR")
    path = Path(d) / "bloodmnist.npz" if d else None
    if path is None or not path.exists():
        msg = f"real BloodMNIST not found (FEDREG_DATA_DIR={d!r}); set FEDREG_DATA_DIR to ../shared/data/medmnist"
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


def make_medmnist_npz(folder: Path, flag: str, n_train: int = 300, n_test: int = 100, channels: int = 1,
                      num_classes: int = 11, seed: int = 0) -> str:
    """Write a small file in the MedMNIST npz format (images uint8, labels (N, 1)); return its MD5.
    Class c's images are brighter in a class-specific block so that a model can learn them."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, num_classes, size=n).astype(np.uint8)
        shape = (n, 28, 28) if channels == 1 else (n, 28, 28, channels)
        x = rng.integers(0, 60, size=shape).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 4)
            x[i, r * 7:(r + 1) * 7, col * 7:(col + 1) * 7] = 220
        return x, y.reshape(-1, 1)

    tr_x, tr_y = split(n_train)
    va_x, va_y = split(max(n_test // 2, 1))
    te_x, te_y = split(n_test)
    path = folder / f"{flag}.npz"
    np.savez(path, train_images=tr_x, train_labels=tr_y, val_images=va_x, val_labels=va_y,
             test_images=te_x, test_labels=te_y)
    return hashlib.md5(path.read_bytes()).hexdigest()


def base_spec(**over) -> dict:
    spec = {
        "name": "t",
        "seed": 1,
        "data": {"dataset": "bloodmnist", "num_clients": 4,
                 "partition": {"name": "dirichlet", "params": {"alpha": 1.0}}},
        "model": "cnn",
        "training": {"objective": "cross_entropy", "local_epochs": 1, "batch_size": 32,
                     "optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-5}},
        "federation": {"rounds": 3, "clients_per_round": 2, "selection": "uniform", "aggregation": "fedavg"},
        "metrics": ["global_accuracy"],
        "tracking": {"experiment": "test"},
    }
    for k, v in over.items():
        spec[k] = v
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
