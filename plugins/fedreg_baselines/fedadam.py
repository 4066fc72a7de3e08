"""FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021): Adam on the server over the
pseudo-gradient; the step as a plain function."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fedreg.components import StateDict
from fedreg_baselines._server_optimizer import ServerOptimizer, client_average, f64
from fedreg_baselines.fedavg import WeightingParams


def server_adam_step(
    prev: StateDict,
    avg: StateDict,
    m: StateDict,
    v: StateDict,
    server_lr: float,
    beta1: float,
    beta2: float,
    tau: float,
    step: int | None = None,
    v0: float = 0.0,
) -> tuple[StateDict, StateDict, StateDict]:
    """One server Adam step on the pseudo-gradient ``d = avg - prev``: ``m <- beta1 m + (1 - beta1) d``;
    ``v <- beta2 v + (1 - beta2) d^2``; ``new = prev + eta * m / (sqrt(v) + tau)``, where
    ``eta = server_lr * sqrt(1 - beta2^step) / (1 - beta1^step)`` (Keras Adam's bias correction, as the
    authors' TFF code runs) or ``eta = server_lr`` when ``step`` is None (the paper's Algorithm 2).

    Missing keys start at ``m = 0`` and ``v = v0`` (Keras: 0; the paper's ``v_{-1} >= tau^2``). Computed in
    float64; returns (new weights in the dtypes of ``prev``, new m, new v). Non-floating tensors of ``new``
    are those of ``avg``. Inputs unchanged.
    """
    eta = server_lr
    if step is not None:
        eta = server_lr * (1 - beta2**step) ** 0.5 / (1 - beta1**step)
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
        v_old = f64(v[key]) if key in v else torch.full_like(d, v0)
        m_new = beta1 * m_old + (1 - beta1) * d
        v_new = beta2 * v_old + (1 - beta2) * d * d
        m_out[key], v_out[key] = m_new, v_new
        new[key] = (p64 + eta * m_new / (v_new.sqrt() + tau)).to(p.dtype)
    return new, m_out, v_out


class FedAdamParams(WeightingParams):
    # The authors' code (google-research/federated optimization/, utils/optimizers/optimizer_utils.py)
    # builds Keras Adam from flags: --server_adam_beta_1 0.9, --server_adam_beta_2 0.999, bias correction,
    # m and v from 0; --server_learning_rate has no default (tuned per task), and
    # optimization/docs/hyperparameters.md recommends starting epsilon (tau) at 1e-3. server_lr 1e-2 is
    # fedreg's choice inside the paper's grid; retune per task. Clients are weighted by their examples.
    server_lr: float = Field(default=1e-2, gt=0, description="server learning rate (eta)")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="first-moment decay")
    beta2: float = Field(default=0.999, ge=0, lt=1, description="second-moment decay")
    tau: float = Field(default=1e-3, gt=0, description="adaptivity (Keras' epsilon): added to sqrt(v)")
    bias_correction: bool = Field(
        default=True,
        description="Adam's bias correction of the step (Keras, the authors' code); false: the paper's "
        "Algorithm 2, without it",
    )
    # TFF builds the server optimizer's variables by applying one zero update, so Keras' step counter is
    # 2 at the first real round (Flower's FedAdam uses round + 1 as well).
    step_offset: int = Field(
        default=1,
        ge=0,
        description="added to the round count in the bias correction: 1 as the authors' TFF code (its "
        "optimizer takes a zero step when it is built), 0 for textbook Adam",
    )
    initial_v: Literal["zero", "tau_squared"] = Field(
        default="zero",
        description="v's starting value: 0 (Keras Adam, the authors' code) or tau^2 (the paper's "
        "Algorithm 2)",
    )


class FedAdam(ServerOptimizer):
    """Adam on the server over the pseudo-gradient avg - w_global (Reddi et al., ICLR 2021), as the
    authors' TFF code runs it.

    Reddi, Charles, Zaheer, Garrett, Rush, Konecny, Kumar, McMahan, "Adaptive Federated Optimization",
    ICLR 2021. With ``d = avg - w_global`` (avg weighted by sample counts): ``m <- beta1 m + (1 - beta1) d``,
    ``v <- beta2 v + (1 - beta2) d^2``, ``w_global <- w_global + eta_t * m / (sqrt(v) + tau)`` with Keras'
    bias-corrected ``eta_t`` (``bias_correction: false``, ``initial_v: tau_squared`` and ``beta2: 0.99``
    give the paper's Algorithm 2).
    """

    name = "fedadam"
    Params = FedAdamParams
    slots = ("m", "v")

    def aggregate(self, round, global_state, updates, failures):
        p = self.params
        self.steps += 1
        new, self._state["m"], self._state["v"] = server_adam_step(
            global_state,
            client_average(updates, p),
            self._state["m"],
            self._state["v"],
            p.server_lr,
            p.beta1,
            p.beta2,
            p.tau,
            step=self.steps + p.step_offset if p.bias_correction else None,
            v0=0.0 if p.initial_v == "zero" else p.tau * p.tau,
        )
        return new
