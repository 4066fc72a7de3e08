"""Aggregation: the aggregation kind (:class:`Aggregator`) and what it receives from the round's clients
(:class:`ClientUpdate`, :class:`ClientFailure`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fedreg.components.base import Component, StateDict
from fedreg.components.training import LocalContext


@dataclass
class ClientUpdate:
    """One client's result of a round, as the aggregator sees it."""

    client_id: int
    num_samples: int
    state: StateDict  # trained weights
    report: dict[str, float] = field(default_factory=dict)  # from Aggregator.client_report
    payload: dict[str, Any] = field(default_factory=dict)  # from Objective.finish
    train_loss: float = float("nan")


@dataclass
class ClientFailure:
    client_id: int
    stage: str
    error: str


class Aggregator(Component):
    """Server-side aggregation, with optional server state and client-side reporting."""

    kind = "aggregation"
    hook = "fedreg_register_aggregators"
    spec_path = ("federation", "aggregation")
    contract = (
        "check_spec",
        "start_run",
        "broadcast",
        "client_report",
        "aggregate",
        "evaluated_state",
        "state_dict",
        "load_state_dict",
    )

    def broadcast(self, round: int, global_state: StateDict) -> dict[str, Any]:
        """Extras sent to every selected client with the global weights (default: none)."""
        return {}

    def client_report(self, ctx: LocalContext, model: nn.Module) -> dict[str, float]:
        """Runs on the client after local training; what it reports with its weights (default: none).
        ``ctx.train_loss`` holds the mean loss of this round's local training."""
        return {}

    def aggregate(
        self, round: int, global_state: StateDict, updates: list[ClientUpdate], failures: list[ClientFailure]
    ) -> StateDict:
        """Return the new global weights (same keys, shapes and dtypes as ``global_state``)."""
        raise NotImplementedError

    def evaluated_state(self, round: int, global_state: StateDict) -> StateDict | None:
        """The weights evaluated and reported as the global model after ``round`` (global test, global on
        local, the logged model, the end-of-run model of a global method), where a method reports other
        weights than those it sends to clients (FedDyn's authors report the average of the participants or
        of all clients, not the server's corrected model). Called after ``aggregate`` in each evaluated
        round, with the new global weights. None (the default): the global weights themselves."""
        return None
