"""Approvals: an edge into an environment that requires one waits for a person.

``require_approval`` in ``[apps.NAME]`` names the environments (``true`` = prod). Their edge stays shut
until `orchestrator approve RUN` records who let it through; `orchestrator reject RUN --reason` ends
the run as ``rejected`` (a terminal state of the machine, like ``superseded``), recorded as a
transition so the run's state is always explained by its history.

The rules (which decision is possible for a run in which state) are pure functions of the run's state,
the app's config and the decisions recorded so far, so they are unit-tested without a database; the
two actions below apply them and let the store's compare-and-sets settle races between people.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from orchestrator.errors import BadInput, Conflict
from orchestrator.machine import PROD, STAGING, Edge, RunMachine, State
from orchestrator.store.records import ApprovalRecord

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.notify import Notifier
    from orchestrator.store.repository import Store


class Decision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class Standing(StrEnum):
    """Where an edge stands with respect to approval."""

    NOT_REQUIRED = "not_required"
    AWAITING = "awaiting"
    APPROVED = "approved"
    REJECTED = "rejected"


def target_environment(edge: Edge) -> str:
    return PROD if edge.dest == State.DEPLOY else STAGING


def standing(required: frozenset[str], edge: Edge, decisions: Sequence[ApprovalRecord]) -> Standing:
    """A rejection outweighs an approval (someone changed their mind before the edge ran)."""
    env = target_environment(edge)
    if env not in required:
        return Standing.NOT_REQUIRED
    mine = {d.decision for d in decisions if d.environment == env}
    if Decision.REJECTED in mine:
        return Standing.REJECTED
    if Decision.APPROVED in mine:
        return Standing.APPROVED
    return Standing.AWAITING


def decision_of(decisions: Sequence[ApprovalRecord], env: str, decision: Decision) -> ApprovalRecord | None:
    return next((d for d in decisions if d.environment == env and d.decision == decision), None)


def decidable_edge(
    run_id: int,
    app: str,
    state: State,
    required: frozenset[str],
    decisions: Sequence[ApprovalRecord],
    decision: Decision,
) -> Edge:
    """The edge a person's ``decision`` about a run in ``state`` is about, or the Conflict (exit 3)
    saying why there is none. Approving twice is refused (the first approval is the record); rejecting
    an approved run that has not moved yet is allowed: stopping is always the safe change of mind."""
    verb = "approve" if decision == Decision.APPROVED else "reject"
    if state == State.SUPERSEDED:
        raise Conflict(
            f"run {run_id} was superseded by a newer run of {app}: there is nothing to {verb}; "
            f"'orchestrator runs list --app {app}' shows the newer run"
        )
    if state == State.REJECTED:
        rejected = decision_of(decisions, PROD, Decision.REJECTED) or next(
            (d for d in decisions if d.decision == Decision.REJECTED), None
        )
        what = rejected.describe() if rejected else "rejected"
        raise Conflict(f"run {run_id} was {what}: it is finished; start a new run to deploy again")
    edge = RunMachine(state).next_edge()
    if edge is None:
        raise Conflict(f"run {run_id} already reached {state}: there is nothing left to {verb}")
    env = target_environment(edge)
    if env not in required:
        if required:
            envs = " and ".join(sorted(required))
            raise Conflict(
                f"run {run_id} is in {state}: its next edge (to {edge.dest}) needs no approval; "
                f"{app} requires approval for {envs}, once the run got there "
                f"('orchestrator advance {run_id} --to {edge.dest}' first)"
            )
        raise Conflict(
            f"{app} does not require approval, so run {run_id} is not awaiting any: advance it, or set "
            f"require_approval = true in [apps.{app}]"
        )
    if decision == Decision.APPROVED:
        done = decision_of(decisions, env, Decision.APPROVED)
        if done is not None:
            raise Conflict(f"run {run_id} was already {done.describe()}: nothing to do")
    return edge


def parse_reason(raw: str | None, *, required: bool) -> str | None:
    reason = (raw or "").strip()
    if required and not reason:
        raise BadInput("reject needs --reason TEXT: whoever started the run must learn why it stops")
    return reason or None


# -- the actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionResult:
    """What `approve` / `reject` recorded."""

    run_id: int
    app: str
    sha: str
    edge: Edge
    approval: ApprovalRecord
    state: State
    transition_id: int | None = None


def decide(
    config: Config,
    store: Store,
    run_id: int,
    decision: Decision,
    *,
    actor: str | None,
    reason: str | None,
    notifier: Notifier | None = None,
) -> DecisionResult:
    """Record ``decision`` about ``run_id``'s next edge (see ``decidable_edge``) and notify."""
    from orchestrator.notify import Notification
    from orchestrator.service import parse_actor

    why = parse_reason(reason, required=decision == Decision.REJECTED)
    who = parse_actor(actor)
    run = store.get_run(run_id)
    app = config.app(run.app)
    state = State(run.state)
    edge = decidable_edge(run.id, app.name, state, app.require_approval, store.approvals(run.id), decision)
    env = target_environment(edge)
    if decision == Decision.APPROVED:
        # Approving a run a newer one has overtaken would let nothing through: it is superseded on its
        # next advance. Said now, so the approver looks at the newer run instead.
        newer = store.newer_contender(run.id, edge.dest.value, env)
        if newer is not None:
            raise Conflict(
                f"run {run.id} is superseded by newer run {newer[0]} ({newer[1]}): approve that one instead"
            )
        approval = store.approve(run.id, edge.source.value, env, who, why)
        result = DecisionResult(run.id, run.app, run.sha, edge, approval, state)
    else:
        assert why is not None
        approval, transition_id = store.reject(run.id, edge.source.value, edge.dest.value, env, who, why)
        result = DecisionResult(
            run.id, run.app, run.sha, edge, approval, RunMachine(state).reject(), transition_id
        )
    if notifier is not None:
        notifier.send(
            Notification(
                event=decision.value,
                app=run.app,
                environment=env,
                run_id=run.id,
                sha=run.sha,
                actor=who,
                reason=why,
                transition_id=result.transition_id,
            )
        )
    return result
