"""click commands: parse, call the service layer, print (human or --json), exit with the promised code.

One module per family of commands, each imported only by a call that runs one of its commands (the
root group in base.py knows which module defines which command):

- base.py: the root group, what a call's commands share (``Invocation``: config, store, notifier),
  output, ``--json`` and errors, exit codes, ``main``;
- edges.py: moving a run along its edges: ``run start``, ``advance``, ``deploy``;
- history.py: reading what was recorded: ``runs list``/``show``, ``audit``, ``releases``, ``metrics``;
- operations.py: an operator's hand on the line: ``approve``, ``reject``, ``lock``, ``unlock``, ``locks``,
  ``freeze``, ``unfreeze``, ``recover``;
- environments.py: what runs in an environment: ``status``, ``rollback``, ``prune``;
- admin.py: the orchestrator's own upkeep: ``serve``, ``db upgrade``.
"""

from orchestrator.cli.base import cli, main

__all__ = ["cli", "main"]
