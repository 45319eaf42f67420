"""Every dataclass in the package has a docstring: for one without, the dataclasses module makes one up at
import time from ``inspect.signature(cls)``, which every command's start-up pays (measured: about 2 ms
of `runs list`, more for commands that load more classes; issue 12). Read from the source, so no class
is missed for not being imported by some command."""

from __future__ import annotations

import ast
from pathlib import Path

import orchestrator

PACKAGE = Path(orchestrator.__file__).parent


def _is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "dataclass":
            return True
    return False


def test_every_dataclass_has_a_docstring() -> None:
    missing = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and _is_dataclass(node) and ast.get_docstring(node) is None
    ]
    assert missing == [], "dataclasses without a docstring:\n" + "\n".join(missing)


def test_the_check_finds_a_dataclass_without_one() -> None:
    """The detector itself: every spelling of the decorator the package uses is recognised."""
    source = (
        "import dataclasses\nfrom dataclasses import dataclass\n"
        "@dataclass\nclass A:\n    x: int\n"
        "@dataclass(frozen=True)\nclass B:\n    x: int\n"
        "@dataclasses.dataclass(frozen=True)\nclass C:\n    x: int\n"
        '@dataclass\nclass D:\n    """Has one."""\n    x: int\n'
        "class E:\n    x: int\n"
    )
    found = [
        n.name
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.ClassDef) and _is_dataclass(n) and ast.get_docstring(n) is None
    ]
    assert found == ["A", "B", "C"]
