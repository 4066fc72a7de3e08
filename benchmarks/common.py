"""Shared pieces of the benchmarks: building a run from a spec, the plain hand-written loop that fedreg is
measured against, and alternating timing.

Every benchmark reports a ratio measured in the same process and the same run: absolute times move by 10
to 20% between runs on a shared machine, the ratio does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedreg import seeding
from fedreg.backends import backend_class
from fedreg.data import DataCache
from fedreg.registry import get_registry
from fedreg.rounds import FederatedRun, RunState
from fedreg.spec import load_spec
from fedreg.testing import NullTracker

REPO = Path(__file__).resolve().parents[1]
FEDAVG = "specs/fedavg-bloodmnist.yaml"
FEDKPER = "specs/fedkper-bloodmnist.yaml"
_CACHE = DataCache()


def make_run(spec: str, overrides: list[str] | None = None, variant: str | None = None) -> FederatedRun:
    """A started FederatedRun of ``spec`` (path relative to the repository) with ``--set`` overrides."""
    rs = load_spec(REPO / spec, get_registry(), overrides, variants=[variant] if variant else None)[0]
    torch.set_flush_denormal(True)
    run = FederatedRun(rs, _CACHE.get(rs), NullTracker(), "bench", progress=False)
    run.bench_start = run.start()
    return run


class Rounds:
    """Runs fedreg rounds of ``run`` from the same starting weights each time it is called."""

    def __init__(self, run: FederatedRun, rounds: int, backend: str | None = None):
        self.run, self.rounds = run, rounds
        ex = (
            run.spec.execution
            if backend is None
            else run.spec.execution.model_copy(update={"backend": backend})
        )
        self.backend = backend_class(ex.backend)(ex, run.runner, run.spec.federation.clients_per_round)
        self.backend.start()
        self.eval_model = run.runner.new_model()
        self.start = {k: v.clone() for k, v in run.bench_start.global_state.items()}

    def __call__(self, rounds: int | None = None) -> RunState:
        st = RunState(round=0, global_state={k: v.clone() for k, v in self.start.items()})
        for _ in range(rounds or self.rounds):
            self.run.run_round(st, self.backend, self.eval_model)
        return st

    def close(self):
        self.backend.close()


def plain_rounds(run: FederatedRun, state: dict, rounds: int, tensors: list | None = None) -> dict:
    """The same work as fedreg's rounds (FedAvg or FedKPer), written as one would by hand: the same clients,
    batches, model, optimizer and evaluation; client tensors gathered once up front."""
    spec = run.spec
    build = run.build_model
    model, teacher, evaluator = build(), build(), build()
    kd = run.objective.name == "adaptive_kd"
    rd = run.aggregator.name == "reliability_diversity"
    C = run.fed.dataset.num_classes
    o = spec.training.optimizer
    tensors = tensors or [run.fed.client_tensors(c) for c in range(run.fed.num_clients)]
    for r in range(1, rounds + 1):
        rng = seeding.rng(spec.seed, seeding.SAMPLING, r - 1)
        chosen = sorted(
            int(c)
            for c in rng.choice(run.fed.num_clients, size=spec.federation.clients_per_round, replace=False)
        )
        lr = o.lr * spec.training.lr_schedule.gamma ** (r - 1)
        states, weights = [], []
        if kd:
            teacher.load_state_dict(state)
            teacher.eval()
        for cid in chosen:
            x, y, tx, ty = tensors[cid]
            model.load_state_dict(state)
            model.train()
            opt = torch.optim.SGD(
                model.parameters(), lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, fused=True
            )
            g = seeding.torch_generator(spec.seed, seeding.CLIENT_SHUFFLE, r - 1, cid)
            for _ in range(spec.training.local_epochs):
                perm = torch.randperm(len(y), generator=g)
                for s in range(0, len(y), spec.training.batch_size):
                    idx = perm[s : s + spec.training.batch_size]
                    xb, yb = x[idx], y[idx]
                    opt.zero_grad(set_to_none=True)
                    z = model(xb)
                    loss = F.cross_entropy(z, yb)
                    if kd:
                        with torch.no_grad():
                            gl = teacher(xb)
                            beta = torch.clamp(1.0 / (F.cross_entropy(gl, yb) + 1e-8), max=10.0)
                        loss = loss + beta * F.kl_div(
                            F.log_softmax(z, 1), F.log_softmax(gl, 1), reduction="batchmean", log_target=True
                        )
                    loss.backward()
                    opt.step()
            model.eval()
            eb = spec.evaluation.batch_size  # batches of 256: larger ones hit glibc's mmap threshold here
            with torch.inference_mode():
                if rd:
                    correct = sum(
                        int((model(x[s : s + eb]).argmax(1) == y[s : s + eb]).sum())
                        for s in range(0, len(y), eb)
                    )
                    acc = correct / len(y)
                    p = np.bincount(y.numpy(), minlength=C) / len(y)
                    p = p[p > 0]
                    weights.append(max(acc, 0.0) * (1e-6 + float(-(p * np.log(p)).sum() / math.log(C))))
                else:
                    weights.append(float(len(y)))
                for s in range(0, len(ty), eb):
                    model(tx[s : s + eb]).argmax(1)  # local accuracy of the participant's model
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        total = sum(weights)
        state = {k: sum(w / total * s[k] for w, s in zip(weights, states, strict=True)) for k in state}
        evaluator.load_state_dict(state)
        evaluator.eval()
        with torch.inference_mode():
            for s in range(0, len(run.eval_y), spec.evaluation.batch_size):
                evaluator(run.eval_x[s : s + spec.evaluation.batch_size]).argmax(1)
    return state


def alternate(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best time of each function over ``repeats`` repetitions, after one warm-up call each (the first loop
    timed in a process runs about 12% slower); the order rotates each repetition."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(repeats):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def fedreg_and_plain(run: FederatedRun, rounds: int, repeats: int, benchmark) -> dict[str, float]:
    """Best times of ``rounds`` fedreg rounds and of the plain loop doing the same work (alternating, after a
    warm-up); pytest-benchmark records one more call of the fedreg rounds."""
    fedreg_rounds = Rounds(run, rounds)
    tensors = [run.fed.client_tensors(c) for c in range(run.fed.num_clients)]
    start = fedreg_rounds.start
    best = alternate(
        {
            "fedreg": fedreg_rounds,
            "plain": lambda: plain_rounds(run, {k: v.clone() for k, v in start.items()}, rounds, tensors),
        },
        repeats,
    )
    benchmark.pedantic(fedreg_rounds, rounds=1, iterations=1)
    return best
