"""Overhead of fedreg against a plain hand-written PyTorch loop doing the same work, in the same process.

Same clients (the run's sampling stream), same batches (the same per-client shuffling streams), same model
and optimizer, same evaluation (the global model on the test split and on every local test set in one pass;
each participant's model on its local test set). Goal (issue 7): fedreg's time / plain time <= 1.05.

    FEDREG_DATA_DIR=../shared/data/medmnist python -m pytest benchmarks -s
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedreg import seeding
from fedreg.registry import get_registry
from fedreg.runtime import DataCache, FederatedRun
from fedreg.spec import load_spec
from fedreg.testing import NullTracker

ROUNDS = 6  # rounds timed per repetition
REPEATS = 3  # after a warm-up, fedreg and plain alternate in order; the best of each counts
SPECS = {"fedavg": "specs/fedavg-bloodmnist.yaml", "fedkper": "specs/fedkper-bloodmnist.yaml"}


def plain_rounds(run: FederatedRun, first_round: int, state: dict, rounds: int) -> dict:
    """The same work as fedreg's rounds, written as one would by hand."""
    spec = run.spec
    model, teacher, evaluator = run.build_model(), run.build_model(), run.build_model()
    kd = run.objective.name == "adaptive_kd"
    rd = run.aggregator.name == "reliability_diversity"
    C = run.fed.dataset.num_classes
    o = spec.training.optimizer
    for r in range(first_round, first_round + rounds):
        rng = seeding.rng(spec.seed, seeding.SAMPLING, r - 1)
        chosen = sorted(int(c) for c in rng.choice(run.fed.num_clients, size=spec.federation.clients_per_round,
                                                   replace=False))
        lr = o.lr * spec.training.lr_schedule.gamma ** (r - 1)
        states, weights = [], []
        if kd:
            teacher.load_state_dict(state)
            teacher.eval()
        for cid in chosen:
            x, y, tx, ty = run.client_tensors[cid]
            model.load_state_dict(state)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
            g = seeding.torch_generator(spec.seed, seeding.CLIENT_SHUFFLE, r - 1, cid)
            for _ in range(spec.training.local_epochs):
                perm = torch.randperm(len(y), generator=g)
                for s in range(0, len(y), spec.training.batch_size):
                    idx = perm[s:s + spec.training.batch_size]
                    xb, yb = x[idx], y[idx]
                    opt.zero_grad(set_to_none=True)
                    z = model(xb)
                    loss = F.cross_entropy(z, yb)
                    if kd:
                        with torch.no_grad():
                            gl = teacher(xb)
                            beta = torch.clamp(1.0 / (F.cross_entropy(gl, yb) + 1e-8), max=10.0)
                        loss = loss + beta * F.kl_div(F.log_softmax(z, 1), F.log_softmax(gl, 1), reduction="batchmean",
                                                      log_target=True)
                    loss.backward()
                    opt.step()
            model.eval()
            eb = spec.evaluation.batch_size  # batches of 256: larger ones hit glibc's mmap threshold here
            with torch.inference_mode():
                if rd:
                    correct = sum(int((model(x[s:s + eb]).argmax(1) == y[s:s + eb]).sum())
                                  for s in range(0, len(y), eb))
                    acc = correct / len(y)
                    p = np.bincount(y.numpy(), minlength=C) / len(y)
                    p = p[p > 0]
                    weights.append(max(acc, 0.0) * (1e-6 + float(-(p * np.log(p)).sum() / math.log(C))))
                else:
                    weights.append(float(len(y)))
                for s in range(0, len(ty), eb):
                    model(tx[s:s + eb]).argmax(1)  # local accuracy of the participant's model
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        total = sum(weights)
        state = {k: sum(w / total * s[k] for w, s in zip(weights, states, strict=True)) for k in state}
        evaluator.load_state_dict(state)
        evaluator.eval()
        with torch.inference_mode():
            for s in range(0, len(run.eval_y), spec.evaluation.batch_size):
                evaluator(run.eval_x[s:s + spec.evaluation.batch_size]).argmax(1)
    return state


@pytest.mark.parametrize("method", sorted(SPECS))
def test_round_overhead_against_plain_loop(method, data_dir, benchmark):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    specs = load_spec(repo / SPECS[method], get_registry(), variants=["fedkper"] if method == "fedkper" else None)
    rs = specs[0]
    torch.set_flush_denormal(True)
    fed = DataCache().get(rs)
    run = FederatedRun(rs, fed, NullTracker(), "bench", progress=False)
    st = run.start()
    work, ev = run.build_model(), run.build_model()
    start_state = {k: v.clone() for k, v in st.global_state.items()}

    def fedreg_rounds():
        st.round, st.global_state = 0, {k: v.clone() for k, v in start_state.items()}
        for _ in range(ROUNDS):
            run.run_round(st, work, ev)

    def plain():
        plain_rounds(run, 1, {k: v.clone() for k, v in start_state.items()}, ROUNDS)

    # warm both up first (the first loop timed in a process is about 12% slower), then alternate the order
    st.global_state = {k: v.clone() for k, v in start_state.items()}
    run.run_round(st, work, ev)
    plain_rounds(run, 1, {k: v.clone() for k, v in start_state.items()}, 1)
    t_fed, t_plain = [], []
    for i in range(REPEATS):
        for name in (("fedreg", "plain") if i % 2 == 0 else ("plain", "fedreg")):
            t0 = time.perf_counter()
            fedreg_rounds() if name == "fedreg" else plain()
            (t_fed if name == "fedreg" else t_plain).append(time.perf_counter() - t0)
    benchmark.pedantic(fedreg_rounds, rounds=1, iterations=1)
    ratio = min(t_fed) / min(t_plain)
    benchmark.extra_info.update({"fedreg_s": min(t_fed), "plain_s": min(t_plain), "ratio": ratio,
                                 "rounds": ROUNDS, "threads": torch.get_num_threads()})
    print(f"\n{method}: fedreg {min(t_fed):.2f} s, plain {min(t_plain):.2f} s for {ROUNDS} rounds: ratio {ratio:.3f}")
    assert ratio <= 1.05, f"fedreg is {ratio:.3f}x the plain loop (goal <= 1.05)"
