"""Limits checked before any run starts: how long a run's name may be, how many child runs one invocation may
start, how many worker processes this machine holds, how much memory is available; and the one way messages
list many runs or variants (:func:`shortlist`). Nothing here imports the spec or the run modules: they call
these checks."""

from __future__ import annotations

import math
import os
import re
import resource
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedreg.errors import EnvironmentProblem, FedregError, SpecIssue

#: the most runs or variants a message lists by name; the rest are counted ("and 12 more")
LIST_LIMIT = 10
#: MLflow's limit on a run name (the ``runs.name`` column of its SQL stores is ``String(250)``)
MLFLOW_RUN_NAME_MAX = 250
#: a run's checkpoint file is ``<run name>.pt``, written as ``<run name>.pt.tmp`` then renamed
CHECKPOINT_SUFFIX = ".pt.tmp"
#: ``execution.max_runs``'s default: the most child runs (variants x grid points x seeds) of one invocation
DEFAULT_MAX_RUNS = 1000
#: resident memory of one sweep worker process (``--jobs``): measured at 0.7 GB on a small MedMNIST file
#: (torch, MLflow's client, the data and a model; shared pages counted), about 1 GB on BloodMNIST
WORKER_MEMORY = 1_000_000_000
GB = 1e9


def shortlist(items: Iterable[Any], limit: int = LIST_LIMIT) -> str:
    """``a, b, c`` or, past ``limit`` items, ``a, b, ..., j and 12 more``."""
    items = [str(i) for i in items]
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"


def collapse_points(issues: list[SpecIssue]) -> list[SpecIssue]:
    """``issues`` with the same problem at more than :data:`LIST_LIMIT` grid points (paths
    ``grid[tau=1].x``, ``variants.kd[tau=1].x``; the value each point got aside) listed for the first of
    them, then counted."""

    def group_of(issue: SpecIssue) -> tuple[str, str, str] | None:
        m = re.fullmatch(r"(.*?)\[(.*?)\](.*)", issue.path)
        return (m.group(1), m.group(3), re.sub(r" \(got .*\)$", "", issue.message)) if m else None

    groups: dict[tuple[str, str, str], list[SpecIssue]] = {}
    for issue in issues:
        if (key := group_of(issue)) is not None:
            groups.setdefault(key, []).append(issue)
    out = []
    for issue in issues:
        key = group_of(issue)
        group = groups[key] if key is not None else []
        if len(group) <= LIST_LIMIT or any(issue is i for i in group[:LIST_LIMIT]):
            out.append(issue)
        elif key is not None and issue is group[LIST_LIMIT]:
            more = f"{key[0]}[{len(group) - LIST_LIMIT} more grid points]{key[1]}"
            out.append(SpecIssue(more, f"the same problem, e.g. {issue.message}"))
    return out


# -- names --------------------------------------------------------------------------------------------------
def file_name_max(folder: str | os.PathLike) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or of its nearest existing parent)
    takes; 255 where it does not say."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return int(os.pathconf(path, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def name_limit(checkpoint_dir: str | os.PathLike) -> int:
    """The longest run name, in bytes of UTF-8: it names an MLflow run and the checkpoint file
    ``<name>.pt`` (``<name>.pt.tmp`` while written)."""
    return min(MLFLOW_RUN_NAME_MAX, file_name_max(checkpoint_dir) - len(CHECKPOINT_SUFFIX))


def _clip(name: str, width: int = 40) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def name_issues(
    specs: Sequence[Any], variants: Sequence[str] = (), checkpoint_dir: str = ""
) -> list[SpecIssue]:
    """A run name (the spec's name, ``tracking.run_name``, a variant, or a child's name made of its variant,
    grid point and seed) longer than :func:`name_limit` allows, one issue per place to shorten.
    ``variants``: the spec's variant names, checked even where no variant validated (their other problems
    are reported beside); ``checkpoint_dir``: where checkpoints go when no spec resolved."""
    folder = specs[0].spec.checkpoint.dir if specs else checkpoint_dir
    if not specs and not variants:
        return []
    limit = name_limit(folder or ".")
    why = (
        f"run names name MLflow runs (at most {MLFLOW_RUN_NAME_MAX} characters) and checkpoint files "
        f"'<name>.pt' (file names of at most {limit + len(CHECKPOINT_SUFFIX)} bytes under checkpoint.dir "
        f"'{folder}', with '{CHECKPOINT_SUFFIX}' while written): at most {limit} characters "
        "(bytes in UTF-8)"
    )
    found: dict[str, SpecIssue] = {}

    def check(path: str, name: str, what: str, fix: str) -> None:
        size = len(name.encode())
        if size > limit and path not in found:
            found[path] = SpecIssue(path, f"{what} '{_clip(name)}' is {size} bytes long; {why}. {fix}")

    for variant in variants:
        check(f"variants.{_clip(variant)}", variant, "the variant name", "Shorten it")
    if not specs:
        return list(found.values())
    first = specs[0].spec
    check("name", first.name, "the spec's name", "Shorten it")
    if first.tracking.run_name:
        check("tracking.run_name", first.tracking.run_name, "the run name", "Shorten it")
    for rs in specs:
        if rs.variant:
            check(f"variants.{_clip(rs.variant)}", rs.variant, "the variant name", "Shorten it")
        if rs.key and rs.key != rs.variant:
            check(
                "grid" if rs.grid else "seeds",
                rs.key,
                "the child run name",
                "Shorten the variant name, or the grid's paths and values (a child is named "
                "<variant>.<grid point>.seed<N>)",
            )
    return list(found.values())


