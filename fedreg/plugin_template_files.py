"""The files ``fedreg new-plugin NAME`` writes (:mod:`fedreg.plugin_template`), as ``str.format``
templates of ``name`` (the plugin's module name) and ``dash`` (its distribution name's part)."""

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedreg-{dash}"
version = "0.1.0"
description = "fedreg plugin {name}: one component of each kind"
requires-python = ">=3.11"
dependencies = ["fedreg>=0.1"]

[project.optional-dependencies]
test = ["pytest>=8"]

# The only link to fedreg: the `fedreg` entry-point group names the module with the hook implementations.
[project.entry-points.fedreg]
{name} = "fedreg_{name}"

[tool.setuptools]
packages = ["fedreg_{name}"]
"""

README = """\
# fedreg-{dash}

A fedreg plugin written by `fedreg new-plugin {name}`: one component of each kind, registered through the
`fedreg` entry point. Edit `fedreg_{name}/__init__.py`; the guide is docs/plugins.md in fedreg's repository.

Install it into the environment that has fedreg (fedreg is not on PyPI, hence `--no-deps`), then test it:

```bash
path/to/fedreg/.venv/bin/pip install --no-deps -e .
path/to/fedreg/.venv/bin/python -m pytest tests
path/to/fedreg/.venv/bin/fedreg plugins | grep {name}_
```

| kind | name |
|---|---|
| dataset | `{name}_images` |
| partition | `{name}_iid` |
| model | `{name}_mlp` |
| objective | `{name}_smooth_ce` |
| aggregation | `{name}_mean` |
| selection | `{name}_random` |
| metric | `{name}_error` |
| method | `{name}_method` (objective `{name}_smooth_ce` + aggregation `{name}_mean`) |
"""

MODULE = '''\
"""fedreg-{dash}: one fedreg component of each kind, as a starting point. Each is registered by the hook of
its kind below; fedreg finds this module through the `fedreg` entry point in pyproject.toml."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

import fedreg
from fedreg.aggregate import weighted_average
from fedreg.components import (
    GLOBAL_TEST,
    Aggregator,
    Dataset,
    DatasetTensors,
    Method,
    Metric,
    MetricResult,
    Model,
    Objective,
    Params,
    Partition,
    Selector,
)
from fedreg.figures import Figure
from fedreg.losses import sample_mean

__version__ = "0.1.0"


# -- dataset -------------------------------------------------------------------------------------------------
class ImagesParams(Params):
    num_classes: int = Field(default=4, ge=2, le=16, description="classes (each brightens its own block)")
    n_train: int = Field(default=400, ge=10, description="training images")
    n_test: int = Field(default=100, ge=1, description="test images")


class Images(Dataset):
    """Synthetic grey images in which each class brightens its own block: learnable, nothing to download."""

    name = "{name}_images"
    Params = ImagesParams

    def load(self, root: str | None, download: bool, size: int) -> DatasetTensors:
        k, block = self.params.num_classes, size // 4
        g = torch.Generator().manual_seed(0)

        def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.randint(0, k, (n,), generator=g)
            x = torch.rand(n, 1, size, size, generator=g) * 0.3
            for c in range(k):
                r, col = divmod(c, 4)
                x[y == c, :, r * block : (r + 1) * block, col * block : (col + 1) * block] = 1.0
            return x, y

        train_x, train_y = split(self.params.n_train)
        test_x, test_y = split(self.params.n_test)
        return DatasetTensors(self.name, train_x, train_y, test_x, test_y, k, 1, size)


# -- partition -----------------------------------------------------------------------------------------------
class IID(Partition):
    """Shuffled samples dealt out in equal shares: every client sees every class."""

    name = "{name}_iid"

    def split(self, labels, num_clients, num_classes, rng):
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), num_clients)]


# -- model ---------------------------------------------------------------------------------------------------
class MLPParams(Params):
    hidden: int = Field(default=64, ge=1, description="width of the hidden layer")


