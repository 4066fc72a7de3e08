"""Evaluation and metrics: the metric kind (:class:`Metric`), the predictions it sees after a round
(:class:`Predictions`, :class:`RoundEvaluation`, the ``requires`` constants) and what it returns
(:class:`MetricResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from fedreg.components.base import Component
from fedreg.figures import Figure


@dataclass
class Predictions:
    """A model's predictions on one evaluation set.

    ``probs`` is set on every set fedreg evaluates (since contract version 4); it is ``None`` only in
    predictions built by hand with three fields."""

    labels: torch.Tensor  # int64 (N,)
    preds: torch.Tensor  # int64 (N,): argmax of the logits
    loss: torch.Tensor  # float32 (N,) per-sample cross-entropy
    #: float32 (N, C): softmax of the logits, each row sums to 1 ((0, 0) for an empty set)
    probs: torch.Tensor | None = None

    def subset(self, index: slice | torch.Tensor) -> Predictions:
        """The predictions of the samples at ``index`` (a slice or an index tensor)."""
        return Predictions(
            self.labels[index],
            self.preds[index],
            self.loss[index],
            None if self.probs is None else self.probs[index],
        )

    def to(self, device: str | torch.device) -> Predictions:
        """These predictions with every tensor on ``device``."""
        return Predictions(
            self.labels.to(device),
            self.preds.to(device),
            self.loss.to(device),
            None if self.probs is None else self.probs.to(device),
        )

    @property
    def correct(self) -> torch.Tensor:
        return self.preds == self.labels

    def accuracy(self) -> float:
        return float(self.correct.float().mean()) if len(self.labels) else float("nan")

    def balanced_accuracy(self) -> float:
        if not len(self.labels):
            return float("nan")
        recalls = [float(self.correct[self.labels == c].float().mean()) for c in torch.unique(self.labels)]
        return float(np.mean(recalls))


@dataclass
class RoundEvaluation:
    """What metrics see after a round. Fields a metric did not ``require`` may be empty."""

    round: int
    participants: list[int]
    num_classes: int
    global_test: Predictions | None = None
    #: each participant's model (``Objective.eval_model``) on its own local test set
    local: dict[int, Predictions] = field(default_factory=dict)
    #: the new global model on every client's local test set
    global_on_local: dict[int, Predictions] = field(default_factory=dict)
    local_model_role: str = "local"
    #: after the last round only (empty before): EVERY client's model at the end of the run on its own local
    #: test set, participants or not. The model is ``Objective.eval_model`` of a context holding the final
    #: global weights and the client's state, without training (its personal model where the method has
    #: one, else the final global model); required as ``FINAL_LOCAL``
    final_local: dict[int, Predictions] = field(default_factory=dict)
    #: this metric's site part's numbers (see :meth:`Metric.at_site`): ``site[role][client]``, for each role
    #: of its ``site_roles`` that was evaluated, whether the predictions were made in this process or at the
    #: client's site. Where predictions stay at the sites (the Flower backend), ``local``,
    #: ``global_on_local`` and ``final_local`` are empty and these numbers are all a metric gets of them.
    site: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)


@dataclass
class SiteSummary:
    """One client's predictions summarised where they were made: ``numbers[metric name]`` is that metric's
    :meth:`Metric.at_site` result. A backend whose clients' predictions must not leave their sites returns
    it in place of :class:`Predictions`."""

    numbers: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class MetricResult:
    scalars: dict[str, float] = field(default_factory=dict)
    per_client: dict[int, dict[str, float]] = field(default_factory=dict)


GLOBAL_TEST = "global_test"
LOCAL = "local"
GLOBAL_ON_LOCAL = "global_on_local"
#: every client's end-of-run model on its own local test set, after the last round (``final_local``)
FINAL_LOCAL = "final_local"


class Metric(Component):
    """A per-round metric. Declares which predictions it needs in ``requires``."""

    kind = "metric"
    hook = "fedreg_register_metrics"
    spec_path = ()
    contract = ("check_spec", "start_run", "at_site", "update", "state_dict", "load_state_dict")
    requires: ClassVar[frozenset[str]] = frozenset({GLOBAL_TEST})
    #: the per-client roles (``LOCAL``, ``GLOBAL_ON_LOCAL``, ``FINAL_LOCAL``) whose predictions
    #: :meth:`at_site` summarises. A metric that requires such a role and lists it here can run where
    #: predictions stay at the clients' sites (the Flower backend); one that does not is refused there.
    site_roles: ClassVar[frozenset[str]] = frozenset()
    #: how the scalars it logs read (curves, table columns, progress line): see :mod:`fedreg.figures`
    figures: ClassVar[tuple[Figure, ...]] = ()

    def at_site(self, role: str, client: int, preds: Predictions, state: dict[str, Any]) -> dict[str, float]:
        """The site part: called where ``client``'s predictions of ``role`` (one of :attr:`site_roles`) were
        made, in rounds that are evaluated, before :meth:`update` of that round sees the numbers it returns
        in ``RoundEvaluation.site[role][client]``. ``state`` is this metric's state for this client, kept
        where the client's predictions are (at the site, never sent to the server); change it in place.
        Return plain numbers (an empty dict: nothing this round). Runs on the client's node under Flower,
        in the server's process otherwise: it must not depend on anything but its arguments and
        ``start_run``'s facts."""
        raise NotImplementedError

    def update(self, ev: RoundEvaluation) -> MetricResult:
        raise NotImplementedError
