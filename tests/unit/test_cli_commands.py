"""The root group finds each top-level command in the module that defines it (``COMMANDS`` in
orchestrator/cli/base.py), and imports that module only when the command is looked up.

Hazard: a command added to a family's module but not to ``COMMANDS`` exists in the code and nowhere on
the command line, and a wrong entry breaks only the calls that run that command.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from orchestrator.cli import cli
from orchestrator.cli.base import COMMANDS

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator" / "cli"


def _top_level_commands() -> dict[str, tuple[str, str]]:
    """Every command defined at the top of a module of orchestrator/cli/ that no group there holds."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(PACKAGE.glob("[!_]*.py")):
        module = importlib.import_module(f"orchestrator.cli.{path.stem}")
        defined = {
            attr: value
            for attr, value in vars(module).items()
            if isinstance(value, click.Command) and value.callback.__module__ == module.__name__
        }
        groups = [g for g in defined.values() if isinstance(g, click.Group)]
        held = {id(sub) for g in groups for sub in g.commands.values()}
        for attr, value in defined.items():
            if id(value) not in held and value is not cli:
                assert value.name is not None
                found[value.name] = (path.stem, attr)
    return found


def test_every_command_defined_is_on_the_command_line_by_its_name() -> None:
    assert _top_level_commands() == COMMANDS


def test_the_root_group_lists_and_finds_them() -> None:
    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        found = cli.get_command(ctx, name)
        assert found is not None and found.name == name
    assert cli.get_command(ctx, "no-such-command") is None
