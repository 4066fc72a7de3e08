"""MedMNIST 2D datasets through the ``medmnist`` package, held once in memory as normalised tensors.

The data root is ``data.root`` from the spec, else ``$FEDREG_DATA_DIR``, else medmnist's default folder
(``~/.medmnist``). A missing file is downloaded from the official source only when ``data.download`` is
true; the file's MD5 is always verified.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from fedreg.components import Dataset, DatasetTensors, Params
from fedreg.errors import DataError


def _medmnist_info():
    """medmnist's ``info`` module (names, classes, URLs and MD5s of its datasets) without running the
    package's ``__init__``, which imports its evaluator and with it scikit-learn, pandas and SciPy: 3 s at
    every start of a process that only validates a spec or lists plugins. The loader imports the package
    when it reads a file."""
    if "medmnist" in sys.modules:
        return sys.modules["medmnist"].info
    found = importlib.util.find_spec("medmnist")
    if found is None or not found.submodule_search_locations:
        raise ImportError("the medmnist package is not installed: pip install medmnist")
    path = Path(next(iter(found.submodule_search_locations))) / "info.py"
    spec = importlib.util.spec_from_file_location("fedreg_standard._medmnist_info", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_INFO_MODULE = _medmnist_info()
INFO: dict = _INFO_MODULE.INFO
DEFAULT_ROOT: str | None = _INFO_MODULE.DEFAULT_ROOT


def md5sum(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_root(root: str | None) -> Path:
    if root:
        return Path(root).expanduser()
    env = os.environ.get("FEDREG_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(DEFAULT_ROOT or "~/.medmnist").expanduser()  # None: medmnist could not make its folder


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1], channels_last in memory."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last)


def load_medmnist(
    flag: str, root: str | None, download: bool, size: int, expected_md5: str | None = None
) -> DatasetTensors:
    import medmnist

    info = INFO[flag]
    suffix = "" if size == 28 else f"_{size}"
    folder = resolve_root(root)
    path = folder / f"{flag}{suffix}.npz"
    if folder.is_file():
        setting = "data.root" if root else "FEDREG_DATA_DIR"
        raise DataError(
            f"{setting} must be the folder holding {path.name}, not a file ('{folder}'); use "
            f"{setting + ': ' if root else setting + '='}{folder.parent}"
            + ("" if folder.name == path.name else f" if that file is {path.name}")
        )
    url = info[f"url{suffix}"]
    official_md5 = info[f"MD5{suffix}"]
    md5 = expected_md5 or official_md5
    if not path.exists():
        if not download:
            raise DataError(
                f"dataset file '{path}' not found. "
                f"Put {flag}{suffix}.npz (from {url}, MD5 {official_md5}) in "
                f"'{folder}', point data.root or FEDREG_DATA_DIR at the folder that holds it, or set "
                f"data.download: true to fetch it"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            cls = getattr(medmnist, info["python_class"])
            cls(split="test", root=str(folder), size=size, download=True)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"could not download {flag}{suffix}.npz into '{folder}': {exc}".strip()) from None
    actual = md5sum(path)
    if actual != md5:
        raise DataError(
            f"'{path}' has MD5 {actual}, expected {md5}: the file is corrupt, truncated or another version. "
            f"Replace it with the file from {url}"
        )
    cls = getattr(medmnist, info["python_class"])
    try:
        train = cls(split="train", root=str(folder), size=size, download=False)
        test = cls(split="test", root=str(folder), size=size, download=False)
        arrays = (train.imgs, train.labels, test.imgs, test.labels)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, RuntimeError) as exc:
        raise DataError(
            f"cannot read '{path}' as a MedMNIST file ({type(exc).__name__}: {exc}); "
            f"replace it with the file from {url}"
        ) from None
    tr_x, tr_y, te_x, te_y = arrays
    return DatasetTensors(
        name=flag,
        train_x=to_tensor(tr_x),
        train_y=torch.from_numpy(np.asarray(tr_y).reshape(-1).astype(np.int64)),
        test_x=to_tensor(te_x),
        test_y=torch.from_numpy(np.asarray(te_y).reshape(-1).astype(np.int64)),
        num_classes=len(info["label"]),
        in_channels=int(info["n_channels"]),
        image_size=size,
        class_names=[info["label"][str(i)] for i in range(len(info["label"]))],
        checksum=actual,
        source=str(path),
    )


def load_medmnist_site(flag: str, path: str, size: int) -> DatasetTensors:
    """A site's own samples of MedMNIST dataset ``flag``: an ``.npz`` in the official files' layout holding
    the site's images and labels as ``train_images`` and ``train_labels`` (uint8 ``(N, H, W)`` or
    ``(N, H, W, C)``, labels ``(N,)`` or ``(N, 1)``), preprocessed as the official splits."""
    info = INFO[flag]
    file = Path(path).expanduser()
    fix = (
        f"a site's file is an .npz with 'train_images' (uint8, N x {size} x {size}"
        f"{'' if int(info['n_channels']) == 1 else ' x ' + str(info['n_channels'])}) and 'train_labels'"
    )
    if not file.is_file():
        raise DataError(
            f"site data file '{file}' not found: {fix}; give its path as data-file in the node config"
        )
    try:
        with np.load(file, allow_pickle=False) as npz:
            images, labels = npz["train_images"], npz["train_labels"]
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as exc:
        raise DataError(
            f"cannot read '{file}' as a site's {flag} file ({type(exc).__name__}: {exc}): {fix}"
        ) from None
    channels, classes = int(info["n_channels"]), len(info["label"])
    want = (size, size) if channels == 1 else (size, size, channels)
    labels = np.asarray(labels).reshape(-1)
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != want or len(images) != len(labels):
        raise DataError(
            f"'{file}' holds train_images {images.dtype} {tuple(images.shape)} and {len(labels)} labels: "
            + fix
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"'{file}' has labels outside 0..{classes - 1}, the classes of {flag}")
    empty = np.empty((0, *want), dtype=np.uint8)
    return DatasetTensors(
        name=flag,
        train_x=to_tensor(images),
        train_y=torch.from_numpy(labels.astype(np.int64)),
        test_x=to_tensor(empty),
        test_y=torch.empty(0, dtype=torch.int64),
        num_classes=classes,
        in_channels=channels,
        image_size=size,
        class_names=[info["label"][str(i)] for i in range(classes)],
        checksum=md5sum(file),
        source=str(file),
    )


class MedMNISTParams(Params):
    md5: str | None = Field(default=None, description="expected MD5 of the file (default: the official one)")


def _make(flag: str) -> type[Dataset]:
    info = INFO[flag]

    class _MedMNIST(Dataset):
        __doc__ = f"MedMNIST {info['python_class']} ({info['task']}, {len(info['label'])} classes)."
        name = flag
        Params = MedMNISTParams
        warm_imports = ("medmnist",)

        def load(self, root, download, size):
            return load_medmnist(flag, root, download, size, self.params.md5)

        def load_site(self, path, size):
            return load_medmnist_site(flag, path, size)

    _MedMNIST.__name__ = _MedMNIST.__qualname__ = info["python_class"] + "Dataset"
    return _MedMNIST


#: every 2D single-label (multi-class or binary) MedMNIST dataset
MEDMNIST_DATASETS: list[type[Dataset]] = [
    _make(flag)
    for flag, info in INFO.items()
    if not flag.endswith("3d") and info["task"] in ("multi-class", "binary-class")
]
