"""Method presets of the baselines: one name in a spec (``method: scaffold``) for a method's objective and
aggregation, with the method's parameters (those of the component that has them)."""

from __future__ import annotations

from typing import Any, ClassVar

from fedreg.components import Aggregator, Method, Objective
from fedreg_baselines._personal import FedAvgShared
from fedreg_baselines.apfl import APFL
from fedreg_baselines.ditto import Ditto as DittoObjective
from fedreg_baselines.fedadam import FedAdam
from fedreg_baselines.fedavg import CrossEntropy, FedAvg
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
from fedreg_baselines.scaffold import Scaffold, ScaffoldAggregator
from fedreg_baselines.trimmed_mean import TrimmedMean


class ObjectiveAndAggregation(Method):
    """A preset naming an objective and an aggregation; its parameters are those of ``params_of``."""

    objective: ClassVar[type[Objective]] = CrossEntropy
    aggregation: ClassVar[type[Aggregator]] = FedAvg
    params_of: ClassVar[str] = ""  # "objective", "aggregation" or "" (no parameters)
    #: the aggregation's parameters this preset sets (a spec's federation.aggregation.params win)
    aggregation_params: ClassVar[dict[str, Any]] = {}

    def parts(self) -> dict[str, Any]:
        params = self.params.model_dump(mode="json")
        return {
            "training.objective": {
                "name": self.objective.name,
                "params": params if self.params_of == "objective" else {},
            },
            "federation.aggregation": {
                "name": self.aggregation.name,
                "params": {
                    **self.aggregation_params,
                    **(params if self.params_of == "aggregation" else {}),
                },
            },
        }


def preset(
    name: str,
    objective: type[Objective],
    aggregation: type[Aggregator],
    params_of: str = "",
    aggregation_params: dict[str, Any] | None = None,
):
    """A preset class: ``objective`` + ``aggregation``, taking the parameters of ``params_of``, with
    ``aggregation_params`` set on the aggregation."""
    owner = {"objective": objective, "aggregation": aggregation}.get(params_of)
    fixed = ", ".join(f"{k}: {v}" for k, v in (aggregation_params or {}).items())
    doc = (
        f"{name}: objective '{objective.name}' + aggregation '{aggregation.name}'"
        + (f" ({fixed})" if fixed else "")
        + (f" (parameters: the {params_of}'s)" if owner else "")
    )
    attrs = {
        "__doc__": doc,
        "__module__": __name__,
        "name": name,
        "objective": objective,
        "aggregation": aggregation,
        "params_of": params_of,
        "aggregation_params": dict(aggregation_params or {}),
    }
    if owner is not None:
        attrs["Params"] = owner.Params
    return type(f"{name.title().replace('_', '')}Preset", (ObjectiveAndAggregation,), attrs)


PRESETS = [
    preset("fedavg", CrossEntropy, FedAvg),
    preset("fedprox", FedProx, FedAvg, "objective"),
    preset("scaffold", Scaffold, ScaffoldAggregator, "aggregation"),
    preset("feddyn", FedDyn, FedDynAggregator, "aggregation"),
    preset("moon", Moon, FedAvg, "objective"),
    preset("fedntd", FedNTD, FedAvg, "objective"),
    preset("fedavgm", CrossEntropy, FedAvgM, "aggregation"),
    preset("fedadam", CrossEntropy, FedAdam, "aggregation"),
    preset("ditto", DittoObjective, FedAvg, "objective"),
    preset("fedper", FedPer, FedAvgShared, "objective"),
    preset("fedrep", FedRep, FedAvgShared, "objective"),
    preset("fedbabu", FedBABU, FedAvgShared, "objective"),
    # FedTorch (the APFL authors' code) averages the round's clients uniformly (fedavg_aggregation)
    preset("apfl", APFL, FedAvg, "objective", {"weighting": "uniform"}),
    preset("local_only", LocalOnly, FedAvgShared),
    preset("median", CrossEntropy, CoordinateMedian),
    preset("trimmed_mean", CrossEntropy, TrimmedMean, "aggregation"),
    preset("krum", CrossEntropy, Krum, "aggregation"),
]
