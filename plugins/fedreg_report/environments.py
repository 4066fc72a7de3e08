"""The environments a comparison's runs computed in (:mod:`fedreg.environment`: torch, processor and its
instruction set, device, threads), with the methods and seeds of each, and a warning when there are
several: figures computed in different environments differ in their last bits from the first round on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedreg import environment
from fedreg_report.render import Block
from fedreg_report.runs import RunData
from fedreg_report.summary import users_of, users_text


def environments(
    runs: Sequence[RunData], methods: Sequence[str] | None = None
) -> list[tuple[str, dict[str, list[Any]]]]:
    """Distinct environments (one line each, :func:`fedreg.environment.describe`), each with the methods
    (and their seeds) whose runs computed there, in first-use order."""
    return list(users_of(runs, methods, lambda rd: environment.describe(rd.tags)).items())


def environment_blocks(runs: Sequence[RunData], methods: Sequence[str]) -> list[Block]:
    """The Environment section: one row per environment; a warning when the runs used several."""
    envs = environments(runs, methods)
    B: list[Block] = [("h", 2, "Environment")]
    B.append(
        (
            "p",
            "Where each run computed, from its tags `fedreg.env.*`: torch, the processor and the instruction "
            "set torch uses on it, the device and the intra-op threads (a run resumed elsewhere lists each "
            "part; runs of a fedreg that did not record it read 'not recorded'). The same spec and seed give "
            "the same figures bit for bit in the same environment; in another the sums of the kernels run "
            "in another order, the figures differ in their last bits from the first round, and the runs "
            "drift apart over the rounds.",
        )
    )
    rows = [[env, users_text(who)] for env, who in envs]
    B.append(("table", ["environment", "methods (seeds)"], rows))
    if len(envs) > 1:
        B.append(
            (
                "p",
                f"Warning: the runs of this comparison computed in {len(envs)} environments (or did not "
                "record theirs). A difference between runs of different environments is partly the "
                "environment's: judge methods across seeds, as the claims do, not by one pair of runs.",
            )
        )
    return B


__all__ = ["environment_blocks", "environments"]
