"""Component registry built from the ``fedreg`` entry-point group.

Each entry point is loaded on its own, so one broken plugin is reported (``fedreg plugins``) while every
other plugin keeps working. Each registration hook implementation is called separately with a
``register`` bound to its plugin, so every component knows which plugin and distribution provided it.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from fedreg import HOOK_API_VERSION, first_party, hookspecs
from fedreg.components import KIND_BASES, Component
from fedreg.errors import PluginError
from fedreg.figures import Figure, figures_of

ENTRY_POINT_GROUP = "fedreg"

#: registration hook name -> component kind it registers (declared on each kind's base class)
HOOK_KINDS: dict[str, str] = {base.hook: kind for kind, base in KIND_BASES.items()}
KINDS: tuple[str, ...] = tuple(HOOK_KINDS.values())

#: a component's name: what a spec writes and what names its MLflow tags and metric keys
NAME_PATTERN = re.compile(r"[a-z0-9_]+")
NAME_RULE = "lowercase letters, digits and '_' only (no spaces, dots or capitals)"


@dataclass(frozen=True)
class ComponentInfo:
    cls: type[Component]
    kind: str
    name: str
    plugin: str
    distribution: str
    version: str

    @property
    def provider(self) -> str:
        return f"{self.distribution} {self.version}".strip()


@dataclass
class BrokenPlugin:
    plugin: str
    distribution: str
    version: str
    error: str
    detail: str = ""


@dataclass
class Registry:
    components: dict[str, dict[str, list[ComponentInfo]]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )
    broken: list[BrokenPlugin] = field(default_factory=list)
    plugins: dict[str, tuple[str, str]] = field(default_factory=dict)  # plugin -> (dist, version)

    # -- queries -------------------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def all(self) -> Iterable[ComponentInfo]:
        for kind in KINDS:
            for name in sorted(self.components[kind]):
                yield from self.components[kind][name]

    def defaults(self, kind: str) -> list[ComponentInfo]:
        """The components of ``kind`` whose class is marked ``default = True``, sorted by name."""
        return [
            info
            for name in sorted(self.components[kind])
            for info in self.components[kind][name]
            if info.cls.is_default()
        ]

    def lookup(self, kind: str, name: str, provider: str | None = None) -> ComponentInfo:
        """Resolve a component by kind and name; raises :class:`LookupError` with a helpful message."""
        found = self.components[kind].get(name, [])
        if provider is not None:
            chosen = [c for c in found if provider in (c.distribution, c.plugin)]
            if chosen:
                return chosen[0]
            if found:
                have = ", ".join(sorted(f"{c.distribution}" for c in found))
                raise LookupError(
                    f"{kind} '{name}' is not provided by '{provider}'; it is provided by: {have}"
                )
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            who = " and ".join(f"'{c.distribution}' (plugin '{c.plugin}')" for c in found)
            raise LookupError(
                f"{kind} '{name}' is registered by more than one distribution: {who}. Choose one with "
                f"'provider: <distribution>' next to 'name: {name}'."
            )
        for b in self.broken:
            if name == b.plugin or name in b.error or name in b.distribution:
                raise LookupError(
                    f"{kind} '{name}' is unavailable: plugin '{b.plugin}' "
                    f"({b.distribution} {b.version}) is broken: {b.error}"
                )
        names = self.names(kind)
        msg = f"unknown {kind} '{name}'. Registered {kind} components: {', '.join(names) or '(none)'}."
        if not NAME_PATTERN.fullmatch(name):
            msg += f" Component names use {NAME_RULE}."
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        if close:
            msg += f" Did you mean '{close[0]}'?"
        if self.broken:
            msg += " It may come from a broken plugin (see 'fedreg plugins'): " + "; ".join(
                f"'{b.plugin}' ({b.distribution} {b.version}): {b.error}" for b in self.broken
            )
        raise LookupError(msg)

    # -- building ------------------------------------------------------------------------------------------
    def _add(self, plugin: str, dist: str, version: str, kind: str, cls: Any) -> None:
        base = KIND_BASES[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"plugin '{plugin}' registered {cls!r} as a {kind}, but it is not a subclass of "
                f"fedreg.components.{base.__name__}"
            )
        if not cls.name or not isinstance(cls.name, str):
            raise PluginError(f"plugin '{plugin}' registered {cls.__name__} without a 'name'")
        if not NAME_PATTERN.fullmatch(cls.name):
            raise PluginError(
                f"plugin '{plugin}' registered the {kind} {cls.__name__} as {cls.name!r}: a component name "
                f"uses {NAME_RULE}; rename it (e.g. {re.sub(r'[^a-z0-9_]+', '_', cls.name.lower())!r})"
            )
        if cls.api_version > HOOK_API_VERSION:
            raise PluginError(
                f"plugin '{plugin}': {kind} '{cls.name}' needs fedreg plugin contract version "
                f"{cls.api_version}, this fedreg provides {HOOK_API_VERSION}; upgrade fedreg"
            )
        entries = self.components[kind].setdefault(cls.name, [])
        if any(e.cls is cls for e in entries):
            return
        entries.append(ComponentInfo(cls, kind, cls.name, plugin, dist, version))


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def _dist_of(ep: md.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("", "")
    return (dist.metadata["Name"] or "", dist.version or "")


def build_registry(
    entry_points: Iterable[md.EntryPoint] | None = None,
    extra_plugins: Iterable[tuple[str, ModuleType | object]] = (),
) -> Registry:
    """Load every plugin of the ``fedreg`` entry-point group (or ``entry_points``) plus ``extra_plugins``
    (``(name, module_or_object)`` pairs registered directly, for tests) and collect their components."""
    if entry_points is None:
        entry_points = md.entry_points(group=ENTRY_POINT_GROUP)
    first_party.pin_all()  # fedreg's own modules from fedreg's own files, whatever sys.path holds
    reg = Registry()
    pm = new_plugin_manager()
    sources: list[tuple[str, object, str, str]] = []
    seen: set[str] = set()
    for ep in entry_points:
        dist, version = _dist_of(ep)
        key = f"{dist}:{ep.name}:{ep.value}"
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        if why := first_party.refusal(ep.name, ep.value, dist):  # it would replace a first-party plugin
            reg.broken.append(BrokenPlugin(ep.name, dist, version, why))
            continue
        try:
            obj = ep.load()
        except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            reg.broken.append(
                BrokenPlugin(
                    ep.name,
                    dist,
                    version,
                    f"failed to import '{ep.value}': {type(exc).__name__}: {exc}",
                    traceback.format_exc(),
                )
            )
            continue
        sources.append((ep.name, obj, dist, version))
    for name, obj in extra_plugins:
        sources.append((name, obj, getattr(obj, "__name__", name), ""))

    for name, obj, dist, version in sources:
        try:
            if pm.is_registered(obj):
                continue
            pm.register(obj, name=name)
        except Exception as exc:  # noqa: BLE001
            reg.broken.append(
                BrokenPlugin(name, dist, version, f"could not be registered: {type(exc).__name__}: {exc}")
            )
            continue
        unknown = [
            attr
            for attr in dir(obj)
            if attr.startswith("fedreg_") and callable(getattr(obj, attr)) and attr not in HOOK_KINDS
        ]
        if unknown:
            pm.unregister(obj)
            reg.broken.append(
                BrokenPlugin(
                    name,
                    dist,
                    version,
                    f"implements unknown hook(s) {', '.join(unknown)}; known hooks: {', '.join(HOOK_KINDS)}",
                )
            )
            continue
        reg.plugins[name] = (dist, version)

    for hook_name, kind in HOOK_KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in reversed(hook.get_hookimpls()):  # registration order
            plugin_name = impl.plugin_name
            dist, version = reg.plugins.get(plugin_name, ("", ""))
            if any((b.plugin, b.distribution) == (plugin_name, dist) for b in reg.broken):
                continue  # failed an earlier hook (another distribution refused under its name is not it)

            def register(cls, _p=plugin_name, _d=dist, _v=version, _k=kind):
                reg._add(_p, _d, _v, _k, cls)

            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001
                reg.broken.append(
                    BrokenPlugin(
                        plugin_name,
                        dist,
                        version,
                        f"{hook_name} raised {type(exc).__name__}: {exc}",
                        traceback.format_exc(),
                    )
                )
                # drop what it registered before failing
                for names in reg.components.values():
                    for n in list(names):
                        names[n] = [c for c in names[n] if c.plugin != plugin_name]
                        if not names[n]:
                            del names[n]
    return reg


_DEFAULT: Registry | None = None


def installed_figures(registry: Registry | None = None) -> list[Figure]:
    """The figures of every installed metric component (``registry``: default the installed plugins)."""
    if registry is None:
        registry = build_registry()
    return figures_of(info.cls for info in registry.all() if info.kind == "metric")


def params_schema(model) -> dict[str, dict[str, Any]]:
    """Each parameter of a component's ``Params`` model as JSON Schema (pydantic's ``model_json_schema``):
    its ``type`` (or ``anyOf``/``enum``/``$ref``), ``default``, bounds (``minimum``, ``exclusiveMinimum``,
    ...), ``description``, and ``required``. A model pydantic cannot express in JSON Schema falls back to the
    annotation's text as ``type``."""
    try:
        schema = model.model_json_schema()
    except Exception:  # noqa: BLE001 - a plugin's Params may hold types without a JSON Schema
        return {
            name: {
                "type": str(f.annotation).replace("typing.", ""),
                "default": None if f.is_required() else f.get_default(call_default_factory=True),
                "description": f.description or "",
                "required": f.is_required(),
            }
            for name, f in model.model_fields.items()
        }
    required = set(schema.get("required", ()))
    out = {}
    for name, prop in schema.get("properties", {}).items():
        entry = {k: v for k, v in prop.items() if k != "title"}
        entry.setdefault("default", None)
        entry.setdefault("description", "")
        entry["required"] = name in required
        if "$ref" in prop or any("$ref" in a for a in prop.get("anyOf", ())):
            entry["$defs"] = schema.get("$defs", {})  # the nested models it refers to
        out[name] = entry
    return out


def listing(reg: Registry) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """What ``fedreg plugins`` shows: a row per registered component (kind, name, the distribution and
    plugin that provide it, the contract hooks it implements, its params as :func:`params_schema`, its
    description), and the plugins that failed to load."""
    rows = [
        {
            "kind": info.kind,
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "plugin": info.plugin,
            "hooks": info.cls.implemented_hooks(),
            "params": params_schema(info.cls.Params),
            "description": info.cls.describe(),
        }
        for info in reg.all()
    ]
    broken = [
        {"plugin": b.plugin, "distribution": b.distribution, "version": b.version, "error": b.error}
        for b in reg.broken
    ]
    return rows, broken


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry of installed plugins (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None or refresh:
        _DEFAULT = build_registry()
    return _DEFAULT
