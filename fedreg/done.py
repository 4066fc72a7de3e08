"""``fedreg run SPEC --skip-finished``: child runs that already finished in the tracking store, under any
parent run (an earlier invocation, runs imported from another machine with ``fedreg import``), are not run
again; the invocation runs the others. A child counts as finished when a FINISHED run of the spec's
experiment logged the same resolved spec (compared by :func:`fedreg.checkpoint.identity`: where it ran, how
it was tracked and checkpointed do not count)."""

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


def finished_runs(specs: list[ResolvedSpec]) -> dict[str, str]:
    """The run ids of the specs' runs that finished before in their tracking store, by run key."""
    from mlflow.tracking import MlflowClient

    from fedreg.stores import search_all
    from fedreg.tracking import checked_uri

    first = specs[0].spec
    uri = checked_uri(first.tracking.uri, "tracking.uri")
    if uri.startswith("sqlite:///") and not Path(uri.split(":///", 1)[1]).exists():
        return {}  # a store not yet made holds no runs (and reading must not create it)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(first.tracking.experiment)
    if exp is None:
        return {}
    planned = {run_key(rs): checkpoint.identity(rs.resolved_dict()) for rs in specs}
    # a run's params also hold what it measured (partition.train_size_min, ...): only the spec's fields count
    fields = {k.split(".")[0] for identity in planned.values() for k in identity}
    done = {}
    for r in search_all(client, [exp.experiment_id], "attributes.status = 'FINISHED'"):
        identity = checkpoint.identity_of_params(r.data.params)
        done[_key({k: v for k, v in identity.items() if k.split(".")[0] in fields})] = r.info.run_id
    found = {key: done.get(_key(identity)) for key, identity in planned.items()}
    return {k: v for k, v in found.items() if v is not None}


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
    done = finished_runs(specs)
    for key, run_id in done.items():
        echo(f"{key}: finished before in run {run_id}, skipped (--skip-finished)")
    left = [rs for rs in specs if run_key(rs) not in done]
    if not left:
        echo(f"nothing to run: all {len(specs)} runs of this spec finished before")
    return left
