"""The report's sections built on tables, as blocks (see :mod:`fedreg_report.render`): the Results table,
the worst client, forgetting over two windows, the paper's claims, and accuracy against wall-clock time
with the matched budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedreg_report.claims import Claim
from fedreg_report.metrics import FORGETTING, OPTIONAL_KEYS, SMALL_LOCAL_TEST, TABLE, WINDOW
from fedreg_report.render import Block
from fedreg_report.runs import RunData
from fedreg_report.stats import Stat, WorstClient, all_label, rounds_text, window_label
from fedreg_report.summary import WALL, BudgetRow, Clock, MethodSummary, round_counts, run_values, worst_of


def seeds_text(seeds: Sequence[int | None]) -> str:
    """'3 (1, 2, 3)': the number of seeds and the seeds."""
    return f"{len(seeds)} ({', '.join('?' if s is None else str(s) for s in seeds)})"


def _seed_name(s: Any) -> str:
    """A seed as shown: '?' for a run without one."""
    return "?" if s is None else str(s)


def _worst_text(w: WorstClient | None, seed: Any) -> str:
    """'seed 1: client 7, 62.5% on 8 local test samples (few), round 196'."""
    if w is None:
        return f"seed {_seed_name(seed)}: -"
    size = (
        "local test size ?"
        if w.local_test is None
        else (f"{w.local_test} local test samples" + (" (few)" if w.few else ""))
    )
    return f"seed {_seed_name(seed)}: client {w.client}, {w.value * 100:.1f}% on {size}, round {w.round}"


def shown_table(runs: Sequence[RunData]) -> list[tuple[str, str, float, int]]:
    """The TABLE columns of this report: an optional column only where some run logged it."""
    return [c for c in TABLE if c[1] not in OPTIONAL_KEYS or any(c[1] in rd.summary for rd in runs)]


def results_headers(runs: Sequence[RunData]) -> list[str]:
    """The Results table's metric headers; a 'last-10 mean' header says what it is when runs are shorter."""
    out = []
    for h, k, _, _ in shown_table(runs):
        if k.startswith(f"last{WINDOW}_"):
            label = window_label(round_counts(runs, k[len(f"last{WINDOW}_") :]))
            if label != f"last {rounds_text(WINDOW)}":
                h = h.replace(f" (last-{WINDOW} mean)", f", mean of the {label}")
        out.append(h if k in ("wall_time_s", "cpu_time_s") else f"{h} %")
    return out


def results_blocks(runs: Sequence[RunData], summaries: list[MethodSummary]) -> list[Block]:
    """The main table: per method, mean ± std over seeds of the TABLE columns."""
    headers = ["method", "seeds (n)"] + results_headers(runs)
    rows = []
    for s in summaries:
        n = len(s.seeds)
        rows.append(
            [s.method, seeds_text(s.seeds)]
            + [s.stats[k].fmt(scale, dec, n) for _, k, scale, dec in shown_table(runs)]
        )
    return [
        ("h", 2, "Results"),
        ("table", headers, rows),
        (
            "p",
            "Each cell: mean ± sample standard deviation (n - 1) over seeds; n is in the seeds column "
            "(a cell that has fewer values says so), and with one seed the cell is that seed's value. "
            "Accuracies, NFR, BwT and consistency in percent; wall and CPU time in seconds (CPU: the "
            "run's process, all its threads). Worst-client local accuracy: the minimum over all clients "
            "of each client's local accuracy at its last participation (see the worst-client section).",
        ),
    ]


