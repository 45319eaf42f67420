"""The JSON shapes of every command's --json output, of the API, and of the evidence recorded in
history (gate details, event details), in one place.

Tests, CI pipelines and the dashboard parse these objects, so a shape changes here or nowhere. The values
they are made of stay plain dataclasses that know nothing of JSON; this module imports their types only
for the type checker, so any layer may call it without import cycles or start-up cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.approvals import DecisionResult
    from orchestrator.config import Config
    from orchestrator.gates import ProdOutcome
    from orchestrator.metrics import Dora, MetricsReport
    from orchestrator.operator import Unlocked
    from orchestrator.prune import (
        AnchorRemoval,
        ContainerRemoval,
        ImageRemoval,
        Kept,
        PruneProgress,
        PruneResult,
        Skipped,
    )
    from orchestrator.releases import EnvStatus, RollbackResult
    from orchestrator.runtimes import RuntimeView
    from orchestrator.service import AdvanceResult, Holds, PruneReport, RecoveryReport, RunHistory
    from orchestrator.service.results import DeployResult, FailureSummary
    from orchestrator.store.listing import AuditEntry, ReleasePeriod
    from orchestrator.store.records import (
        ApprovalRecord,
        EventRecord,
        FreezeRecord,
        LockRecord,
        ReleaseRecord,
        RunRecord,
        StepRecord,
        TransitionRecord,
    )
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


def iso(value: datetime | None) -> str | None:
    """A recorded time as ISO 8601 in UTC (SQLite hands back naive datetimes; everything is UTC)."""
    if value is None:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()


# history records ----------------------------------------------------------------------------------


def run(record: RunRecord) -> Json:
    return {
        "run_id": record.id,
        "app": record.app,
        "sha": record.sha,
        "state": record.state,
        "actor": record.actor,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
    }


def runs(records: Sequence[RunRecord]) -> Json:
    return {"runs": [run(r) for r in records]}


def step(record: StepRecord) -> Json:
    return {
        "position": record.position,
        "name": record.name,
        "environment": record.environment,
        "status": record.status,
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "changes": record.changes,
        "error": record.error,
    }


def transition(record: TransitionRecord) -> Json:
    return {
        "transition_id": record.id,
        "from": record.from_state,
        "to": record.to_state,
        "actor": record.actor,
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "outcome": record.outcome,
        "reason": record.reason,
        "result_state": record.result_state,
        "checks": [gate_result(c) for c in record.checks],
        "steps": [step(st) for st in record.steps],
    }


def release(record: ReleaseRecord) -> Json:
    return {
        "release_id": record.id,
        "app": record.app,
        "environment": record.environment,
        "image_id": record.image_id,
        "digest": record.digest,
        "revision": record.revision,
        "run_id": record.run_id,
        "kind": record.kind,
        "reason": record.reason,
        "created_at": iso(record.created_at),
        "compose_sha256": record.compose_sha256,
        "engine": record.engine,
    }


def lock_record(record: LockRecord) -> Json:
    """Also what an unlock or a refused claim records of the lock in its event's details."""
    return {
        "app": record.app,
        "environment": record.environment,
        "kind": record.kind,
        "holder": record.holder,
        "run_id": record.run_id,
        "transition_id": record.transition_id,
        "acquired_at": iso(record.acquired_at),
        "reason": record.reason,
        "process": record.process.describe() if record.process else None,
        "lease_expires_at": iso(record.lease_expires_at),
        "liveness": record.liveness(),
    }


def freeze_record(record: FreezeRecord) -> Json:
    return {"app": record.app, "actor": record.actor, "reason": record.reason, "since": iso(record.since)}


def event(record: EventRecord) -> Json:
    return {
        "event_id": record.id,
        "at": iso(record.at),
        "app": record.app,
        "environment": record.environment,
        "kind": record.kind,
        "actor": record.actor,
        "message": record.message,
        "run_id": record.run_id,
        "transition_id": record.transition_id,
        "details": record.details,
    }


def approval(record: ApprovalRecord) -> Json:
    return {
        "approval_id": record.id,
        "run_id": record.run_id,
        "environment": record.environment,
        "decision": record.decision,
        "actor": record.actor,
        "reason": record.reason,
        "at": iso(record.at),
    }


def audit_entry(entry: AuditEntry) -> Json:
    return {
        "at": iso(entry.at),
        "kind": entry.kind,
        "app": entry.app,
        "environment": entry.environment,
        "actor": entry.actor,
        "ci_url": entry.ci_url,
        "message": entry.message,
        "run_id": entry.run_id,
        "transition_id": entry.transition_id,
    }


