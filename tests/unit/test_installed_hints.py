"""Messages say what to install or run, never point at files only this repository's checkout has.

A user who installed the package (``pip install orchestrator``) has no ``scripts/bootstrap.sh`` and no
``.env.example``: an exit-4 message sending them there is a dead end at the worst moment.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import orchestrator
from orchestrator.config import load_config
from orchestrator.errors import BadInput, InfraUnavailable
from orchestrator.store import db

if TYPE_CHECKING:
    from conftest import Cli, Workspace

PACKAGE = Path(orchestrator.__file__).resolve().parent

# Files of the repository that the wheel does not ship (it ships migrations/ and staging_check.py).
CHECKOUT_ONLY = ("bootstrap.sh", "demo.sh", "test.sh", ".env.example", ".ci/", "constraints.txt", "README")


def message_strings() -> list[tuple[str, int, str]]:
    """Every string literal in the package's code except docstrings: what can reach a user."""
    found: list[tuple[str, int, str]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found.append((str(path.relative_to(PACKAGE)), node.lineno, node.value))
    return found


def test_no_message_points_at_a_file_only_the_checkout_has() -> None:
    offenders = [
        f"{path}:{line}: {text!r}"
        for path, line, text in message_strings()
        if any(name in text for name in CHECKOUT_ONLY)
    ]
    assert offenders == []


@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_unreachable_engine_says_what_to_start_or_install(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    message = cli("status", "demo", as_json=as_json).error(4, "infrastructure_unavailable")
    assert message.startswith("Docker engine is unreachable at unix:///nonexistent/docker.sock")
    assert "install" in message and "DOCKER_HOST" in message, message
    assert "scripts/" not in message


def test_an_unknown_variable_names_the_known_one_it_resembles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInput) as excinfo:
        load_config(env={"ORCH_DB_URL": "sqlite://", "ORCH_HEALTH_TIMEOUT": "5"})
    message = excinfo.value.message
    assert "unknown variable(s) ORCH_DB_URL, ORCH_HEALTH_TIMEOUT" in message
    assert "ORCH_HEALTH_TIMEOUT: did you mean ORCH_HEALTH_TIMEOUT_S?" in message, message
    assert "orchestrator --help" in message or "ORCH_DATABASE_URL" in message, message


def test_an_installation_without_migrations_is_an_exit_4_saying_to_reinstall(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not a traceback: the package's migrations are missing (a broken or partial install)."""
    monkeypatch.setattr(db, "__file__", str(tmp_path / "orchestrator" / "store" / "db.py"))
    with pytest.raises(InfraUnavailable) as excinfo:
        db.migrations_dir()
    assert "reinstall" in excinfo.value.message, excinfo.value.message
