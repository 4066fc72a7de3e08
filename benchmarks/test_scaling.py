"""How round time grows with clients per round and with the total number of clients, against the plain loop
doing the same work in the same process.

Reference settings (FedAvg spec: Dirichlet 0.1, batch 12, SGD 0.01/0.9/1e-5) with 1 local epoch instead of 5,
so that 20 clients per round stays affordable; the ratio fedreg / plain is what matters. The issue sets no
goal here (the <= 1.05 goal is at the reference settings, test_overhead.py); the figures are recorded in
benchmarks/README.md. The plain loop computes no metrics, so with many clients the metrics' per-client work
(every client's accuracy under the global model, per-client rows) shows in the ratio.

    FEDREG_DATA_DIR=../shared/data/medmnist python -m pytest benchmarks/test_scaling.py -s
"""

from __future__ import annotations

import pytest
from common import FEDAVG, fedreg_and_plain, make_run

ROUNDS = 3
REPEATS = 3


def measure(benchmark, overrides: list[str], label: str) -> None:
    run = make_run(FEDAVG, ["training.local_epochs=1", *overrides])
    best = fedreg_and_plain(run, ROUNDS, REPEATS, benchmark)
    ratio = best["fedreg"] / best["plain"]
    per_round = best["fedreg"] / ROUNDS
    benchmark.extra_info.update(
        {"fedreg_round_s": per_round, "plain_round_s": best["plain"] / ROUNDS, "ratio": ratio}
    )
    print(
        f"\n{label}: fedreg {per_round:.2f} s/round, "
        f"plain {best['plain'] / ROUNDS:.2f} s/round, ratio {ratio:.3f}"
    )
    return ratio


@pytest.mark.parametrize("per_round", [2, 5, 10, 20])
def test_round_time_against_clients_per_round(per_round, data_dir, benchmark):
    measure(benchmark, [f"federation.clients_per_round={per_round}"], f"{per_round}/20 clients per round")


@pytest.mark.parametrize("clients", [20, 100, 500])
def test_round_time_against_total_clients(clients, data_dir, benchmark):
    # Dirichlet 0.1 cannot give 100 or 500 clients of BloodMNIST a few samples each (the partition's redraws
    # fail), so this series uses alpha 0.5 with at least 2 samples per client
    measure(
        benchmark,
        [
            f"data.num_clients={clients}",
            "federation.clients_per_round=10",
            "data.partition.params.alpha=0.5",
            "data.partition.params.min_samples=2",
        ],
        f"{clients} clients, 10 per round",
    )
