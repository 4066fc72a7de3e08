"""The report laid out as blocks (see :mod:`fedreg_report.render`): :func:`build_blocks` puts the sections
in order (the tables' sections are in :mod:`fedreg_report.sections` and :mod:`fedreg_report.protocol`) and
writes the rest here: the header, what the numbers are, the figures and the list of runs."""

from __future__ import annotations

from collections.abc import Sequence

from fedreg_report.claims import Claim, judge_claims
from fedreg_report.environments import environment_blocks, environments
from fedreg_report.metrics import CLIENT_METRIC_PREFIX, SETTING_KEYS, WINDOW
from fedreg_report.protocol import protocol_blocks, protocols
from fedreg_report.render import Block
from fedreg_report.runs import Collection, RunData, datasets_of, uniq, why_incomplete
from fedreg_report.sections import (
    claims_blocks,
    forgetting_blocks,
    results_blocks,
    time_blocks,
    worst_client_blocks,
)
from fedreg_report.summary import (
    WALL,
    BudgetRow,
    Clock,
    MethodSummary,
    group,
    has_global_model,
    round_to_round_swing,
)


def settings(
    runs: Sequence[RunData], methods: Sequence[str] = ()
) -> tuple[dict[str, str], dict[str, dict[str, list[str]]]]:
    """Settings shared by all runs, and those that differ (key -> method -> values), methods in the order
    of ``methods`` (the spec's), others after them in the order of the runs."""
    rank = {m: i for i, m in enumerate(methods)}
    runs = sorted(runs, key=lambda rd: rank.get(rd.method, len(rank)))  # stable
    same, differ = {}, {}
    for key in SETTING_KEYS:
        vals = uniq(rd.params.get(key) for rd in runs)
        if len(vals) == 1:
            same[key] = vals[0]
        elif len(vals) > 1:
            per: dict[str, list[str]] = {}
            for rd in runs:
                per.setdefault(rd.method, [])
                v = rd.params.get(key, "?")
                if v not in per[rd.method]:
                    per[rd.method].append(v)
            differ[key] = per
    return same, differ


def build_blocks(
    col: Collection,
    summaries: list[MethodSummary],
    budget: float,
    budget_rows: list[BudgetRow],
    plots: dict[str, str],
    time_methods: Sequence[str] | None,
    generated: str,
    claims: Sequence[Claim] | None = None,
    clock: Clock = WALL,
) -> list[Block]:
    """The whole report; its first block is the title. ``plots``: {file name: caption} of the figures
    written; ``claims``: judged here when not given."""
    runs = col.finished
    by_method = group(runs, col.methods)
    same, differ = settings(runs, col.methods)
    if claims is None:
        datasets = datasets_of(runs)
        claims = judge_claims(runs, col.methods, datasets[0] if len(datasets) == 1 else None)
    return [
        *_header_blocks(col, summaries, generated, same, differ),
        *results_blocks(runs, summaries),
        *not_in_table_blocks(col),
        *protocol_blocks(runs, col.methods),
        *environment_blocks(runs, col.methods),
        *_numbers_blocks(col, summaries, same),
        *worst_client_blocks(by_method),
        *forgetting_blocks(by_method),
        *claims_blocks(claims),
        *_figure_blocks(runs, plots),
        *time_blocks(by_method, budget, budget_rows, plots, time_methods, clock),
        *_runs_blocks(col),
    ]


