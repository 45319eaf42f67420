"""The JSON shapes of every command's --json output, of the API, and of the evidence recorded in
history (gate details, event details), in one place.

Tests, CI pipelines and the dashboard parse these objects, so a shape changes here or nowhere. The values
they are made of stay plain dataclasses that know nothing of JSON; this module imports their types only
for the type checker, so any layer may call it without import cycles or start-up cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.approvals import DecisionResult
    from orchestrator.config import Config
    from orchestrator.gates import ProdOutcome
    from orchestrator.operator import Unlocked
    from orchestrator.prune import (
        AnchorRemoval,
        ContainerRemoval,
        ImageRemoval,
        Kept,
        Plan,
        PruneProgress,
        PruneResult,
        Skipped,
    )
    from orchestrator.releases import EnvStatus, RollbackResult
    from orchestrator.service import AdvanceResult, Holds, PruneReport, RecoveryReport, RunHistory
    from orchestrator.service.results import DeployResult, FailureSummary
    from orchestrator.store.repository import FreezeRecord, LockRecord, RunRecord
    from orchestrator.verdict import GateResult

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


# gates and edges ----------------------------------------------------------------------------------


def gate_result(result: GateResult) -> Json:
    """One gate's result, just found or read back from history: the same object either way."""
    started = result.started_at
    if started.tzinfo is None:  # SQLite hands back naive datetimes; everything recorded is UTC
        started = started.replace(tzinfo=UTC)
    return {
        "name": result.name,
        "status": result.status.value,
        "reason": result.reason,
        "details": dict(result.details),
        "duration_s": round(result.duration_s, 6),
        "started_at": started.isoformat(),
    }


def prod_outcome(outcome: ProdOutcome) -> Json:
    """Also what a restore records in its gate's details (gates.PROD_OUTCOME), read back by
    ``gates.prod_outcome``."""
    return {"action": outcome.action.value, "release_id": outcome.release_id, "summary": outcome.summary}


def failure(summary: FailureSummary) -> Json:
    return {
        "gate": summary.gate,
        "reason": summary.reason,
        "container": summary.container,
        "exit_code": summary.exit_code,
        "prod": prod_outcome(summary.prod),
    }


def advance(result: AdvanceResult) -> Json:
    failed = result.failure
    return {
        "run_id": result.run_id,
        "transition_id": result.transition_id,
        "from": result.from_state.value,
        "to": result.to_state.value,
        "state": result.state.value,
        "outcome": result.outcome.value,
        "reason": result.reason,
        "failure": failure(failed) if failed else None,
        "checks": [gate_result(c) for c in result.checks],
    }


def deploy(result: DeployResult) -> Json:
    return {
        "run_id": result.run.id,
        "app": result.run.app,
        "sha": result.run.sha,
        "actor": result.run.actor,
        "state": result.run.state,
        "outcome": result.outcome,
        "edges": [advance(e) for e in result.edges],
    }


def decision(result: DecisionResult) -> Json:
    return {
        "run_id": result.run_id,
        "app": result.app,
        "sha": result.sha,
        "from": result.edge.source.value,
        "to": result.edge.dest.value,
        "state": result.state.value,
        "transition_id": result.transition_id,
        "approval": result.approval.as_dict(),
    }


def recovery_report(report: RecoveryReport) -> Json:
    return {
        "app": report.app,
        "transition_id": report.transition_id,
        "run_id": report.run_id,
        "found": report.found,
        "outcome": report.outcome,
        "reason": report.reason,
        "actions": report.actions,
    }


def recovered(reports: Sequence[RecoveryReport]) -> Json:
    return {"recovered": [recovery_report(r) for r in reports]}


def holds(found: Holds) -> Json:
    return {"locks": [lk.as_dict() for lk in found.locks], "freezes": [f.as_dict() for f in found.freezes]}


def lock(held: LockRecord) -> Json:
    return {"lock": held.as_dict()}


def unlocked(done: Unlocked) -> Json:
    return {"unlocked": done.lock.as_dict(), "how": done.how}


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


# prune ----------------------------------------------------------------------------------------------


def _image_removal(image: ImageRemoval) -> Json:
    return {
        "image_id": image.image_id,
        "refs": list(image.refs),
        "size": image.size,
        "deletes": image.deletes,
    }


def _container_removal(container: ContainerRemoval) -> Json:
    return {
        "container_id": container.id,
        "name": container.name,
        "environment": container.environment,
        "status": container.status,
        "image_id": container.image_id,
    }


def _anchor_removal(anchor: AnchorRemoval) -> Json:
    return {"path": str(anchor.path), "environment": anchor.environment, "release_id": anchor.release_id}


def _kept(kept: Kept) -> Json:
    return {"image_id": kept.image_id, "refs": list(kept.refs), "why": list(kept.why)}


def _skipped(skipped: Skipped) -> Json:
    return {"what": skipped.what, "reason": skipped.reason}


def _removals(
    images: Sequence[ImageRemoval], containers: Sequence[ContainerRemoval], anchors: Sequence[AnchorRemoval]
) -> Json:
    return {
        "images": [_image_removal(i) for i in images],
        "containers": [_container_removal(c) for c in containers],
        "anchors": [_anchor_removal(a) for a in anchors],
    }


def prune_plan(plan: Plan) -> Json:
    return {
        "app": plan.app,
        "keep_releases": plan.keep_releases,
        "kept_releases": {env: list(ids) for env, ids in plan.kept_releases.items()},
        **_removals(plan.images, plan.containers, plan.anchors),
        "bytes": plan.bytes,
        "kept": [_kept(k) for k in plan.kept],
    }


def pruned(done: PruneResult | PruneProgress) -> Json:
    """What a prune removed (and skipped): its result's ``removed``, and its ``pruned`` event."""
    return {
        **_removals(done.images, done.containers, done.anchors),
        "bytes_reclaimed": done.bytes_reclaimed,
        "skipped": [_skipped(s) for s in done.skipped],
    }


def prune_result(result: PruneResult) -> Json:
    out: Json = {"app": result.plan.app, "dry_run": result.dry_run}
    if result.dry_run:
        out["would_remove"] = _removals(result.plan.images, result.plan.containers, result.plan.anchors)
        out["bytes"] = result.plan.bytes
    else:
        done = pruned(result)
        out["removed"] = {k: done[k] for k in ("images", "containers", "anchors")}
        out["bytes_reclaimed"] = done["bytes_reclaimed"]
        out["skipped"] = done["skipped"]
    out["kept_releases"] = {env: list(ids) for env, ids in result.plan.kept_releases.items()}
    out["kept_images"] = [_kept(k) for k in result.plan.kept]
    return out


def prune(report: PruneReport) -> Json:
    return {
        "dry_run": report.dry_run,
        "apps": [prune_result(r) for r in report.results],
        "locked": {name: exc.message for name, exc in report.locked.items()},
    }


def database_upgrade(url: str, before: str | None, after: str | None) -> Json:
    return {"database": url, "from_revision": before, "to_revision": after}
