"""MedMNIST loading through the real `medmnist` package: real BloodMNIST, MD5 checks, clear errors."""

from __future__ import annotations

import pytest
import torch

from fedreg.data import subset_dataset
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


@pytest.mark.realdata
def test_subset_of_real_bloodmnist_keeps_a_fraction_of_each_class(data_dir):
    ds = load_medmnist("bloodmnist", str(data_dir), download=False, size=28)
    sub = subset_dataset(ds, 0.1)
    assert subset_dataset(ds, 1.0) is ds
    for full, part in ((ds.train_y, sub.train_y), (ds.test_y, sub.test_y)):
        want = [max(1, round(0.1 * int(n))) for n in torch.bincount(full, minlength=8)]
        assert torch.bincount(part, minlength=8).tolist() == want
    assert len(sub.train_y) == pytest.approx(1196, abs=8) and len(sub.test_y) == pytest.approx(342, abs=8)
    # the kept samples are rows of the file's splits, in their order; the same rows every time
    again = subset_dataset(ds, 0.1)
    assert torch.equal(again.train_x, sub.train_x) and torch.equal(again.test_y, sub.test_y)
    first = sub.train_x[0]
    assert any(torch.equal(first, ds.train_x[i]) for i in range(int(len(ds.train_x) * 0.2)))


def test_subset_keeps_one_of_a_rare_class(tmp_path):
    md5 = make_medmnist_npz(tmp_path, "organcmnist", n_train=300, n_test=100)
    ds = load_medmnist("organcmnist", str(tmp_path), download=False, size=28, expected_md5=md5)
    sub = subset_dataset(ds, 0.01)
    assert set(sub.train_y.tolist()) == set(ds.train_y.tolist())  # every class keeps one sample
    assert len(sub.train_y) == len(set(ds.train_y.tolist()))


@pytest.mark.parametrize("bad", [0, -0.5, 1.5])
def test_subset_out_of_range_is_a_spec_error(bad):
    from fedreg.errors import SpecError
    from fedreg.registry import build_registry
    from fedreg.spec import resolve
    from testhelpers import base_spec

    raw = base_spec()
    raw["data"]["subset"] = bad
    with pytest.raises(SpecError, match=r"data\.subset"):
        resolve(raw, build_registry())


def test_checkpoints_from_before_data_subset_stay_resumable():
    """A checkpoint records the spec's identity; one written before ``data.subset`` existed has no such key,
    and the same spec read now (subset 1 by default) must still match it, while another subset must not."""
    from fedreg.checkpoint import identity
    from fedreg.registry import build_registry
    from fedreg.spec import resolve
    from testhelpers import base_spec

    reg = build_registry()
    (now,) = resolve(base_spec(), reg)
    before = {k: v for k, v in identity(now.resolved_dict()).items() if k != "data.subset"}
    assert identity(now.resolved_dict()) == before
    raw = base_spec()
    raw["data"]["subset"] = 0.5
    (half,) = resolve(raw, reg)
    assert identity(half.resolved_dict())["data.subset"] == "0.5"


PROBE = """
import sys
import fedreg.registry
reg = fedreg.registry.get_registry()
print(sorted(m for m in ("medmnist", "sklearn", "pandas") if m in sys.modules))
import medmnist.info
info = medmnist.info.INFO
flags = [f for f, i in info.items() if not f.endswith("3d") and i["task"] in ("multi-class", "binary-class")]
print(sorted(set(flags) - set(reg.names("dataset"))))
"""


def test_medmnist_is_imported_by_its_loader_and_by_the_sweep_worker_server_only():
    """Listing and validating do not import the medmnist package (its evaluator imports scikit-learn, pandas
    and SciPy: 3 s at every start), yet every 2D multi-class or binary dataset of medmnist's own list is
    registered; the worker server of a parallel sweep imports the package once for all its workers, with
    the other slow first uses (torch._dynamo, which an optimizer's first step imports; pyplot)."""
    import subprocess
    import sys

    def python(code: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    assert python(PROBE) == ["[]", "[]"]
    modules = ("medmnist", "torch._dynamo", "matplotlib.pyplot")
    warm = f"import sys, fedreg._worker_preload; print(*(m in sys.modules for m in {modules}))"
    assert python(warm) == ["True True True"]
