"""Every third-party module the package imports is a declared dependency, with an upper bound.

Hazard: an import that works only because some other package happened to pull it in (``requests`` came
with ``docker``) breaks the day that package stops depending on it; an unbounded dependency lets the
next major release, which the tests never saw, into a deploy tool's runtime.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Distribution names for modules whose import name differs.
_DISTRIBUTION = {"yaml": "pyyaml"}


def _imported_modules() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "orchestrator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"orchestrator", "__future__"}


def _declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"]) + list(project["optional-dependencies"]["postgres"])
    return {re.split(r"[<>=\[ ]", spec, maxsplit=1)[0].lower(): spec for spec in specs}


def test_every_import_is_declared_with_an_upper_bound() -> None:
    declared = _declared()
    for module in sorted(_imported_modules()):
        name = _DISTRIBUTION.get(module, module).lower()
        assert name in declared, f"orchestrator imports {module!r} but pyproject.toml does not declare it"
    for spec in declared.values():
        assert "<" in spec, f"{spec!r} has no upper bound"


def test_constraints_pin_every_declared_dependency() -> None:
    pinned = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if "==" in line and not line.startswith("#")
    }
    for name in _declared():
        assert name.replace("_", "-") in pinned, f"{name} is not pinned in constraints.txt"
