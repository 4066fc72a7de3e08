"""Checks of a run's set-up once its data is loaded, before any MLflow run is created: the model fits the
dataset's images (a forward pass of one real sample) and the available memory (its parameters, gradients,
optimizer state and the copies a round holds), and the clients' local test sets are big enough for the
metrics that evaluate on them (a warning)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from fedreg.components import FINAL_LOCAL, GLOBAL_ON_LOCAL, LOCAL, DatasetTensors
from fedreg.errors import DataError, EnvironmentProblem, FedregError
from fedreg.limits import GB, available_memory, memory_problem, shortlist


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def parameter_bytes(factory: Any, channels: int, classes: int, size: int) -> tuple[int, int] | None:
    """(parameters, bytes of parameters and buffers) of the model ``factory`` builds, built on the meta
    device (nothing allocated); None when it cannot be built there."""
    try:
        with torch.device("meta"):
            net = factory.build(channels, classes, size)
        params = list(net.parameters())
        tensors = params + list(net.buffers())
    except Exception as exc:  # noqa: BLE001 - a model that cannot be built on meta is built for real below
        if (problem := memory_problem(exc)) is not None:
            raise problem from None
        return None
    return sum(p.numel() for p in params), sum(t.numel() * t.element_size() for t in tensors)


def check_memory(name: str, counted: tuple[int, int] | None, spec: Any) -> None:
    """Refuse a model whose copies a run holds at once cannot fit in the available memory (CPU runs)."""
    if counted is None or spec.execution.device != "cpu":
        return
    n_params, size = counted
    k = spec.federation.clients_per_round
    momentum = spec.training.optimizer.momentum > 0
    copies = 4 + int(momentum) + k
    need, avail = size * copies, available_memory()
    if avail is None or need <= avail:
        return
    held = "the model, its gradients, " + ("the optimizer's momentum, " if momentum else "")
    raise EnvironmentProblem(
        f"model '{name}' does not fit in memory: it has {n_params:,} parameters ({size / GB:.2f} GB), and a "
        f"run holds at least {copies} copies of them at once ({held}the global model, the evaluated model "
        f"and the round's {_plural(k, 'client update')}): {need / GB:.1f} GB, but about {avail / GB:.1f} GB "
        "is available (the least of the free memory, the container's limit and 'ulimit -v'). Choose a "
        "smaller model (or model params), fewer clients per round, or a machine with more memory"
    )


def check_model(model: Any, dataset: DatasetTensors, spec: Any) -> None:
    """Build the spec's model (``model``: a resolved component) for the dataset, check its memory, and pass
    one of the dataset's training images through it, before anything is written: a model that does not take
    the images (too small, wrong channels, images of another size than the dataset declares) or gives the
    wrong number of outputs is a :class:`DataError` naming both; one that does not fit in memory is an
    :class:`EnvironmentProblem`."""
    size, ch, k = dataset.image_size, dataset.in_channels, dataset.num_classes
    what = f" ({size}x{size} images with {_plural(ch, 'channel')} and {k} classes)"
    name = getattr(model, "name", "?")
    factory = model.instantiate()
    check_memory(name, parameter_bytes(factory, ch, k, size), spec)
    sample = dataset.train_x[:1] if len(dataset.train_x) else torch.zeros(1, ch, size, size)
    actual = tuple(sample.shape[1:])
    declared = (ch, size, size)
    fix = (
        f"Choose a model (or model params) that takes {size}x{size} images, or a dataset with images it "
        "takes (for MedMNIST: a larger data.size)"
    )
    if actual != declared and len(actual) == 3:
        c, h, w = actual
        what = (
            f": its images are {h}x{w} with {_plural(c, 'channel')}, but the dataset declares {size}x{size} "
            f"with {_plural(ch, 'channel')} (data.size: {size}"
            + (f"; file '{dataset.source}'" if dataset.source else "")
            + f"), and the model, built for {size}x{size}, fails on one of them"
        )
        fix = (
            f"Use a dataset file of {size}x{size} images (for MedMNIST: the file for data.size {size}), or a "
            f"dataset that declares the size its images have"
        )
    try:
        net = factory.build(ch, k, size)
        net.eval()
        with torch.no_grad():
            out = net(sample)
    except FedregError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's model may raise anything
        if (problem := memory_problem(exc)) is not None:
            raise EnvironmentProblem(f"model '{name}' could not be built or run{what}: {problem}") from None
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"model '{name}' does not fit dataset '{dataset.name}'{what}: {text}. {fix}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, k):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DataError(
            f"model '{name}' gives outputs of shape {got} for one image of dataset '{dataset.name}' "
            f"{what}, expected (1, {k}): one logit per class. {fix}"
        )


def check_models(specs: Sequence[Any], feds: Sequence[Any]) -> None:
    """:func:`check_model` once per distinct model and dataset of the invocation's runs."""
    checked = set()
    for rs, fed in zip(specs, feds, strict=True):
        model = rs.components["model"]
        k, momentum = rs.spec.federation.clients_per_round, rs.spec.training.optimizer.momentum > 0
        key = (model.name, model.params.model_dump_json(), id(fed.dataset), k, momentum)
        if key not in checked:
            checked.add(key)
            check_model(model, fed.dataset, rs.spec)


#: what each kind of local evaluation evaluates on: the clients' local test sets
LOCAL_SETS = frozenset({LOCAL, GLOBAL_ON_LOCAL, FINAL_LOCAL})


def local_test_notes(specs: Sequence[Any], feds: Sequence[Any]) -> list[str]:
    """One warning per partition (and metrics) whose clients have a local test set of 0 or 1 samples while a
    metric of the run evaluates on the local test sets: which clients, why it matters, what to change."""
    notes, seen = [], set()
    for rs, fed in zip(specs, feds, strict=True):
        needy = [m.name for m in rs.metrics if set(getattr(m.info.cls, "requires", ())) & LOCAL_SETS]
        sizes = [len(c.test_idx) for c in fed.clients]
        empty = [i for i, n in enumerate(sizes) if n == 0]
        single = [i for i, n in enumerate(sizes) if n == 1]
        if not needy or not (empty or single) or (id(fed), tuple(needy)) in seen:
            continue
        seen.add((id(fed), tuple(needy)))
        data = rs.spec.data
        min_samples = getattr(rs.components["partition"].params, "min_samples", None)
        parts = []
        if empty:
            parts.append(f"{_plural(len(empty), 'client')} ({shortlist(empty)}) no local test sample")
        if single:
            parts.append(f"{_plural(len(single), 'client')} ({shortlist(single)}) one")
        more = f"the partition's min_samples, now {min_samples}" if min_samples is not None else "a partition"
        where = f"{rs.key}: " if rs.key and len(specs) > 1 else ""
        notes.append(
            f"warning: {where}of {len(sizes)} clients, {' and '.join(parts)}: metric(s) {', '.join(needy)} "
            "evaluate on the clients' local test sets, so a client without a sample gives NaN (left out of "
            "means and worst values; a round of only such clients logs NaN) and a client with one sample "
            "gives only 0 or 1. The local test set is data.local_test.fraction "
            f"({data.local_test.fraction}, rule {data.local_test.rule}) of each client's data: raise it, or "
            f"give every client more data ({more} that gives each client more samples, or fewer "
            "data.num_clients)"
        )
    return notes


def warn_local_tests(specs: Sequence[Any], feds: Sequence[Any], echo: Callable[[str], Any]) -> None:
    for note in local_test_notes(specs, feds):
        echo(note)


__all__ = ["check_memory", "check_model", "check_models", "local_test_notes", "parameter_bytes"]
