"""Per-round metrics of every registered method preset on a tiny in-memory federation, to show that a
refactoring leaves every method's numbers unchanged.

    python scripts/method_metrics.py --out before.json          # on the old code
    python scripts/method_metrics.py --compare before.json      # on the new code: exit 1 on any difference

Each preset runs `fedreg.testing.tiny_federation` (synthetic data, 4 clients, 3 rounds, one thread) with
every metric of the first-party metrics plugin; timing keys are left out. Presets whose objective has a
functional loss run on the vectorized backend too. Three clients take part in each
round (Krum: 5 of 6, as it needs 2f + 3)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from fedreg.outputs import TIMING_KEYS
from fedreg.registry import build_registry
from fedreg.testing import tiny_federation

# presets whose objective the vectorized backend trains: run on both backends
VECTORIZED = ["fedavg", "fedprox", "fedkper"]
METRICS = ["global_accuracy", "local_accuracy", "global_on_local", "flips", "bwt"]


def run_all() -> dict[str, list[dict[str, float]]]:
    torch.set_num_threads(1)
    out = {}
    for name in build_registry().names("method"):
        over = {
            "method": name,
            "training.objective": None,
            "federation.aggregation": None,
            "metrics": METRICS,
            "federation.clients_per_round": 3,
        }
        if name == "krum":  # Krum needs 2f + 3 clients per round
            over.update({"data.num_clients": 6, "federation.clients_per_round": 5})
        if name == "fedrep":
            over["method"] = {"name": "fedrep", "params": {"head_epochs": 1}}
        res = tiny_federation(over)
        out[name] = [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in res.history]
        if name in VECTORIZED:  # the same preset on the vectorized backend
            res = tiny_federation({**over, "execution.backend": "vectorized"})
            out[f"{name}[vectorized]"] = [
                {k: v for k, v in row.items() if k not in TIMING_KEYS} for row in res.history
            ]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the metrics as JSON")
    ap.add_argument("--compare", help="compare with a JSON written by --out; exit 1 on any difference")
    args = ap.parse_args()
    now = run_all()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(now, f, indent=1, sort_keys=True)
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        bad = [
            m for m in sorted(set(before) | set(now)) if before.get(m) != json.loads(json.dumps(now.get(m)))
        ]
        rounds = sum(len(v) for v in now.values())
        print(
            f"{len(now)} methods, {rounds} rounds: "
            + ("identical" if not bad else f"differ: {', '.join(bad)}")
        )
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