class MLPNet(nn.Module):
    def __init__(self, in_features: int, hidden: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)  # the classifier head is `fc`, as in fedreg's models

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class MLP(Model):
    """A one-hidden-layer perceptron on the flattened image."""

    name = "{name}_mlp"
    Params = MLPParams

    def build(self, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        return MLPNet(in_channels * image_size * image_size, self.params.hidden, num_classes)


# -- objective (local loss) ----------------------------------------------------------------------------------
class SmoothParams(Params):
    smoothing: float = Field(default=0.1, ge=0, lt=1, description="label smoothing")


class SmoothCE(Objective):
    """Cross-entropy with label smoothing, written once as a functional loss (every backend runs it)."""

    name = "{name}_smooth_ce"
    Params = SmoothParams
    api_version = 3  # a functional_loss alone needs plugin contract 3

    def functional_loss(self, forward, params, x, y, weight, fctx):
        per_sample = F.cross_entropy(
            forward(params, x), y, reduction="none", label_smoothing=self.params.smoothing
        )
        return sample_mean(per_sample, weight)  # weight: None, or 0 on padding rows


# -- aggregation ---------------------------------------------------------------------------------------------
class Mean(Aggregator):
    """Plain mean of the client weights: every client counts the same, whatever its size."""

    name = "{name}_mean"

    def aggregate(self, round, global_state, updates, failures):
        return weighted_average([u.state for u in updates], [1.0] * len(updates))


# -- selection -----------------------------------------------------------------------------------------------
class Random(Selector):
    """k clients uniformly at random, from the run's sampling stream (the same for every method)."""

    name = "{name}_random"

    def select(self, round, clients, k, rng):
        return sorted(int(c) for c in rng.choice(len(clients), size=k, replace=False))


# -- metric --------------------------------------------------------------------------------------------------
class Error(Metric):
    """Error rate and mean top-class probability of the global model on the test split."""

    name = "{name}_error"
    api_version = 4  # reads Predictions.probs
    requires = frozenset({{GLOBAL_TEST}})
    figures = (
        Figure("{name}_error", "global error", higher_is_better=False, column=True),
        Figure("{name}_confidence", "global mean confidence"),
    )

    def update(self, ev):
        p = ev.global_test
        return MetricResult(
            {{
                "{name}_error": 1.0 - p.accuracy(),
                "{name}_confidence": float(p.probs.max(1).values.mean()) if len(p.labels) else float("nan"),
            }}
        )


# -- method preset -------------------------------------------------------------------------------------------
class Preset(Method):
    """The smoothed objective with the plain mean: `method: {name}_method` in a spec."""

    name = "{name}_method"
    Params = SmoothParams  # the objective's parameters

    def parts(self) -> dict[str, Any]:
        return {{
            "training.objective": {{"name": SmoothCE.name, "params": self.params.model_dump(mode="json")}},
            "federation.aggregation": {{"name": Mean.name, "params": {{}}}},
        }}


# -- registration: one hook per kind -------------------------------------------------------------------------
@fedreg.hookimpl
def fedreg_register_datasets(register):
    register(Images)


@fedreg.hookimpl
def fedreg_register_partitions(register):
    register(IID)


@fedreg.hookimpl
def fedreg_register_models(register):
    register(MLP)


@fedreg.hookimpl
def fedreg_register_objectives(register):
    register(SmoothCE)


@fedreg.hookimpl
def fedreg_register_aggregators(register):
    register(Mean)


@fedreg.hookimpl
def fedreg_register_selectors(register):
    register(Random)


@fedreg.hookimpl
def fedreg_register_metrics(register):
    register(Error)


@fedreg.hookimpl
def fedreg_register_methods(register):
    register(Preset)
'''

TEST = '''\
"""The plugin's components, found through its entry point, in a small federation run by fedreg's test helper
(synthetic data, in memory, no MLflow)."""

from __future__ import annotations

import numpy as np

from fedreg.registry import build_registry
from fedreg.testing import initial_accuracy, tiny_federation
from fedreg_{name} import IID, Images

NAMES = {{
    "dataset": "{name}_images",
    "partition": "{name}_iid",
    "model": "{name}_mlp",
    "objective": "{name}_smooth_ce",
    "aggregation": "{name}_mean",
    "selection": "{name}_random",
    "metric": "{name}_error",
    "method": "{name}_method",
}}


def test_every_component_is_registered_through_the_entry_point():
    reg = build_registry()
    assert not reg.broken, reg.broken
    for kind, name in NAMES.items():
        assert reg.lookup(kind, name).distribution == "fedreg-{dash}"


def test_the_dataset_and_the_partition():
    ds = Images().load(None, False, 28)
    assert ds.train_x.shape == (400, 1, 28, 28) and ds.num_classes == 4
    parts = IID().split(ds.train_y.numpy(), 4, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(400))


def test_a_federation_with_them_learns():
    res = tiny_federation(
        {{
            "method": "{name}_method",
            "training.objective": None,  # filled in by the method preset
            "federation.aggregation": None,
            "model": "{name}_mlp",
            "data.partition": "{name}_iid",
            "federation.selection": "{name}_random",
            "metrics": ["global_accuracy", "{name}_error"],
        }}
    )
    assert res.final["final_global_acc"] > initial_accuracy() + 0.1
    assert abs(res.final["final_{name}_error"] - (1 - res.final["final_global_acc"])) < 1e-9
'''


__all__ = ["MODULE", "PYPROJECT", "README", "TEST"]
