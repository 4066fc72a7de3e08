"""A spec as raw data, before validation: reading the YAML file (``yaml.SafeLoader`` only; duplicate keys
and alias bombs refused), ``--set`` overrides on dotted paths, and the variants, each the base spec with
its overrides merged in."""

from __future__ import annotations

import copy
import itertools
import json
import os
from pathlib import Path
from typing import Any

import yaml

from fedreg.errors import SpecError, SpecIssue

#: the most values a YAML document may expand to through its aliases (``*name``): far above any real spec,
#: far below what hangs the loader (a "billion laughs" alias bomb)
MAX_YAML_VALUES = 100_000


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only)."""


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` stands for with every alias written out (aliases share one node object, so
    this counts shared nodes once per use without building anything)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_YAML_VALUES + 1  # a node inside itself (a recursive alias) is too big as well
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo)
            if size > MAX_YAML_VALUES:
                break
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo) + _expanded_size(v, memo)
            if size > MAX_YAML_VALUES:
                break
    memo[key] = size
    return size


def _duplicate_keys(node: yaml.Node, path: str, seen_nodes: set[int], issues: list[SpecIssue]) -> None:
    """A key written twice in one mapping (YAML would silently keep the last), at its path and lines."""
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _duplicate_keys(child, f"{path}.{i}" if path else str(i), seen_nodes, issues)
    elif isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                line = k.start_mark.line + 1
                if k.value in first:
                    issues.append(
                        SpecIssue(
                            f"{path}.{k.value}" if path else k.value,
                            f"duplicate key at line {line} (first at line {first[k.value]}); YAML would "
                            "keep only the last one. Remove one of them (to run several settings, write "
                            "variants with distinct names)",
                        )
                    )
                else:
                    first[k.value] = line
                child = f"{path}.{k.value}" if path else str(k.value)
            else:
                child = path
            _duplicate_keys(v, child, seen_nodes, issues)


def parse_yaml(text: str, what: str = "the spec") -> Any:
    """YAML text as plain data (``yaml.SafeLoader`` only). Raises :class:`SpecError` for malformed YAML,
    duplicate keys, and aliases that expand to more than ``MAX_YAML_VALUES`` values."""
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        memo: dict[int, int] = {}
        if _expanded_size(node, memo) > MAX_YAML_VALUES:
            # name the top-level keys that expand too far (the whole document when none does alone)
            paths = [
                str(k.value)
                for k, v in (node.value if isinstance(node, yaml.MappingNode) else [])
                if isinstance(k, yaml.ScalarNode) and _expanded_size(v, memo) > MAX_YAML_VALUES
            ] or [""]
            raise SpecError(
                [
                    SpecIssue(
                        path,
                        f"{'this value' if path else what} expands to more than {MAX_YAML_VALUES:,} "
                        "values through YAML aliases (*name) nested in lists or mappings (an alias "
                        "bomb?). Write the values out, or use fewer nested aliases",
                    )
                    for path in paths
                ]
            )
        issues: list[SpecIssue] = []
        _duplicate_keys(node, "", set(), issues)
        if issues:
            raise SpecError(issues)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return f"malformed YAML{where}: {problem}"


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise SpecError([SpecIssue("", f"spec file '{p}' does not exist")])
    if p.is_dir():
        raise SpecError(
            [
                SpecIssue(
                    "",
                    f"'{p}' is a folder, not a spec file; pass the path of a YAML spec (e.g. {p}/spec.yaml)",
                )
            ]
        )
    try:
        blob = p.read_bytes()
    except OSError as exc:
        raise SpecError([SpecIssue("", f"cannot read spec file '{p}': {exc.strerror or exc}")]) from None
    try:
        if b"\0" in blob:
            raise UnicodeDecodeError("utf-8", blob, blob.index(b"\0"), blob.index(b"\0") + 1, "NUL byte")
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            [
                SpecIssue(
                    "",
                    f"'{p}' is not a UTF-8 text file (byte {exc.start} is "
                    f"{blob[exc.start : exc.start + 1]!r}); "
                    "a spec is YAML text: pass the right file, or save it as UTF-8",
                )
            ],
            source=str(p),
        ) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise SpecError(
            [SpecIssue("", f"{_yaml_problem(exc)}. Fix the YAML syntax")], source=str(p)
        ) from None
    except SpecError as exc:
        raise SpecError(exc.issues, source=str(p)) from None
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
    """Set ``a.b.c`` (list items by index: ``metrics.0.name``) in a nested dict, creating mappings. A
    mapping may hold a dotted key (a variant's ``federation.aggregation: {...}``): a path through it sets
    the value there, so the spec keeps one place for it."""
    parts = _split_path(path)
    target: Any = data
    i = 0
    while True:
        if isinstance(target, dict):  # the longest dotted key the rest of the path starts with
            step = next((j for j in range(len(parts) - i, 1, -1) if ".".join(parts[i : i + j]) in target), 1)
            part = ".".join(parts[i : i + step])
        else:
            step, part = 1, parts[i]
        i += step
        if i >= len(parts):
            break
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
    if isinstance(target, list):
        target[int(part)] = value
    else:
        target[part] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    issues = []
    for item in items:
        where = f"--set {item if len(item) <= 80 else item[:77] + '...'}"
        if "=" not in item:
            issues.append(SpecIssue(where, "expected path.to.key=value"))
            continue
        key, text = item.split("=", 1)
        try:
            value = parse_yaml(text, "the value") if text != "" else ""
            _split_path(key.strip())
        except yaml.YAMLError as exc:
            issues.append(SpecIssue(where, _yaml_problem(exc)))
            continue
        except SpecError as exc:
            issues.extend(SpecIssue(where, i.message) for i in exc.issues)
            continue
        except ValueError as exc:
            issues.append(SpecIssue(where, str(exc).splitlines()[0]))
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


def grid_points(params: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid's values ({path: value}), the last path varying fastest."""
    return [dict(zip(params, combo, strict=True)) for combo in itertools.product(*params.values())]


def short_names(paths: list[str]) -> dict[str, str]:
    """The shortest distinct dotted suffix of each path: ``training.objective.params.tau`` -> ``tau``
    (``objective.params.tau`` when another gridded path also ends in ``tau``)."""
    out: dict[str, str] = {}
    for path in paths:
        parts = path.split(".")
        for n in range(1, len(parts) + 1):
            short = ".".join(parts[-n:])
            if sum(1 for p in paths if p == short or p.endswith("." + short)) == 1:
                break
        out[path] = short
    return out


def format_value(value: Any) -> str:
    """A grid value as it reads in a run name: ``2``, ``0.5``, ``1e-05``, ``true``, ``cnn``."""
    if isinstance(value, bool) or value is None:
        return yaml.safe_dump(value).split("\n", 1)[0]
    return str(value)


def grid_label(point: dict[str, Any]) -> str:
    """A grid point in a run name: ``tau=2.lambda_max=0.5`` (see :func:`short_names`)."""
    names = short_names(list(point))
    return ".".join(f"{names[p]}={format_value(v)}" for p, v in point.items())


def apply_grid_point(data: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each path of a grid point set to its value (a component shorthand keeps its name)."""
    data = copy.deepcopy(data)
    for path, value in point.items():
        set_path(data, path, copy.deepcopy(value))
    return data


def expand_variants(raw: dict[str, Any]) -> list[tuple[str | None, dict[str, Any] | None, str]]:
    """(variant name, raw dict, path prefix for errors) for every variant, or the base spec alone; the raw
    dict is None for a variant that is not a mapping. The grid (``grid:``) is left to the caller."""
    base = {k: v for k, v in raw.items() if k not in ("variants", "grid")}
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


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts (and lists of dicts) as dotted keys -> strings (lists of values as JSON): a resolved
    spec as MLflow params, or as the identity of a checkpoint."""
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, list) and d and all(isinstance(v, dict) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        out[prefix] = json.dumps(d) if isinstance(d, list | dict) else str(d)
    return out
