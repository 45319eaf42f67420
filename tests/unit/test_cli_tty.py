"""The history commands on a terminal (a pseudo-terminal, the real CLI as a process): rich tables with
real colours, never the escape sequences of those colours printed as text; and `runs show` as tables
with durations, gate results, expected vs found revision and the failure evidence. Without a terminal
the output is the plain text scripts and CI logs read (tests/unit/test_cli_runs.py, test_audit.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from dashboard_support import BAD_SHA, GOOD_SHA, seed
from tty_support import run_on_tty

from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli

ESC = "\x1b["


@pytest.mark.parametrize("args", [("runs", "list"), ("audit",), ("releases", "demo")])
def test_history_tables_on_a_terminal_are_coloured_not_escaped_text(
    store: Store, args: tuple[str, ...]
) -> None:
    """Hazard: the table rich drew (with its colour codes) went through the filter that makes user text
    safe for a terminal, which printed every colour code as the text '\\x1b[1m'."""
    seed(store)
    shown = run_on_tty(*args)
    assert shown.exit_code == 0, shown
    assert "\\x1b" not in shown.screen, shown.screen
    assert ESC in shown.screen
    assert GOOD_SHA[:12] in shown.screen


def test_user_text_in_a_table_on_a_terminal_is_still_escaped(store: Store) -> None:
    """The cells are made safe one by one (tables.clean), so an actor carrying an escape sequence shows
    it as text even though the table around it is printed as rich drew it."""
    store.create_run("demo", GOOD_SHA, "mallory\x1b]0;pwned\x07", "development")
    shown = run_on_tty("runs", "list")
    assert shown.exit_code == 0, shown
    assert "\x1b]0;pwned" not in shown.screen
    assert "mallory\\x1b]0;pwned\\x07" in shown.screen


def test_runs_show_on_a_terminal_is_tables_with_gates_revisions_durations_and_evidence(store: Store) -> None:
    seeded = seed(store)
    shown = run_on_tty("runs", "show", str(seeded.bad_run))
    assert shown.exit_code == 0, shown
    screen = shown.screen
    assert "\\x1b" not in screen
    assert ESC in screen, "no colour: not rendered as a table for a terminal"
    assert f"run {seeded.bad_run}: demo @ {BAD_SHA}" in screen
    for header in ("edge", "outcome", "took", "gate", "expected", "found"):
        assert header in screen, header
    assert "development -> deploy-staging" in screen
    assert "deploy_staging" in screen and "commit_exists" in screen
    assert BAD_SHA[:12] in screen  # expected revision; none was found
    # The failure evidence, every line of it, not only the summary.
    assert "fatal: cannot open the database" in screen
    good = run_on_tty("runs", "show", str(seeded.good_run)).screen
    assert "release" in good and GOOD_SHA[:12] in good


def test_runs_show_json_is_the_same_on_a_terminal(store: Store, cli: Cli) -> None:
    seeded = seed(store)
    shown = run_on_tty("runs", "show", str(seeded.bad_run), "--json")
    assert shown.exit_code == 0, shown
    assert json.loads(shown.screen) == cli("runs", "show", seeded.bad_run, as_json=True).ok()
