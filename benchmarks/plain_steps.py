"""A plain PyTorch training loop in a process of its own: the reference model of the sweep benchmark
(``specs/fedavg-bloodmnist.yaml``'s model, built by its plugin) at the spec's batch size and optimizer, on
fixed random 28x28x3 batches. Prints the mean seconds per step.

    python benchmarks/plain_steps.py THREADS STEPS [BARRIER_DIR COUNT]

With a barrier folder, it warms up, marks itself ready there and starts timing once COUNT processes are
ready, so that processes started together time the same stretch.

``test_sweep.py`` starts it alone at one thread, alone at two threads and as two processes at once (one
thread each): what this machine's cores give two one-thread workers against one two-thread process, with no
fedreg code in the loop.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

WARMUP = 30


def main(threads: int, steps: int, barrier: str | None = None, count: int = 1) -> float:
    from common import FEDAVG, REPO

    from fedreg.registry import get_registry
    from fedreg.spec import load_spec

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    rs = load_spec(REPO / FEDAVG, get_registry())[0]
    tr = rs.spec.training
    torch.manual_seed(0)
    model = rs.components["model"].instantiate().build(3, 8, 28)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=tr.optimizer.lr,
        momentum=tr.optimizer.momentum,
        weight_decay=tr.optimizer.weight_decay,
        fused=True,
    )
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(tr.batch_size, 3, 28, 28, generator=g),
            torch.randint(0, 8, (tr.batch_size,), generator=g),
        )
        for _ in range(16)
    ]

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for i in range(WARMUP):
        step(i)
    if barrier:
        (Path(barrier) / str(os.getpid())).touch()
        while len(list(Path(barrier).iterdir())) < count:
            time.sleep(0.001)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return (time.perf_counter() - t0) / steps


if __name__ == "__main__":
    a = sys.argv[1:]
    print(f"{main(int(a[0]), int(a[1]), a[2] if len(a) > 2 else None, int(a[3]) if len(a) > 3 else 1):.6f}")
