"""Helpers shared by the tests (import them from here, not from conftest)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
BLOOD_MD5 = "7053d0359d879ad8a5505303e11de1dc"


def make_medmnist_npz(
    folder: Path,
    flag: str,
    n_train: int = 300,
    n_test: int = 100,
    channels: int = 1,
    num_classes: int = 11,
    seed: int = 0,
) -> str:
    """Write a small file in the MedMNIST npz format (images uint8, labels (N, 1)); return its MD5.
    Class c's images are brighter in a class-specific block so that a model can learn them."""
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, num_classes, size=n).astype(np.uint8)
        shape = (n, 28, 28) if channels == 1 else (n, 28, 28, channels)
        x = rng.integers(0, 60, size=shape).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 4)
            x[i, r * 7 : (r + 1) * 7, col * 7 : (col + 1) * 7] = 220
        return x, y.reshape(-1, 1)

    tr_x, tr_y = split(n_train)
    va_x, va_y = split(max(n_test // 2, 1))
    te_x, te_y = split(n_test)
    path = folder / f"{flag}.npz"
    np.savez(
        path,
        train_images=tr_x,
        train_labels=tr_y,
        val_images=va_x,
        val_labels=va_y,
        test_images=te_x,
        test_labels=te_y,
    )
    return hashlib.md5(path.read_bytes()).hexdigest()


def small_medmnist_spec(folder: Path, n_train: int = 200, n_test: int = 40) -> tuple[dict, str]:
    """:func:`base_spec` on a small MedMNIST-format 'organsmnist' file written into ``folder`` (4 clients,
    iid); returns (spec, the file's MD5)."""
    md5 = make_medmnist_npz(folder, "organsmnist", n_train=n_train, n_test=n_test)
    raw = base_spec()
    raw["data"] = {
        "dataset": {"name": "organsmnist", "params": {"md5": md5}},
        "root": str(folder),
        "num_clients": 4,
        "partition": "iid",
    }
    return raw, md5


def base_spec(**over) -> dict:
    spec = {
        "name": "t",
        "seed": 1,
        "data": {
            "dataset": "bloodmnist",
            "num_clients": 4,
            "partition": {"name": "dirichlet", "params": {"alpha": 1.0}},
        },
        "model": "cnn",
        "training": {
            "objective": "cross_entropy",
            "local_epochs": 1,
            "batch_size": 32,
            "optimizer": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-5},
        },
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
