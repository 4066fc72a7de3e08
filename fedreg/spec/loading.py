"""A spec as raw data, before validation: reading the YAML file (``yaml.safe_load`` only), ``--set``
overrides on dotted paths, and the variants, each the base spec with its overrides merged in."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from fedreg.errors import SpecError, SpecIssue


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise SpecError([SpecIssue("", f"spec file '{p}' does not exist")])
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            [SpecIssue("", f"malformed YAML{where}: {problem}. Fix the YAML syntax")], source=str(p)
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            [SpecIssue("", f"a spec must be a mapping of keys to values, got {type(data).__name__}")],
            source=str(p),
        )
    return data


def _split_path(path: str) -> list[str]:
    parts = [p for p in path.split(".")]
    if not path or any(not p for p in parts):
        raise ValueError(f"'{path}' is not a dotted path like training.batch_size")
    return parts


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` (list items by index: ``metrics.0.name``) in a nested dict, creating mappings."""
    parts = _split_path(path)
    target: Any = data
    for part in parts[:-1]:
        if isinstance(target, list):
            target = target[int(part)]
            continue
        nxt = target.get(part)
        if nxt is None or not isinstance(nxt, dict | list):
            nxt = {}
            if isinstance(target.get(part), str):  # component shorthand: keep its name
                nxt = {"name": target[part]}
            target[part] = nxt
        target = nxt
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    issues = []
    for item in items:
        if "=" not in item:
            issues.append(SpecIssue(f"--set {item}", "expected path.to.key=value"))
            continue
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
            _split_path(key.strip())
        except (yaml.YAMLError, ValueError) as exc:
            issues.append(SpecIssue(f"--set {item}", str(exc).splitlines()[0]))
            continue
        out.append((key.strip(), value))
    if issues:
        raise SpecError(issues)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    issues = []
    for key, value in overrides:
        try:
            set_path(data, key, value)
        except (ValueError, IndexError, TypeError, AttributeError) as exc:
            issues.append(SpecIssue(key, f"cannot set this path: {exc}"))
    if issues:
        raise SpecError(issues)
    return data


def merge_variant(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Apply a variant's overrides. Keys may be dotted paths. Mappings merge recursively, except a mapping
    that names a component (has ``name``), which replaces the reference whole; anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if "." in key:
            parts = key.split(".")
            nested: Any = value
            for p in reversed(parts[1:]):
                nested = {p: nested}
            key, value = parts[0], nested
        if isinstance(value, dict) and "name" not in value and isinstance(out.get(key), dict):
            out[key] = merge_variant(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def expand_variants(raw: dict[str, Any]) -> list[tuple[str | None, dict[str, Any] | None, str]]:
    """(variant name, raw dict, path prefix for errors) for every variant, or the base spec alone; the raw
    dict is None for a variant that is not a mapping."""
    base = {k: v for k, v in raw.items() if k != "variants"}
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or not variants:
        return [(None, base, "")]
    out: list[tuple[str | None, dict[str, Any] | None, str]] = []
    for name, override in variants.items():
        if override is None:
            override = {}
        if not isinstance(override, dict):
            out.append((str(name), None, f"variants.{name}"))
            continue
        out.append((str(name), merge_variant(base, override), f"variants.{name}"))
    return out


def load_raw(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """The spec file as data, with ``--set`` overrides applied (not yet validated)."""
    raw = load_yaml(path)
    if overrides:
        raw = apply_overrides(raw, parse_overrides(overrides))
    return raw
