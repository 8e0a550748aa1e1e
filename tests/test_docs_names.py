"""Every pcmlab name the docs mention exists: `pcmlab.X` (and `pcmlab.X.y`,
`pcmlab.X(...).y`) in docs/ and the README, and the methods a row of docs/python-api.md
lists for a class (docs/python-api.md once named an evaluator method `simulated` that is
`simulate`)."""

import contextlib
import importlib
import re
from pathlib import Path

import pytest

import pcmlab

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
NAME = re.compile(r"(?<![\w/.-])pcmlab\.([A-Za-z_]\w*)(\([^()`]*\))?((?:\.[A-Za-z_]\w*)*)")
# a table row: | `pcmlab.Class(...)` | what it is: `name`, `name`, ... |
ROW = re.compile(r"^\| `pcmlab\.([A-Z]\w*)\([^`]*\)` \| [^|`]*: ((?:`\w+`(?:, )?)+) \|", re.M)


def resolve(name: str) -> object:
    try:
        return getattr(pcmlab, name)
    except AttributeError:
        return importlib.import_module(f"pcmlab.{name}")  # a module of the package


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_pcmlab_name_in_the_docs_exists(page: Path) -> None:
    from drivers.plugins import ENTRY_POINT_GROUP

    missing = []
    for m in NAME.finditer(page.read_text(encoding="utf-8")):
        if m.group(0) == ENTRY_POINT_GROUP:  # the plugins' entry-point group, not a name
            continue
        try:
            obj = resolve(m.group(1))
        except ImportError:
            missing.append(m.group(0))
            continue
        for attr in filter(None, m.group(3).split(".")):
            if not hasattr(obj, attr) and isinstance(obj, type(pcmlab)):
                # a submodule not imported yet (pcmlab.catalog.registration)
                with contextlib.suppress(ImportError):
                    importlib.import_module(f"{obj.__name__}.{attr}")
            if not hasattr(obj, attr):
                missing.append(m.group(0))
                break
            obj = getattr(obj, attr)
    assert not missing, f"{page.name} names what pcmlab does not have: {missing}"


def test_the_methods_listed_for_a_class_exist() -> None:
    rows = ROW.findall((ROOT / "docs" / "python-api.md").read_text(encoding="utf-8"))
    assert any(cls == "AnalogEvaluator" for cls, _ in rows), "the evaluator's row was not read"
    missing = [f"{cls}.{n}" for cls, names in rows
               for n in re.findall(r"`(\w+)`", names) if not hasattr(getattr(pcmlab, cls), n)]
    assert not missing, f"docs/python-api.md lists methods that do not exist: {missing}"
