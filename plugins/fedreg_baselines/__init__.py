"""First-party baseline methods as components, each citing its paper.

- FedAvg = ``cross_entropy`` + ``fedavg`` + ``uniform``.
- Global FL: ``fedprox``; ``scaffold`` and ``feddyn`` (each an objective plus an aggregation of the same
  name); ``moon``; ``fedntd``; server optimizers ``fedavgm`` and ``fedadam``.
- Personalised FL (objectives; local metrics use the personal model): ``ditto``, ``fedper``, ``fedrep``,
  ``fedbabu``, ``apfl``, ``local_only``.
- Robust aggregation: ``median``, ``trimmed_mean``, ``krum`` (Multi-Krum with m > 1).

Each method is also a preset (``method: NAME`` in a spec) naming its objective and aggregation.
"""

from fedreg import hookimpl
from fedreg_baselines.components import CrossEntropy, FedAvg, UniformSelection
from fedreg_baselines.global_fl import (
    FedDyn,
    FedDynAggregator,
    FedNTD,
    FedProx,
    Moon,
    Scaffold,
    ScaffoldAggregator,
)
from fedreg_baselines.personalized import PERSONALIZED_OBJECTIVES
from fedreg_baselines.presets import PRESETS
from fedreg_baselines.robust import CoordinateMedian, Krum, TrimmedMean
from fedreg_baselines.server_opt import FedAdam, FedAvgM

OBJECTIVES = [CrossEntropy, FedProx, Scaffold, FedDyn, Moon, FedNTD, *PERSONALIZED_OBJECTIVES]
AGGREGATORS = [
    FedAvg,
    ScaffoldAggregator,
    FedDynAggregator,
    FedAvgM,
    FedAdam,
    CoordinateMedian,
    TrimmedMean,
    Krum,
]
SELECTORS = [UniformSelection]


@hookimpl
def fedreg_register_objectives(register):
    for cls in OBJECTIVES:
        register(cls)


@hookimpl
def fedreg_register_aggregators(register):
    for cls in AGGREGATORS:
        register(cls)


@hookimpl
def fedreg_register_selectors(register):
    for cls in SELECTORS:
        register(cls)


@hookimpl
def fedreg_register_methods(register):
    for cls in PRESETS:
        register(cls)
