"""The edge's side of approvals: waiting for a person's decision before anything is claimed, and
recording the approval that let the edge through. Deciding (approve, reject) is orchestrator/approvals.py."""

from __future__ import annotations

import time

from orchestrator import views
from orchestrator.config import AppConfig
from orchestrator.errors import AwaitingApproval, Rejected
from orchestrator.gates import GateResult, GateStatus
from orchestrator.logging import get_logger
from orchestrator.machine import Edge
from orchestrator.service.claims import supersede
from orchestrator.service.common import Shared
from orchestrator.store.repository import ApprovalRecord, RunRecord, Superseded

# How often `advance --wait` looks for a person's decision.
APPROVAL_POLL_S = 0.5


class ApprovalWait:
    """Runs before the claim, so a run waiting for a person holds no environment meanwhile."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.store = shared.store

    def wait(
        self, run: RunRecord, edge: Edge, app: AppConfig, actor: str, wait_s: float
    ) -> tuple[ApprovalRecord | None, float]:
        """The approval that lets ``edge`` begin (None when the app needs none) and what is left of
        ``wait_s``. Without one: AwaitingApproval (exit 3) at once, or after polling up to ``wait_s``;
        Rejected (exit 1) when a person refused it meanwhile. The first time a run is found waiting
        it is recorded (``approval_requested``) and announced, so an approver hears of it."""
        from orchestrator.approvals import Standing, standing, target_environment

        env = target_environment(edge)
        if env not in app.require_approval:
            return None, wait_s
        started = time.monotonic()
        deadline = started + wait_s
        while True:
            decisions = self.store.approvals(run.id)
            found = standing(app.require_approval, edge, decisions)
            if found == Standing.APPROVED:
                approved = next(d for d in decisions if d.environment == env)
                return approved, max(0.0, deadline - time.monotonic())
            if found == Standing.REJECTED:
                raise self.rejected(run.id)
            # A run a newer one overtook would be superseded on its claim: end it now rather than
            # ask a person to approve a commit that will never ship.
            newer = self.store.newer_contender(run.id, edge.dest.value, env)
            if newer is not None:
                superseded = Superseded(run.id, *newer)
                supersede(self.shared, run, edge, actor, superseded)
                raise superseded
            if self.store.approval_requested(run.id, run.app, env, actor):
                get_logger(run_id=run.id, app=run.app).info("awaiting_approval", environment=env)
                self.shared.notify("awaiting_approval", run, env, actor)
            now = time.monotonic()
            if now >= deadline:
                waited = f" (waited {now - started:.0f} s)" if wait_s else ""
                raise AwaitingApproval(
                    f"run {run.id} ({run.app} @ {run.sha[:12]}) is awaiting approval for {env}{waited}: "
                    f"'orchestrator approve {run.id}' lets it through (or 'orchestrator reject {run.id} "
                    f"--reason TEXT' ends it), then advance again, or advance with --wait SECONDS",
                    details={
                        "run_id": run.id,
                        "environment": env,
                        "approve": f"orchestrator approve {run.id}",
                    },
                )
            time.sleep(min(APPROVAL_POLL_S, deadline - now))

    def rejected(self, run_id: int) -> Rejected:
        decision = next((d for d in reversed(self.store.approvals(run_id)) if d.decision == "rejected"), None)
        what = decision.describe() if decision else "rejected"
        return Rejected(
            f"run {run_id} was {what}; it will not be promoted (start a new run to deploy again)",
            details={"run_id": run_id, "approval": views.approval(decision) if decision else None},
        )

    def record(self, transition_id: int, approval: ApprovalRecord) -> None:
        """The approval that let the edge begin, as the transition's first check (position 0, before
        the gates'), so `runs show` and the audit tell who let this promotion through."""
        self.store.record_gate_result(
            transition_id,
            0,
            GateResult(
                "approval",
                GateStatus.PASS,
                f"{approval.decision} by {approval.actor}",
                {"approval_id": approval.id, "actor": approval.actor, "at": approval.at.isoformat()},
                0.0,
                approval.at,
            ),
        )
