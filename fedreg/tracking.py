"""MLflow tracking through an explicit client (no global active run), so parent and child runs of a
comparison are logged side by side without hidden state."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Protocol

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from fedreg import spool
from fedreg.errors import EnvironmentProblem, FedregError
from fedreg.signals import interrupts_deferred
from fedreg.spec.loading import flatten  # noqa: F401 - also used from here (params of a run)
from fedreg.spool import (  # noqa: F401 - _is_outage: imported from here before fedreg.spool
    STORAGE_FIX,
    _is_outage,
    _problem,
    _quiet_mlflow,
    check_local_store,
    storage_problem,
)


def tracking_uri(spec_uri: str | None) -> str:
    """The spec's URI, else ``$MLFLOW_TRACKING_URI``, else MLflow's default local store."""
    if spec_uri:
        return spec_uri
    return os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def tracking_schemes() -> list[str]:
    """The URI schemes this MLflow can track to, read from its registry of tracking-store builders ("" is a
    plain path; Unity Catalog schemes are left out: MLflow registers them only to refuse them)."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        schemes = set(_tracking_store_registry._registry)
    except (ImportError, AttributeError):  # a private API: fall back to what MLflow 3 registers
        schemes = {"", "file", "databricks", "http", "https", "sqlite", "postgresql", "mysql", "mssql"}
    return sorted(schemes - {"databricks-uc", "uc"})


def uri_problem(uri: str) -> str | None:
    """What is wrong with a tracking URI before MLflow is asked to use it (None: nothing found)."""
    from mlflow.utils.uri import get_uri_scheme

    if not uri.strip():
        return "empty; leave tracking.uri out for $MLFLOW_TRACKING_URI or MLflow's local store"
    if uri in ("databricks",):
        return None
    try:
        scheme = get_uri_scheme(uri)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own errors for malformed database URIs
        return f"not a tracking URI MLflow can read ({str(exc).splitlines()[0] if str(exc) else exc!r})"
    schemes = tracking_schemes()
    if scheme in schemes:
        return None
    shown = ", ".join(f"{s}:" for s in schemes if s)
    return (
        f"unknown scheme '{scheme}:' for an MLflow tracking store; use a folder path, or a URI with one of "
        f"the schemes {shown} (e.g. sqlite:///mlflow.db or http://localhost:5000)"
    )


def checked_uri(uri: str | None, setting: str = "--tracking-uri") -> str:
    """``tracking_uri(uri)``, or a :class:`FedregError` naming the problem and ``setting`` to fix."""
    resolved = tracking_uri(uri)
    if problem := uri_problem(resolved):
        raise FedregError(f"tracking store '{resolved}': {problem}. Check {setting} / MLFLOW_TRACKING_URI")
    return resolved


def git_commit(path: str | os.PathLike = ".") -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def fedreg_commit() -> str | None:
    """The commit of the git checkout fedreg itself is imported from (an editable install of a clone), or
    None: fedreg installed as a package, or its folder inside some repository that does not track it (a
    virtualenv in a project's repository)."""
    import fedreg

    folder = Path(fedreg.__file__).resolve().parent
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", "__init__.py"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return git_commit(folder) if tracked.returncode == 0 else None


#: the tags of every experiment fedreg logs to: MLflow's model-training kind (not GenAI)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


