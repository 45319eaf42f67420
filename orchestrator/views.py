"""The JSON shapes of every command's --json output, in one place.

Tests and CI pipelines parse these objects, so a shape changes here or nowhere. The records and results
contribute their own parts (``as_dict``); how a command puts them together into the one object it prints
is decided here, never inline in a command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.operator import Unlocked
    from orchestrator.releases import EnvStatus, RollbackResult
    from orchestrator.service import AdvanceResult, Holds, PruneReport, RecoveryReport, RunHistory
    from orchestrator.store.repository import FreezeRecord, LockRecord, RunRecord

Json = dict[str, Any]


def error(kind: str, message: str, exit_code: int, details: dict[str, Any] | None = None) -> Json:
    return {"error": kind, "message": message, "exit_code": exit_code, **(details or {})}


def sources(config: Config) -> Json:
    """Which config and database a command used."""
    from orchestrator.store.db import safe_url

    return {
        "config": str(config.path) if config.path else None,
        "config_source": config.config_source,
        "database": safe_url(config.settings.database_url),
        "database_source": config.database_source,
    }


def run(record: RunRecord) -> Json:
    return record.as_dict()


def runs(records: Sequence[RunRecord]) -> Json:
    return {"runs": [r.as_dict() for r in records]}


def run_history(history: RunHistory) -> Json:
    return {
        **history.run.as_dict(),
        "transitions": [t.as_dict() for t in history.transitions],
        "releases": [r.as_dict() for r in history.releases],
    }


def advance(result: AdvanceResult) -> Json:
    return result.as_dict()


def recovered(reports: Sequence[RecoveryReport]) -> Json:
    return {"recovered": [r.as_dict() for r in reports]}


def holds(found: Holds) -> Json:
    return {"locks": [lk.as_dict() for lk in found.locks], "freezes": [f.as_dict() for f in found.freezes]}


def lock(held: LockRecord) -> Json:
    return {"lock": held.as_dict()}


def unlocked(done: Unlocked) -> Json:
    return done.as_dict()


def freeze(frozen: FreezeRecord) -> Json:
    return {"freeze": frozen.as_dict()}


def unfrozen(was: FreezeRecord) -> Json:
    return {"unfrozen": was.as_dict()}


def rollback(result: RollbackResult) -> Json:
    return result.as_dict()


def status(config: Config, found: Sequence[EnvStatus]) -> Json:
    return {
        **sources(config),
        "ok": all(e.ok for e in found),
        "drift": any(e.drift for e in found),
        "environments": [e.as_dict() for e in found],
    }


def prune(report: PruneReport) -> Json:
    return {
        "dry_run": report.dry_run,
        "apps": [r.as_dict() for r in report.results],
        "locked": {name: exc.message for name, exc in report.locked.items()},
    }


def database_upgrade(url: str, before: str | None, after: str | None) -> Json:
    return {"database": url, "from_revision": before, "to_revision": after}
