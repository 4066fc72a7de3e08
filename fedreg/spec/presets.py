"""Method presets in a spec: ``method`` expanded into the components of the method, at every path the spec
(or a variant) does not set itself, and the check that a variant's preset is not shadowed by the base spec."""

from __future__ import annotations

import copy
from typing import Any

from fedreg.errors import SpecIssue
from fedreg.registry import Registry
from fedreg.spec.loading import merge_variant, set_path
from fedreg.spec.references import _raw_get, _resolve_ref


def _preset_parts(ref: Any, registry: Registry, issues: list[SpecIssue]) -> tuple[str, dict[str, Any]] | None:
    """(preset name, its parts) for a ``method`` reference, or None when it does not resolve (the reference
    itself is reported when ``method`` is resolved as a component)."""
    resolved = _resolve_ref(registry, "method", ref, "method", [])
    if resolved is None:
        return None
    try:
        return resolved.name, dict(resolved.instantiate().parts())
    except Exception as exc:  # noqa: BLE001 - a plugin bug, reported at the spec path
        issues.append(SpecIssue("method", f"method preset '{resolved.name}' failed to expand: {exc!r}"))
        return None


def expand_method(raw: Any, registry: Registry, issues: list[SpecIssue]) -> Any:
    """The spec with its method preset's parts written in, at every path the spec does not set itself."""
    if not isinstance(raw, dict) or raw.get("method") is None:
        return raw
    found = _preset_parts(raw["method"], registry, issues)
    if found is None:
        return raw
    name, parts = found
    out = copy.deepcopy(raw)
    for path, value in parts.items():
        current = _raw_get(out, tuple(path.split(".")))
        try:
            if current is None:
                set_path(out, path, copy.deepcopy(value))
            elif isinstance(current, dict) and "name" not in current and isinstance(value, dict):
                # the spec sets some params of the preset's component: keep the preset's name and the rest
                set_path(out, path, merge_variant(value, current))
        except (ValueError, IndexError, TypeError, AttributeError) as exc:
            issues.append(SpecIssue(path, f"method preset '{name}' cannot set this path: {exc}"))
    return out


def _preset_shadowed(
    base: dict[str, Any], override: dict[str, Any], registry: Registry, prefix: str
) -> list[SpecIssue]:
    """A variant that names a method preset while the base spec sets one of the preset's parts would
    silently run the base's part: report it (a part the variant sets itself is an intended swap)."""
    if "method" not in override:
        return []
    found = _preset_parts(override["method"], registry, [])
    if found is None:
        return []
    name, parts = found
    own = merge_variant({}, {k: v for k, v in override.items() if k != "method"})
    out = []
    for path in parts:
        keys = tuple(path.split("."))
        if _raw_get(base, keys) is not None and _raw_get(own, keys) is None:
            out.append(
                SpecIssue(
                    f"{prefix}.method",
                    f"the base spec sets {path}, which would replace this variant's preset '{name}' part; "
                    f"remove {path} from the base spec (name a method preset there instead) or set it in "
                    f"this variant",
                )
            )
    return out
