"""First-party baseline components. FedAvg is ``cross_entropy`` + ``fedavg`` + ``uniform``."""

from fedreg import hookimpl
from fedreg_baselines.components import CrossEntropy, FedAvg, UniformSelection


@hookimpl
def fedreg_register_objectives(register):
    register(CrossEntropy)


@hookimpl
def fedreg_register_aggregators(register):
    register(FedAvg)


@hookimpl
def fedreg_register_selectors(register):
    register(UniformSelection)
