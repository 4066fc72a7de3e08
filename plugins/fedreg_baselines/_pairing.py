"""The pairing of SCAFFOLD and FedDyn: each is an objective and an aggregation of the same name that work only
together (the aggregation broadcasts the server state the objective uses)."""

from __future__ import annotations

from fedreg.errors import FedregError


def pairing_problems(spec, objective: str, aggregator: str) -> list[str]:
    """The objective and the aggregation of these methods work only together."""
    if spec.training.objective.name == objective and spec.federation.aggregation.name != aggregator:
        return [
            f"objective '{objective}' needs the '{aggregator}' aggregation (it sends the server state the "
            f"objective uses); set federation.aggregation: {aggregator}"
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
