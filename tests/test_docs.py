"""Every hook specification is documented in docs/plugins.md under a heading with its signature."""

from __future__ import annotations

import inspect
import re

import pytest

from fedreg import hookspecs
from testhelpers import REPO

HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("fedreg_")]


def test_there_are_hooks():
    assert len(HOOKS) >= 7


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_documented(hook):
    doc = (REPO / "docs" / "plugins.md").read_text()
    sig = str(inspect.signature(getattr(hookspecs, hook)))
    assert re.search(rf"^#+ +`?{re.escape(hook + sig)}`?\s*$", doc, re.M), f"{hook}{sig} has no heading"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_docstring_says_when_and_none(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert "Called" in doc and ":param register:" in doc and "None" in doc