# -- how many child runs ----------------------------------------------------------------------------------
def max_runs_of(raw: dict[str, Any]) -> tuple[int, bool]:
    """``execution.max_runs`` as the spec writes it (a value the schema refuses counts as the default), and
    whether it is the default."""
    value = (raw.get("execution") or {}).get("max_runs") if isinstance(raw.get("execution"), dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, False
    return DEFAULT_MAX_RUNS, True


def run_count_issue(
    raw: dict[str, Any], expanded: Sequence[tuple[Any, Any, str]], grid_sizes: Sequence[int], gridded
) -> SpecIssue | None:
    """More child runs (variants x grid points x seeds) than ``execution.max_runs``, counted before the grid
    is expanded. ``grid_sizes``: the number of values of each gridded path ([] without a grid); ``gridded``:
    the variants the grid crosses (None: all)."""
    points = math.prod(grid_sizes) if grid_sizes else 1
    total, variants, seeds = 0, 0, set()
    for name, data, _ in expanded:
        if not isinstance(data, dict):
            continue
        listed = data.get("seeds")
        n_seeds = len(listed) if isinstance(listed, list) and listed else 1
        seeds.add(n_seeds)
        variants += 1
        total += (points if grid_sizes and (gridded is None or name in gridded) else 1) * n_seeds
    cap, default = max_runs_of(raw)
    if total <= cap:
        return None
    parts = [f"{variants:,} variant{'s' if variants != 1 else ''}"]
    if grid_sizes:
        parts.append(f"{points:,} grid points ({' x '.join(str(n) for n in grid_sizes)} values)")
    if seeds != {1}:
        parts.append(f"{'/'.join(str(s) for s in sorted(seeds))} seeds")
    return SpecIssue(
        "execution.max_runs",
        f"this spec makes {total:,} child runs ({' x '.join(parts)}), more than execution.max_runs "
        f"({cap:,}{', its default' if default else ''}): each is an MLflow run trained on its own. To run "
        f"them all, raise the cap in the spec (execution: {{max_runs: {total}}}) or with --set "
        f"execution.max_runs={total}; otherwise make the grid smaller, list fewer seeds, or run some "
        "variants with --variant",
    )


# -- memory and workers -----------------------------------------------------------------------------------
def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process can still allocate, about: the least of the memory the system reports available,
    what the cgroup (container) limit leaves, and what the address-space limit (``ulimit -v``) leaves. None
    where none of them can be read."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        found.append(max(0, limit - used))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            status = Path("/proc/self/status").read_text()
            size = int(status.split("VmSize:")[1].split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            size = 0
        found.append(max(0, soft - size))
    return min(found) if found else None


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_workers(asked: str, jobs: int | None, children: int, threads: int) -> None:
    """Refuse more sweep worker processes at once (``min(jobs, children)``) than this machine holds: one
    per ``threads`` CPUs, and :data:`WORKER_MEMORY` each within the available memory. ``asked``: where the
    number comes from (``--jobs 1000``), for the message."""
    workers = min(jobs or 1, children)
    if workers <= 1:
        return
    cpus = cpu_count()
    by_cpu = max(1, cpus // max(1, threads))
    memory = available_memory()
    by_memory = max(1, int(memory // WORKER_MEMORY)) if memory is not None else by_cpu
    cap = min(by_cpu, by_memory)
    if workers <= cap:
        return
    per = f"{threads} thread{'s' if threads != 1 else ''} per worker"
    reasons = [f"{cpus} CPU{'s' if cpus != 1 else ''} at {per}"]
    if memory is not None:
        reasons.append(
            f"{memory / GB:.1f} GB of available memory at about {WORKER_MEMORY / GB:.1f} GB per worker"
        )
    raise FedregError(
        f"{asked} asks for {workers} worker processes at once (the sweep has {children} child runs), but "
        f"this machine holds at most {cap}: {' and '.join(reasons)} (more workers than that only compete for "
        f"the CPUs or run out of memory). Use --jobs {cap} or fewer (or execution.jobs)"
    )


def memory_problem(exc: BaseException) -> EnvironmentProblem | None:
    """An allocation that failed (``MemoryError``, torch's "can't allocate memory", CUDA's out of memory)
    as an :class:`EnvironmentProblem` saying so; None for any other error."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    oom = isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and any(s in str(exc) for s in ("can't allocate memory", "Cannot allocate memory", "out of memory"))
    )
    if not oom:
        return None
    memory = available_memory()
    now = f" (about {memory / GB:.1f} GB is available now)" if memory is not None else ""
    return EnvironmentProblem(
        f"out of memory: {type(exc).__name__}: {text[:300]}. The run needs more memory than this process may "
        f"use{now}; the limit may be the machine's, a container's or 'ulimit -v'. Use a smaller model or "
        "batch, fewer clients per round or --jobs, or a machine with more memory"
    )


__all__ = [
    "DEFAULT_MAX_RUNS",
    "LIST_LIMIT",
    "WORKER_MEMORY",
    "available_memory",
    "check_workers",
    "cpu_count",
    "memory_problem",
    "name_issues",
    "name_limit",
    "run_count_issue",
    "shortlist",
]
