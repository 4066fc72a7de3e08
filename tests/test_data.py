"""MedMNIST loading through the real `medmnist` package: real BloodMNIST, MD5 checks, clear errors."""

from __future__ import annotations

import pytest
import torch

from fedreg.errors import DataError
from fedreg_standard.medmnist_data import load_medmnist
from testhelpers import BLOOD_MD5, make_medmnist_npz


@pytest.mark.realdata
def test_real_bloodmnist(data_dir):
    ds = load_medmnist("bloodmnist", str(data_dir), download=False, size=28)
    assert ds.checksum == BLOOD_MD5
    assert tuple(ds.train_x.shape) == (11959, 3, 28, 28)
    assert tuple(ds.test_x.shape) == (3421, 3, 28, 28)  # the official test split
    assert ds.num_classes == 8 and ds.in_channels == 3
    assert (
        ds.train_x.dtype == torch.float32 and -1.0 <= float(ds.train_x.min()) < float(ds.train_x.max()) <= 1.0
    )
    assert ds.train_x.is_contiguous(memory_format=torch.channels_last)
    assert sorted(torch.unique(ds.train_y).tolist()) == list(range(8))


def test_root_from_environment(tmp_path, monkeypatch):
    md5 = make_medmnist_npz(tmp_path, "organcmnist")
    monkeypatch.setenv("FEDREG_DATA_DIR", str(tmp_path))
    ds = load_medmnist("organcmnist", None, download=False, size=28, expected_md5=md5)
    assert tuple(ds.train_x.shape) == (300, 1, 28, 28) and ds.num_classes == 11


def test_missing_file_names_file_and_fix(tmp_path):
    with pytest.raises(DataError) as ei:
        load_medmnist("organsmnist", str(tmp_path), download=False, size=28)
    msg = str(ei.value)
    assert f"'{tmp_path / 'organsmnist.npz'}' not found" in msg
    assert "FEDREG_DATA_DIR" in msg and "data.download: true" in msg and "zenodo" in msg


def test_md5_mismatch(tmp_path):
    make_medmnist_npz(tmp_path, "organsmnist")  # not the official file
    with pytest.raises(DataError, match="has MD5 .* expected .*corrupt, truncated or another version"):
        load_medmnist("organsmnist", str(tmp_path), download=False, size=28)


@pytest.mark.realdata
def test_truncated_real_file(tmp_path, data_dir):
    src = (data_dir / "bloodmnist.npz").read_bytes()
    (tmp_path / "bloodmnist.npz").write_bytes(src[: len(src) // 3])
    with pytest.raises(DataError, match="has MD5"):
        load_medmnist("bloodmnist", str(tmp_path), download=False, size=28)


def test_corrupt_npz_with_matching_md5(tmp_path):
    p = tmp_path / "pathmnist.npz"
    p.write_bytes(b"this is not a zip file")
    import hashlib

    with pytest.raises(DataError, match="cannot read .* as a MedMNIST file"):
        load_medmnist(
            "pathmnist",
            str(tmp_path),
            download=False,
            size=28,
            expected_md5=hashlib.md5(p.read_bytes()).hexdigest(),
        )
