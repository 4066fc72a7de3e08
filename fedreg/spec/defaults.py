"""The components a spec gets where it names none: those the installed plugins mark ``default = True``.

The core names no component. Where a spec leaves out a component reference (for example
``training.objective``), the one component of that kind whose class is marked ``default`` is written into
the spec before it is validated, so the run's params and tags show what ran. ``metrics`` left out gets every
metric marked ``default``. No default installed, or two for one kind, is an error at that path.
"""

from __future__ import annotations

import copy
from typing import Any

from fedreg.errors import SpecIssue
from fedreg.registry import Registry
from fedreg.spec.schema import COMPONENT_PATHS, RunSpec

#: spec paths where a missing component reference gets the installed default (the dataset is always
#: named; a method preset is optional)
DEFAULTED = {path: kind for path, kind in COMPONENT_PATHS.items() if kind not in ("dataset", "method")}


def _only_required(model: Any, field: str) -> bool:
    """Whether ``field`` is the only required field of the spec section ``model``."""
    return [n for n, f in model.model_fields.items() if f.is_required()] == [field]


def _ref(info) -> dict[str, Any]:
    return {"name": info.name}


def fill_defaults(raw: Any, registry: Registry, issues: list[SpecIssue]) -> Any:
    """``raw`` with every missing component reference of :data:`DEFAULTED` (and a missing ``metrics``
    list) set to the installed default; a problem is added to ``issues`` and that path left missing.
    Paths under a section that is not a mapping are left for the structural checks."""
    if not isinstance(raw, dict):
        return raw
    out = copy.deepcopy(raw)
    for path, kind in DEFAULTED.items():
        node: Any = out
        model: Any = RunSpec
        for part in path[:-1]:
            model = model.model_fields[part].annotation
            if isinstance(node, dict) and part not in node and _only_required(model, path[-1]):
                node[part] = {}  # a section whose other fields all have defaults (e.g. training)
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or node.get(path[-1]) is not None:
            continue
        found = registry.defaults(kind)
        where = ".".join(path)
        if len(found) == 1:
            node[path[-1]] = _ref(found[0])
        elif not found:
            names = registry.names(kind)
            issues.append(
                SpecIssue(
                    where,
                    f"no {kind} is named here and no installed plugin marks one as the default; name one "
                    f"(installed: {', '.join(names) or '(none)'})",
                )
            )
        else:
            who = ", ".join(f"'{i.name}' ({i.distribution or i.plugin})" for i in found)
            issues.append(
                SpecIssue(
                    where, f"no {kind} is named here and several plugins mark a default: {who}; name one"
                )
            )
    if "metrics" not in out:
        found = registry.defaults("metric")
        if found:
            out["metrics"] = [_ref(i) for i in found]
        else:
            issues.append(
                SpecIssue(
                    "metrics",
                    "no metrics are listed and no installed plugin marks a default metric; list them "
                    f"(installed: {', '.join(registry.names('metric')) or '(none)'})",
                )
            )
    return out


__all__ = ["fill_defaults", "DEFAULTED"]
