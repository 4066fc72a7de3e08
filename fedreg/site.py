"""The site parts of a run's metrics (:meth:`fedreg.components.Metric.at_site`): one client's predictions
turned into each metric's numbers where they were made, with that client's metric state.

The same object serves both places predictions are made: the server's process (fedreg's own backends; the
states are then part of the run's checkpoint) and a client's Flower node (the states stay in the node's
``context.state`` and never reach the server)."""

from __future__ import annotations

from typing import Any

from fedreg.components import FINAL_LOCAL, GLOBAL_ON_LOCAL, LOCAL, Metric, Predictions, SiteSummary
from fedreg.errors import PluginError, call_component, describe

#: the per-client roles: predictions on the clients' local test sets
SITE_ROLES = (LOCAL, GLOBAL_ON_LOCAL, FINAL_LOCAL)


def evaluated(round: int, every: int, rounds: int) -> bool:
    """Whether round ``round`` is evaluated (metrics updated): every ``evaluation.every`` rounds and the
    last."""
    return round % every == 0 or round == rounds


def missing_site_parts(metrics: list[Any]) -> list[str]:
    """Metrics (instances or classes) that require per-client predictions of a role they have no site part
    for: they cannot run where predictions stay at the sites. One line each, naming the roles."""
    out = []
    for m in metrics:
        lacking = sorted((set(m.requires) & set(SITE_ROLES)) - set(m.site_roles))
        if lacking:
            roles = ", ".join(lacking)
            out.append(f"metric '{m.name}' needs {roles} predictions and has no site part for them")
    return out


class SiteMetrics:
    """Each metric's :meth:`~fedreg.components.Metric.at_site` for the clients whose predictions are here,
    with each client's state of each metric."""

    def __init__(self, metrics: list[Metric]):
        self.metrics = [m for m in metrics if m.site_roles]
        self.states: dict[int, dict[str, dict[str, Any]]] = {}  # client -> metric name -> state

    def __bool__(self) -> bool:
        return bool(self.metrics)

    def summarize(self, role: str, client: int, preds: Predictions, round: int) -> SiteSummary:
        """``client``'s predictions of ``role`` summarised by every metric that has a site part for it."""
        out = SiteSummary()
        states = self.states.setdefault(client, {})
        for m in self.metrics:
            if role not in m.site_roles:
                continue
            state = states.setdefault(m.name, {})
            got = call_component(m, "at_site", round, client, role, client, preds, state)
            out.numbers[m.name] = checked_numbers(got, m, role)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {str(c): s for c, s in self.states.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.states = {int(c): dict(s) for c, s in (state or {}).items()}


def checked_numbers(got: Any, metric: Metric, role: str) -> dict[str, float]:
    """The boundary check on what ``at_site`` returned: a dict of names to real numbers."""
    if not isinstance(got, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in got.items()
    ):
        raise PluginError(
            f"{describe(metric)}: at_site must return a dict of names to numbers, got {got!r} (role {role})"
        )
    return {k: float(v) for k, v in got.items()}


def by_metric(role: str, summaries: dict[int, SiteSummary], into: dict[str, dict[str, dict]]) -> None:
    """Sort the clients' summaries of ``role`` by metric: ``into[metric][role][client] = numbers``."""
    for cid, summary in summaries.items():
        for name, numbers in summary.numbers.items():
            into.setdefault(name, {}).setdefault(role, {})[cid] = numbers
