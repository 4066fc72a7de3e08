"""Write the Flower App of a fedreg spec, for ``flwr run`` at real sites.

    python -m fedreg_flower.app SPEC DIR [--set path=value ...]

``DIR`` gets a ``pyproject.toml``: the App's components are fedreg's ServerApp
(:mod:`fedreg_flower.server`) and ClientApp (:mod:`fedreg_flower.client`), installed with fedreg on the
SuperLink's machine and at every site, and its run config holds the spec (YAML text). The spec must run on
``execution.backend: flower``; it is validated here, so that a mistake shows before a federation starts.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from fedreg.errors import FedregError

PYPROJECT = """\
# The Flower App of the fedreg spec '{name}', written by: python -m fedreg_flower.app
# Run it on a SuperLink: flwr run {folder} <connection> (docs/flower.md, "Run at real sites").
[project]
name = "{project}"
version = "1.0.0"
description = "fedreg spec '{name}' on Flower"
dependencies = ["fedreg"]

[tool.flwr.app]
publisher = "fedreg"

[tool.flwr.app.components]
serverapp = "fedreg_flower.server:app"
clientapp = "fedreg_flower.client:app"

[tool.flwr.app.config]
# the spec, as fedreg validated it (override per run: flwr run ... --run-config 'tracking-uri="..."')
spec = {spec}
tracking-uri = ""
variant = ""
"""


def write_app(spec_path: str | Path, folder: str | Path, overrides: list[str] | None = None) -> Path:
    """Validate the spec (with ``overrides``), write its Flower App into ``folder``; the pyproject's path."""
    from fedreg.registry import get_registry
    from fedreg.spec import load_raw, resolve

    raw = load_raw(spec_path, overrides or [])
    specs = resolve(raw, get_registry(), source=str(spec_path))
    wrong = sorted({rs.spec.execution.backend for rs in specs} - {"flower"})
    if wrong:
        raise FedregError(
            f"'{spec_path}' runs on execution.backend {', '.join(wrong)}: a Flower App needs "
            "execution.backend: flower (add --set execution.backend=flower)"
        )
    name = specs[0].spec.name
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
    project = "fedreg-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "spec")
    path = out / "pyproject.toml"
    path.write_text(PYPROJECT.format(name=name, folder=out, project=project, spec=json.dumps(text)))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedreg_flower.app", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="the fedreg spec (YAML) to run at the sites")
    parser.add_argument("folder", help="the Flower App's folder (created; its pyproject.toml is replaced)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="PATH=VALUE", help="override a spec field"
    )
    args = parser.parse_args(argv)
    try:
        path = write_app(args.spec, args.folder, args.set)
    except FedregError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}; run it with: flwr run {args.folder} <connection>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
