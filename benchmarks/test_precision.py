"""bf16 autocast (`training.precision: bf16`) against fp32: speed of a round's training and of evaluation,
and the accuracy difference after a whole run, both precisions in the same process.

The run is the FedAvg reference spec shortened to 30 rounds (the 200-round comparison is recorded in
benchmarks/README.md with its command).

    FEDREG_DATA_DIR=../shared/data/medmnist python -m pytest benchmarks/test_precision.py -s
"""

from __future__ import annotations

import time

import torch
from common import FEDAVG, alternate, make_run

from fedreg.evaluation import predict

ROUNDS = 30


def test_bf16_speed_and_accuracy(data_dir, benchmark):
    runs = {
        p: make_run(FEDAVG, [f"training.precision={p}", f"federation.rounds={ROUNDS}"])
        for p in ("fp32", "bf16")
    }
    # evaluation alone: the global model on the test split and every local test set
    ev = {}
    for p, run in runs.items():
        model = run.runner.new_model()
        model.load_state_dict(run.bench_start.global_state)

        def evaluate(run=run, model=model):
            with run.config.autocast():
                predict(model, run.eval_x, run.eval_y, run.spec.evaluation.batch_size)

        ev[p] = evaluate
    t_eval = alternate(ev, 3)
    # whole runs (training, evaluation, aggregation, metrics)
    t_run, results = {}, {}
    for p, run in runs.items():
        t0 = time.perf_counter()
        results[p] = run.run()
        t_run[p] = time.perf_counter() - t0
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    info = {
        "eval_speedup": t_eval["fp32"] / t_eval["bf16"],
        "run_speedup": t_run["fp32"] / t_run["bf16"],
        "threads": torch.get_num_threads(),
    }
    for key in ("final_global_acc", "last10_global_acc", "last10_local_acc_mean"):
        for p in runs:
            info[f"{p}_{key}"] = results[p].final.get(key)
        if results["fp32"].final.get(key) is not None:
            info[f"diff_{key}"] = results["bf16"].final[key] - results["fp32"].final[key]
    benchmark.extra_info.update(info)
    print("\n" + "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in info.items()))
    assert info["run_speedup"] > 1.0
