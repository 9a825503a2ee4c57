"""The server's import structure (docs/architecture.md): the ingest server imports only the
protocol contract from uplink/ (wire.py, audio.py) and nothing from capture/; no module of
ingest_server imports itself back through another (no import cycles, TYPE_CHECKING imports
included: a cycle there is still a circle in the design)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ingest_server"
CONTRACT = {"uplink.wire", "uplink.audio"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level \
                else node.module or ""
            found.add(target)
            # `from . import x` / `from .storage import journal` may name submodules
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_the_server_imports_only_the_protocol_contract_from_the_client_side() -> None:
    offending = {
        f"{module_name(p)} imports {m}"
        for p in PACKAGE.rglob("*.py")
        for m in imports_of(p)
        if m.split(".")[0] == "capture"
        or (m.split(".")[0] == "uplink" and not any(m == c or m.startswith(c + ".")
                                                    for c in CONTRACT))
    }
    assert not offending


def test_no_import_cycles_among_server_modules() -> None:
    edges = graph()
    # A package's __init__ re-exports its modules; importing a sibling through the package
    # is the same edge as importing it directly, so the package itself is not a node of
    # its own modules' cycles.
    for name in edges:
        edges[name] = {m for m in edges[name] if not name.startswith(m + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
