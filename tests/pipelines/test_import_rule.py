"""``pipelines`` is pure compute: it imports nothing from the service layer (``node``)."""

import ast
from pathlib import Path

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"


def test_pipelines_import_nothing_from_node() -> None:
    offenders = []
    for path in sorted(PIPELINES.rglob("*.py")):
        for item in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(item, ast.Import):
                names = [a.name for a in item.names]
            elif isinstance(item, ast.ImportFrom) and item.level == 0 and item.module:
                names = [item.module]
            offenders += [f"{path.relative_to(PIPELINES.parent)}: {n}" for n in names
                          if n == "node" or n.startswith("node.")]
    assert offenders == []
