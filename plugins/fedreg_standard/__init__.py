"""fedreg's standard set-up components: MedMNIST 2D datasets, partitions (Dirichlet label skew with an
optional balance cap, IID, k-classes-per-client shards, and the FedKPer authors' NumPy-seeded partition),
two CNNs (``cnn`` and the FedKPer authors' ``medmnist_net``), the authors' round-seeded client sampling,
``round_robin`` and ``size_proportional`` selection.
Loaded through the ``fedreg`` entry-point group like any third-party plugin."""

from fedreg import hookimpl
from fedreg_standard.medmnist_data import MEDMNIST_DATASETS
from fedreg_standard.models import MedMNISTNet, SmallCNN
from fedreg_standard.partitions import (
    DirichletPartition,
    IIDPartition,
    NumpyLegacyDirichletPartition,
    ShardPartition,
)
from fedreg_standard.selection import NumpySeededByRound, RoundRobin, SizeProportional


@hookimpl
def fedreg_register_datasets(register):
    for cls in MEDMNIST_DATASETS:
        register(cls)


@hookimpl
def fedreg_register_partitions(register):
    register(DirichletPartition)
    register(IIDPartition)
    register(ShardPartition)
    register(NumpyLegacyDirichletPartition)


@hookimpl
def fedreg_register_models(register):
    register(SmallCNN)
    register(MedMNISTNet)


@hookimpl
def fedreg_register_selectors(register):
    register(NumpySeededByRound)
    register(RoundRobin)
    register(SizeProportional)
