"""Objectives that work only with one aggregation: SCAFFOLD and FedDyn (each an objective and an aggregation
of the same name; the aggregation broadcasts the server state the objective uses), and the personalised
methods that keep layers on the client (FedPer, FedRep, FedBABU, local-only: the ``fedavg_shared``
aggregation averages only what they share)."""

from __future__ import annotations

from fedreg.errors import FedregError


def pairing_problems(
    spec, objective: str, aggregator: str, why: str = "it sends the server state the objective uses"
) -> list[str]:
    """The objective and the aggregation of these methods work only together."""
    if spec.training.objective.name == objective and spec.federation.aggregation.name != aggregator:
        return [
            f"objective '{objective}' needs the '{aggregator}' aggregation ({why}); set "
            f"federation.aggregation: {aggregator}"
        ]
    return []


def broadcast_value(ctx, key: str, objective: str, aggregator: str):
    """What the paired aggregation broadcast under ``key``; raises if it was not broadcast."""
    if key not in ctx.broadcast:
        raise FedregError(
            f"objective '{objective}' needs the '{aggregator}' aggregation (set "
            f"federation.aggregation: {aggregator})"
        )
    return ctx.broadcast[key]
