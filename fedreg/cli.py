"""The ``fedreg`` command line: run, validate, plugins, compare, ui, and the sub-commands plugins add
(``fedreg.commands`` entry points, e.g. ``report``)."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from fedreg import __version__
from fedreg.errors import FedregError
from fedreg.limits import memory_problem
from fedreg.spec_status import DEFAULT_CHECKPOINT_DIR
from fedreg.spec_status import add_command as add_status_command
from fedreg.timelimit import duration_arg


def _registry():
    from fedreg.registry import get_registry

    return get_registry()


def cmd_validate(args) -> int:
    from fedreg.spec import load_spec

    specs = load_spec(args.spec, _registry(), args.set, args.variant)
    for rs in specs:
        s = rs.spec
        comps = ", ".join(f"{k}={c.name}" for k, c in rs.components.items())
        print(
            f"ok: {rs.key or s.name}: {comps}; metrics={','.join(m.name for m in rs.metrics)}; "
            f"{s.federation.rounds} rounds, "
            f"{s.federation.clients_per_round}/{s.data.num_clients} clients per round"
        )
    return 0


def _run(specs, raw, source, progress, resume=None, args=None) -> int:
    """Run an experiment; Ctrl-C (exit status 130), SIGTERM (143) and ``--max-time`` (3) mark its runs
    KILLED and print the command that continues it. Child runs that fail are listed at the end (exit
    status 1)."""
    from fedreg.experiment import Experiment
    from fedreg.signals import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, sigterm_as_interrupt
    from fedreg.timelimit import EXIT_TIME_LIMIT, TimeLimitReached, stopped_text

    jobs, sweep = getattr(args, "jobs", None), getattr(args, "sweep", None)
    exp = Experiment(
        specs, source, progress, print, raw, resume, jobs, sweep, max_time=getattr(args, "max_time", None)
    )
    try:
        with sigterm_as_interrupt():
            res = exp.run()
    except TimeLimitReached:
        failed = f" Failed: {', '.join(name for name, _ in exp.failed)}." if exp.failed else ""
        said = stopped_text(exp.stopped, exp.unstarted, exp.resume_command(jobs=True)) + failed
        print(f"\ntime limit reached (--max-time): {said}", file=sys.stderr)
        return EXIT_TIME_LIMIT
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"\n{what}: {exp.interrupted()}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    if res.parent_run_id:
        print(f"parent run: {res.parent_run_id} (compare with: fedreg compare {res.parent_run_id})")
    else:
        print(f"run: {res.results[0].run_id}")
    print(f"tracking store: {res.tracking_uri} (open it with: fedreg ui)")
    experiment_id = getattr(getattr(exp, "tracker", None), "experiment_id", None)
    if res.parent_run_id and experiment_id:
        from fedreg.mlflow_view import links

        url = links("http://127.0.0.1:5000", experiment_id, res.parent_run_id)["runs"]
        print(f"the comparison in the MLflow UI (once 'fedreg ui' runs): {url}")
    return 0


def cmd_run(args) -> int:
    from fedreg.spec import load_raw, resolve

    raw = load_raw(args.spec, args.set)
    specs = resolve(raw, _registry(), only=args.variant, source=args.spec)
    resume = None
    if args.skip_finished:
        from fedreg.done import skip_finished

        if not (specs := skip_finished(specs, args.resume)):
            return 0  # every run finished before
    if args.resume:
        from fedreg.resume import find_resumable

        resume = find_resumable(specs)  # the latest unfinished folder recording this very spec
    return _run(specs, raw, args.spec, not args.no_progress, resume, args)


def cmd_resume(args) -> int:
    from fedreg.resume import find_folder
    from fedreg.spec import resolve

    exp = find_folder(args.run_id, args.checkpoint_dir, args.tracking_uri, DEFAULT_CHECKPOINT_DIR)
    meta = exp.read()
    raw = meta["original"]
    if raw is None:
        raise FedregError(f"'{exp.meta_path}' does not hold the spec; resume with 'fedreg run SPEC --resume'")
    # every variant of the original invocation: started ones continue, the others start
    specs = resolve(raw, _registry(), only=meta.get("variants") or None, source=meta.get("spec_file"))
    if planned := meta.get("identities"):  # not the children it left out (--skip-finished)
        specs = [rs for rs in specs if (rs.key or "run") in planned]
    if args.skip_finished:  # nor those that finished under another parent run since
        from fedreg.done import skip_finished_elsewhere

        if not (specs := skip_finished_elsewhere(specs, meta["tracking_uri"], meta.get("parent_run_id"))):
            return 0
    return _run(specs, raw, meta.get("spec_file"), not args.no_progress, exp, args)


def cmd_plugins(args) -> int:
    from fedreg import backends
    from fedreg.registry import KINDS, listing

    rows, broken = listing(_registry())
    executors, refused = backends.listing()
    broken += refused
    if args.json:
        print(
            json.dumps({"components": rows, "backends": executors, "broken": broken}, indent=1, default=str)
        )
        return 0
    for kind in KINDS:
        items = [r for r in rows if r["kind"] == kind]
        if not items:
            continue
        print(f"{kind}:")
        for r in items:
            ps = ", ".join(f"{k}={v['default']!r}" for k, v in r["params"].items())
            print(
                f"  {r['name']:<24} {r['distribution']} {r['version']}  [{', '.join(r['hooks'])}]"
                + (f"  params: {ps}" if ps else "")
            )
            if r["description"]:
                print(f"      {r['description']}")
    print("execution backend (execution.backend):")
    for b in executors:
        print(f"  {b['name']:<24} {b['distribution']} {b['version']}  {b['value']}")
    if broken:
        print("broken plugins:")
        for b in broken:
            print(f"  {b['plugin']} ({b['distribution']} {b['version']}): {b['error']}")
    return 0


def cmd_new_plugin(args) -> int:
    from fedreg.plugin_template import new_plugin

    root = new_plugin(args.name, args.dir)
    print(
        f"wrote {root}/ (pyproject.toml, fedreg_{args.name}/__init__.py, tests/test_plugin.py, README.md)\n"
        f"install it beside fedreg, then test it:\n"
        f"  {sys.executable} -m pip install --no-deps -e {root}\n"
        f"  {sys.executable} -m pytest {root / 'tests'}"
    )
    return 0


def cmd_compare(args) -> int:
    from fedreg.compare import compare
    from fedreg.tracking import checked_uri

    checked_uri(args.tracking_uri)
    return compare(args.run_id, tracking=args.tracking_uri, log=not args.no_log)


def cmd_replay(args) -> int:
    from fedreg.replay import replay

    n = replay(args.folder, args.tracking_uri)
    print(f"replayed {n} tracking calls from {args.folder}")
    return 0


def cmd_ui(args) -> int:
    from fedreg.tracking import checked_uri
    from fedreg.ui import run_ui

    return run_ui(checked_uri(args.tracking_uri), args.host, args.port, args.run, args.open)


def positive_int(text: str) -> int:
    """argparse type of ``--jobs``: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is less than 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedreg", description="Federated-learning registry for medical imaging.")
    p.add_argument("--version", action="version", version=f"fedreg {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    def spec_args(sp):
        sp.add_argument("spec", help="YAML run spec")
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="PATH=VALUE",
            help="override a field, e.g. --set federation.rounds=5 (repeatable)",
        )
        sp.add_argument(
            "--variant",
            action="append",
            default=None,
            metavar="NAME",
            help="run only this variant (repeatable)",
        )

    def sweep_args(sp):
        sp.add_argument(
            "--jobs",
            type=positive_int,
            default=None,
            metavar="N",
            help="run N child runs (variants x grid points x seeds) at once in worker processes, each "
            "with one intra-op thread unless execution.threads says otherwise (default: execution.jobs, "
            "else one at a time)",
        )
        sp.add_argument(
            "--sweep",
            choices=["local", "ray"],
            default=None,
            help="where child runs run: 'local' (this machine) or 'ray' (Ray tasks on a local Ray, or the "
            "cluster of execution.address / $RAY_ADDRESS); default: execution.sweep",
        )
        sp.add_argument(
            "--max-time",
            type=duration_arg,
            default=None,
            metavar="DURATION",
            help="stop after this much wall time (e.g. 2h30m, 90m, 5400): running children stop at a round's "
            "end with a checkpoint, no other starts; 'fedreg resume' continues (exit status 3)",
        )

    sp = sub.add_parser("run", help="run a spec (all its variants) and log to MLflow")
    spec_args(sp)
    sweep_args(sp)
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest unfinished run of this spec from its checkpoints",
    )
    sp.add_argument(
        "--skip-finished",
        action="store_true",
        help="run only the child runs that did not finish before in the tracking store (under any parent "
        "run, imported ones included)",
    )
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("resume", help="continue a run (or parent run) from its checkpoints")
    sp.add_argument("run_id")
    sp.add_argument(
        "--checkpoint-dir",
        default=None,
        help="the spec's checkpoint.dir (default: the folder the run's tag names, else .fedreg/checkpoints)",
    )
    sp.add_argument(
        "--tracking-uri",
        default=None,
        help="the store holding the run's tags (default: $MLFLOW_TRACKING_URI, else MLflow's local store)",
    )
    sp.add_argument("--no-progress", action="store_true")
    sp.add_argument(
        "--skip-finished",
        action="store_true",
        help="leave out the children of the invocation that finished under another parent run of the "
        "tracking store since (a later 'fedreg run --skip-finished', runs imported with 'fedreg import')",
    )
    sweep_args(sp)
    sp.set_defaults(func=cmd_resume)

    sp = sub.add_parser("validate", help="check a spec without running it")
    spec_args(sp)
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("plugins", help="list installed components by kind")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_plugins)

    sp = sub.add_parser(
        "new-plugin", help="write a ready plugin distribution fedreg-NAME (one component of each kind)"
    )
    sp.add_argument("name", help="the plugin's name: lowercase ASCII letters, digits, '_' (at most 40)")
    sp.add_argument("--dir", default=None, help="folder to create (default: ./fedreg-NAME)")
    sp.set_defaults(func=cmd_new_plugin)

    sp = sub.add_parser("compare", help="table of the variants of a parent run")
    sp.add_argument("run_id", help="the parent run id printed by 'fedreg run'")
    sp.add_argument("--tracking-uri", default=None)
    sp.add_argument("--no-log", action="store_true", help="do not log the table and plots to the parent run")
    sp.set_defaults(func=cmd_compare)

    add_status_command(sub)

    from fedreg.transfer import add_commands as add_transfer_commands

    add_transfer_commands(sub)

    sp = sub.add_parser("replay", help="send tracking calls a run could not deliver (its spool folder)")
    sp.add_argument("folder")
    sp.add_argument("--tracking-uri", default=None, help="default: the store the run was logging to")
    sp.set_defaults(func=cmd_replay)

    sp = sub.add_parser("ui", help="start the MLflow UI on fedreg's tracking store")
    sp.add_argument("--tracking-uri", default=None)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=5000)
    sp.add_argument(
        "--run", default=None, metavar="PARENT_ID", help="the comparison to link to (default: the latest)"
    )
    sp.add_argument("--open", action="store_true", help="open the comparison in a web browser")
    sp.set_defaults(func=cmd_ui)
    add_plugin_commands(sub)
    return p


