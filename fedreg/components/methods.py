"""Methods: the method-preset kind (:class:`Method`), a named composition of components."""

from __future__ import annotations

from typing import Any

from fedreg.components.base import Component


class Method(Component):
    """A method preset: one name in a spec (``method``) that stands for the components of a method and their
    parameters, so a user need not know which objective goes with which aggregation.

    ``parts()`` returns dotted spec paths and the component references to put there, for example
    ``{"training.objective": {"name": "scaffold", "params": {}}, "federation.aggregation": {...}}``. The spec
    is expanded before it is validated; a path the spec (or variant) sets itself keeps the spec's value, so a
    preset's part can be swapped for an ablation. A preset never runs: the components it names do."""

    kind = "method"
    hook = "fedreg_register_methods"
    spec_path = ("method",)
    contract = ("check_spec", "parts")

    def parts(self) -> dict[str, Any]:
        raise NotImplementedError
