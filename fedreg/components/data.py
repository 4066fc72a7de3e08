"""The data kinds: :class:`Dataset` (loads a dataset's splits as :class:`DatasetTensors`) and
:class:`Partition` (splits the training labels over the clients)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedreg import seeding
from fedreg.components.base import Component


@dataclass
class DatasetTensors:
    """A whole dataset held once in memory as tensors; clients are index sets into it.

    ``train_x``/``test_x`` are float32 ``(N, C, H, W)`` (normalised), ``train_y``/``test_y`` int64 ``(N,)``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str] = field(default_factory=list)
    checksum: str = ""
    source: str = ""


class Dataset(Component):
    """A dataset: loads the official train and test splits as tensors."""

    kind = "dataset"
    hook = "fedreg_register_datasets"
    spec_path = ("data", "dataset")
    contract = ("check_spec", "load", "load_site")
    #: modules ``load`` imports that are slow to import: the worker server of a parallel sweep imports them
    #: once, before it forks the workers (each child would import them again otherwise)
    warm_imports: tuple[str, ...] = ()

    def load(self, root: str | None, download: bool, size: int) -> DatasetTensors:
        raise NotImplementedError

    def load_site(self, path: str, size: int) -> DatasetTensors:
        """One site's own samples (a hospital's, in a deployment where each site holds its data) from the
        file at ``path``, preprocessed exactly as :meth:`load` preprocesses the official splits: the site's
        samples as the train split (its local test set is carved from them by the spec's
        ``data.local_test`` rule), an empty test split, and the dataset's classes, channels and image size.
        Default: the dataset cannot read a site's file (a :class:`~fedreg.errors.DataError` saying so)."""
        from fedreg.errors import DataError

        raise DataError(
            f"dataset '{self.name}' cannot read a site's own data file: its plugin does not implement "
            "Dataset.load_site (see docs/flower.md)"
        )


class Partition(Component):
    """Splits training labels into one index array per client."""

    kind = "partition"
    hook = "fedreg_register_partitions"
    spec_path = ("data", "partition")
    contract = ("check_spec", "split", "random_streams")

    def split(
        self, labels: np.ndarray, num_clients: int, num_classes: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """Return ``num_clients`` disjoint index arrays whose union is ``range(len(labels))``. The order of
        each array is kept when the local test set is carved from it (a rule that draws with
        ``rng.choice`` picks by position)."""
        raise NotImplementedError

    def random_streams(self, seed: int) -> tuple[Any, Any]:
        """The random sources of ``split`` and of carving each client's local test set, derived from the
        run's seed. Default: two independent ``numpy.random.Generator`` streams. A partition that must
        reproduce code drawing both from one sequence (NumPy's legacy global generator, say) returns the
        same ``numpy.random.RandomState`` twice; the local-test rules use only methods both types have."""
        return seeding.rng(seed, seeding.PARTITION), seeding.rng(seed, seeding.LOCAL_TEST)
