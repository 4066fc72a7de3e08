"""Imported once by the forkserver of a parallel sweep (:class:`fedreg.sweep.ProcessPool`): what every worker
needs (torch, MLflow's client, the round loop, the registry of installed plugins, the first uses that cost
seconds) is loaded before the server forks the workers, so a worker starts training within a second of its
child's start."""

import importlib
import io

import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - a worker's SQLite store opens faster
import mlflow.tracking  # noqa: F401
import torch  # noqa: F401

import fedreg.data  # noqa: F401
import fedreg.rounds  # noqa: F401
import fedreg.sweep  # noqa: F401
import fedreg.tracking  # noqa: F401
from fedreg.registry import get_registry

# plugins imported and their components registered: a worker resolves its spec at once
for _info in get_registry().all():
    for _module in getattr(_info.cls, "warm_imports", ()):
        try:
            importlib.import_module(_module)  # a dataset's loader imports these (medmnist: 3 s)
        except Exception:  # noqa: BLE001 - the child that needs it reports the failure itself
            pass


def _first_uses() -> None:
    """What costs seconds the first time in a process, done once here instead of in every worker: an
    optimizer's first step imports ``torch._dynamo`` (3 s); a figure's first drawing imports pyplot and
    loads fonts (2 s); a convolution's first backward pass sets up its kernels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conv = torch.nn.Conv2d(1, 2, 3)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    conv(torch.zeros(1, 1, 5, 5)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="warm")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


_first_uses()
