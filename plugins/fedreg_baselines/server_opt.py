"""Server optimizers: the sample-weighted average of client weights minus the previous global weights is a
pseudo-gradient step, which a server-side optimizer (momentum, Adam) applies to the global weights.

The update rules are plain functions; the components hold the optimizer state (float64 tensors by parameter
name) and expose it through ``state_dict`` / ``load_state_dict``. Only floating tensors get the optimizer
step; other tensors (counters) come from the average. Floating buffers (e.g. BatchNorm running statistics)
are floating tensors too and are stepped like parameters: the aggregator sees a state dict, not which of
its entries are parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from fedreg.aggregate import weighted_average
from fedreg.components import Aggregator, Params, StateDict

# ---------------------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------------------


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def server_momentum_step(
    prev: StateDict, avg: StateDict, velocity: StateDict, server_lr: float, momentum: float
) -> tuple[StateDict, StateDict]:
    """FedAvgM: ``delta = prev - avg``; ``v <- momentum * v + delta``; ``new = prev - server_lr * v``.

    ``velocity`` may lack keys (zero then). Computed in float64; returns (new weights in the dtypes of
    ``prev``, new float64 velocity). Non-floating tensors of ``new`` are those of ``avg``. Inputs unchanged.
    """
    new: StateDict = {}
    vel: StateDict = {}
    for key, p in prev.items():
        if not p.is_floating_point():
            new[key] = avg[key].clone()
            continue
        p64 = _f64(p)
        delta = p64 - _f64(avg[key])
        v = delta if key not in velocity else momentum * _f64(velocity[key]) + delta
        vel[key] = v.clone()
        new[key] = (p64 - server_lr * v).to(p.dtype)
    return new, vel


def server_adam_step(
    prev: StateDict,
    avg: StateDict,
    m: StateDict,
    v: StateDict,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[StateDict, StateDict, StateDict]:
    """FedAdam (Reddi et al., Algorithm 2, no bias correction): ``d = avg - prev``;
    ``m <- beta1 m + (1 - beta1) d``; ``v <- beta2 v + (1 - beta2) d^2``;
    ``new = prev + server_lr * m / (sqrt(v) + tau)``.

    Missing keys start at ``m = 0`` and ``v = tau^2`` (the paper's ``v_{-1} >= tau^2``). Computed in float64;
    returns (new weights in the dtypes of ``prev``, new m, new v). Non-floating tensors of ``new`` are those
    of ``avg``. Inputs unchanged.
    """
    new: StateDict = {}
    m_out: StateDict = {}
    v_out: StateDict = {}
    for key, p in prev.items():
        if not p.is_floating_point():
            new[key] = avg[key].clone()
            continue
        p64 = _f64(p)
        d = _f64(avg[key]) - p64
        m_old = _f64(m[key]) if key in m else torch.zeros_like(d)
        v_old = _f64(v[key]) if key in v else torch.full_like(d, tau * tau)
        m_new = beta1 * m_old + (1 - beta1) * d
        v_new = beta2 * v_old + (1 - beta2) * d * d
        m_out[key], v_out[key] = m_new, v_new
        new[key] = (p64 + server_lr * m_new / (v_new.sqrt() + tau)).to(p.dtype)
    return new, m_out, v_out


# ---------------------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------------------


def _client_average(updates) -> StateDict:
    return weighted_average([u.state for u in updates], [u.num_samples for u in updates])


def _copy_tensors(d: Any, what: str) -> StateDict:
    if not isinstance(d, dict) or not all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in d.items()
    ):
        raise ValueError(f"{what} must be a dict of parameter name -> tensor")
    return {k: t.detach().clone() for k, t in d.items()}


class _ServerOptimizer(Aggregator):
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


class FedAvgMParams(Params):
    server_lr: float = Field(default=1.0, gt=0, description="server learning rate")
    momentum: float = Field(
        default=0.9, ge=0, lt=1, description="server momentum (0: FedAvg when server_lr is 1)"
    )


class FedAvgM(_ServerOptimizer):
    """FedAvg with server momentum on the pseudo-gradient (Hsu et al., 2019).

    Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
    Classification", arXiv:1909.06335, 2019. With ``delta = w_global - avg`` (avg weighted by sample
    counts): ``v <- momentum * v + delta``, ``w_global <- w_global - server_lr * v``.
    """

    name = "fedavgm"
    Params = FedAvgMParams
    slots = ("velocity",)

    def aggregate(self, round, global_state, updates, failures):
        new, self._state["velocity"] = server_momentum_step(
            global_state,
            _client_average(updates),
            self._state["velocity"],
            self.params.server_lr,
            self.params.momentum,
        )
        self.steps += 1
        return new


class FedAdamParams(Params):
    # Reddi et al. tune the server learning rate on a log10 grid; 1e-2 with tau = 1e-3 (beta1 0.9,
    # beta2 0.99) is their FedAdam setting for CIFAR-10 image classification, the closest of their tasks to
    # ours (the same values are in Flower's reproduction of the paper's CIFAR-10 experiment). Retune per task.
    server_lr: float = Field(default=1e-2, gt=0, description="server learning rate (eta)")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="first-moment decay")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="second-moment decay")
    tau: float = Field(default=1e-3, gt=0, description="adaptivity: added to sqrt(v); v starts at tau^2")


class FedAdam(_ServerOptimizer):
    """Adam on the server over the pseudo-gradient avg - w_global (Reddi et al., ICLR 2021).

    Reddi, Charles, Zaheer, Garrett, Rush, Konecny, Kumar, McMahan, "Adaptive Federated Optimization",
    ICLR 2021 (Algorithm 2, FedAdam). With ``d = avg - w_global`` (avg weighted by sample counts):
    ``m <- beta1 m + (1 - beta1) d``, ``v <- beta2 v + (1 - beta2) d^2``,
    ``w_global <- w_global + server_lr * m / (sqrt(v) + tau)``; no bias correction, as in the paper.
    """

    name = "fedadam"
    Params = FedAdamParams
    slots = ("m", "v")

    def aggregate(self, round, global_state, updates, failures):
        p = self.params
        new, self._state["m"], self._state["v"] = server_adam_step(
            global_state,
            _client_average(updates),
            self._state["m"],
            self._state["v"],
            p.server_lr,
            p.beta1,
            p.beta2,
            p.tau,
        )
        self.steps += 1
        return new
