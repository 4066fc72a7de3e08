"""First-party baseline methods as components, each citing its paper.

- FedAvg = ``cross_entropy`` + ``fedavg`` + ``uniform``.
- Global FL: ``fedprox``; ``scaffold`` and ``feddyn`` (each an objective plus an aggregation of the same
  name); ``moon``; ``fedntd``; server optimizers ``fedavgm`` and ``fedadam``.
- Personalised FL (objectives; local metrics use the personal model): ``ditto``, ``fedper``, ``fedrep``,
  ``fedbabu``, ``apfl``, ``local_only``; ``fedper``, ``fedrep``, ``fedbabu`` and ``local_only`` pair with the
  ``fedavg_shared`` aggregation (FedAvg over the entries the clients share).
- The ``personalization`` metric: after the last round, every client's own model on its own local test set,
  mean and worst over all clients (the end-of-run figures of pFL papers), for every method.
- Robust aggregation: ``median``, ``trimmed_mean``, ``krum`` (Multi-Krum with m > 1).

Each method is also a preset (``method: NAME`` in a spec) naming its objective and aggregation.

Each method has its own module, named after it (``fedavg``, ``fedprox``, ``scaffold``, ..., ``krum``), holding
its components and its math as plain functions. What several methods share: ``losses`` (the proximal term:
FedProx, Ditto, FedDyn), ``personal_math`` (layer selection: FedPer, FedRep, FedBABU) and the private
``_personal``, ``_pairing``, ``_server_optimizer`` and ``_robust``; ``presets`` holds the method presets;
``personalization`` the end-of-run metric. docs/baselines.md compares each method with its paper and code.
"""

from fedreg import hookimpl
from fedreg_baselines._personal import FedAvgShared
from fedreg_baselines.apfl import APFL
from fedreg_baselines.ditto import Ditto
from fedreg_baselines.fedadam import FedAdam
from fedreg_baselines.fedavg import CrossEntropy, FedAvg, UniformSelection
from fedreg_baselines.fedavgm import FedAvgM
from fedreg_baselines.fedbabu import FedBABU
from fedreg_baselines.feddyn import FedDyn, FedDynAggregator
from fedreg_baselines.fedntd import FedNTD
from fedreg_baselines.fedper import FedPer
from fedreg_baselines.fedprox import FedProx
from fedreg_baselines.fedrep import FedRep
from fedreg_baselines.krum import Krum
from fedreg_baselines.local_only import LocalOnly
from fedreg_baselines.median import CoordinateMedian
from fedreg_baselines.moon import Moon
from fedreg_baselines.personalization import EndOfRunPersonalization
from fedreg_baselines.presets import PRESETS
from fedreg_baselines.scaffold import Scaffold, ScaffoldAggregator
from fedreg_baselines.trimmed_mean import TrimmedMean

PERSONALIZED_OBJECTIVES = [Ditto, FedPer, FedRep, FedBABU, APFL, LocalOnly]
OBJECTIVES = [CrossEntropy, FedProx, Scaffold, FedDyn, Moon, FedNTD, *PERSONALIZED_OBJECTIVES]
AGGREGATORS = [
    FedAvg,
    FedAvgShared,
    ScaffoldAggregator,
    FedDynAggregator,
    FedAvgM,
    FedAdam,
    CoordinateMedian,
    TrimmedMean,
    Krum,
]
SELECTORS = [UniformSelection]
METRICS = [EndOfRunPersonalization]


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
def fedreg_register_metrics(register):
    for cls in METRICS:
        register(cls)


@hookimpl
def fedreg_register_methods(register):
    for cls in PRESETS:
        register(cls)
