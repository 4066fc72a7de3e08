"""The report's CSV files: summary.csv (per method and metric: mean, std, n over seeds; the matched budget),
runs.csv (per run and metric), clients.csv (per run and client: the value at its last participation) and,
when the paper's claims are judged, claims.csv (per paired comparison)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedreg_report.claims import Claim
from fedreg_report.metrics import CLAIMS_FILE, EXTRA_KEYS, REPORT_FILES, TABLE
from fedreg_report.runs import Collection
from fedreg_report.stats import Stat
from fedreg_report.summary import WALL, BudgetRow, Clock, MethodSummary, group, run_values, worst_of


def _write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_tables(
    out: Path,
    col: Collection,
    summaries: list[MethodSummary],
    budget: float,
    budget_rows: list[BudgetRow],
    claims: Sequence[Claim] = (),
    clock: Clock = WALL,
) -> list[str]:
    """summary.csv (tidy: method, metric, mean, std, n; the matched budget's rows on ``clock``), runs.csv
    (one row per run and metric), clients.csv (one row per run and client) and, with claims, claims.csv (one
    row per paired comparison). Returns the names of the files written."""

    def num(v):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))

    keys = list(dict.fromkeys([k for _, k, _, _ in TABLE] + list(EXTRA_KEYS)))
    by_method = group(col.finished, col.methods)
    rows = []
    for s in summaries:
        run_vals = [run_values(rd) for rd in by_method.get(s.method, [])]
        for k in keys:
            st = s.stats[k] if k in s.stats else Stat.of(v.get(k) for v in run_vals)
            if k in s.stats or st.n:
                rows.append([s.method, k, num(st.mean), num(st.std), st.n, ""])
    for b in budget_rows:
        for k, st in (
            (f"{clock.total.removesuffix('_s')}_total_s", b.total_time),
            ("rounds_by_T", b.rounds),
            ("global_acc_at_T", b.at_budget),
            ("last10_global_acc_at_T", b.last10_at_budget),
        ):
            rows.append([b.method, k, num(st.mean), num(st.std), st.n, num(budget)])
    _write_rows(out / "summary.csv", ["method", "metric", "mean", "std", "n", "budget_T_s"], rows)
    table_keys = {k for _, k, _, _ in TABLE}
    rrows = []
    for rd in col.finished:
        head = [rd.method, "" if rd.seed is None else rd.seed, rd.run_id, rd.parent_id or ""]
        vals = run_values(rd)
        for k in keys:
            if k in table_keys or (vals.get(k) is not None and math.isfinite(vals[k])):
                rrows.append(head + [k, num(vals.get(k))])
        w = worst_of(rd)
        if w is not None:
            for k, v in (
                ("worst_client_id", w.client),
                ("worst_client_round", w.round),
                ("worst_client_local_test_size", w.local_test),
                ("clients_covered", w.covered),
                ("num_clients", w.num_clients),
            ):
                rrows.append(head + [k, "" if v is None else v])
    _write_rows(out / "runs.csv", ["method", "seed", "run_id", "parent_run_id", "metric", "value"], rrows)
    crows = [
        [
            rd.method,
            "" if rd.seed is None else rd.seed,
            rd.run_id,
            c,
            r,
            rd.client_metric,
            repr(v),
            rd.local_test_sizes.get(c, ""),
        ]
        for rd in col.finished
        for c, (r, v) in sorted(rd.clients.items())
    ]
    _write_rows(
        out / "clients.csv",
        ["method", "seed", "run_id", "client", "last_round", "metric", "value", "local_test_size"],
        crows,
    )
    written = list(REPORT_FILES[2:])
    if claims:
        crow = []
        for c in claims:
            for x in c.comparisons:
                iv = x.interval
                crow.append(
                    [
                        c.title,
                        x.figure,
                        x.a,
                        x.b,
                        x.why,
                        x.unit,
                        "; ".join(f"{s}:{d!r}" for s, d in x.diffs.items()),
                        iv.n,
                        num(iv.mean),
                        num(iv.lo),
                        num(iv.hi),
                        x.status,
                        x.verdict,
                    ]
                )
        _write_rows(
            out / CLAIMS_FILE,
            [
                "claim",
                "figure",
                "method",
                "compared_with",
                "chosen_as",
                "unit",
                "per_seed_difference",
                "n",
                "mean",
                "ci95_low",
                "ci95_high",
                "status",
                "verdict",
            ],
            crow,
        )
        written.append(CLAIMS_FILE)
    return written
