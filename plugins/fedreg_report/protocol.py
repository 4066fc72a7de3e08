"""Which protocol a run used (:func:`protocol_of`, read from its params: the flattened resolved spec), the
distinct protocols of a comparison with the methods and seeds that used each (:func:`protocols`), and the
report's Protocol section (:func:`protocol_blocks`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedreg_report.render import Block
from fedreg_report.runs import RunData
from fedreg_report.summary import users_of, users_text

#: the fields of a protocol, in the order of the Protocol table
PROTOCOL_FIELDS = ("dataset", "partition", "local test", "model", "selection", "training", "federation")


def _component(params: dict[str, str], prefix: str) -> str:
    """'dirichlet (alpha=0.1, cap=true)': the component at ``prefix`` with its params."""
    name = params.get(f"{prefix}.name", "?")
    ps = sorted(
        (k[len(prefix) + len(".params.") :], v)
        for k, v in params.items()
        if k.startswith(f"{prefix}.params.")
    )
    return name + (f" ({', '.join(f'{k}={v}' for k, v in ps)})" if ps else "")


def _training(params: dict[str, str]) -> str:
    """'5 epochs, batch 12, lr 0.01, momentum 0.9, weight decay 1e-05, lr x0.99 every round': local training
    as the optimizer and schedule set it ('?' for a field the run did not log, and alone for a run that
    logged none)."""
    if not any(k.startswith("training.") for k in params):
        return "?"

    def get(key: str) -> str:
        return params.get(f"training.{key}", "?")

    parts = [
        f"{get('local_epochs')} epochs",
        f"batch {get('batch_size')}",
        f"lr {get('optimizer.lr')}",
        f"momentum {get('optimizer.momentum')}"
        + (" (nesterov)" if get("optimizer.nesterov") == "True" else ""),
        f"weight decay {get('optimizer.weight_decay')}",
    ]
    gamma, step = get("lr_schedule.gamma"), get("lr_schedule.step_rounds")
    if gamma not in ("?", "1.0"):
        parts.append(f"lr x{gamma} every " + ("round" if step == "1" else f"{step} rounds"))
    if get("precision") not in ("?", "fp32"):
        parts.append(get("precision"))
    return ", ".join(parts)


def protocol_of(params: dict[str, str]) -> dict[str, str]:
    """The protocol a run used, from its params (the flattened resolved spec): dataset (with
    ``data.subset`` where below 1), partition with its
    params, local-test rule (``data.local_test.{rule,fraction,...}``; runs from before it have
    ``data.local_test_fraction``, whose rule is 'stratified'), model and client selection with their
    params, local training (epochs, batch, optimizer, learning-rate schedule) and the federation (rounds,
    clients per round of all clients)."""
    lt = {k[len("data.local_test.") :]: v for k, v in params.items() if k.startswith("data.local_test.")}
    if lt:
        rule = lt.pop("rule", "?")
        local_test = rule + (f" ({', '.join(f'{k}={v}' for k, v in sorted(lt.items()))})" if lt else "")
    elif "data.local_test_fraction" in params:
        local_test = f"stratified (fraction={params['data.local_test_fraction']})"
    else:
        local_test = "?"
    dataset = params.get("data.dataset.name", "?")
    subset = params.get("data.subset", "1.0")  # runs logged before data.subset existed used whole splits
    if float(subset) < 1:
        dataset += f" (subset={subset})"
    return {
        "dataset": dataset,
        "partition": _component(params, "data.partition"),
        "local test": local_test,
        "model": _component(params, "model"),
        "selection": _component(params, "federation.selection"),
        "training": _training(params),
        "federation": "{} rounds, {} of {} clients per round".format(
            *(
                params.get(k, "?")
                for k in ("federation.rounds", "federation.clients_per_round", "data.num_clients")
            )
        ),
    }


def protocols(
    runs: Sequence[RunData], methods: Sequence[str] | None = None
) -> list[tuple[dict[str, str], dict[str, list[Any]]]]:
    """Distinct protocols, each with the methods (and their seeds) that used it, in first-use order."""
    used = users_of(runs, methods, lambda rd: tuple(protocol_of(rd.params)[f] for f in PROTOCOL_FIELDS))
    return [(dict(zip(PROTOCOL_FIELDS, key, strict=True)), who) for key, who in used.items()]


def protocol_blocks(runs: Sequence[RunData], methods: Sequence[str]) -> list[Block]:
    """One row per distinct protocol with the methods and seeds that used it; a warning when several."""
    protos = protocols(runs, methods)
    B: list[Block] = [("h", 2, "Protocol")]
    B.append(
        (
            "p",
            "Read from each run's params (the resolved spec): the dataset (and the fraction of it a run "
            "kept, `data.subset`, where below 1), the partition and its params, "
            "the local-test rule (runs logged before `data.local_test` existed have "
            "`data.local_test_fraction`, whose rule is stratified), the model, the client selection, local "
            "training (epochs, batch, optimizer, learning-rate schedule) and the federation (rounds, clients "
            "per round). One row per distinct protocol, with the methods and seeds that used it.",
        )
    )
    rows = [[p[f] for f in PROTOCOL_FIELDS] + [users_text(who)] for p, who in protos]
    B.append(("table", list(PROTOCOL_FIELDS) + ["methods (seeds)"], rows))
    if len(protos) > 1:
        fields = [f for f in PROTOCOL_FIELDS if len({p[f] for p, _ in protos}) > 1]
        B.append(
            (
                "p",
                f"Warning: the methods of this comparison used {len(protos)} different protocols (they "
                f"differ in: {', '.join(fields)}). Differences between methods mix the method with the "
                "protocol; compare only methods that share one.",
            )
        )
    return B
