"""The service layer: what `run start`, `advance`, `deploy`, `recover` and the operator commands mean,
independent of how they are invoked (the CLI, the dashboard, a benchmark).

The order inside ``advance`` is the crash-safety contract: validate everything that needs no side
effect, claim the run and its environments while writing the transition ``in_progress``, run gates
recording each result as it lands, then close the transition and move the run in one commit.

Where things are:
  run_service.py  RunService, the entry point: start_run, advance, deploy, recover
  advance.py      one edge: preflight, freeze check, gates, verdict, undo of an aborted edge
  approval.py     the edge's wait for a person's approval, and its record
  claims.py       taking the run and its environments: recovery on the way, waiting, supersede
  recover.py      recovery from dead runners: abandoned transitions and locks, stopped environments
  operations.py   the operator façade the CLI and the dashboard call (lock, rollback, prune, ...)
  reads.py        its base: the history commands' reads, config and store only (runs, locks, metrics)
  results.py      what advance, deploy and recover return
  builds.py       whether the staging build is sent early, and from where (steps/ahead.py sends it)
  common.py       input parsing, the engine connected on first use, what every part shares

Each name below is imported from its module when first asked for (PEP 562), not with the package: the
package is then free to import, and `deploy` and `run start` send their build (builds.py) before the
edges' modules are loaded (issue 12).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.service.approval import APPROVAL_POLL_S
    from orchestrator.service.claims import LOCK_POLL_S
    from orchestrator.service.common import (
        ABORTED,
        FAILED,
        MAX_ACTOR,
        SUCCEEDED,
        connect_engine,
        default_actor,
        parse_actor,
        parse_sha,
    )
    from orchestrator.service.operations import PruneReport
    from orchestrator.service.reads import Holds, Reads, RunHistory
    from orchestrator.service.results import (
        AdvanceResult,
        DeployResult,
        FailureSummary,
        RecoveryReport,
        edge_reason,
    )
    from orchestrator.service.run_service import RunService

_HOME = {
    "APPROVAL_POLL_S": "approval",
    "LOCK_POLL_S": "claims",
    **dict.fromkeys(
        [
            "ABORTED",
            "FAILED",
            "MAX_ACTOR",
            "SUCCEEDED",
            "connect_engine",
            "default_actor",
            "parse_actor",
            "parse_sha",
        ],
        "common",
    ),
    "PruneReport": "operations",
    **dict.fromkeys(["Holds", "Reads", "RunHistory"], "reads"),
    **dict.fromkeys(
        ["AdvanceResult", "DeployResult", "FailureSummary", "RecoveryReport", "edge_reason"], "results"
    ),
    "RunService": "run_service",
}

__all__ = [
    "ABORTED",
    "APPROVAL_POLL_S",
    "FAILED",
    "LOCK_POLL_S",
    "MAX_ACTOR",
    "SUCCEEDED",
    "AdvanceResult",
    "DeployResult",
    "FailureSummary",
    "Holds",
    "PruneReport",
    "Reads",
    "RecoveryReport",
    "RunHistory",
    "RunService",
    "connect_engine",
    "default_actor",
    "edge_reason",
    "parse_actor",
    "parse_sha",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # asked once
    return value
