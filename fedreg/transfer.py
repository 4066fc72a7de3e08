"""Moving runs between MLflow stores as plain files: ``fedreg export`` writes runs (a parent run with its
child runs, or single runs) to a folder, ``fedreg import`` recreates them in another store.

A comparison outlives the machine and the store it ran on: a sweep run on a cluster is reported on a laptop,
results travel with a paper, and the finished children of a sweep survive the loss of the machine that ran
it (the runs still to do are started again there, as new parent runs, and reported with the imported ones).

The folder holds ``manifest.json`` (format, version, one entry per run, and each experiment's tags but its
saved MLflow UI views, which name the runs of the store they were saved in) and one folder per run, named by
its id in the store it came from: ``run.json`` (experiment, name, status, start and end times, params,
tags), ``metrics.csv`` (every logged value of every metric: key, step, timestamp, value) and
``artifacts/`` (the run's artifacts as logged). Exporting again into the same folder adds and updates runs.

Import gives each run a new id (MLflow assigns ids) and the tag ``fedreg.imported_from`` with its old one;
child runs point to their imported parent. Importing a folder again adds only what is new or changed (a run
whose status or end time differs is replaced), so an export that grows across sessions is imported as often
as it is written. Runs still running are not exported: their figures are not final (export them once they
end); a parent run is exported whatever its status, for its children."""

from __future__ import annotations

import csv
import fnmatch
import json
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from fedreg.errors import FedregError
from fedreg.stores import experiment_named, quiet_artifact_transfers, search_all

FORMAT = "fedreg-runs"
VERSION = 1
IMPORTED = "fedreg.imported_from"  # tag of an imported run: its id in the store it was exported from
PARENT = "mlflow.parentRunId"
_PARAMS_PER_CALL, _METRICS_PER_CALL = 100, 1000  # MLflow's log_batch limits


def runs_to_export(client, run_ids: Sequence[str]) -> tuple[list, list]:
    """(runs to write, runs left out because they are still running) for the given run ids: each id with
    its child runs (a running parent is written, for its children; a running single run is not). Raises
    FedregError for an id the store does not have."""
    from mlflow.exceptions import MlflowException

    chosen: dict[str, Any] = {}
    running: list = []
    for rid in dict.fromkeys(run_ids):
        try:
            run = client.get_run(rid)
        except MlflowException:
            raise FedregError(
                f"no MLflow run '{rid}' in {client.tracking_uri}; pass run ids printed by 'fedreg run' (and "
                f"--tracking-uri for the store that holds them)"
            ) from None
        kids = search_all(client, [run.info.experiment_id], f"tags.{PARENT} = '{rid}'")
        if run.info.status == "RUNNING" and not kids:
            running.append(run)
            continue
        chosen[rid] = run
        for kid in kids:
            if kid.info.status == "RUNNING":
                running.append(kid)
            else:
                chosen[kid.info.run_id] = kid
    return list(chosen.values()), running


def experiment_runs(client, name: str) -> list[str]:
    """The ids of the runs of experiment ``name`` that have no parent (parent runs and single runs), oldest
    first. Raises FedregError for an experiment the store does not have."""
    exp = experiment_named(client, name)
    return [r.info.run_id for r in search_all(client, [exp.experiment_id]) if PARENT not in r.data.tags]


