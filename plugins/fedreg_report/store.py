"""The runs a report reads: :func:`find_runs` (the parent runs of a comparison and their child runs);
:func:`open_store` (from :mod:`fedreg.stores`: checked to exist and answer, never created)."""

from __future__ import annotations

from collections.abc import Sequence

from fedreg.errors import FedregError
from fedreg.stores import experiment_named
from fedreg.stores import search_all as _search_all


def find_runs(client, run_ids: Sequence[str] = (), experiment: str | None = None) -> tuple[list, list]:
    """The parent runs and their child runs: of the given parent run ids, or of every child run of
    ``experiment``. Raises FedregError for an unknown id, a run that is not a parent, an unknown
    experiment."""
    from mlflow.exceptions import MlflowException

    if bool(run_ids) == bool(experiment):
        raise FedregError("give parent run ids or --experiment NAME (one of the two)")
    if experiment:
        exp = experiment_named(client, experiment)
        children = [
            r for r in _search_all(client, [exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId")
        ]
        if not children:
            raise FedregError(
                f"experiment '{experiment}' has no child runs; 'fedreg report' compares the variants "
                f"or seeds of a spec (run one with 'variants:' or 'seeds:')"
            )
        parents = []
        for pid in dict.fromkeys(r.data.tags["mlflow.parentRunId"] for r in children):
            try:
                parents.append(client.get_run(pid))
            except MlflowException:
                pass  # a deleted parent: its children still count
        return parents, children
    parents, children = [], []
    for rid in dict.fromkeys(run_ids):
        try:
            run = client.get_run(rid)
        except MlflowException:
            raise FedregError(
                f"no MLflow run '{rid}' in {client.tracking_uri}; pass the parent run id printed by "
                f"'fedreg run' (and --tracking-uri if the store is elsewhere)"
            ) from None
        tags = run.data.tags
        if tags.get("mlflow.parentRunId"):
            raise FedregError(
                f"run '{rid}' ({run.info.run_name}) is a child run, not a parent; report on its "
                f"parent: fedreg report {tags['mlflow.parentRunId']}"
            )
        kids = _search_all(client, [run.info.experiment_id], f"tags.mlflow.parentRunId = '{rid}'")
        if not kids:
            raise FedregError(
                f"run '{rid}' ({run.info.run_name}) has no child runs: 'fedreg report' takes the "
                f"parent run of a spec with variants or seeds (or use --experiment NAME)"
            )
        parents.append(run)
        children.extend(kids)
    return parents, children
