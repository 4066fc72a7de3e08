"""The MLflow store a report reads: :func:`open_store` (checked to exist and answer, never created) and
:func:`find_runs` (the parent runs of a comparison and their child runs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from fedreg.errors import FedregError


def open_store(uri: str | None):
    """An MlflowClient on ``uri`` (default: as ``fedreg run``), checked to exist and answer. A report only
    reads: a local store that is not there is an error, never created."""
    from mlflow.tracking import MlflowClient

    from fedreg.tracking import _is_outage, tracking_uri

    uri = tracking_uri(uri)
    hint = (
        "pass --tracking-uri with the store 'fedreg run' printed (e.g. sqlite:////path/to/mlflow.db), or "
        "set MLFLOW_TRACKING_URI"
    )
    path = None
    if uri.startswith("sqlite:"):
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if path in ("", ":memory:"):
            raise FedregError(f"'{uri}' is not a store with runs in it; {hint}")
    elif uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        path = unquote(urlparse(uri).path)
    elif "://" not in uri:
        path = uri
    if path is not None and not Path(path).exists():
        raise FedregError(f"no MLflow tracking store at '{uri}' ('{path}' does not exist); {hint}")
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001
        why = (
            "the server cannot be reached"
            if _is_outage(exc)
            else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        raise FedregError(
            f"cannot read the MLflow tracking store '{uri}': {why}. Start the server, or {hint}"
        ) from None
    return client


def _search_all(client, experiment_ids: list[str], filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_runs(client, run_ids: Sequence[str] = (), experiment: str | None = None) -> tuple[list, list]:
    """The parent runs and their child runs: of the given parent run ids, or of every child run of
    ``experiment``. Raises FedregError for an unknown id, a run that is not a parent, an unknown
    experiment."""
    from mlflow.exceptions import MlflowException

    if bool(run_ids) == bool(experiment):
        raise FedregError("give parent run ids or --experiment NAME (one of the two)")
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise FedregError(
                f"no experiment '{experiment}' in {client.tracking_uri}; experiments there: "
                f"{', '.join(names) or 'none'} (the name is the spec's tracking.experiment)"
            )
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
