"""``fedreg new-plugin NAME``: write a ready plugin distribution ``fedreg-NAME`` (a pyproject with the
``fedreg`` entry point, a module that registers one component of each kind, a test that runs them in a small
federation with :func:`fedreg.testing.tiny_federation`), to install with ``pip install --no-deps -e``."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

from fedreg import first_party
from fedreg.errors import EnvironmentProblem, FedregError
from fedreg.plugin_template_files import MODULE, PYPROJECT, README, TEST

#: the longest plugin name (it names the distribution fedreg-NAME, the module fedreg_NAME and prefixes the
#: component names)
NAME_MAX = 40
NAME = re.compile(rf"[a-z][a-z0-9_]{{0,{NAME_MAX - 1}}}")


def new_plugin(name: str, folder: str | Path | None = None) -> Path:
    """Write the distribution ``fedreg-NAME`` into ``folder`` (default ``./fedreg-NAME``); return it. The
    folder must not exist yet."""
    check_name(name)
    dash = name.replace("_", "-")
    root = Path(folder) if folder is not None else Path(f"fedreg-{dash}")
    if root.exists():
        raise FedregError(f"'{root}' already exists; choose another name or --dir")
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"fedreg_{name}/__init__.py": MODULE,
        "tests/test_plugin.py": TEST,
    }
    try:
        for rel, template in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(template.format(name=name, dash=dash))
    except OSError as exc:
        shutil.rmtree(root, ignore_errors=True)  # no half-written distribution left behind
        raise unwritable(root, exc, f"fedreg-{dash}") from None
    return root


def check_name(name: str) -> None:
    """Refuse a plugin name that is not a module name of :data:`NAME_MAX` characters at most, or that would
    replace one of fedreg's own plugins."""
    if not NAME.fullmatch(name):
        odd = sorted({c for c in name if not re.fullmatch(r"[a-z0-9_]", c)})
        if odd:
            why = f"it has {', '.join(repr(c) for c in odd[:5])}"
            why += " (not ASCII)" if any(ord(c) > 127 for c in odd) else ""
        elif len(name) > NAME_MAX:
            why = f"it has {len(name)} characters, at most {NAME_MAX} are allowed"
        else:
            why = "it does not start with a letter"
        raise FedregError(
            f"plugin name '{name}' is not usable ({why}): use lowercase ASCII letters (a-z), digits (0-9) "
            f"and '_', starting with a letter, at most {NAME_MAX} characters (it names the module "
            "fedreg_NAME and prefixes the component names)"
        )
    own = first_party.reserved()
    if name in own or f"fedreg_{name}" in own.values():
        raise FedregError(
            f"plugin name '{name}' is reserved: fedreg's own plugin '{name}' (module fedreg_{name}) has it, "
            f"and a distribution with the entry point '{name}' and the module fedreg_{name} would replace it "
            f"(fedreg does not load such a distribution). Choose another name, e.g. 'my_{name}'; reserved: "
            f"{', '.join(sorted(own))}"
        )


def unwritable(root: Path, exc: OSError, default: str) -> FedregError:
    """The folder of a new plugin cannot be written: a disk that is full, read-only or failing is the
    machine's problem (exit status 1), any other reason the choice of folder's (2)."""
    parent = next((p for p in root.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        why = f"'{parent}' is a file, not a folder"
    elif parent is not None and not root.exists():
        why = f"the folder '{parent}' does not take a new folder '{root.name}' ({exc.strerror or exc})"
    else:
        why = f"{exc.strerror or exc}: '{exc.filename or root}'"
    text = (
        f"cannot write the plugin into '{root}': {why}. Choose a folder you can write with --dir (e.g. "
        f"--dir ./{default})"
    )
    machine = exc.errno in (errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT)
    return EnvironmentProblem(text) if machine else FedregError(text)
