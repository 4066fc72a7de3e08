"""What the server optimizers (FedAvgM, FedAdam) share: their base class, which holds the optimizer state.

The average of client weights (by sample counts unless ``weighting: uniform``) minus the previous global
weights is a pseudo-gradient step, which a server-side optimizer (momentum, Adam) applies to the global
weights.

The update rules are plain functions in each method's module; the components hold the optimizer state
(float64 tensors by parameter name) and expose it through ``state_dict`` / ``load_state_dict``. Only floating
tensors get the optimizer step; other tensors (counters) come from the average. Floating buffers (e.g.
BatchNorm running statistics) are floating tensors too and are stepped like parameters: the aggregator sees a
state dict, not which of its entries are parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, StateDict
from fedreg_baselines.fedavg import averaging_weights


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def client_average(updates, params) -> StateDict:
    """The average of the clients' weights under the aggregator's ``weighting``."""
    return weighted_average([u.state for u in updates], averaging_weights(params, updates))


def _copy_tensors(d: Any, what: str) -> StateDict:
    if not isinstance(d, dict) or not all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in d.items()
    ):
        raise ValueError(f"{what} must be a dict of parameter name -> tensor")
    return {k: t.detach().clone() for k, t in d.items()}


class ServerOptimizer(Aggregator):
    #: names of the optimizer's state slots, each a dict of parameter name -> tensor
    slots: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params=None):
        super().__init__(params)
        self._state: dict[str, StateDict] = {s: {} for s in self.slots}
        self.steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            **{s: {k: t.clone() for k, t in self._state[s].items()} for s in self.slots},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = sorted(set(state) - {"steps", *self.slots})
        if unknown:
            raise ValueError(
                f"aggregation '{self.name}' got unknown state keys {unknown}; "
                f"expected {['steps', *self.slots]}"
            )
        self.steps = int(state.get("steps", 0))
        self._state = {
            s: _copy_tensors(state.get(s, {}), f"aggregation '{self.name}' state '{s}'") for s in self.slots
        }
