"""Opening an MLflow tracking store to read it (``fedreg status``, ``fedreg compare``, ``fedreg report``):
checked to exist and answer, never created."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from fedreg.errors import FedregError


def open_store(uri: str | None):
    """An MlflowClient on ``uri`` (default: as ``fedreg run``), checked to exist and answer. A reader only
    reads: a local store that is not there is an error, never created (MLflow would create an empty one)."""
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


def search_all(client, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every run of the experiments that matches ``filter_string``, oldest first (all pages of MLflow's
    search, whose pages hold at most 1000 runs)."""
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
        if not (token := page.token):
            return runs


@contextlib.contextmanager
def quiet_artifact_transfers() -> Iterator[None]:
    """No MLflow progress bar per artifact downloaded or uploaded (the caller reports progress itself)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def experiment_named(client, name: str):
    """The MLflow experiment ``name``, or a FedregError listing the experiments the store has."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise FedregError(
            f"no experiment '{name}' in {client.tracking_uri}; experiments there: "
            f"{', '.join(names) or 'none'} (the name is the spec's tracking.experiment)"
        )
    return exp