def _header_blocks(
    col: Collection,
    summaries: list[MethodSummary],
    generated: str,
    same: dict[str, str],
    differ: dict[str, dict[str, list[str]]],
) -> list[Block]:
    """The title, what was compared (spec, runs, store, commits, seeds, settings) and warnings."""
    runs, parents = col.finished, col.parents
    specs = uniq(
        [p.data.tags.get("fedreg.spec") for p in parents] + [rd.tags.get("fedreg.spec") for rd in runs]
    )
    commits = uniq(
        [p.data.tags.get("mlflow.source.git.commit") for p in parents]
        + [rd.tags.get("mlflow.source.git.commit") for rd in runs]
    )
    versions = uniq(
        [p.data.tags.get("fedreg.version") for p in parents] + [rd.tags.get("fedreg.version") for rd in runs]
    )
    seeds = sorted({rd.seed for rd in runs if rd.seed is not None})
    header = [
        f"spec: {', '.join(f'`{s}`' for s in specs) or '?'}",
        f"dataset: {', '.join(datasets_of(runs)) or '?'}",
        (
            f"experiment: `{col.experiment}` (every finished child run)"
            if col.experiment
            else "parent run(s): " + ", ".join(f"`{p.info.run_id}` ({p.info.status})" for p in parents)
        ),
        f"tracking store: `{col.tracking_uri}`",
        f"git commit(s): {', '.join(f'`{c}`' for c in commits) or 'not recorded'}",
        f"fedreg version(s): {', '.join(versions) or '?'}",
        f"seeds: {', '.join(map(str, seeds)) or '?'}; methods: {len(summaries)}; finished runs: {len(runs)}"
        + (f"; incomplete runs (left out): {len(col.incomplete)}" if col.incomplete else ""),
        "settings: " + (", ".join(f"{k}={v}" for k, v in same.items()) or "?"),
        f"generated: {generated}",
    ]
    n_protocols = len(protocols(runs, col.methods))
    if n_protocols > 1:
        header.append(f"Warning: the methods used {n_protocols} different protocols (see Protocol)")
    if (n_envs := len(environments(runs, col.methods))) > 1:
        header.append(f"Warning: the runs computed in {n_envs} environments (see Environment)")
    title = "Report: " + (", ".join(specs) or col.experiment or "comparison")
    B: list[Block] = [("h", 1, title), ("ul", header)]
    if differ:
        items = []
        for k, per in differ.items():
            by_value: dict[str, list[str]] = {}  # the methods that used each value (or values, across seeds)
            for m, v in per.items():
                by_value.setdefault("/".join(v), []).append(m)
            items.append(f"`{k}`: " + "; ".join(f"{v} ({', '.join(ms)})" for v, ms in by_value.items()))
        B.append(("p", "Warning: the runs differ in settings other than the method; compare with care:"))
        B.append(("ul", items))
    return B


NO_GLOBAL_MODEL = (
    "No global model: for {methods} the aggregated weights are not a model of the method (a shared body "
    "with the initial head, or local-only's initial weights; tag `fedreg.global_model_role` is `none`). "
    "Their global figures (global accuracy, NFR, BwT, ...) are left out of the tables and of every "
    "ranking; they are compared on local and end-of-run accuracy only."
)
END_OF_RUN = (
    "End-of-run accuracy: after the last round, every client's own model (its personal model where the "
    "method has one, else the final global model) on its own local test set, the mean and the worst over "
    "all clients, participants or not (metric `personalization`), beside the per-round figures of each "
    "round's participants."
)


def _numbers_blocks(col: Collection, summaries: list[MethodSummary], same: dict[str, str]) -> list[Block]:
    """What the numbers are: the windows, the metrics, which model local accuracy measures, how much
    global accuracy swings from round to round; and the superseded runs left out."""
    runs = col.finished
    B: list[Block] = [("h", 2, "What the numbers are")]
    B.append(
        (
            "p",
            f"'final' is the global model at the last round; 'last-10 mean' averages the last {WINDOW} "
            "evaluated rounds. Neither is a best-so-far value: no round is picked after the fact. Global "
            "accuracy is the global model on the dataset's official test split. Local accuracy is, each "
            "round, every participating client's model on that client's own local test set; 'mean' averages "
            "the round's participants. Worst-client local accuracy takes, per run, each client's local "
            "accuracy at its last participation and the minimum over all clients that participated (the "
            "per-round 'worst participant of the round', the worse of the few clients sampled that round, "
            "is a different figure and is shown apart). Global NFR "
            "(negative flip rate) is the share of test samples the global model got right at the previous "
            "evaluation and gets wrong now; consistency is the share whose correctness did not change; BwT "
            "is the global model's accuracy now on the local test sets of earlier participants minus its "
            "accuracy right after their last participation (negative: forgetting). Wall time is the run's "
            "total, which depends on the machine and on what else ran on it.",
        )
    )
    roles: dict[str, list[str]] = {}
    for s in summaries:
        roles.setdefault(s.local_model_role, []).append(s.method)
    role_text = {
        "local": "the client's trained copy of the global model",
        "personal": "the client's personal model",
    }
    items = [f"{role_text.get(r, f'model role {r!r}')} (`{r}`): {', '.join(ms)}" for r, ms in roles.items()]
    B.append(("p", "Which model local accuracy measures, per method (tag `fedreg.local_model_role`):"))
    B.append(("ul", items))
    personal = roles.get("personal", [])
    if personal:
        B.append(
            (
                "p",
                f"Methods with personal models ({', '.join(personal)}) are scored locally on a model that "
                "never leaves the client, the others on the model they send back: their local accuracies "
                "measure different things.",
            )
        )
    no_global = [m for m, rs in group(runs).items() if not all(has_global_model(rd) for rd in rs)]
    if no_global:
        B.append(("p", NO_GLOBAL_MODEL.format(methods=", ".join(no_global))))
    if any("final_personalized_acc_mean" in rd.summary for rd in runs):
        B.append(("p", END_OF_RUN))
    swing = round_to_round_swing(runs)
    part = same.get("data.partition.name")
    setting = []
    if part:
        alpha = same.get("data.partition.params.alpha")
        setting.append(f"{part} partition" + (f" with alpha {alpha}" if alpha else ""))
    if same.get("federation.clients_per_round"):
        setting.append(
            f"{same['federation.clients_per_round']} of {same.get('data.num_clients', '?')} clients per round"
        )
    measured = (
        f" Here it changed by a median of {swing[0] * 100:.1f} points between consecutive rounds in the "
        f"second half of the runs (90th percentile {swing[1] * 100:.1f} points)."
        if swing
        else ""
    )
    B.append(
        (
            "p",
            "Round-to-round variability: "
            + (f"with a {' and '.join(setting)}, " if setting else "")
            + "each round's global model averages the updates of few clients with skewed label mixes, so "
            "global accuracy swings by several points from one round to the next."
            + measured
            + " A single round of a single seed decides nothing: read the last-10 means and their spread "
            "over seeds.",
        )
    )
    if col.superseded:
        B.append(
            (
                "p",
                "Left out as superseded (a later run of the same method and seed takes its place): "
                + ", ".join(
                    f"{rd.name or rd.run_id} (`{rd.run_id}`"
                    + ("" if rd.status == "FINISHED" else f", {rd.status}")
                    + ")"
                    for rd in col.superseded
                ),
            )
        )
    return B


