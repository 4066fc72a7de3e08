"""Share of a round spent evaluating, at the reference settings: the global model on the test split and on
every local test set (one batched pass), each participant's model on its local test set, and the metrics
computed from those predictions. Goal (issue 7): <= 25% of a round.

    FEDREG_DATA_DIR=../shared/data/medmnist python -m pytest benchmarks/test_eval_share.py -s
"""

from __future__ import annotations

import time

import pytest
from common import FEDAVG, FEDKPER, Rounds, make_run

import fedreg.clients

ROUNDS = 8


class Clock:
    """Wraps callables and adds up the time spent inside them."""

    def __init__(self):
        self.total = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - t0

        return timed


@pytest.mark.parametrize("method", ["fedavg", "fedkper"])
def test_evaluation_share_of_a_round(method, data_dir, benchmark, monkeypatch):
    run = make_run(
        FEDAVG if method == "fedavg" else FEDKPER, variant="fedkper" if method == "fedkper" else None
    )
    rounds = Rounds(run, ROUNDS)
    rounds(1)  # warm-up
    clock = Clock()
    monkeypatch.setattr(
        run, "evaluate", clock.wrap(run.evaluate)
    )  # global model: test split + local test sets
    monkeypatch.setattr(fedreg.clients, "predict", clock.wrap(fedreg.clients.predict))  # participants
    for m in run.metrics:
        monkeypatch.setattr(m, "update", clock.wrap(m.update))
    t0 = time.perf_counter()
    rounds()
    total = time.perf_counter() - t0
    share = clock.total / total
    benchmark.extra_info.update({"eval_s": clock.total, "round_s": total / ROUNDS, "share": share})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(
        f"\n{method}: {total / ROUNDS:.2f} s/round, "
        f"evaluation {clock.total / ROUNDS:.2f} s/round = {share:.1%}"
    )
    assert share <= 0.25
