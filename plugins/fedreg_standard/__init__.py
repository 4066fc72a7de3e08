"""fedreg's standard set-up components: MedMNIST 2D datasets, partitions (Dirichlet label skew, IID,
k-classes-per-client shards) and the reference CNN. Loaded through the ``fedreg`` entry-point group like
any third-party plugin."""

from fedreg import hookimpl
from fedreg_standard.medmnist_data import MEDMNIST_DATASETS
from fedreg_standard.models import ReferenceCNN
from fedreg_standard.partitions import DirichletPartition, IIDPartition, ShardPartition


@hookimpl
def fedreg_register_datasets(register):
    for cls in MEDMNIST_DATASETS:
        register(cls)


@hookimpl
def fedreg_register_partitions(register):
    register(DirichletPartition)
    register(IIDPartition)
    register(ShardPartition)


@hookimpl
def fedreg_register_models(register):
    register(ReferenceCNN)
