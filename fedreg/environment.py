"""Where a run computed: the software and hardware its figures depend on beyond the spec and the seed.

The same spec and seed give the same figures, bit for bit, in the same environment (docs/execution.md,
"Same results"). Elsewhere they need not: the processor's instruction set picks among the kernels of
oneDNN and MKL, which add in different orders, and torch releases change kernels; a run repeated on
another machine then differs in the last bits from its first round and drifts from there. So each run
records its environment as tags ``fedreg.env.<key>`` (:data:`KEYS`), and a run resumed in another
environment also records each part of it (``fedreg.env.parts``); ``fedreg report`` lists the environments
of the runs it compares.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from typing import Any

import numpy
import torch

#: the tags' prefix
PREFIX = "fedreg.env."
#: the tag that lists the parts of a run that ran in different environments (absent when one did all)
PARTS_TAG = PREFIX + "parts"
#: what is recorded: versions, the processor and the instruction set torch uses on it, the device the
#: clients train on and the intra-op threads (thread counts change how sums are split)
KEYS = ("python", "torch", "numpy", "os", "cpu", "isa", "device", "threads")


def cpu_model() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what the platform module says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: str | torch.device) -> str:
    """``cpu``, or a CUDA device with its name (``cuda:0 NVIDIA H100 80GB HBM3``)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def current(device: str | torch.device = "cpu") -> dict[str, str]:
    """This process's environment, as strings keyed by :data:`KEYS`."""
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that weights-only checkpoint loading refuses
        "numpy": str(numpy.__version__),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": cpu_model(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "device": device_name(device),
        "threads": str(torch.get_num_threads()),
    }


def summary(env: Mapping[str, str]) -> str:
    """One line for people: ``torch 2.14.1, Intel(R) Xeon(R) ... (AVX512), cpu, 1 thread``."""
    threads = env.get("threads", "?")
    return (
        f"torch {env.get('torch', '?')}, {env.get('cpu', '?')} ({env.get('isa', '?')}), "
        f"{env.get('device', '?')}, {threads} thread{'' if threads == '1' else 's'}"
    )


def extend(parts: Sequence[Mapping[str, Any]], after_round: int, env: Mapping[str, str]) -> list[dict]:
    """The parts of a run (``{"from_round": r, "env": {...}}``, ``r`` the first round it computed) once a
    process in ``env`` goes on after round ``after_round``: a new part when the environment changed.
    A run resumed from a checkpoint that did not record its environment starts with an unknown part."""
    out = [dict(p) for p in parts]
    if not out and after_round > 0:
        out.append({"from_round": 1, "env": {}})
    if not out or dict(out[-1]["env"]) != dict(env):
        out.append({"from_round": after_round + 1, "env": dict(env)})
    return out


def tags(parts: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The run's tags: the environment of its latest part and, when its parts differ, all of them."""
    tags_ = {PREFIX + k: str(v) for k, v in parts[-1]["env"].items()}
    if len(parts) > 1:
        tags_[PARTS_TAG] = "; ".join(
            f"from round {p['from_round']}: {summary(p['env']) if p['env'] else 'not recorded'}"
            for p in parts
        )
    return tags_


def of_tags(run_tags: Mapping[str, str]) -> dict[str, str]:
    """The environment a run's tags record ({} for a run that recorded none)."""
    return {k: run_tags[PREFIX + k] for k in KEYS if PREFIX + k in run_tags}


def describe(run_tags: Mapping[str, str]) -> str:
    """A run's environment in one line, its parts when it ran in more than one, or that it recorded none."""
    if PARTS_TAG in run_tags:
        return run_tags[PARTS_TAG]
    env = of_tags(run_tags)
    return summary(env) if env else "not recorded"


__all__ = [
    "KEYS",
    "PARTS_TAG",
    "PREFIX",
    "cpu_model",
    "current",
    "describe",
    "device_name",
    "extend",
    "of_tags",
    "summary",
    "tags",
]
