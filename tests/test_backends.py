"""Execution backends are entry points (group ``fedreg.backends``): fedreg's own and a plugin's alike, a
spec's backend checked at validation, fedreg's own names not replaceable by another distribution."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fedreg.backends import BACKEND_GROUP, backend_class, installed_backends
from fedreg.clients import LocalBackend
from fedreg.errors import FedregError, SpecError
from fedreg.registry import build_registry
from fedreg.spec import resolve
from fedreg.testing import tiny_federation
from testhelpers import base_spec

SERIAL = """
from fedreg.clients import LocalBackend


class Reversed(LocalBackend):
    '''Clients in reverse order, results in job order (as the contract asks).'''

    name = "reversed"
    calls = 0

    def train(self, jobs, rin):
        Reversed.calls += 1
        out = {job.cid: self.runner.run(job, rin) for job in reversed(jobs)}
        return [out[job.cid] for job in jobs]


class NotABackend:
    pass
"""


def dist(site: Path, name: str, module: str, backends: dict[str, str]) -> None:
    """An installed distribution in ``site`` whose module holds :data:`SERIAL` and the given backends."""
    (site / f"{module}.py").write_text(textwrap.dedent(SERIAL))
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    eps = "".join(f"{n} = {v}\n" for n, v in backends.items())
    (info / "entry_points.txt").write_text(f"[{BACKEND_GROUP}]\n{eps}")


def test_fedregs_own_backends_are_entry_points():
    assert {"local", "ray", "vectorized"} <= set(installed_backends())
    assert backend_class("local") is LocalBackend


def test_a_plugin_backend_runs_a_federation_and_cannot_replace_fedregs_own(tmp_path, monkeypatch):
    dist(
        tmp_path,
        "fedreg-order",
        "fedreg_order",
        {
            "reversed": "fedreg_order:Reversed",
            "local": "fedreg_order:Reversed",
            "odd": "fedreg_order:NotABackend",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    backends = installed_backends()
    assert backends["reversed"] == "fedreg_order:Reversed"
    assert backends["local"] == "fedreg.clients:LocalBackend"  # fedreg's own, not the plugin's
    # fedreg plugins lists the plugin's backend and, as broken, the entry point that would replace 'local'
    from fedreg.backends import listing

    rows, refused = listing()
    assert {
        "name": "reversed",
        "value": "fedreg_order:Reversed",
        "distribution": "fedreg-order",
        "version": "0.1",
    } in rows
    assert [r["name"] for r in rows if r["distribution"] == "fedreg"] == [
        "flower",
        "local",
        "ray",
        "vectorized",
    ]
    (bad,) = refused
    assert bad["plugin"] == "backend local" and "fedreg's own" in bad["error"]
    cls = backend_class("reversed")
    with pytest.raises(FedregError, match="'odd' .* is not a fedreg.clients.Backend"):
        backend_class("odd")
    # the plugin's backend trains the same clients to the same weights as the local one
    import torch

    runs = {name: tiny_federation({"execution.backend": name}) for name in ("local", "reversed")}
    assert cls.calls == 3  # one call per round of the tiny federation
    for k, v in runs["local"].global_state.items():
        assert torch.equal(v, runs["reversed"].global_state[k]), k


def test_an_unknown_backend_is_a_spec_error_listing_the_installed_ones():
    raw = base_spec()
    raw["execution"] = {"backend": "flwr"}
    with pytest.raises(SpecError) as exc:
        resolve(raw, build_registry())
    msg = str(exc.value)
    assert "execution.backend" in msg and "'flwr' is not an installed backend" in msg
    assert "local, ray, vectorized" in msg
