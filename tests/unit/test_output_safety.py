"""Text that users typed (actors, reasons) reaches other operators' terminals through our output.

Hazard: an actor or reason carrying an OSC or CSI escape sequence rewrites the terminal of whoever runs
`runs show` or `locks` (its title, its clipboard, what is shown above). Human output shows control
characters escaped; JSON output escapes them as JSON does.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Cli, Workspace

# Sets the clipboard (OSC 52), then moves the cursor up and clears the line (CSI), then rings the bell.
EVIL = "ci\x1b]52;c;cm0gLXJmIH4=\x07\x1b[1A\x1b[2K\x9b31m"


def _no_control(text: str) -> None:
    assert not any((ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)


def test_actor_and_reasons_are_printed_escaped(cli: Cli, workspace: Workspace) -> None:
    started = cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, "--actor", EVIL)
    assert started.exit_code == 0, started.describe()
    run_id = started.stdout.split()[1]
    shown = cli("runs", "show", run_id)
    listed = cli("runs", "list")
    frozen = cli("freeze", "demo", "--reason", EVIL, "--actor", EVIL)
    locks = cli("locks")
    refused = cli("advance", run_id, "--to", "deploy-staging")
    for result in (shown, listed, frozen, locks, refused):
        _no_control(result.stdout)
        _no_control(result.stderr)
    assert "ci\\x1b]52;c;cm0gLXJmIH4=\\x07" in shown.stdout
    assert refused.exit_code == 3 and "\\x1b[1A" in refused.stderr

    # JSON keeps the exact text, escaped by JSON itself.
    payload = cli("runs", "show", run_id, as_json=True)
    _no_control(payload.stdout)
    assert json.loads(payload.stdout)["actor"] == EVIL
