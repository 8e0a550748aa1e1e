"""The core (``pcmlab/``) imports none of the packages above it, not even for types:
``drivers``, ``protocols`` and ``mock_chip`` are for the faces (``pcmlab/cli/``, the pytest
plugin, the dashboard) to wire in."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "pcmlab"
FACES = ("cli", "dashboard", "pytest_plugin.py")
ABOVE = ("drivers", "protocols", "mock_chip")


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_core_imports_no_driver_protocol_or_mock_chip() -> None:
    found = {}
    for path in CORE.rglob("*.py"):
        rel = path.relative_to(CORE)
        if rel.parts[0] in FACES:
            continue
        bad = sorted(n for n in imported(path) if n.split(".")[0] in ABOVE)
        if bad:
            found[str(rel)] = bad
    print("core modules importing from above:", found)
    assert found == {}
