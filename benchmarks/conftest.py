from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("FEDREG_DATA_DIR"):
    os.environ["FEDREG_DATA_DIR"] = str(Path(os.environ["FEDREG_DATA_DIR"]).resolve())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = os.environ.get("FEDREG_DATA_DIR")
    if not d or not (Path(d) / "bloodmnist.npz").exists():
        pytest.skip("benchmarks need the real BloodMNIST: set FEDREG_DATA_DIR to ../shared/data/medmnist")
    return Path(d)
