"""``fedreg report``, added to the ``fedreg`` command line through the ``fedreg.commands`` entry point."""

from __future__ import annotations

import argparse

from fedreg.cli import Command
from fedreg.errors import FedregError


def configure(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "run_ids",
        nargs="*",
        metavar="RUN_ID",
        help="parent run id(s) printed by 'fedreg run'; several are merged",
    )
    sp.add_argument(
        "--experiment",
        default=None,
        metavar="NAME",
        help="instead of run ids: every child run of this MLflow experiment",
    )
    sp.add_argument("--tracking-uri", default=None)
    sp.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: report-<first run id or experiment>)",
    )
    sp.add_argument(
        "--time-methods",
        action="append",
        default=None,
        metavar="M1,M2",
        help="methods in the accuracy-vs-time plot and the matched-budget table, comma-separated "
        "(repeatable; default: all)",
    )
    sp.add_argument(
        "--page",
        default=None,
        metavar="PAGE.md",
        help="also put the report into this markdown page, between its lines '<!-- fedreg report: begin -->' "
        "and '<!-- fedreg report: end -->' (the rest of the page is kept), with its files in the folder "
        "named as the page without .md",
    )
    sp.add_argument("--no-log", action="store_true", help="do not log the report to the parent run(s)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar while reading runs")


def run(args: argparse.Namespace) -> int:
    from fedreg_report.command import report

    if bool(args.run_ids) == bool(args.experiment):
        raise FedregError(
            "give parent run ids (fedreg report RUN_ID [RUN_ID ...]) or --experiment NAME, not "
            "both and not neither"
        )
    time_methods = [m.strip() for v in args.time_methods or [] for m in v.split(",") if m.strip()] or None
    report(
        args.run_ids,
        experiment=args.experiment,
        tracking=args.tracking_uri,
        out=args.out,
        log=not args.no_log,
        time_methods=time_methods,
        progress=not args.no_progress,
        page=args.page,
    )
    return 0


COMMAND = Command(
    name="report",
    help="markdown + HTML report of a comparison: statistics over seeds, plots",
    configure=configure,
    run=run,
)
