"""`fedreg report`: :func:`report` reads the runs, computes the statistics, draws the figures, writes
report.md, report.html and the CSV files, and logs them to the parent runs."""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Sequence
from pathlib import Path

from fedreg.errors import FedregError
from fedreg.stores import open_store
from fedreg_report.claims import judge_claims
from fedreg_report.layout import build_blocks
from fedreg_report.metrics import REPORT_FILES
from fedreg_report.page import check_page, update_page
from fedreg_report.plots import make_plots
from fedreg_report.render import render_html, render_markdown
from fedreg_report.runs import collect, datasets_of, why_incomplete
from fedreg_report.sensitivity import sensitivity
from fedreg_report.summary import aggregate, clock_of, group, matched_budget
from fedreg_report.tables import write_tables


def default_out(run_ids: Sequence[str], experiment: str | None) -> Path:
    """report-<first run id>, or report-<experiment name> (made safe for a folder name)."""
    name = run_ids[0] if run_ids else re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment or "report")
    return Path(f"report-{name}")


def report(
    run_ids: Sequence[str] = (),
    experiment: str | None = None,
    tracking: str | None = None,
    out: str | os.PathLike | None = None,
    log: bool = True,
    time_methods: Sequence[str] | None = None,
    progress: bool = True,
    echo=print,
    page: str | os.PathLike | None = None,
) -> Path:
    """Write the report of the runs to ``out``; log it to each parent run under ``report/`` if ``log``;
    put it into the results page ``page`` between its markers (:mod:`fedreg_report.page`). Returns the
    output folder."""
    if page is not None:
        check_page(Path(page))
    client = open_store(tracking)
    col = collect(client, run_ids, experiment, progress)
    by_method = group(col.finished, col.methods)
    if time_methods:
        unknown = [m for m in time_methods if m not in by_method]
        if unknown:
            raise FedregError(
                f"--time-methods: no finished runs of {', '.join(unknown)}; the methods are: "
                f"{', '.join(by_method)}"
            )
    out = Path(out) if out else default_out(run_ids, experiment)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedregError(
            f"cannot create the report folder '{out}': {exc.strerror}; pass --out DIR"
        ) from None
    summaries = aggregate(col.finished, col.methods)
    tm = {m: by_method[m] for m in (time_methods or by_method)}
    clock = clock_of(tm)
    budget, budget_rows = matched_budget(tm, clock=clock)
    plots = make_plots(by_method, out, time_methods, budget, clock)
    generated = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    datasets = datasets_of(col.finished)
    claims = judge_claims(col.finished, col.methods, datasets[0] if len(datasets) == 1 else None)
    blocks = build_blocks(col, summaries, budget, budget_rows, plots, time_methods, generated, claims, clock)
    sens_blocks, sens_plots, sens_files = sensitivity(col.finished, out)  # nothing without a grid
    plots.update(sens_plots)
    blocks += sens_blocks
    (out / "report.md").write_text(render_markdown(blocks), encoding="utf-8")
    (out / "report.html").write_text(render_html(blocks, out, title=str(blocks[0][2])), encoding="utf-8")
    files = (
        list(REPORT_FILES[:2])
        + write_tables(out, col, summaries, budget, budget_rows, claims, clock)
        + sens_files
        + list(plots)
    )
    echo(render_markdown([b for b in blocks if b[0] == "table"][:1]).rstrip())
    echo(f"wrote {', '.join(files)} to {out}/")
    if page is not None:
        stale = update_page(Path(page), out, files)
        echo(f"updated {page} between its markers; its files are in {Path(page).with_suffix('')}/")
        if stale:
            echo(f"  not written by this report (delete them if stale): {', '.join(stale)}")
    if col.incomplete:
        echo(
            f"left out {len(col.incomplete)} incomplete run(s): "
            + ", ".join(
                f"{rd.name or rd.run_id} ({rd.status}, round {rd.last_round or 0}"
                + (f"; {why}" if (why := why_incomplete(rd, 80)) else "")
                + ")"
                for rd in col.incomplete
            )
        )
    if log:
        targets = [p.info.run_id for p in col.parents]
        for pid in targets:
            for name in files:
                client.log_artifact(pid, str(out / name), "report")
        if targets:
            echo(f"logged them under report/ to run(s) {', '.join(targets)}")
    return out