def worst_client_blocks(by_method: dict[str, list[RunData]]) -> list[Block]:
    """Per method: the worst client at its last participation, per seed with its id and local test size."""
    B: list[Block] = [("h", 2, "Worst-client local accuracy")]
    B.append(
        (
            "p",
            "Per run (one method, one seed): each client's local accuracy at its last participation (its "
            "trained model, or personal model where the method has one, on its own local test set, in the "
            "last evaluated round in which it trained), then the minimum over every client that "
            "participated. Per method: mean ± sample std over seeds, and for each seed the worst client, "
            "its value, the size of its local test set (from the run's partition/stats.json) and the round. "
            f"'(few)': the local test holds fewer than {SMALL_LOCAL_TEST} samples, so one sample moves the "
            "value by 5 points or more and the minimum over clients favours such clients. Covered: clients "
            "that participated at least once, of all clients. The last column is a different, per-round "
            f"figure: the worse of each round's sampled clients, averaged over the last {WINDOW} rounds; it "
            "is not the worst client.",
        )
    )
    rows, few, total = [], 0, 0
    for m, rs in by_method.items():
        ws = [worst_of(rd) for rd in rs]
        few += sum(1 for w in ws if w and w.few)
        total += sum(1 for w in ws if w)
        n = len(rs)
        covered = ", ".join(
            f"{w.covered}/{w.num_clients if w.num_clients else '?'}" if w else "-" for w in ws
        )
        part = Stat.of(rd.summary.get(f"last{WINDOW}_local_acc_worst") for rd in rs)
        rows.append(
            [
                m,
                seeds_text([rd.seed for rd in rs]),
                Stat.of(w.value if w else None for w in ws).fmt(100, 1, n),
                "; ".join(_worst_text(w, rd.seed) for w, rd in zip(ws, rs, strict=True)),
                covered,
                part.fmt(100, 1, n),
            ]
        )
    B.append(
        (
            "table",
            [
                "method",
                "seeds (n)",
                "worst-client local acc %",
                "worst client per seed",
                "clients covered (per seed)",
                f"worst participant of the round, last-{WINDOW} mean %",
            ],
            rows,
        )
    )
    if few:
        B.append(
            (
                "p",
                f"Note: in {few} of {total} runs the worst client's local test holds fewer than "
                f"{SMALL_LOCAL_TEST} samples (marked 'few'): its value is coarse, "
                "and the worst-client figure of those runs is decided by a handful of test images.",
            )
        )
    return B


def forgetting_blocks(by_method: dict[str, list[RunData]]) -> list[Block]:
    """Each forgetting metric a run logged, over all rounds and over the last WINDOW; none if none did."""
    runs = [rd for rs in by_method.values() for rd in rs]
    keys = [(k, t, hb) for k, t, hb in FORGETTING if any(rd.curves.get(k) for rd in runs)]
    if not keys:
        return []
    B: list[Block] = [("h", 2, "Forgetting")]
    B.append(
        (
            "p",
            "Each forgetting metric over two windows, per run, then mean ± sample std over seeds: the mean "
            f"over all rounds with a value and the mean over the last {WINDOW} of them (a run with fewer "
            "has all of its rounds in both; the headers say how many). NFR, PFR and consistency compare "
            "with the previous evaluation, so they start at the second one; BwT starts once a client has "
            "been sampled before; local NFR, PFR and consistency average the round's participants that were "
            "evaluated before. NFR: lower is better; PFR, consistency, BwT: higher is better. In percent "
            "(BwT in points).",
        )
    )
    for win, title in (
        ("all", "Mean over all rounds"),
        (f"last{WINDOW}", f"Mean over the last {WINDOW} rounds"),
    ):
        heads = []
        for k, t, _ in keys:
            counts = round_counts(runs, k)
            heads.append(f"{t}, {all_label(counts) if win == 'all' else window_label(counts)} %")
        rows = []
        for m, rs in by_method.items():
            vals = [run_values(rd) for rd in rs]
            rows.append(
                [m, seeds_text([rd.seed for rd in rs])]
                + [Stat.of(v.get(f"{win}_{k}") for v in vals).fmt(100, 2, len(rs)) for k, _, _ in keys]
            )
        B.append(("h", 3, title))
        B.append(("table", ["method", "seeds (n)"] + heads, rows))
    return B