#: entry-point group of sub-commands that plugins add to ``fedreg`` (e.g. ``report`` from fedreg_report)
COMMAND_GROUP = "fedreg.commands"


@dataclass(frozen=True)
class Command:
    """A ``fedreg`` sub-command a plugin adds through the ``fedreg.commands`` entry-point group (the
    entry point names a ``Command``): ``configure(parser)`` adds its arguments, ``run(args)`` returns the
    exit status and raises :class:`fedreg.errors.FedregError` for bad input (printed, exit 2)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def add_plugin_commands(sub) -> None:
    """Add the sub-commands of the ``fedreg.commands`` entry points; one that fails to load, is not a
    ``Command``, reuses a taken name or would replace fedreg's own (``report``) is skipped with a warning."""
    from fedreg import first_party

    first_party.pin_all()  # fedreg's own commands from fedreg's own modules, whatever sys.path holds
    for ep in md.entry_points(group=COMMAND_GROUP):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else ""
        if why := first_party.refusal(ep.name, ep.value, dist):
            print(f"warning: fedreg command '{ep.name}' of {dist}: {why}", file=sys.stderr)
            continue
        try:
            cmd = ep.load()
        except Exception as exc:  # noqa: BLE001 - a plugin may raise anything
            print(f"warning: fedreg command '{ep.name}' ({ep.value}) failed to load: {exc}", file=sys.stderr)
            continue
        if not isinstance(cmd, Command) or cmd.name in sub.choices:
            why = "is not a fedreg.cli.Command" if not isinstance(cmd, Command) else "reuses a taken name"
            print(f"warning: fedreg command '{ep.name}' ({ep.value}) {why}; skipped", file=sys.stderr)
            continue
        sp = sub.add_parser(cmd.name, help=cmd.help)
        cmd.configure(sp)
        sp.set_defaults(func=cmd.run)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("FEDREG_DEBUG") == "1"
    try:
        return args.func(args)
    except FedregError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (MemoryError, RuntimeError) as exc:  # out of memory: the machine's limit, not a bug
        if (problem := memory_problem(exc)) is None or debug:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return problem.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
