"""Which experiment folder ``fedreg run SPEC --resume`` may continue: only an unfinished one whose recorded
spec is this spec (compared by :func:`fedreg.checkpoint.identity`), whether or not it holds a checkpoint."""

from __future__ import annotations

from typing import Any

from fedreg import checkpoint
from fedreg.errors import FedregError
from fedreg.spec import ResolvedSpec


def run_key(rs: ResolvedSpec) -> str:
    """The run's key in ``experiment.json`` (``runs``, ``identities``)."""
    return rs.key or "run"


def identities(specs: list[ResolvedSpec]) -> dict[str, dict[str, str]]:
    """Each run's :func:`fedreg.checkpoint.identity`, by run key."""
    return {run_key(rs): checkpoint.identity(rs.resolved_dict()) for rs in specs}


def recorded_identities(meta: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The identities an ``experiment.json`` records; for a folder written before they were recorded,
    those of its spec as written (``original``) resolved again ({} if that is impossible)."""
    if meta.get("identities"):
        return meta["identities"]
    if not meta.get("original"):
        return {}
    from fedreg.registry import get_registry
    from fedreg.spec import resolve

    try:
        specs = resolve(meta["original"], get_registry(), only=meta.get("variants") or None)
    except FedregError:
        return {}
    return identities(specs)


def find_resumable(specs: list[ResolvedSpec]) -> checkpoint.ExperimentDir:
    """The experiment folder ``fedreg run SPEC --resume`` continues: the most recently modified unfinished
    one of the spec's name whose recorded spec is this one (whether or not it holds a checkpoint yet).
    Refused when there is none, naming how the latest unfinished one differs and how to continue it."""
    first = specs[0].spec
    folder = checkpoint.spec_folder(first.checkpoint.dir, first.name)
    candidates = checkpoint.unfinished(folder)
    if not candidates:
        raise FedregError(
            f"nothing to resume: no unfinished run of spec '{first.name}' under '{folder}'; run without "
            f"--resume"
        )
    current = identities(specs)
    refused = []
    for exp in candidates:
        diff = checkpoint.spec_differences(recorded_identities(exp.read()), current)
        if diff is None:
            return exp
        refused.append((exp, diff))
    exp, diff = refused[0]
    others = (
        f" (and {len(refused) - 1} older unfinished one(s), none of this spec)" if len(refused) > 1 else ""
    )
    raise FedregError(
        f"the unfinished run in '{exp.path}'{others} belongs to another spec: {diff}. Continue it as it "
        f"was started with 'fedreg resume {exp.path.name}', or run without --resume to start afresh"
    )
