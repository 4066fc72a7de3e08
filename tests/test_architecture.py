"""The shape of the code base: the core's import graph has no circles (imports inside functions counted, since
they only defer a circle), no core file grows past the size agreed for one sitting, and the core names no
first-party method."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "fedreg"
#: the most lines a core module may hold (docs/architecture.md, "Layout")
MAX_LINES = 400


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """The fedreg modules ``path`` imports, anywhere in it but under ``if TYPE_CHECKING:`` (relative
    imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports for type checkers only run no code: not part of the graph
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m == "fedreg" or m.startswith("fedreg.")}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in CORE.rglob("*.py")}
    return {n: {m for m in imports_of(p, n) if m in files and m != n} for n, p in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_import_graph_has_no_circles():
    g = graph()
    assert "fedreg.registry" in g and "fedreg.figures" in g["fedreg.registry"]
    assert cycles(g) == []


def test_no_core_file_passes_the_agreed_size():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in CORE.rglob("*.py")}
    assert {f: n for f, n in sizes.items() if n > MAX_LINES} == {}


def test_the_core_names_no_first_party_method():
    """Methods are plugins: no module of the core imports a first-party plugin package."""
    for p in CORE.rglob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("fedreg_"), (p, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("fedreg_") for a in node.names), p
