"""FedAvgM (Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", arXiv:1909.06335, 2019): server momentum on the pseudo-gradient; the step as a plain
function."""

from __future__ import annotations

from pydantic import Field

from fedreg.components import StateDict
from fedreg_baselines._server_optimizer import ServerOptimizer, client_average, f64
from fedreg_baselines.fedavg import WeightingParams


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
        p64 = f64(p)
        delta = p64 - f64(avg[key])
        v = delta if key not in velocity else momentum * f64(velocity[key]) + delta
        vel[key] = v.clone()
        new[key] = (p64 - server_lr * v).to(p.dtype)
    return new, vel


class FedAvgMParams(WeightingParams):
    server_lr: float = Field(default=1.0, gt=0, description="server learning rate")
    momentum: float = Field(
        default=0.9, ge=0, lt=1, description="server momentum (0: FedAvg when server_lr is 1)"
    )


class FedAvgM(ServerOptimizer):
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
            client_average(updates, self.params),
            self._state["velocity"],
            self.params.server_lr,
            self.params.momentum,
        )
        self.steps += 1
        return new
