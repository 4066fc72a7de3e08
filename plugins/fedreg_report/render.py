"""The report as text: its blocks rendered to markdown (report.md) and to one self-contained HTML page
(report.html) by the Jinja2 templates in ``plugins/fedreg_report/templates/``.

A block is a tuple, one of::

    ("h", level, text)        a heading
    ("p", text)               a paragraph
    ("ul", [text, ...])       a bulleted list
    ("table", headers, rows)  a table; rows are lists of cells
    ("img", file, caption)    a figure: a PNG file in the report folder

Text is markdown with `code` spans and nothing else. The HTML template is autoescaped; its ``inline``
filter escapes a text and turns the code spans into ``<code>``; the figures are embedded as data URIs.
"""

from __future__ import annotations

import base64
import functools
import html
import re
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
from markupsafe import Markup

#: a block of the report (see the module's docstring)
Block = tuple[Any, ...]


def _md_cell(text: Any) -> str:
    """A markdown table cell: '|' escaped, line breaks as spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _inline(text: Any) -> Markup:
    """A text as HTML: escaped, its `code` spans as <code> elements."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text), quote=False)))


@functools.cache
def environment() -> jinja2.Environment:
    """The templates' environment: autoescape for the HTML template, and the blocks' tags on lines of their
    own leave no blank lines behind."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fedreg_report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md_cell"] = _md_cell
    env.filters["inline"] = _inline
    return env


def _fields(block: Block, image_dir: Path | None = None) -> SimpleNamespace:
    """A block as named fields for the templates (kind, level, text, items, headers, rows, file, caption);
    an image also as a data URI (src) when ``image_dir`` is given."""
    kind = block[0]
    if kind == "h":
        return SimpleNamespace(kind=kind, level=int(block[1]), text=block[2])
    if kind == "p":
        return SimpleNamespace(kind=kind, text=block[1])
    if kind == "ul":
        return SimpleNamespace(kind=kind, items=list(block[1]))
    if kind == "table":
        return SimpleNamespace(kind=kind, headers=list(block[1]), rows=[list(r) for r in block[2]])
    if kind == "img":
        src = None
        if image_dir is not None:
            data = base64.b64encode((image_dir / block[1]).read_bytes()).decode("ascii")
            src = f"data:image/png;base64,{data}"
        return SimpleNamespace(kind=kind, file=block[1], caption=block[2], src=src)
    raise ValueError(f"unknown report block {kind!r} (one of h, p, ul, table, img)")


def render_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as markdown, separated by blank lines (report.md)."""
    return environment().get_template("report.md.j2").render(blocks=[_fields(b) for b in blocks])


def render_html(blocks: Sequence[Block], image_dir: Path, title: str = "fedreg report") -> str:
    """A self-contained page: the images (in ``image_dir``) are embedded as base64 PNG."""
    return (
        environment()
        .get_template("report.html.j2")
        .render(title=title, blocks=[_fields(b, image_dir) for b in blocks])
    )
