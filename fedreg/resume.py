"""Which experiment folder ``fedreg run SPEC --resume`` may continue: only an unfinished one whose recorded
spec is this spec (compared by :func:`fedreg.checkpoint.identity`), whether or not it holds a checkpoint; or
the folder of a sweep whose spec changed only in child runs that did not finish (a spec fixed after children
failed): those start again from round 1 in new MLflow runs, the finished ones are kept."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Any

from fedreg import checkpoint
from fedreg.errors import FedregError
from fedreg.limits import LIST_LIMIT, shortlist
from fedreg.spec import ResolvedSpec


def run_key(rs: ResolvedSpec) -> str:
    """The run's key in ``experiment.json`` (``runs``, ``identities``)."""
    return rs.key or "run"


def identities(specs: list[ResolvedSpec]) -> dict[str, dict[str, str]]:
    """Each run's :func:`fedreg.checkpoint.identity`, by run key."""
    return {run_key(rs): checkpoint.identity(rs.resolved_dict()) for rs in specs}


def recorded_identities(meta: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The identities an ``experiment.json`` records; for a folder written before they were recorded,
    those of its spec as written (``original``) resolved again ({} if that is impossible)."""
    if meta.get("identities"):
        return meta["identities"]
    if not meta.get("original"):
        return {}
    from fedreg.registry import get_registry
    from fedreg.spec import resolve

    try:
        specs = resolve(meta["original"], get_registry(), only=meta.get("variants") or None)
    except FedregError:
        return {}
    return identities(specs)


def spec_changes(
    recorded: dict[str, dict[str, str]], current: dict[str, dict[str, str]], skip: Iterable[str] = ()
) -> str | None:
    """How the current runs (run key -> identity) differ from those an experiment folder records, listing at
    most :data:`~fedreg.limits.LIST_LIMIT` runs; None when each equals its record. Runs in ``skip`` (those
    started again with their new spec) are not compared."""
    if not recorded:
        return "the folder does not record the spec it was started with"
    current = {k: v for k, v in current.items() if k not in set(skip)}
    new = [k for k in current if k not in recorded]
    changed = [k for k in current if k in recorded and recorded[k] != current[k]]
    parts = []
    if new:
        parts.append(
            f"{shortlist(new)} {'is not a run' if len(new) == 1 else 'are not runs'} of that invocation (it "
            f"has {shortlist(sorted(recorded))})"
        )
    for key in changed[:LIST_LIMIT]:
        label = f"{key}: " if len(current) > 1 or key != "run" else ""
        parts.append(label + checkpoint.differences(recorded[key], current[key]))
    if len(changed) > LIST_LIMIT:
        parts.append(f"and {len(changed) - LIST_LIMIT} more runs differ")
    return "; ".join(parts) or None


class Respecified(checkpoint.ExperimentDir):
    """An experiment folder continued with a spec that changed some of its unfinished child runs
    (``restart``: their run keys): those start again from round 1, in new MLflow runs."""

    def __init__(self, path, restart: frozenset[str]):
        super().__init__(path)
        self.restart = restart


def restartable(exp: checkpoint.ExperimentDir, meta: dict[str, Any], current: dict[str, dict[str, str]]):
    """The run keys of a sweep's folder whose spec changed, when every one of them is a recorded child run
    that did not finish (failed, interrupted or not started): (keys, None); else (None, why not)."""
    recorded = recorded_identities(meta)
    if not meta.get("parent_run_id") or not recorded or any(k not in recorded for k in current):
        return None, None
    changed = [k for k in current if recorded[k] != current[k]]
    finished = []
    for key in changed:
        f = exp.run_file(None if key == "run" else key)
        if f.exists() and checkpoint.load(f).get("finished"):
            finished.append(key)
    if finished:
        return None, (
            f"the spec changes {_count(finished, 'child run')} that finished ({shortlist(finished)}), which "
            "--resume keeps as they are"
        )
    return frozenset(changed), None


def _count(items: list, what: str) -> str:
    return f"{len(items)} {what}{'s' if len(items) != 1 else ''}"


def new_meta(specs: list[ResolvedSpec], source, original, parent: str | None, uri: str) -> dict[str, Any]:
    """What a new experiment folder's ``experiment.json`` records (``source``: the spec file; ``original``:
    the spec as written, with its variants and overrides applied)."""
    return {
        "spec_file": str(source) if source else None,
        "original": original,
        "parent_run_id": parent,
        "variants": list(dict.fromkeys(rs.variant for rs in specs if rs.variant)),
        "runs": {},
        "identities": identities(specs),
        "tracking_uri": uri,
        "status": "RUNNING",
    }


def find_folder(
    run_id: str, checkpoint_dir: str | None, uri: str | None, default_dir: str
) -> checkpoint.ExperimentDir:
    """``fedreg resume RUN_ID``'s checkpoint folder: under ``checkpoint_dir`` when given, else the folder the
    run's tag names in the store ``uri``, else under ``default_dir`` (the default ``checkpoint.dir``)."""
    from pathlib import Path

    from fedreg.tracking import tracking_uri

    checkpoint.check_run_id(run_id)
    if checkpoint_dir:
        exp = checkpoint.find_by_run_id(Path(checkpoint_dir), run_id)
        where = f"under '{checkpoint_dir}'"
    else:
        exp = checkpoint.find_from_tracking(run_id, uri) or checkpoint.find_by_run_id(
            Path(default_dir), run_id
        )
        where = f"named by its tags in the tracking store '{tracking_uri(uri)}', nor under '{default_dir}'"
    if exp is None:
        raise FedregError(
            f"no checkpoint folder of run '{run_id}' {where}; pass --tracking-uri (the store the run logs "
            f"to) or --checkpoint-dir (its checkpoint.dir)"
        )
    return exp


