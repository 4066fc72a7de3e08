"""Imported once by the forkserver of a parallel sweep (:class:`fedreg.sweep.ProcessPool`): what every worker
needs (torch, MLflow's client, the round loop, the registry of installed plugins) is loaded before the server
forks the workers, so a worker starts training within a second of its child's start."""

import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - a worker's SQLite store opens faster
import mlflow.tracking  # noqa: F401
import torch  # noqa: F401

import fedreg.data  # noqa: F401
import fedreg.rounds  # noqa: F401
import fedreg.sweep  # noqa: F401
import fedreg.tracking  # noqa: F401
from fedreg.registry import get_registry

get_registry()  # plugins imported and their components registered: a worker resolves its spec at once
