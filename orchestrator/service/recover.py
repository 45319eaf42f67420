"""Orchestrating recovery from a runner that died: which abandoned transitions and locks to take over,
in what order, and what to record and announce. How one environment is put back (the reconciler and its
steps) is orchestrator/recovery.py."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.config import AppConfig
from orchestrator.errors import BadInput, InfraUnavailable
from orchestrator.gates import GateResult
from orchestrator.holder import Holder
from orchestrator.logging import get_logger
from orchestrator.machine import EDGE_ENVIRONMENTS, ENVIRONMENTS, RunMachine, edge_between
from orchestrator.service.common import ABORTED, FAILED, SUCCEEDED, LazyEngine, Shared, target_environment
from orchestrator.service.results import RecoveryReport
from orchestrator.store.repository import LockRecord, TransitionRecord
from orchestrator.verdict import GateStatus, TransitionOutcome


class Recovery:
    """Used by `recover`, by a claim that finds a dead holder in its way, and before an operator action
    (rollback) on an environment a dead holder left: all three recover the same way and record it alike."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.config = shared.config
        self.store = shared.store

    def recover(self, app: str | None, actor: str, engine: LazyEngine) -> list[RecoveryReport]:
        """Reconcile every abandoned transition and run-less lock (of ``app``) with the engine."""
        reports: list[RecoveryReport] = []
        for transition in self.store.unfinished_transitions(app):
            report = self._recover(transition, engine, actor)
            if report is not None:
                reports.append(report)
        for lock in self.store.locks(app):
            if lock.run_id is None and lock.kind != "manual" and lock.abandoned:
                reports.append(self._repair_after_operator(lock, engine, actor))
        for name in [app] if app is not None else sorted(self.config.apps):
            try:
                reports.extend(self._restart_stopped(self.config.apps[name], engine, actor))
            except InfraUnavailable as exc:
                if not reports:
                    raise  # nothing was done at all: exit 4 says so
                # What was recovered above is recorded and must be reported, not lost to exit 4.
                note = f"stopped environments not checked: {exc.message}"
                reports.append(RecoveryReport(name, None, None, "engine unreachable", "skipped", note))
        return reports

    def _restart_stopped(self, app: AppConfig, engine: LazyEngine, actor: str) -> list[RecoveryReport]:
        """An engine killed and restarted can leave even an ``unless-stopped`` container exited: an
        environment whose latest release is not running at all is redeployed from that release (never
        while someone holds its lock: that holder is changing it)."""
        from orchestrator.deploy import Deployer
        from orchestrator.recovery import repair_environment

        latest = {env: self.store.latest_release(app.name, env) for env in ENVIRONMENTS}
        if all(r is None for r in latest.values()):
            return []
        deployer = Deployer.from_releases(engine.for_app(app), app, self.config.settings, latest)
        locked = {lock.environment for lock in self.store.locks(app.name)}
        reports: list[RecoveryReport] = []
        for env, release in latest.items():
            if release is None or env in locked:
                continue
            found = deployer.current(env)
            if found is not None and found.running:
                continue
            seen = f"{app.name} {env} is {found.status if found else 'gone'}; release {release.id} should run"
            note = repair_environment(self.store, engine.for_app(app), app, self.config.settings, env)
            self.store.record_event("repaired", actor, f"{seen}; {note}", app=app.name, environment=env)
            reports.append(RecoveryReport(app.name, None, None, seen, "repaired", note))
        return reports

    def recover_environments(
        self, app: str, environments: Sequence[str], actor: str, engine: LazyEngine
    ) -> None:
        """Before an operator action on ``environments``: recover what a dead holder left there."""
        for lock in self.store.locks(app, environments):
            if lock.abandoned:
                self.free_abandoned([lock], engine, actor)

    def free_abandoned(self, locks: Sequence[LockRecord], engine: LazyEngine, actor: str) -> bool:
        """Recover what the dead holders of ``locks`` left; whether any lock was freed (a claim
        blocked by them may then try again)."""
        freed = False
        for lock in locks:
            if not lock.abandoned:
                continue
            if lock.transition_id is not None:
                freed |= self.recover_if_abandoned(
                    self.store.get_transition(lock.transition_id), engine, actor
                )
            else:
                self._repair_after_operator(lock, engine, actor)
                freed = True
        return freed

    def recover_if_abandoned(self, transition: TransitionRecord, engine: LazyEngine, actor: str) -> bool:
        return self._recover(transition, engine, actor) is not None

    def _recover(self, transition: TransitionRecord, engine: LazyEngine, actor: str) -> RecoveryReport | None:
        from orchestrator.recovery import Mode, abandoned

        if not abandoned(transition):
            return None
        run = self.store.get_run(transition.run_id)
        if not self.store.claim_transition(
            transition.id, transition.holder, Holder.me(), self.shared.lease_s, actor
        ):
            return None  # another process is recovering it right now
        found = self._what_happened(transition)
        edge = edge_between(transition.from_state, transition.to_state)
        log = get_logger(run_id=run.id, app=run.app, sha=run.sha, edge=edge.name, transition_id=transition.id)
        log.warning("recovering_transition", found=found)
        transition = self.store.get_transition(transition.id)
        position = len(transition.checks)

        def record(result: GateResult) -> None:
            nonlocal position
            position += 1
            self.store.record_gate_result(transition.id, position, result)

        actions: dict[str, str] = {}
        # A gate had already said no before the runner was lost: that verdict stands. The edge is
        # undone (never finished, whatever now runs) and the run goes back to development.
        rejected = next((c for c in transition.checks if c.status == GateStatus.FAIL), None)
        undone_state, undone_outcome = (
            (RunMachine(edge.source).fail(), FAILED) if rejected is not None else (edge.source, ABORTED)
        )
        if not transition.steps:
            outcome, state, summary = undone_outcome, undone_state, "no step had started: nothing to undo"
        else:
            try:
                app = self.config.app(run.app)
                steps = self.shared.step_log(transition.id, position=len(transition.steps))
                with self.shared.heartbeat(transition.id, f"recovery of transition {transition.id}"):
                    reconciler = self.shared.reconciler(engine, app, transition, run.sha, steps, record)
                    result = reconciler.reconcile(
                        Mode.UNDO if rejected is not None else Mode.RECOVER,
                        EDGE_ENVIRONMENTS[edge],
                        reason=f"recovery of transition {transition.id}",
                    )
            except (InfraUnavailable, BadInput) as exc:
                self.store.interrupt_transition(transition.id, f"{found}; recovery failed: {exc.message}")
                raise type(exc)(
                    f"transition {transition.id} of run {run.id} ({found}) could not be recovered: "
                    f"{exc.message}"
                ) from None
            actions = {env: a.value for env, a in result.actions.items()}
            summary = result.summary()
            outcome, state = (SUCCEEDED, edge.dest) if result.finished else (undone_outcome, undone_state)
        reason = f"{found}; recovered by {actor}: {summary}"
        self.store.finish_transition(transition.id, outcome=outcome, reason=reason, result_state=state.value)
        self.store.record_event(
            "recovered",
            actor,
            reason,
            app=run.app,
            run_id=run.id,
            transition_id=transition.id,
            details=actions,
        )
        log.warning("transition_recovered", outcome=outcome, reason=reason)
        self.shared.notify(
            "recovered",
            run,
            target_environment(edge),
            actor,
            reason=reason,
            transition_id=transition.id,
            details={"outcome": outcome, "state": state.value},
        )
        return RecoveryReport(run.app, transition.id, run.id, found, outcome, reason, actions)

    @staticmethod
    def _what_happened(transition: TransitionRecord) -> str:
        if transition.outcome == TransitionOutcome.INTERRUPTED:
            return f"transition {transition.id} was interrupted ({transition.reason})"
        last = transition.steps[-1] if transition.steps else None
        where = f" during step {last.name} ({last.status})" if last else " before its first step"
        who = transition.holder.describe() if transition.holder else "its runner"
        return f"transition {transition.id}: {who} died{where}"

    def _repair_after_operator(self, lock: LockRecord, engine: LazyEngine, actor: str) -> RecoveryReport:
        """An operator action (rollback) died holding ``lock``: put the environment back on its latest
        recorded release if it does not run it, then free the lock."""
        from orchestrator.recovery import repair_environment

        who = lock.process.describe() if lock.process else "its holder"
        found = f"{lock.holder} ({who}) left {lock.app} {lock.environment} locked"
        note = "app no longer configured: environment not checked"
        if lock.app in self.config.apps:
            app = self.config.apps[lock.app]
            note = repair_environment(
                self.store, engine.for_app(app), app, self.config.settings, lock.environment
            )
        self.store.delete_lock(lock.app, lock.environment, actor=actor, why=f"{found}; recovered: {note}")
        return RecoveryReport(lock.app, None, None, found, "repaired", note)