def find_resumable(specs: list[ResolvedSpec]) -> checkpoint.ExperimentDir:
    """The experiment folder ``fedreg run SPEC --resume`` continues: the most recently modified unfinished
    one of the spec's name whose recorded spec is this one (whether or not it holds a checkpoint yet), or,
    for a sweep, one whose spec changed only in child runs that did not finish (a fixed spec after failed
    children: they start again from round 1, the finished ones are kept). Refused when there is none,
    naming how the latest unfinished one differs and how to continue it."""
    first = specs[0].spec
    folder = checkpoint.spec_folder(first.checkpoint.dir, first.name)
    candidates = checkpoint.unfinished(folder)
    if not candidates:
        raise FedregError(
            f"nothing to resume: no unfinished run of spec '{first.name}' under '{folder}'; run without "
            f"--resume"
        )
    current = identities(specs)
    refused = []
    for exp in candidates:
        meta = exp.read()
        diff = spec_changes(recorded_identities(meta), current)
        if diff is None:
            return exp
        restart, why = restartable(exp, meta, current)
        if restart:
            return Respecified(exp.path, restart)
        refused.append((exp, diff + (f"; {why}" if why else "")))
    exp, diff = refused[0]
    others = (
        f" (and {len(refused) - 1} older unfinished one(s), none of this spec)" if len(refused) > 1 else ""
    )
    raise FedregError(
        f"the unfinished run in '{exp.path}'{others} belongs to another spec: {diff}. Continue it as it "
        f"was started with 'fedreg resume {exp.path.name}', or run without --resume to start afresh"
    )


def failed_list(failed: list[tuple[str, str]]) -> str:
    """The failed children of a sweep, a line each (the first ``LIST_LIMIT``)."""
    listed = "\n".join(f"  - {name}: {why}" for name, why in failed[:LIST_LIMIT])
    if len(failed) > LIST_LIMIT:
        listed += f"\n  - and {len(failed) - LIST_LIMIT} more (their runs' tag fedreg.failure)"
    return listed


def failure_hint(exp: checkpoint.ExperimentDir | None, source: str | None, resume_cmd: str | None) -> str:
    """What to do after child runs of a sweep failed, as :class:`~fedreg.experiment.Experiment` prints it."""
    if exp is None or resume_cmd is None:
        return "Fix the cause and run the spec again"
    spec = source or "SPEC"
    return (
        f"If the cause is in the spec, correct it, then run: fedreg run {spec} --resume (the children whose "
        f"spec changed start again from round 1 in new runs, the finished ones are kept). If it is elsewhere "
        f"(a plugin's code, the data, the machine), fix it, then continue the failed ones from their "
        f"checkpoints with: {resume_cmd}"
    )


