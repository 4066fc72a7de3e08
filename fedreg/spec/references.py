"""Component references resolved against the registry (:class:`ResolvedComponent`): the name looked up,
the parameters validated by the component's own ``Params`` model, every problem kept as a
:class:`~fedreg.errors.SpecIssue` at its spec path."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from fedreg.errors import SpecIssue
from fedreg.registry import Registry
from fedreg.spec.schema import ComponentRef


class ResolvedComponent:
    """A component reference resolved against the registry, with validated parameters."""

    def __init__(self, info, params):
        self.info = info
        self.params = params

    @property
    def name(self) -> str:
        return self.info.name

    def instantiate(self):
        obj = self.info.cls(self.params)
        obj.origin = f"plugin '{self.info.plugin}', {self.info.provider}".rstrip(", ")
        return obj


#: the most characters of a value echoed in a message
MAX_ECHO = 80


def shorten(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)``, cut to ``limit`` characters (with "...") so a huge value cannot flood a message."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 3, 8, 8, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _pydantic_issues(exc: ValidationError, prefix: str = "", fields: Iterable[str] = ()) -> list[SpecIssue]:
    """One issue per pydantic error, at its spec path. ``fields``: the validated model's own keys, offered as
    "did you mean" for an unknown key at its top level."""
    issues = []
    for err in exc.errors(include_url=False):
        path = _loc(err["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), list(fields), n=1)
            if close and len(err["loc"]) == 1:
                msg = f"unknown key (did you mean '{close[0]}'?)"
            else:
                msg = "unknown key (remove it or check its spelling)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("model_type",):
            msg = f"{msg} (got {shorten(err['input'])})"
        issues.append(SpecIssue(path, msg))
    return issues


def _raw_get(data: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(data, dict) or p not in data:
            return None
        data = data[p]
    return data


def _resolve_ref(
    registry: Registry, kind: str, raw: Any, path: str, issues: list[SpecIssue]
) -> ResolvedComponent | None:
    try:
        ref = ComponentRef.model_validate(raw)
    except ValidationError:
        return None  # already reported by the structural pass
    try:
        info = registry.lookup(kind, ref.name, ref.provider)
    except LookupError as exc:
        issues.append(SpecIssue(f"{path}.name" if isinstance(raw, dict) else path, str(exc)))
        return None
    try:
        params = info.cls.Params.model_validate(ref.params)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc, f"{path}.params", info.cls.Params.model_fields))
        return None
    return ResolvedComponent(info, params)
