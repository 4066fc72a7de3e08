"""``fedreg run SPEC --skip-finished``: child runs that already finished in the tracking store, under any
parent run (an earlier invocation, runs imported from another machine with ``fedreg import``), are not run
again; the invocation runs the others. ``fedreg resume PARENT --skip-finished`` likewise leaves out the
children of that invocation that finished under another parent run since. A child counts as finished when a
FINISHED run of the spec's experiment logged the same resolved spec (compared by
:func:`fedreg.checkpoint.identity`: where it ran, how it was tracked and checkpointed do not count)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fedreg import checkpoint
from fedreg.errors import FedregError
from fedreg.resume import run_key
from fedreg.spec import ResolvedSpec


def _key(identity: dict[str, str]) -> str:
    return json.dumps(identity, sort_keys=True)


def runs_by_child(specs: list[ResolvedSpec], uri: str, status: str | None = None) -> dict[str, list]:
    """Every run (of ``status`` only, when given) in the specs' experiment of store ``uri`` that logged the
    resolved spec of one of them, under any parent, by the child's run key, oldest first ([] for a child
    without one; {} when the store or the experiment does not exist yet: reading never creates them)."""
    from mlflow.tracking import MlflowClient

    from fedreg.stores import search_all

    if uri.startswith("sqlite:///") and not Path(uri.split(":///", 1)[1]).exists():
        return {}
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(specs[0].spec.tracking.experiment)
    if exp is None:
        return {}
    planned = {run_key(rs): checkpoint.identity(rs.resolved_dict()) for rs in specs}
    # a run's params also hold what it measured (partition.train_size_min, ...): only the spec's fields count
    fields = {k.split(".")[0] for identity in planned.values() for k in identity}
    found: dict[str, list] = {}
    where = f"attributes.status = '{status}'" if status else ""
    for r in search_all(client, [exp.experiment_id], where):
        if r.data.tags.get("fedreg.role") == "parent":  # its params are those its children share
            continue
        identity = checkpoint.identity_of_params(r.data.params)
        found.setdefault(_key({k: v for k, v in identity.items() if k.split(".")[0] in fields}), []).append(r)
    return {key: found.get(_key(identity), []) for key, identity in planned.items()}


def finished_runs(specs: list[ResolvedSpec]) -> dict[str, str]:
    """The run ids of the specs' runs that finished before in their tracking store, by run key."""
    from fedreg.tracking import checked_uri

    uri = checked_uri(specs[0].spec.tracking.uri, "tracking.uri")
    return {k: rs[-1].info.run_id for k, rs in runs_by_child(specs, uri, "FINISHED").items() if rs}


def skip_finished(
    specs: list[ResolvedSpec], resume: bool = False, echo: Callable[[str], object] = print
) -> list[ResolvedSpec]:
    """The specs whose runs did not finish before, saying which were skipped and in which runs (and that
    there is nothing to run when none is left)."""
    if resume:
        raise FedregError(
            "--skip-finished starts a new invocation and --resume continues one; to continue an invocation "
            "started with --skip-finished: fedreg resume PARENT_RUN_ID"
        )
    return _left(specs, finished_runs(specs), "this spec", echo)


def skip_finished_elsewhere(
    specs: list[ResolvedSpec], uri: str, parent: str | None, echo: Callable[[str], object] = print
) -> list[ResolvedSpec]:
    """``fedreg resume PARENT --skip-finished``: the specs of the invocation of parent run ``parent`` (store
    ``uri``) less the children that finished under another parent run (a later ``fedreg run
    --skip-finished``, runs imported from another machine), saying which; its own finished children stay
    (they are kept as they are)."""
    done = {}
    for key, runs in runs_by_child(specs, uri, "FINISHED").items():
        parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
        if runs and parent not in parents:
            done[key] = runs[-1].info.run_id
    return _left(specs, done, "this invocation", echo)


def _left(
    specs: list[ResolvedSpec], done: dict[str, str], what: str, echo: Callable[[str], object]
) -> list[ResolvedSpec]:
    for key, run_id in done.items():
        echo(f"{key}: finished before in run {run_id}, skipped (--skip-finished)")
    left = [rs for rs in specs if run_key(rs) not in done]
    if not left:
        echo(f"nothing to run: all {len(specs)} runs of {what} finished before")
    return left
