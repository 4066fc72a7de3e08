"""``fedreg status``: where runs stand. Given parent run ids, the children each invocation planned
(:mod:`fedreg.status`). Given a run spec, every run the spec plans, wherever it ran: a comparison that
outlives one machine is made of several invocations (``fedreg run --skip-finished``) and of runs imported
from other stores (``fedreg import``), so each planned child is looked up in the spec's tracking store under
any parent run, matched by its resolved spec as ``--skip-finished`` matches it (where it was tracked or
checkpointed does not count; ``seeds`` and ``variants`` only choose children). A child shows its FINISHED run
if it has one, else its latest run; then the counts, the CPU time spent and left, and the commands that go
on. The parser of the command is here too; its heavy imports wait until it runs."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path

#: where ``fedreg status`` and ``fedreg resume`` look when a run's tags do not name its checkpoint folder
#: (``checkpoint.dir``'s default)
DEFAULT_CHECKPOINT_DIR = ".fedreg/checkpoints"
#: suffixes that make ``fedreg status``'s argument a run spec rather than a run id
SPEC_SUFFIXES = (".yaml", ".yml")


def add_command(sub) -> None:
    """The ``status`` sub-command of ``fedreg`` (``sub``: its sub-parsers)."""
    sp = sub.add_parser(
        "status", help="where the runs of parent runs, or of a run spec, stand and how to go on"
    )
    sp.add_argument(
        "run_id",
        nargs="+",
        help="parent run ids printed by 'fedreg run', or one run spec (.yaml): every run it plans, found in "
        "its tracking store under any parent run",
    )
    sp.add_argument("--tracking-uri", default=None)
    sp.add_argument("--checkpoint-dir", default=None, help="where to look when the run's tags name no folder")
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="with a spec: the overrides it was run with (those that change runs, such as federation.rounds)",
    )
    sp.set_defaults(func=_cmd_status)


def _cmd_status(args) -> int:
    from fedreg.errors import FedregError

    targets = args.run_id
    if not any(t.endswith(SPEC_SUFFIXES) for t in targets):
        if args.set:
            raise FedregError("--set goes with a run spec: fedreg status SPEC.yaml --set PATH=VALUE")
        from fedreg.status import status

        return status(targets, args.tracking_uri, args.checkpoint_dir or DEFAULT_CHECKPOINT_DIR)
    if len(targets) > 1:
        raise FedregError(
            "fedreg status takes parent run ids or one run spec, not both or several specs: "
            + " ".join(targets)
        )
    from fedreg.registry import get_registry
    from fedreg.spec import load_raw, resolve

    overrides = list(args.set) + ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])
    specs = resolve(load_raw(targets[0], overrides), get_registry(), source=targets[0])
    return spec_status(specs, targets[0], args.set, args.tracking_uri)


def spec_status(
    specs: list, path: str, overrides: list[str], uri_given: str | None, echo: Callable = print
) -> int:
    """Print where each run ``specs`` plans stands in the spec's store; 0, or 1 when a child's latest run
    failed (a finished run of it elsewhere counts as finished)."""
    from fedreg.done import runs_by_child
    from fedreg.figures import progress_keys
    from fedreg.outputs import MetricNames
    from fedreg.registry import installed_figures
    from fedreg.resume import run_key
    from fedreg.status import Child, child_line, cpu_left, live_holder, read_child, totals_line, variant_of
    from fedreg.stores import open_store
    from fedreg.tracking import checked_uri

    first = specs[0].spec
    uri = checked_uri(first.tracking.uri, "tracking.uri")
    client = open_store(uri)
    found = runs_by_child(specs, uri)
    names = MetricNames(installed_figures())
    echo(
        f"{first.name} ({path}): {len(specs)} planned runs, looked up in experiment "
        f"'{first.tracking.experiment}' of {uri} under any parent run"
    )
    echo(f"  {'child':<28} {'status':<12} {'round':>9} {'CPU s':>9}  latest")
    shown = {names.name(k): k.replace("_", " ") for k in progress_keys(installed_figures())}
    children: list[Child] = []
    counts: dict[str, int] = {}
    interrupted: dict[str, list[str]] = {}  # parent -> its children that a process no longer runs
    for rs in specs:
        name, runs = run_key(rs), found.get(run_key(rs), [])
        done = [r for r in runs if r.info.status == "FINISHED"]
        run = (done or runs or [None])[-1]
        child = read_child(client, names, name, run)
        child.rounds = child.rounds or rs.spec.federation.rounds
        status = child.status
        if status == "RUNNING":
            folder = run.data.tags.get("fedreg.checkpoint_dir")
            if not folder or live_holder(Path(folder)) is None:
                status = "INTERRUPTED"
        if status in ("INTERRUPTED", "KILLED") and (parent := run.data.tags.get("mlflow.parentRunId")):
            folder = run.data.tags.get("fedreg.checkpoint_dir")
            if folder and Path(folder).is_dir():  # not where the runs came from another machine
                interrupted.setdefault(parent, []).append(name)
        counts[status] = counts.get(status, 0) + 1
        children.append(child)
        echo(child_line(child, status, shown, time.time()))
    work = {variant_of(c): work_per_round(rs) for c, rs in zip(children, specs, strict=True)}
    spent, left = sum(c.cpu_s or 0 for c in children), cpu_left(children, work)
    echo(totals_line(counts, spent, left))
    if counts.get("FINISHED", 0) < len(specs):
        sets = "".join(f" --set {shlex.quote(o)}" for o in overrides)
        sets += f" --set {shlex.quote('tracking.uri=' + uri_given)}" if uri_given else ""
        echo(f"  run the rest: fedreg run {shlex.quote(path)} --skip-finished{sets}   (add --jobs N)")
        for parent, kids in interrupted.items():
            where = f" --tracking-uri {shlex.quote(uri_given)}" if uri_given else ""
            echo(
                f"  or continue {', '.join(kids)} from their checkpoints: fedreg resume {parent}{where} "
                "--skip-finished (with the other children of that invocation that did not finish anywhere)"
            )
    return 1 if counts.get("FAILED") else 0


def work_per_round(rs) -> float:
    """A child's expected training work per round, relative between the variants of one spec: local epochs
    x clients per round x its objective's ``relative_cost`` (what ``fedreg run`` orders a sweep by, without
    the client sizes, which would need the data)."""
    from fedreg.sweep import cost_per_sample

    s = rs.spec
    return s.training.local_epochs * s.federation.clients_per_round * cost_per_sample(rs)


__all__ = ["DEFAULT_CHECKPOINT_DIR", "SPEC_SUFFIXES", "add_command", "spec_status", "work_per_round"]