def claims_blocks(claims: Sequence[Claim]) -> list[Block]:
    """The paper's claims with their paired comparisons; none without claims."""
    if not claims:
        return []
    B: list[Block] = [("h", 2, "The paper's claims, across seeds")]
    B.append(
        (
            "p",
            "Each claim of FedKPer's paper (Fowler and AlRegib, ICIP 2026) is judged on paired per-seed "
            "differences: the two methods of one seed share the partition and the client-sampling stream, so"
            " each seed gives one difference. The mean difference over seeds carries a 95% t-interval (mean "
            "± t(0.975, n-1) · s / sqrt(n)); with one seed there is no interval and nothing is judged. A "
            "comparison is 'supported' when the whole interval lies on the claimed side of 0, 'contradicted'"
            " when it lies on the other side, 'not shown' when it contains 0; a claimed gap 'holds' only "
            "when the whole interval lies above it, is 'not supported' when the interval lies below it, and "
            "the data are 'consistent' with it when the interval contains it. With 2 or 3 seeds the "
            "intervals are wide. The method compared with is chosen by its mean of the same figure over the "
            "seeds it shares with FedKPer, less FedKPer's mean over those seeds (with every seed present: "
            "the best mean over seeds), and named in each row; where FedKPer is compared with the best or "
            "second-best method, those are baselines (FedKPer's ablations are parts of it, not methods). "
            "Differences are in points (of accuracy or of the metric's percentage), or relative to the "
            "method compared with where the unit says %.",
        )
    )
    for c in claims:
        B.append(("h", 3, c.title))
        B.append(("p", f"Measured as: {c.measured_as}."))
        if c.comparisons:
            B.append(
                (
                    "table",
                    [
                        "figure",
                        "difference",
                        "chosen as",
                        "unit",
                        "per seed",
                        "mean [95% interval]",
                        "verdict",
                    ],
                    [
                        [
                            x.figure,
                            f"{x.a} − {x.b}",
                            x.why,
                            x.unit,
                            x.per_seed(),
                            x.interval.fmt(x.decimals),
                            x.verdict,
                        ]
                        for x in c.comparisons
                    ],
                )
            )
        B.append(("p", f"Verdict: {c.verdict}."))
    return B


def time_blocks(
    by_method: dict[str, list[RunData]],
    budget: float,
    budget_rows: list[BudgetRow],
    plots: dict[str, str],
    time_methods: Sequence[str] | None,
    clock: Clock = WALL,
) -> list[Block]:
    """Accuracy against time (CPU time where every run has it, else wall-clock), and the matched-budget
    table."""
    B: list[Block] = [("h", 2, f"Accuracy against {clock.name}")]
    if time_methods:
        B.append(("p", f"Methods shown (--time-methods): {', '.join(time_methods)}."))
    B.append(("img", "accuracy_vs_time.png", plots["accuracy_vs_time.png"]))
    if budget_rows:
        B.append(
            (
                "p",
                f"Matched budget: every method cut at T = {budget:.0f} s ({budget / 60:.1f} min) of "
                f"{clock.name}, the shortest mean total {clock.name} among the methods shown. For each "
                "seed: the rounds it completed by T, its global accuracy at the last of them, and the mean "
                f"over its last {WINDOW} rounds before T; then mean ± std over seeds. "
                + (
                    "CPU time is the CPU seconds of each run's process (all its threads): other work on "
                    "the machine does not inflate it, but it depends on the machine's processor."
                    if clock.curve != WALL.curve
                    else "Timings depend on the machine and its load: runs that shared the machine with "
                    "other work are slower (runs that log CPU time up to their last round, in their own "
                    "process, are compared on CPU time instead)."
                ),
            )
        )
        head = [
            "method",
            f"total {clock.name} s",
            "rounds by T",
            "global acc at T %",
            f"global acc last-{WINDOW} mean at T %",
            f"global acc last-{WINDOW} mean, full run %",
        ]
        brows = []
        for b in budget_rows:
            n = len(by_method[b.method])
            brows.append(
                [
                    b.method,
                    b.total_time.fmt(1, 0, n),
                    b.rounds.fmt(1, 1, n),
                    b.at_budget.fmt(100, 1, n),
                    b.last10_at_budget.fmt(100, 1, n),
                    b.full_last10.fmt(100, 1, n),
                ]
            )
        B.append(("table", head, brows))
    return B
