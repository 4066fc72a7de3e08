"""Execution backends: where a round's clients train (``execution.backend``; the contract is
:class:`fedreg.clients.Backend`). Each is an entry point of the group :data:`BACKEND_GROUP`, fedreg's own
(``local`` in :mod:`fedreg.clients`, ``ray`` and ``vectorized`` here) as a plugin's; a backend's module is
imported only when a spec asks for it, so that its dependencies stay optional."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedreg.clients import Backend

#: entry-point group of execution backends: ``name = "module:Class"``, a ``fedreg.clients.Backend`` subclass
BACKEND_GROUP = "fedreg.backends"


#: installed backends by ``sys.path``: validation asks once per variant and grid point, a scan takes ~30 ms
_SCANNED: dict[tuple[str, ...], dict[str, str]] = {}


def installed_backends() -> dict[str, str]:
    """Backend name -> its entry point's value, for every installed backend; another distribution's entry
    point with the name of one of fedreg's own is left out (:func:`fedreg.first_party.refusal`). Scanned
    once per ``sys.path``."""
    from fedreg import first_party

    key = tuple(sys.path)
    if key not in _SCANNED:
        out: dict[str, str] = {}
        for ep in md.entry_points(group=BACKEND_GROUP):
            dist = ep.dist.metadata["Name"] if ep.dist is not None else ""
            if first_party.refusal(ep.name, ep.value, dist) is None:
                out.setdefault(ep.name, ep.value)
        _SCANNED[key] = out
    return dict(_SCANNED[key])


def listing() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """What ``fedreg plugins`` shows of the execution backends: a row per installed backend (name, entry
    point, distribution, version), and the entry points not loaded because they would replace one of
    fedreg's own (with the reason, as broken plugins)."""
    from fedreg import first_party

    rows, refused = [], []
    for ep in sorted(md.entry_points(group=BACKEND_GROUP), key=lambda e: e.name):
        dist, version = (ep.dist.metadata["Name"], ep.dist.version) if ep.dist is not None else ("", "")
        row = {"name": ep.name, "value": ep.value, "distribution": dist, "version": version}
        if (why := first_party.refusal(ep.name, ep.value, dist)) is not None:
            refused.append(
                {"plugin": f"backend {ep.name}", "distribution": dist, "version": version, "error": why}
            )
        else:
            rows.append(row)
    return rows, refused


def backend_class(name: str) -> type[Backend]:
    """The backend class ``execution.backend: name`` names (a spec's backend is checked at validation)."""
    from fedreg import clients
    from fedreg.errors import FedregError, PluginError

    backends = installed_backends()
    if name not in backends:
        raise FedregError(
            f"execution.backend '{name}' is not installed; installed: {', '.join(sorted(backends))}. A "
            "plugin's backend comes with its distribution (fedreg plugins lists them)"
        )
    module, _, attr = backends[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except Exception as exc:  # noqa: BLE001 - a plugin's module may raise anything on import
        raise PluginError(f"execution backend '{name}' ({backends[name]}) failed to load: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, clients.Backend)):
        raise PluginError(f"execution backend '{name}' ({backends[name]}) is not a fedreg.clients.Backend")
    return cls
