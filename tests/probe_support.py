"""Run the console script's entry in a fresh interpreter and read what it loaded as it exited: the
start-up tests (unit/test_startup_imports.py) and the edges' imports on the real engine
(integration/test_deploy_command.py) ask the same question of a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# The console script's own import, then the command line, then which of ``{heavy}`` were loaded by the
# time it exited (an exit handler: the console script leaves by os._exit once they have run,
# orchestrator/entry.py).
LOADED_PROBE = """
import atexit, json, sys
HEAVY = {heavy}
atexit.register(
    lambda: print("\\nLOADED=" + json.dumps(sorted(m for m in HEAVY if m in sys.modules)), file=sys.stderr)
)
from orchestrator.entry import main
sys.argv = ["orchestrator", *json.loads(sys.argv[1])]
main()
"""


def run_probe(
    code: str, args: list[str], cwd: Path, marker: str, *, timeout: float = 60
) -> tuple[Any, subprocess.CompletedProcess[str]]:
    """Run ``code`` with the command line ``args`` in a fresh interpreter; the JSON it printed after
    ``marker=`` on stderr, as it exited."""
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        cwd=cwd,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    found = proc.stderr.rpartition(f"{marker}=")[2].strip()
    assert found, f"the probe did not finish: {proc.stderr[-2000:]}"
    return json.loads(found), proc