def write_run(
    client, run, folder: Path, exclude: Sequence[str] = (), origin: Callable[[str], str] = str
) -> list[str]:
    """``run.json``, ``metrics.csv`` and ``artifacts/`` of one run into ``folder`` (replaced if there),
    without the artifacts whose path matches a pattern of ``exclude`` (fnmatch); returns those left out.
    ``origin`` gives the id a run is written under (its own, or the one it was imported from), for the run
    and its parent."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "artifacts").mkdir(parents=True)
    info, data = run.info, run.data
    experiment = client.get_experiment(info.experiment_id)
    tags = {k: v for k, v in data.tags.items() if k != IMPORTED}
    if PARENT in tags:
        tags[PARENT] = origin(tags[PARENT])
    record = {
        "run_id": origin(info.run_id),
        "experiment": experiment.name,
        "run_name": info.run_name,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "params": dict(sorted(data.params.items())),
        "tags": dict(sorted(tags.items())),
    }
    (folder / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    with open(folder / "metrics.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["key", "step", "timestamp", "value"])
        for key in sorted(data.metrics):
            for m in sorted(client.get_metric_history(info.run_id, key), key=lambda m: (m.step, m.timestamp)):
                out.writerow([key, m.step, m.timestamp, repr(float(m.value))])
    if client.list_artifacts(info.run_id):
        with quiet_artifact_transfers():
            client.download_artifacts(info.run_id, "", str(folder / "artifacts"))
    left_out = []
    for path in sorted(p for p in (folder / "artifacts").rglob("*") if p.is_file()):
        name = path.relative_to(folder / "artifacts").as_posix()
        if any(fnmatch.fnmatch(name, pattern) for pattern in exclude):
            path.unlink()
            left_out.append(name)
    return left_out


#: experiment tags not carried to another store: MLflow UI views saved per parent run name the source
#: store's run ids
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def experiment_tags(tags: dict[str, str]) -> dict[str, str]:
    """The experiment's tags worth carrying to another store (its kind, ...; not its saved views)."""
    return {k: v for k, v in sorted(tags.items()) if not k.startswith(VIEW_TAG_PREFIX)}


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.exists():
        return {"format": FORMAT, "version": VERSION, "runs": {}}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise FedregError(
            f"'{path}' is not JSON ({exc}); is '{folder}' a folder 'fedreg export' wrote?"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FedregError(f"'{path}' is not a manifest of 'fedreg export' (its format is not '{FORMAT}')")
    if manifest.get("version") != VERSION:
        raise FedregError(
            f"'{path}' has format version {manifest.get('version')!r}; this fedreg reads version {VERSION} "
            f"(export the runs again with this fedreg, or import them with the fedreg that wrote them)"
        )
    return manifest


def export_runs(
    client,
    run_ids: Sequence[str],
    out: Path,
    echo: Callable[[str], None] = print,
    exclude: Sequence[str] = (),
) -> int:
    """Write the runs (each id with its child runs) to ``out``, without the artifacts that match a pattern
    of ``exclude`` (the manifest lists them); returns how many runs were written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FedregError(f"'{out}' is a file; --out names a folder (new, or one 'fedreg export' wrote)")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").exists():
        raise FedregError(
            f"'{out}' holds files but no manifest.json; give a new folder or one 'fedreg export' wrote"
        )
    manifest = _manifest(out)
    runs, running = runs_to_export(client, run_ids)
    out.mkdir(parents=True, exist_ok=True)
    # a run imported from another store is written under the id it was exported with: exporting the runs
    # of a store that imported a folder back into that folder leaves them as they were
    known = {r.info.run_id: r.data.tags.get(IMPORTED, r.info.run_id) for r in runs}

    def origin(run_id: str) -> str:
        if run_id not in known:  # a parent not exported here
            try:
                known[run_id] = client.get_run(run_id).data.tags.get(IMPORTED, run_id)
            except Exception:  # noqa: BLE001 - a parent deleted since: its id as it is
                known[run_id] = run_id
        return known[run_id]

    for i, run in enumerate(runs, 1):
        rid = origin(run.info.run_id)
        left_out = write_run(client, run, out / rid, exclude, origin)
        exp = client.get_experiment(run.info.experiment_id)
        manifest.setdefault("experiments", {})[exp.name] = experiment_tags(exp.tags)
        manifest["runs"][rid] = {
            "name": run.info.run_name,
            "parent": origin(p) if (p := run.data.tags.get(PARENT)) else None,
            "status": run.info.status,
            "end_time": run.info.end_time,
            "artifacts_left_out": left_out,
        }
        echo(f"[{i}/{len(runs)}] {run.info.run_name} ({rid}): {run.info.status}")
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")  # after each run: resumable
    if running:
        names = ", ".join(r.info.run_name for r in running)
        echo(f"not exported, still running: {names} (export again once they end)")
    echo(f"exported {len(runs)} runs to {out}")
    return len(runs)


def _read_run(folder: Path) -> tuple[dict[str, Any], list]:
    from mlflow.entities import Metric

    try:
        record = json.loads((folder / "run.json").read_text())
        with open(folder / "metrics.csv", newline="") as f:
            metrics = [
                Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"]))
                for r in csv.DictReader(f)
            ]
    except (OSError, ValueError, KeyError) as exc:
        raise FedregError(
            f"run folder '{folder}' is incomplete or damaged ({exc}); export that run again"
        ) from None
    return record, metrics


def _imported(client, experiment_ids: Iterable[str]) -> dict[str, Any]:
    """Runs already imported into the store: their old id -> the run."""
    return {
        r.data.tags[IMPORTED]: r for r in search_all(client, list(experiment_ids)) if IMPORTED in r.data.tags
    }


def _experiment_id(client, name: str, tags: dict[str, str]) -> str:
    """The id of the experiment ``name`` in the store, created (or restored) with the exported experiment's
    tags where it lacks them (``mlflow.experimentKind`` sets how MLflow's UI shows it)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=tags)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    for key, value in tags.items():
        if key not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def import_runs(client, folder: Path, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Recreate the runs of an exported folder in the client's store; returns old id -> new id of every run
    of the folder (those imported before included). Parents come before their child runs."""
    from mlflow.entities import Param

    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise FedregError(f"no manifest.json in '{folder}'; give a folder 'fedreg export' wrote")
    manifest = _manifest(folder)
    entries: dict[str, dict[str, Any]] = manifest["runs"]
    missing = [rid for rid in entries if not (folder / rid / "run.json").is_file()]
    if missing:
        raise FedregError(f"'{folder}' lacks the run folders of {', '.join(missing)}; export them again")
    records = {rid: _read_run(folder / rid) for rid in entries}
    tags_of = {
        rec["experiment"]: manifest.get("experiments", {}).get(rec["experiment"], {})
        for rec, _ in records.values()
    }
    experiments = {name: _experiment_id(client, name, tags_of[name]) for name in sorted(tags_of)}
    done = _imported(client, experiments.values())
    order = sorted(entries, key=lambda rid: (entries[rid].get("parent") in entries, rid))  # parents first
    ids: dict[str, str] = {}
    added = 0
    for rid in order:
        record, metrics = records[rid]
        old = done.get(rid)
        if old is not None and (old.info.status, old.info.end_time) == (record["status"], record["end_time"]):
            ids[rid] = old.info.run_id
            continue
        if old is not None:  # changed since it was imported (resumed, finished): replaced
            client.delete_run(old.info.run_id)
        tags = {k: v for k, v in record["tags"].items() if k != PARENT}
        tags[IMPORTED] = rid
        if (parent := record["tags"].get(PARENT)) is not None:
            tags[PARENT] = ids.get(parent) or (done[parent].info.run_id if parent in done else parent)
        run = client.create_run(
            experiments[record["experiment"]],
            start_time=record["start_time"],
            tags=tags,
            run_name=record["run_name"],
        )
        new = run.info.run_id
        if old is not None:  # runs imported before under the replaced run now belong to its replacement
            for kid in done.values():
                if kid.data.tags.get(PARENT) == old.info.run_id:
                    client.set_tag(kid.info.run_id, PARENT, new)
        params = [Param(k, str(v)) for k, v in record["params"].items()]
        for i in range(0, len(params), _PARAMS_PER_CALL):
            client.log_batch(new, params=params[i : i + _PARAMS_PER_CALL])
        for i in range(0, len(metrics), _METRICS_PER_CALL):
            client.log_batch(new, metrics=metrics[i : i + _METRICS_PER_CALL])
        artifacts = folder / rid / "artifacts"
        if artifacts.is_dir() and any(artifacts.iterdir()):
            with quiet_artifact_transfers():
                client.log_artifacts(new, str(artifacts))
        if record["status"] != "RUNNING":  # a parent exported while its children ran stays RUNNING
            client.set_terminated(new, status=record["status"], end_time=record["end_time"])
        ids[rid] = new
        added += 1
        echo(f"{record['run_name']}: {rid} -> {new} ({record['status']})")
    kept = len(order) - added
    echo(
        f"imported {added} runs into {client.tracking_uri}"
        + (f" ({kept} imported before, unchanged)" if kept else "")
    )
    return ids


def add_commands(sub) -> None:
    """The ``export`` and ``import`` sub-commands of ``fedreg`` (``sub``: its sub-parsers)."""
    sp = sub.add_parser("export", help="write runs (a parent with its child runs) to a folder of plain files")
    sp.add_argument(
        "run_id", nargs="*", help="run ids: a parent run brings its child runs (not those still running)"
    )
    sp.add_argument(
        "--experiment", default=None, metavar="NAME", help="instead of run ids: every run of this experiment"
    )
    sp.add_argument(
        "--out", required=True, help="the folder (new, or one 'fedreg export' wrote: runs are added)"
    )
    sp.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out artifacts whose path matches (fnmatch; repeatable), e.g. '*.png': plots that "
        "'fedreg report' draws again from the metrics",
    )
    sp.add_argument("--tracking-uri", default=None, help="the store to read (default: as 'fedreg run')")
    sp.set_defaults(func=_cmd_export)
    sp = sub.add_parser("import", help="recreate the runs of a folder 'fedreg export' wrote in a store")
    sp.add_argument("folder")
    sp.add_argument("--tracking-uri", default=None, help="the store to write (default: as 'fedreg run')")
    sp.set_defaults(func=_cmd_import)


def _cmd_export(args) -> int:
    from fedreg.stores import open_store

    if bool(args.run_id) == bool(args.experiment):
        raise FedregError("give run ids (fedreg export RUN_ID [RUN_ID ...]) or --experiment NAME, not both")
    client = open_store(args.tracking_uri)
    ids = args.run_id or experiment_runs(client, args.experiment)
    export_runs(client, ids, Path(args.out), exclude=args.exclude)
    return 0


def _cmd_import(args) -> int:
    from mlflow.tracking import MlflowClient

    from fedreg.tracking import checked_uri

    import_runs(MlflowClient(tracking_uri=checked_uri(args.tracking_uri)), Path(args.folder))
    return 0