def _figure_blocks(runs: Sequence[RunData], plots: dict[str, str]) -> list[Block]:
    """The curves and the client-level figure."""
    B: list[Block] = [("h", 2, "Curves")]
    for name in ("curves.png", "curves_by_method.png", "curves_raw.png"):
        if name in plots:
            B.append(("img", name, plots[name]))
    B.append(("h", 2, "Clients"))
    if "clients.png" in plots:
        metrics = uniq(rd.client_metric for rd in runs)
        B.append(
            (
                "p",
                f"Per-client values are `{', '.join(metrics)}` from each run's metrics/per_client.csv, "
                "taken at each client's last participation (a client is scored only when it trains). "
                "clients.csv holds them.",
            )
        )
        B.append(("img", "clients.png", plots["clients.png"]))
    else:
        B.append(
            (
                "p",
                "No per-client local accuracy was logged (metrics/per_client.csv has no "
                f"`{CLIENT_METRIC_PREFIX}...]` rows): add the local_accuracy metric to the spec.",
            )
        )
    return B


def not_in_table_blocks(col: Collection) -> list[Block]:
    """Beside the Results table, the runs it leaves out and why (a diverged method must not vanish)."""
    if not col.incomplete:
        return []
    items = []
    for rd in col.incomplete:
        seed = "" if rd.seed is None else f" seed {rd.seed}"
        why = why_incomplete(rd) or f"{rd.status.lower()}, round {rd.last_round or 0}"
        items.append(f"{rd.method}{seed} ({why})")
    missing = [m for m in dict.fromkeys(rd.method for rd in col.incomplete) if m not in col.methods]
    running = {rd.method for rd in col.incomplete if rd.status == "RUNNING"}
    ended = [m for m in missing if m not in running]
    waiting = [m for m in missing if m in running]
    return [
        (
            "p",
            "Not in this table, as they did not finish: "
            + "; ".join(items)
            + "."
            + (f" Without a finished run, none still running: {', '.join(ended)}." if ended else "")
            + (f" No finished run yet, still running: {', '.join(waiting)}." if waiting else "")
            + " The section 'Incomplete runs' lists them.",
        )
    ]


def _runs_blocks(col: Collection) -> list[Block]:
    """The incomplete runs (left out), and where every run used is listed."""
    B: list[Block] = []
    if col.incomplete:
        B.append(("h", 2, "Incomplete runs (left out of the statistics)"))
        B.append(
            (
                "table",
                ["run", "method", "seed", "status", "last round", "why", "run id"],
                [
                    [
                        rd.name,
                        rd.method,
                        "?" if rd.seed is None else str(rd.seed),
                        rd.status,
                        str(rd.last_round or 0),
                        why_incomplete(rd) or "-",
                        f"`{rd.run_id}`",
                    ]
                    for rd in col.incomplete
                ],
            )
        )
    B.append(("h", 2, "Runs"))
    B.append(
        ("p", "Every run used, with its values, is in runs.csv; the per-method statistics in summary.csv.")
    )
    return B
