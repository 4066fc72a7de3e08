"""``fedreg report --page PAGE.md``: a results page kept up to date from the store. The page is the user's:
everything outside two marker lines stays as written; between them goes the report (report.md without its
title, its headings one level down), and its figures and tables are copied to the folder named as the page
without ``.md`` (``docs/results/bloodmnist.md`` -> ``docs/results/bloodmnist/``), which the links point to."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from fedreg.errors import FedregError

BEGIN = "<!-- fedreg report: begin -->"
END = "<!-- fedreg report: end -->"
_HOW = f"put the two lines '{BEGIN}' and '{END}' in the page where the report goes"


def _span(text: str, page: Path) -> tuple[int, int]:
    """(end of the begin marker's line, start of the end marker's line) in ``text``."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        found = f"{len(begins)} begin and {len(ends)} end marker line(s)"
        raise FedregError(f"--page '{page}': {found}, need one of each, begin first; {_HOW}")
    return sum(map(len, lines[: begins[0] + 1])), sum(map(len, lines[: ends[0]]))


def check_page(page: Path) -> None:
    """Refuse, before any work, a page that is not there or lacks its markers."""
    if not page.is_file():
        raise FedregError(f"--page '{page}' is not a file; create it (a title, a few lines) and {_HOW}")
    _span(page.read_text(encoding="utf-8"), page)


def demoted(markdown: str, links: dict[str, str]) -> str:
    """report.md as a part of a page: without its title line, every heading one level down (outside code
    blocks), and the links to its files (``](name)``) pointing to ``links[name]``."""
    out, fenced, dropped_title = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("# ") and not dropped_title:
            dropped_title = True
            continue
        elif not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        out.append(line)
    text = "\n".join(out).strip("\n") + "\n"
    for name, target in links.items():
        text = text.replace(f"]({name})", f"]({target})")
    return text


def update_page(page: Path, out: Path, files: Sequence[str]) -> list[str]:
    """Put the report in ``out`` into ``page`` between its markers and copy its other ``files`` beside it;
    returns the files in the page's folder that this report did not write (stale ones, for the user)."""
    text = page.read_text(encoding="utf-8")
    start, stop = _span(text, page)
    assets = page.with_suffix("")
    assets.mkdir(parents=True, exist_ok=True)
    copied = [f for f in files if f not in ("report.md", "report.html")]
    for name in copied:
        shutil.copyfile(out / name, assets / name)
    links = {name: f"{assets.name}/{name}" for name in copied}
    body = demoted((out / "report.md").read_text(encoding="utf-8"), links)
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(text[:start] + "\n" + body + "\n" + text[stop:], encoding="utf-8")
    os.replace(tmp, page)  # the page is whole, before or after
    return sorted(p.name for p in assets.iterdir() if p.is_file() and p.name not in copied)
