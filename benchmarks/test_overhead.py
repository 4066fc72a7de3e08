"""Overhead of fedreg against a plain hand-written PyTorch loop doing the same work, in the same process.

Same clients (the run's sampling stream), same batches (the same per-client shuffling streams), same model
and optimizer, same evaluation (the global model on the test split and on every local test set in one pass;
each participant's model on its local test set). Goal (issue 7): fedreg's time / plain time <= 1.05.

    FEDREG_DATA_DIR=../shared/data/medmnist python -m pytest benchmarks/test_overhead.py -s
"""

from __future__ import annotations

import pytest
import torch
from common import FEDAVG, FEDKPER, fedreg_and_plain, make_run

ROUNDS = 6  # rounds timed per repetition
REPEATS = 3


@pytest.mark.parametrize("method", ["fedavg", "fedkper"])
def test_round_overhead_against_plain_loop(method, data_dir, benchmark):
    run = make_run(
        FEDAVG if method == "fedavg" else FEDKPER, variant="fedkper" if method == "fedkper" else None
    )
    best = fedreg_and_plain(run, ROUNDS, REPEATS, benchmark)
    ratio = best["fedreg"] / best["plain"]
    benchmark.extra_info.update(
        {
            "fedreg_s": best["fedreg"],
            "plain_s": best["plain"],
            "ratio": ratio,
            "rounds": ROUNDS,
            "threads": torch.get_num_threads(),
        }
    )
    print(
        f"\n{method}: fedreg {best['fedreg']:.2f} s, plain {best['plain']:.2f} s for {ROUNDS} rounds: "
        f"ratio {ratio:.3f}"
    )
    assert ratio <= 1.05, f"fedreg is {ratio:.3f}x the plain loop (goal <= 1.05)"