def check_shared(specs: list[ResolvedSpec]) -> None:
    """The settings every variant of one invocation shares (tracking, checkpoints, how the sweep runs)."""
    first = specs[0].spec
    for rs in specs[1:]:
        if (rs.spec.tracking.uri, rs.spec.tracking.experiment, rs.spec.checkpoint) != (
            first.tracking.uri,
            first.tracking.experiment,
            first.checkpoint,
        ):
            raise FedregError(
                "all variants must share 'tracking' and 'checkpoint'; move them out of the variants"
            )
        if (rs.spec.execution.sweep, rs.spec.execution.jobs) != (first.execution.sweep, first.execution.jobs):
            raise FedregError(
                "all variants must share execution.sweep and execution.jobs (they say how the whole "
                "sweep runs); move them out of the variants and the grid"
            )


def load_checkpoints(
    resume: checkpoint.ExperimentDir | None,
    stored: dict[str, Any] | None,
    specs: list[ResolvedSpec],
    restart: frozenset[str],
) -> dict[str | None, dict[str, Any]]:
    """The checkpoints of the resumed runs (``resume``, whose ``experiment.json`` is ``stored``), by variant
    key, each checked against its spec; the runs in ``restart`` start again, so theirs are not read."""
    checkpoints: dict[str | None, dict[str, Any]] = {}
    if resume is None or stored is None:
        return checkpoints
    # the folder's recorded spec, which exists before the first checkpoint does
    diff = spec_changes(recorded_identities(stored), identities(specs), restart)
    if diff is not None:
        raise FedregError(
            f"the runs in '{resume.path}' belong to another spec: {diff}. Continue them as they "
            f"were started with 'fedreg resume {resume.path.name}', or run without --resume to "
            f"start afresh"
        )
    for rs in specs:
        f = resume.run_file(rs.key)
        if f.exists() and run_key(rs) not in restart:  # a restarted run's is of its old spec
            ck = checkpoint.load(f)
            if ck["fingerprint"] != checkpoint.fingerprint(rs.resolved_dict()):
                raise FedregError(
                    f"the checkpoint '{f}' belongs to another spec: "
                    f"{checkpoint.differences(ck['identity'], checkpoint.identity(rs.resolved_dict()))}. "
                    f"Run without --resume to start afresh, or restore the spec it was made with"
                )
            checkpoints[rs.key] = ck
    return checkpoints


def done_fractions(specs: list[ResolvedSpec], checkpoints: dict[str | None, dict[str, Any]]) -> list[float]:
    """Each child's fraction of its rounds already checkpointed (1 when it finished, 0 for a new child)."""
    fractions = []
    for rs in specs:
        ck = checkpoints.get(rs.key)
        rounds = max(1, rs.spec.federation.rounds)
        fractions.append(0.0 if ck is None else 1.0 if ck["finished"] else ck["round"] / rounds)
    return fractions


def continue_command(exp: checkpoint.ExperimentDir | None, uri: str | None) -> str | None:
    """The command that continues the experiment in folder ``exp`` after an interruption (None when nothing
    can be continued: no checkpoint folder was made). ``fedreg resume ID`` finds the folder from the run's
    tag in the tracking store, so the store (``uri``) is named when it is not the one found by default."""
    from fedreg.tracking import tracking_uri

    if exp is None:
        return None
    cmd = f"fedreg resume {exp.path.name}"
    if uri and uri != tracking_uri(None):
        cmd += f" --tracking-uri {shlex.quote(uri)}"
    return cmd


def interrupted_text(cmd: str | None, recorded: bool, checkpoints_on: bool) -> str:
    """What an interruption (Ctrl-C, SIGTERM) left, and how to go on: ``cmd`` continues it (None: nothing
    can); ``recorded``: whether any MLflow run was started; ``checkpoints_on``: ``checkpoint.every`` > 0."""
    if cmd is not None:
        return f"the MLflow runs were marked KILLED; what was logged stays logged. Continue with: {cmd}"
    if not recorded:
        return "nothing was recorded; run it again"
    if not checkpoints_on:
        return "the MLflow runs were marked KILLED; checkpoints are off (checkpoint.every: 0): run it again"
    return "the MLflow runs were marked KILLED before their first checkpoint folder was made: run it again"