class RunTracker(Protocol):
    """What a :class:`~fedreg.rounds.FederatedRun` logs to: a :class:`Tracker`, or a stand-in such as
    :class:`fedreg.testing.NullTracker`."""

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...

    def log_file(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None: ...


class Tracker:
    """MLflow calls for one invocation. Calls are queued and sent in order; while the tracking store cannot
    take them (a server that cannot be reached, a database locked, its disk full or read-only), training
    goes on, the queue is retried every ``retry_s`` seconds, and whatever is still undelivered at the end is
    written to a spool folder (:mod:`fedreg.spool`) that ``fedreg replay`` sends later."""

    def __init__(
        self,
        uri: str | None,
        experiment: str,
        spool_dir: str | os.PathLike = ".fedreg/spool",
        retry_s: float = 5.0,
    ):
        self.uri = tracking_uri(uri)
        problem = uri_problem(self.uri)
        if problem:
            raise FedregError(
                f"cannot use the MLflow tracking store '{self.uri}': {problem}. Check tracking.uri / "
                "MLFLOW_TRACKING_URI"
            )
        if self.uri.startswith(("http://", "https://")):
            # fail fast and let the queue retry, instead of MLflow's own minutes-long backoff
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        check_local_store(self.uri)  # before MLflow opens it (and retries for minutes)
        _quiet_mlflow()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.queue: list[tuple[str, tuple]] = []
        self.retry_s = retry_s
        self._next_try = 0.0
        self.spool_root = Path(spool_dir)
        self._files: Path | None = None
        self.outages = 0
        self.problem: str | None = None  # why the last failed call failed ("its disk is full", ...)
        self.unended: dict[str, bool] = {}  # at close: runs whose end was spooled -> ended out of order
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                self.experiment_id = self.client.create_experiment(experiment, tags=EXPERIMENT_TAGS)
            else:
                self.experiment_id = exp.experiment_id
                for k, v in EXPERIMENT_TAGS.items():  # an experiment made elsewhere: tagged on first use
                    if exp.tags.get(k) != v:
                        self.client.set_experiment_tag(self.experiment_id, k, v)
        except Exception as exc:  # noqa: BLE001
            if _is_outage(exc):
                raise FedregError(
                    f"cannot use the MLflow tracking store '{self.uri}': the server cannot be "
                    f"reached. Start it, or point tracking.uri / MLFLOW_TRACKING_URI at a running "
                    f"one (or leave both unset for MLflow's local store)"
                ) from None
            if why := storage_problem(exc):
                raise EnvironmentProblem(
                    f"cannot use the MLflow tracking store '{self.uri}': {why}. {STORAGE_FIX[why]}"
                ) from None
            raise FedregError(
                f"cannot use the MLflow tracking store '{self.uri}': {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. Check tracking.uri / "
                f"MLFLOW_TRACKING_URI"
            ) from None

    # -- delivery ------------------------------------------------------------------------------------------
    def _send(self, op: str, args: tuple) -> None:
        with interrupts_deferred():  # a write is not cut half-way (a SQLite store would stay locked)
            getattr(self, "_" + op)(*args)

    def flush(self, force: bool = False) -> bool:
        """Send queued calls in order; False if the server is still unreachable."""
        if not self.queue:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        while self.queue:
            op, args = self.queue[0]
            try:
                self._send(op, args)
            except Exception as exc:  # noqa: BLE001
                if (why := _problem(exc)) is None:
                    raise
                self.problem = why
                if self._next_try == 0.0 or force:
                    self.outages += 1
                self._next_try = time.monotonic() + self.retry_s
                return False
            self.queue.pop(0)
        self._next_try = 0.0
        return True

    def _call(self, op: str, *args) -> None:
        self.queue.append((op, args))
        self.flush()

    def _keep(self, path: str | Path) -> str:
        """A copy of a temporary file that outlives it, for a queued artifact."""
        if self._files is None:
            self._files = Path(tempfile.mkdtemp(prefix="fedreg-artifacts-"))
        dest = self._files / str(len(list(self._files.iterdir()))) / Path(path).name  # keeps its name
        dest.parent.mkdir()
        shutil.copy2(path, dest)
        return str(dest)

    @property
    def pending(self) -> int:
        return len(self.queue)

    def close(self, wait_s: float = 10.0) -> Path | None:
        """Deliver what is queued (retrying for up to ``wait_s``); spool the rest and return its folder. The
        runs whose end is spooled are ended out of order if the store takes that (:attr:`unended`)."""
        deadline = time.monotonic() + wait_s
        while self.queue and not self.flush(force=True) and time.monotonic() < deadline:
            time.sleep(min(1.0, self.retry_s))
        if not self.queue:
            return None
        # a run is not left RUNNING while the rest waits in the spool, if the store takes its end alone (one
        # failed try is enough: the others would fail the same way)
        ends = {args[0]: (op, args) for op, args in self.queue if op in ("end_run", "set_status")}
        for run_id, (op, args) in ends.items():
            if op == "end_run":
                ended = False
                if all(self.unended.values()):
                    try:
                        self._send(op, args)
                        ended = True
                    except Exception:  # noqa: BLE001 - the spool keeps it
                        pass
                self.unended[run_id] = ended
        return spool.write(self.spool_root, self.queue, self.uri)

    # -- the calls the runtime makes -------------------------------------------------------------------------
    def start_run(
        self, name: str, tags: dict[str, str], parent: str | None = None, wait_s: float = 120.0
    ) -> str:
        """Needs the server: waits up to ``wait_s`` for it (a new run needs its id)."""
        tags = dict(tags)
        if parent:
            tags["mlflow.parentRunId"] = parent
        deadline = time.monotonic() + wait_s
        while True:
            self.flush(force=True)
            try:
                return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            except Exception as exc:  # noqa: BLE001
                if why := storage_problem(exc):  # not a matter of minutes: said at once
                    raise EnvironmentProblem(
                        f"cannot create an MLflow run in '{self.uri}': {why}. {STORAGE_FIX[why]}"
                    ) from None
                if not _is_outage(exc) or time.monotonic() > deadline:
                    raise FedregError(f"cannot create an MLflow run in '{self.uri}': {exc}") from None
                time.sleep(2.0)

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        self._call("log_params", run_id, {k: str(v) for k, v in params.items()})

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._call("set_tags", run_id, {k: str(v) for k, v in tags.items()})

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        self._call(
            "log_metrics",
            run_id,
            {k: float(v) for k, v in metrics.items()},
            int(step),
            int(time.time() * 1000),
        )

    def log_file(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        try:
            if not self.queue:
                self._log_file(run_id, str(path), artifact_path)
                return
        except Exception as exc:  # noqa: BLE001
            if (why := _problem(exc)) is None:
                raise
            self.problem = why
            self.outages += 1
            self._next_try = time.monotonic() + self.retry_s
        self._call("log_file", run_id, self._keep(path), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / Path(name).name
            p.write_text(text)
            self.log_file(run_id, p, str(Path(name).parent) if Path(name).parent != Path(".") else None)

    def log_table(self, run_id: str, columns: list[str], rows: list[list], artifact_file: str) -> None:
        """A table the MLflow UI shows (its evaluation view): ``artifact_file`` (.json) in the format of
        ``mlflow.log_table`` (pandas' split orient), listed in the run's ``mlflow.loggedArtifacts`` tag.
        Logging it again replaces it (``log_table`` would append the rows)."""
        self._call("log_table", run_id, list(columns), [list(r) for r in rows], artifact_file)

    def last_step(self, run_id: str, key: str) -> int:
        """The highest step at which ``key`` is recorded in the run (0 if none), after delivering what is
        queued; 0 as well when the server cannot be reached (what it holds cannot be known then)."""
        if not self.flush(force=True):
            return 0
        try:
            return max((m.step for m in self.client.get_metric_history(run_id, key)), default=0)
        except Exception as exc:  # noqa: BLE001
            if _problem(exc):
                return 0
            raise

    def set_status(self, run_id: str, status: str) -> None:
        self._call("set_status", run_id, status)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._call("end_run", run_id, status)

    # -- the MLflow requests behind them ---------------------------------------------------------------------
    def _log_params(self, run_id, params):
        items = [Param(k[:250], v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def _set_tags(self, run_id, tags):
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _log_metrics(self, run_id, metrics, step, ts):
        items = [Metric(k, v, ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def _log_file(self, run_id, path, artifact_path):
        self.client.log_artifact(run_id, path, artifact_path)

    def _log_table(self, run_id, columns, rows, artifact_file):
        log_table(self.client, run_id, columns, rows, artifact_file)

    def _set_status(self, run_id, status):
        self.client.update_run(run_id, status=status)

    def _end_run(self, run_id, status):
        self.client.set_terminated(run_id, status=status)


def log_table(client: MlflowClient, run_id: str, columns: list, rows: list, artifact_file: str) -> None:
    """Write a table as ``mlflow.log_table`` does (JSON, pandas' split orient, tagged in
    ``mlflow.loggedArtifacts`` so the UI lists it), replacing an earlier one of the same name."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / Path(artifact_file).name
        p.write_text(json.dumps({"columns": list(columns), "data": [list(r) for r in rows]}))
        folder = str(Path(artifact_file).parent)
        client.log_artifact(run_id, str(p), None if folder == "." else folder)
    tag = "mlflow.loggedArtifacts"
    logged = json.loads(client.get_run(run_id).data.tags.get(tag, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, tag, json.dumps([*logged, entry]))
