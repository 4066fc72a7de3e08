"""Clients' SGD (fedreg.clients.sgd): torch's fused kernel where the parameters allow it, with the results of
torch's default per-tensor SGD bit for bit, so that runs logged before it are reproduced exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedreg.clients import sgd
from fedreg_standard.models import CNN


def train(make_opt, steps: int = 20, threads: int = 1) -> list[torch.Tensor]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = CNN(3, 8, 28, hidden=64, padding=2)
        g = torch.Generator().manual_seed(1)
        data = [
            (torch.randn(12, 3, 28, 28, generator=g), torch.randint(0, 8, (12,), generator=g))
            for _ in range(5)
        ]
        for rnd in range(2):  # a new optimizer per round, as clients make one, at a decayed rate
            opt = make_opt(model.parameters(), 0.05 * 0.99**rnd)
            for i in range(steps):
                x, y = data[i % len(data)]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
        return [p.detach().clone() for p in model.parameters()]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("momentum", "weight_decay", "nesterov"), [(0.9, 1e-5, False), (0.9, 1e-4, True), (0.0, 0.0, False)]
)
def test_fused_sgd_is_bit_identical_to_torchs_default_sgd(momentum, weight_decay, nesterov, threads):
    ours = train(lambda p, lr: sgd(p, lr, momentum, weight_decay, nesterov), threads=threads)
    reference = train(
        lambda p, lr: torch.optim.SGD(
            p, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, foreach=False
        ),
        threads=threads,
    )
    assert sgd(torch.nn.Linear(2, 2).parameters(), 0.1, momentum, weight_decay, nesterov).defaults["fused"]
    assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True))
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            ours, train(lambda p, lr: sgd(p, lr * 2, momentum, weight_decay, nesterov)), strict=True
        )
    )


def test_parameter_groups_and_tensors_without_a_fused_kernel():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    groups = sgd([{"params": [a]}, {"params": [b], "lr": 0.5}], 0.1, 0.9, 0.0, False)
    assert groups.defaults["fused"] and [g["lr"] for g in groups.param_groups] == [0.1, 0.5]
    double = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    assert sgd([double], 0.1, 0.9, 0.0, False).defaults["fused"]  # float64 has the kernel on the CPU
    elsewhere = torch.nn.Parameter(torch.ones(3, device="meta"))  # a device without one: the per-tensor SGD
    assert not sgd([a, elsewhere], 0.1, 0.9, 0.0, False).defaults["fused"]