def audit(entries: Sequence[AuditEntry]) -> Json:
    return {"entries": [audit_entry(e) for e in entries]}


def release_period(period: ReleasePeriod) -> Json:
    return {
        **release(period.release),
        "actor": period.actor,
        "ci_url": period.release.ci_url,
        "since": iso(period.since),
        "until": iso(period.until),
        "current": period.until is None,
    }


def run_history(history: RunHistory) -> Json:
    return {
        **run(history.run),
        "transitions": [transition(t) for t in history.transitions],
        "releases": [release(r) for r in history.releases],
    }


# gates and edges ----------------------------------------------------------------------------------


def gate_result(result: GateResult) -> Json:
    """One gate's result, just found or read back from history: the same object either way."""
    return {
        "name": result.name,
        "status": result.status.value,
        "reason": result.reason,
        "details": dict(result.details),
        "duration_s": round(result.duration_s, 6),
        "started_at": iso(result.started_at),
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
        "approval": approval(result.approval),
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


# locks, freezes, releases and what runs ---------------------------------------------------------


def holds(found: Holds) -> Json:
    return {
        "locks": [lock_record(lk) for lk in found.locks],
        "freezes": [freeze_record(f) for f in found.freezes],
    }


def lock(held: LockRecord) -> Json:
    return {"lock": lock_record(held)}


def unlocked(done: Unlocked) -> Json:
    return {"unlocked": lock_record(done.lock), "how": done.how}


def freeze(frozen: FreezeRecord) -> Json:
    return {"freeze": freeze_record(frozen)}


def unfrozen(was: FreezeRecord) -> Json:
    return {"unfrozen": freeze_record(was)}


def releases(app: str, periods: Sequence[ReleasePeriod]) -> Json:
    return {"app": app, "releases": [release_period(p) for p in periods]}


def rollback(result: RollbackResult) -> Json:
    return {
        "app": result.app,
        "environment": result.environment,
        "outcome": "rolled_back",
        "from_release": release(result.from_release),
        "to_release": release(result.to_release),
        "release": release(result.release),
        "details": result.details,
    }


def runtime_view(view: RuntimeView) -> Json:
    return {
        "kind": view.kind,
        "name": view.name,
        "pinned": view.pinned,
        "replicas": view.replicas,
        "update_state": view.update_state,
        "tasks": list(view.tasks),
        "published": view.published,
    }


def env_status(found: EnvStatus) -> Json:
    o = found.observed
    return {
        "app": found.app,
        "environment": found.environment,
        "engine": found.engine,
        "reachable": found.unreachable is None,
        "unreachable": found.unreachable,
        "container": o.container,
        "container_id": o.container_id,
        "container_status": o.status,
        "image_id": o.image_id,
        "digests": list(o.digests),
        "revision": o.revision,
        "healthy": o.healthy,
        "health": o.health_detail,
        "release": release(found.release) if found.release else None,
        "ok": found.ok,
        "cause": found.cause,
        "problem": found.problem,
        "drift": found.drift,
        "differences": found.differences,
        "service": runtime_view(o.runtime) if o.runtime else None,
    }


def status(config: Config, found: Sequence[EnvStatus]) -> Json:
    return {
        **sources(config),
        "ok": all(e.ok for e in found),
        "drift": any(e.drift for e in found),
        "environments": [env_status(e) for e in found],
    }


# metrics ------------------------------------------------------------------------------------------


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def dora(m: Dora) -> Json:
    return {
        "deployment_frequency": {
            "deployments": m.deployments,
            "per_day": round(m.deploys_per_day, 4),
            "days_with_deployments": m.deploy_days,
        },
        "lead_time_for_changes": {
            "median_s": _rounded(m.lead_time_median_s),
            "p90_s": _rounded(m.lead_time_p90_s),
            "samples": m.lead_time_samples,
            "missing_commit_time": m.lead_time_missing,
        },
        "change_failure_rate": {
            "rate": _rounded(m.change_failure_rate),
            "failures": m.failures,
            "failed_in_prod": m.failed_in_prod,
            "rolled_back": m.rolled_back,
            "promotions": m.attempts,
        },
        "time_to_restore": {
            "median_s": _rounded(m.time_to_restore_median_s),
            "samples": m.time_to_restore_samples,
        },
    }


def metrics(report: MetricsReport) -> Json:
    return {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "window_days": round((report.until - report.since).total_seconds() / 86400, 4),
        "all": dora(report.total),
        "apps": {name: dora(m) for name, m in sorted(report.apps.items())},
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
