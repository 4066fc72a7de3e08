"""Component contracts: the base classes plugins subclass and register by name.

A component is a class with a unique ``name`` within its ``kind``, a pydantic ``Params`` model for its
parameters (unknown keys rejected), and the methods of its kind's contract. Math belongs in plain
functions that these methods call; the methods stay thin.

State is explicit: server-side state lives on the aggregator (``state_dict``), per-client state lives in
``LocalContext.state`` (kept by the runtime for the clients that have it), metric state lives on the
metric (``state_dict``). All of it is tensors, numbers, strings, lists and dicts, so a run is checkpointable.

The contracts live in one module per concern; every name is importable from ``fedreg.components``:
``base`` (:class:`Component`, :class:`Params`, :class:`RunInfo`, :class:`ClientInfo`, ``StateDict``),
``data`` (:class:`Dataset`, :class:`Partition`, :class:`DatasetTensors`), ``models`` (:class:`Model`),
``selection`` (:class:`Selector`), ``training`` (:class:`Objective`, :class:`LocalContext`,
:class:`FunctionalContext`, :class:`TrainOutput`), ``aggregation`` (:class:`Aggregator`,
:class:`ClientUpdate`, :class:`ClientFailure`), ``metrics`` (:class:`Metric`, :class:`Predictions`,
:class:`RoundEvaluation`, :class:`MetricResult`) and ``methods`` (:class:`Method`).
"""

from __future__ import annotations

from fedreg.components.aggregation import Aggregator, ClientFailure, ClientUpdate
from fedreg.components.base import (
    ClientInfo,
    Component,
    Params,
    RunInfo,
    StateDict,
    clone_state,
    deepcopy_state,
)
from fedreg.components.data import Dataset, DatasetTensors, Partition
from fedreg.components.methods import Method
from fedreg.components.metrics import (
    FINAL_LOCAL,
    GLOBAL_ON_LOCAL,
    GLOBAL_TEST,
    LOCAL,
    Metric,
    MetricResult,
    Predictions,
    RoundEvaluation,
    SiteSummary,
)
from fedreg.components.models import Model
from fedreg.components.selection import Selector
from fedreg.components.training import (
    IMPERATIVE_METHODS,
    FunctionalContext,
    LocalContext,
    NonFiniteLoss,
    Objective,
    TrainOutput,
)

#: every component kind, by name: the one list of kinds (registry hooks and spec paths derive from it)
KIND_BASES: dict[str, type[Component]] = {
    c.kind: c for c in (Dataset, Partition, Model, Selector, Objective, Aggregator, Metric, Method)
}

__all__ = [
    "FINAL_LOCAL",
    "GLOBAL_ON_LOCAL",
    "GLOBAL_TEST",
    "IMPERATIVE_METHODS",
    "KIND_BASES",
    "LOCAL",
    "Aggregator",
    "ClientFailure",
    "ClientInfo",
    "ClientUpdate",
    "Component",
    "Dataset",
    "DatasetTensors",
    "FunctionalContext",
    "LocalContext",
    "Method",
    "Metric",
    "MetricResult",
    "Model",
    "NonFiniteLoss",
    "Objective",
    "Params",
    "Partition",
    "Predictions",
    "RoundEvaluation",
    "SiteSummary",
    "RunInfo",
    "Selector",
    "StateDict",
    "TrainOutput",
    "clone_state",
    "deepcopy_state",
]
