"""FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): Adam on the server over the
pseudo-gradient; the step as a plain function."""

from __future__ import annotations

import torch
from pydantic import Field

from fedreg.components import Params, StateDict
from fedreg_baselines._server_optimizer import ServerOptimizer, client_average, f64


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
        p64 = f64(p)
        d = f64(avg[key]) - p64
        m_old = f64(m[key]) if key in m else torch.zeros_like(d)
        v_old = f64(v[key]) if key in v else torch.full_like(d, tau * tau)
        m_new = beta1 * m_old + (1 - beta1) * d
        v_new = beta2 * v_old + (1 - beta2) * d * d
        m_out[key], v_out[key] = m_new, v_new
        new[key] = (p64 + server_lr * m_new / (v_new.sqrt() + tau)).to(p.dtype)
    return new, m_out, v_out


class FedAdamParams(Params):
    # Reddi et al. tune the server learning rate on a log10 grid; 1e-2 with tau = 1e-3 (beta1 0.9,
    # beta2 0.99) is their FedAdam setting for CIFAR-10 image classification, the closest of their tasks to
    # ours (the same values are in Flower's reproduction of the paper's CIFAR-10 experiment). Retune per task.
    server_lr: float = Field(default=1e-2, gt=0, description="server learning rate (eta)")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="first-moment decay")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="second-moment decay")
    tau: float = Field(default=1e-3, gt=0, description="adaptivity: added to sqrt(v); v starts at tau^2")


class FedAdam(ServerOptimizer):
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
            client_average(updates),
            self._state["m"],
            self._state["v"],
            p.server_lr,
            p.beta1,
            p.beta2,
            p.tau,
        )
        self.steps += 1
        return new
