"""Import rules that keep the layers apart: the web and DIMSE edges never import each other,
pipelines import nothing from node, and the core imports no edge."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(folder: Path) -> dict[Path, set[str]]:
    out: dict[Path, set[str]] = {}
    for path in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        out[path] = names
    return out


def offenders(folder: str, forbidden: str) -> list[str]:
    return [f"{p.relative_to(ROOT)} imports {n}"
            for p, names in imports_of(ROOT / folder).items()
            for n in names if n == forbidden or n.startswith(forbidden + ".")]


def test_web_never_imports_dimse_and_back() -> None:
    assert offenders("node/web", "node.dimse") == []
    assert offenders("node/dimse", "node.web") == []


def test_pipelines_import_nothing_from_node() -> None:
    assert offenders("pipelines", "node") == []


def test_the_core_imports_no_edge() -> None:
    core = [ROOT / "node" / f for f in ("core.py", "access.py", "archive.py", "ingest.py",
                                       "rendering.py", "metrics.py")]
    for path in [*core, *(ROOT / "node" / "index").rglob("*.py")]:
        names = imports_of(path.parent)[path]
        bad = [n for n in names if n.startswith(("node.web", "node.dimse", "node.cli"))]
        assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
