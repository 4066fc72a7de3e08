"""fedreg's own plugins cannot be replaced by another distribution.

The first-party plugins are entry points of the ``fedreg`` distribution itself (pyproject.toml's
``[project.entry-points.fedreg]``, ``fedreg.commands`` and ``fedreg.backends``): ``standard``, ``baselines``,
``metrics``, ``fedkper``, the ``report`` command and the backends ``local``, ``ray``, ``vectorized``,
``flower``, in the modules ``fedreg_standard``, ... A third-party distribution
whose entry point takes one of these names, or whose module has the name of one of these modules (what
``fedreg new-plugin standard`` would write), is not loaded: the registry lists it as a broken plugin saying
why. And a first-party module is always imported from fedreg's own files, even where another distribution
earlier on ``sys.path`` holds a module of the same name.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import sys
from pathlib import Path

#: the distribution whose entry points are first-party
OWN = "fedreg"
#: the entry-point groups whose names are reserved
GROUPS = ("fedreg", "fedreg.commands", "fedreg.backends")
#: fedreg's own entry points (name -> top-level module), as pyproject.toml declares them; read from the
#: installed metadata when it can be
DECLARED = {
    "standard": "fedreg_standard",
    "baselines": "fedreg_baselines",
    "metrics": "fedreg_metrics",
    "fedkper": "fedreg_fedkper",
    "report": "fedreg_report",
    "local": "fedreg",
    "ray": "fedreg",
    "vectorized": "fedreg",
    "flower": "fedreg_flower",
}


def _module(value: str) -> str:
    """The top-level module of an entry point's value (``fedreg_report.cli:COMMAND`` -> ``fedreg_report``)."""
    return value.split(":")[0].split(".")[0].strip()


def reserved() -> dict[str, str]:
    """The names of fedreg's own entry points (groups :data:`GROUPS`), each with its top-level module."""
    try:
        eps = md.distribution(OWN).entry_points
    except md.PackageNotFoundError:
        return dict(DECLARED)
    return {**DECLARED, **{ep.name: _module(ep.value) for ep in eps if ep.group in GROUPS}}


def refusal(name: str, value: str, dist: str) -> str | None:
    """Why the entry point ``name = value`` of the distribution ``dist`` is not loaded (it would replace a
    first-party plugin or its module), or None when it may be (an entry point of no distribution, made by
    hand, may)."""
    if not dist or dist == OWN:
        return None
    names = reserved()
    module, modules = _module(value), set(names.values())
    if name not in names and module not in modules:
        return None
    if name in names:
        what = f"its entry point '{name}' has the name of fedreg's own plugin '{name}' (module {names[name]})"
    else:
        what = f"its module '{module}' has the name of the module of a fedreg plugin"
    hides = f" and its module '{module}' (it hides fedreg's own module)" if module in modules else ""
    return (
        f"{what}, which it would replace; it was not loaded. The names of fedreg's own plugins are reserved "
        f"({', '.join(sorted(names))}; modules {', '.join(sorted(modules))}): rename its entry point "
        f"'{name} = {value}' in its pyproject.toml{hides}, then reinstall it"
    )


def own_file(module: str) -> Path | None:
    """The ``__init__.py`` of fedreg's own module ``module``: beside the ``fedreg`` package (an installed
    wheel) or in ``plugins/`` of the source tree (an editable install); None when neither holds it."""
    import fedreg

    root = Path(fedreg.__file__).resolve().parent.parent
    for base in (root, root / "plugins"):
        init = base / module / "__init__.py"
        if init.is_file():
            return init
    return None


def pin(module: str) -> None:
    """Make ``import module`` give fedreg's own module, whatever else ``sys.path`` holds under that name."""
    mine = own_file(module)
    if mine is None:
        return
    loaded = sys.modules.get(module)
    if loaded is not None:
        where = getattr(loaded, "__file__", None)
        if where and Path(where).resolve() == mine:
            return
        for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            del sys.modules[name]  # another distribution's module of that name: not ours
    else:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin and Path(spec.origin).resolve() == mine:
            return
    spec = importlib.util.spec_from_file_location(module, mine, submodule_search_locations=[str(mine.parent)])
    if spec is None or spec.loader is None:
        return
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[module]
        raise


def pin_all() -> None:
    """:func:`pin` every first-party module (before any entry point is loaded); a module that fails to
    import is left to its entry point, which reports it."""
    for module in sorted(set(reserved().values())):
        try:
            pin(module)
        except Exception:  # noqa: BLE001 - reported when its entry point is loaded
            pass


__all__ = ["DECLARED", "OWN", "own_file", "pin", "pin_all", "refusal", "reserved"]
