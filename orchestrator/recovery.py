"""Reconciling an edge that stopped half-way with what really runs.

A runner can stop mid-edge in three ways: a signal (SIGTERM from a cancelled CI job), an engine that
stops answering, or death without a word (SIGKILL, power loss). The first two undo their own work
before exiting (``undo`` mode); the third leaves a transition ``in_progress`` with a holder that no
longer lives, which `orchestrator recover` (or the next command that needs the environment) finds
and reconciles (``recover`` mode).

Kamal's split between deciding and doing: ``decide`` is pure (facts in, one action per environment
out) and unit-tested exhaustively; ``Reconciler`` gathers the facts from the recorded steps and the
engine, and carries the actions out with the deployer, recording each as a step and a result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from orchestrator.config import AppConfig, Settings
from orchestrator.deploy import Deployer
from orchestrator.docker_engine import DockerEngine, DockerError
from orchestrator.engines import AppEngines
from orchestrator.gates import GateResult, GateStatus, ReleaseIntent
from orchestrator.machine import PROD, STAGING, TO_PROD, TO_STAGING, Edge, edge_between
from orchestrator.records import record_release
from orchestrator.steps import StepLog
from orchestrator.store.repository import ReleaseRecord, StepRecord, Store, TransitionRecord
from orchestrator.verdict import TransitionOutcome

# Steps that change what an environment runs or which image its tags name.
# (connect, retire: a zero-downtime hand-over; start alone already counts, the candidate runs; update: a
# swarm service's spec submitted.)
_TOUCHING = ("tag", "push", "stop", "start", "pin", "up", "untag", "move", "connect", "retire", "update")


class Mode(StrEnum):
    UNDO = "undo"  # the runner itself, interrupted: put things back as they were
    RECOVER = "recover"  # someone else, after the runner died: keep finished work, undo the rest


class Action(StrEnum):
    KEEP = "keep"  # runs what its latest release says; nothing to do
    RECORD = "record"  # runs this transition's image, verified: record the release it is
    RETAG = "retag"  # still runs the previous release; only its tags (or override) moved
    RESTORE = "restore"  # redeploy the previous release and verify it
    STOP = "stop"  # no previous release to go back to: take it down and remove its tags
    REPAIR = "repair"  # untouched by this edge but not running its release (engine restart)


@dataclass(frozen=True)
class EnvFacts:
    """What is known of one environment after an edge stopped half-way, gathered from the recorded steps
    and the engine: the input of the pure ``decide``, which turns it into one ``Action``."""

    env: str
    touched: bool
    new_image: str | None
    runs_new: bool  # running this transition's image, healthy, label (and /version) verified
    runs_previous: bool  # running the previous release's image, healthy and verified
    new_recorded: bool  # a release of this transition's image in env is already recorded
    has_previous: bool
    restored: bool = False  # this transition already put the previous release back (a compensation)


def decide(facts: EnvFacts, mode: Mode) -> Action:
    """One action per environment. Finished work is kept only when recovering: an interrupted runner
    was told to stop, so it puts prod back; a dead one may have completed what it meant to do."""
    if not facts.touched:
        if facts.runs_previous or not facts.has_previous:
            return Action.KEEP
        return Action.REPAIR
    if facts.restored and facts.runs_previous:
        return Action.KEEP
    keep_new = facts.runs_new and (mode == Mode.RECOVER or facts.env == STAGING)
    if keep_new:
        return Action.KEEP if facts.new_recorded else Action.RECORD
    if not facts.has_previous:
        return Action.STOP
    if facts.runs_previous:
        return Action.RETAG
    return Action.RESTORE


def edge_finished(
    edge: Edge, actions: dict[str, Action], facts: dict[str, EnvFacts], steps: Sequence[StepRecord]
) -> bool:
    """The edge may be closed as succeeded only when its destination already runs, verified, what the
    edge was putting there and every check the edge owed was passed."""
    if edge == TO_PROD:
        prod = facts.get(PROD)
        return (
            prod is not None
            and prod.touched
            and prod.runs_new
            and actions[PROD] in (Action.KEEP, Action.RECORD)
        )
    if edge == TO_STAGING:
        staging = facts.get(STAGING)
        checked = any(s.name == "staging_check" and s.status == "done" for s in steps)
        return staging is not None and staging.runs_new and checked
    return False


def touched(steps: Sequence[StepRecord], env: str) -> bool:
    return any(s.environment == env and s.name.rsplit("_", 1)[-1] in _TOUCHING for s in steps)


def new_image(steps: Sequence[StepRecord], env: str) -> str | None:
    """The image this transition was putting in ``env``: what its tag step moved the tags to, else
    what it built (staging is always deployed from the build)."""
    for step in steps:
        if step.name == f"{env}_tag" and step.changes.get("image_id"):
            return str(step.changes["image_id"])
    if env == STAGING:
        for step in steps:
            if step.name == "build" and step.changes.get("image_id"):
                return str(step.changes["image_id"])
    return None


def new_digest(steps: Sequence[StepRecord], env: str, image_id: str) -> str | None:
    """The registry reference (``repo@sha256:...``) this transition pushed ``image_id`` as for ``env``:
    a release recorded by recovery must carry it like one recorded by the edge, or a later rollback to
    it (or a swarm service pinned by it) has no digest to pull."""
    for step in steps:
        if (
            step.name == f"{env}_push"
            and step.changes.get("image_id") == image_id
            and step.changes.get("digest")
        ):
            return str(step.changes["digest"])
    return None


@dataclass
class Outcome:
    """What reconciling found and did, per environment, and whether the edge could be finished."""

    actions: dict[str, Action] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    results: list[GateResult] = field(default_factory=list)
    finished: bool = False
    ok: bool = True

    def summary(self) -> str:
        return "; ".join(self.notes) or "nothing to reconcile"


class Reconciler:
    """Gathers facts for the environments an edge may have touched and carries out ``decide``."""

    def __init__(
        self,
        store: Store,
        engine: DockerEngine | AppEngines,
        app: AppConfig,
        settings: Settings,
        transition: TransitionRecord,
        sha: str,
        steps: StepLog,
        record: Callable[[GateResult], None],
    ) -> None:
        self.store = store
        self.app = app
        self.transition = transition
        self.sha = sha
        self.record = record
        latest = {env: store.latest_release(app.name, env) for env in (STAGING, PROD)}
        self.deployer = Deployer.from_releases(engine, app, settings, latest, steps)
        self._mode = Mode.RECOVER.value

    def facts(self, env: str, steps: Sequence[StepRecord]) -> tuple[EnvFacts, ReleaseRecord | None]:
        previous = self.store.latest_release_outside(self.app.name, env, self.transition.id)
        image = new_image(steps, env)
        own = [r for r in self.store.releases_of_transition(self.transition.id) if r.environment == env]
        runs_new = image is not None and self.deployer.serves(env, image, self.sha)
        runs_previous = (
            previous is not None
            and previous.image_id != image
            and self.deployer.serves(env, previous.image_id, previous.revision)
        )
        if previous is not None and previous.image_id == image:
            runs_previous = runs_new
        return (
            EnvFacts(
                env=env,
                touched=touched(steps, env),
                new_image=image,
                runs_new=runs_new,
                runs_previous=runs_previous,
                new_recorded=any(r.image_id == image and r.kind == "deploy" for r in own),
                has_previous=previous is not None,
                restored=previous is not None
                and any(r.kind == "rollback" and r.image_id == previous.image_id for r in own),
            ),
            previous,
        )

    def reconcile(self, mode: Mode, environments: Sequence[str], reason: str) -> Outcome:
        steps = self.transition.steps
        self._mode = mode.value
        outcome = Outcome()
        facts: dict[str, EnvFacts] = {}
        for env in environments:
            with self.deployer.steps.phase(mode.value):
                found, previous = self.facts(env, steps)
                facts[env] = found
                action = decide(found, mode)
                outcome.actions[env] = action
                self._carry_out(env, action, found, previous, reason, outcome)
        edge = edge_between(self.transition.from_state, self.transition.to_state)
        outcome.finished = (
            mode == Mode.RECOVER and outcome.ok and edge_finished(edge, outcome.actions, facts, steps)
        )
        return outcome

    def _carry_out(
        self,
        env: str,
        action: Action,
        facts: EnvFacts,
        previous: ReleaseRecord | None,
        reason: str,
        outcome: Outcome,
    ) -> None:
        d = self.deployer
        started = datetime.now(UTC)
        status, note, details = GateStatus.PASS, "", {"action": action.value, "environment": env}
        try:
            if action == Action.KEEP:
                note = f"{env} runs its recorded release"
            elif action == Action.RECORD:
                assert facts.new_image is not None
                digest = new_digest(self.transition.steps, env, facts.new_image)
                self._record(
                    env,
                    ReleaseIntent(
                        env,
                        facts.new_image,
                        self.sha,
                        reason=reason,
                        digest=digest,
                        override=d.override_text(),
                    ),
                )
                note = f"{env} runs {facts.new_image[:19]} ({self.sha[:12]}), verified: recorded"
            elif action == Action.RETAG:
                assert previous is not None
                d.republish(env, previous.image_id, previous.revision, previous.digest or previous.image_id)
                note = f"{env} still ran release {previous.id}: its tags point at it again"
            elif action in (Action.RESTORE, Action.REPAIR):
                assert previous is not None
                done = d.redeploy(env, previous, run_id=previous.run_id)
                details.update(done.details)
                if not done.ok:
                    status, note = (
                        GateStatus.FAIL,
                        f"{env}: restoring release {previous.id} failed: {done.reason}",
                    )
                    if not d.ensure_image(env, previous):
                        d.stop(env)
                        note += f"; {env} stopped: redeploy a known-good run"
                elif action == Action.RESTORE:
                    self._record(
                        env, ReleaseIntent.rollback(env, previous, reason=reason, override=done.override)
                    )
                    note = f"{env} restored to release {previous.id} ({previous.revision[:12]}), verified"
                else:
                    note = f"{env} was not running release {previous.id}: redeployed and verified"
            elif action == Action.STOP:
                d.stop(env)
                leftovers = d.unpublish(env)
                note = f"{env} had no earlier release: stopped, its tags removed" + "".join(
                    f"; {x}" for x in leftovers
                )
            if action in (Action.KEEP, Action.RECORD, Action.RETAG):
                # Behind a proxy, a crash mid-hand-over leaves a candidate never handed over, or the
                # old container serving beside the new one: only what serves is kept.
                d.settle(env)
        except DockerError as exc:
            status, note = GateStatus.FAIL, f"{env}: {action.value} failed: {exc.message}"
        if status.blocks:
            outcome.ok = False
        outcome.notes.append(note)
        result = GateResult(f"{self._mode}_{env}", status, note, details, 0.0, started)
        outcome.results.append(result)
        self.record(result)

    def _record(self, env: str, intent: ReleaseIntent) -> None:
        with self.deployer.steps.step("record_release", env) as step:
            release = record_release(
                self.store, self.app, intent, run_id=self.transition.run_id, transition_id=self.transition.id
            )
            step.changed(release_id=release.id, image_id=intent.image_id, kind=intent.kind)


def abandoned(transition: TransitionRecord, now: datetime | None = None) -> bool:
    """Nobody will finish this transition: it was left interrupted, or its holder is gone (dead on this
    host, or silent past its lease elsewhere)."""
    from orchestrator.holder import Liveness

    if transition.outcome == TransitionOutcome.INTERRUPTED:
        return True
    if transition.holder is not None:
        seen = transition.holder.liveness()
        if seen == Liveness.DEAD:
            return True
        if seen == Liveness.ALIVE:
            return False
    expires = transition.lease_expires_at
    return expires is None or expires <= (now or datetime.now(UTC))


def repair_environment(
    store: Store, engine: DockerEngine | AppEngines, app: AppConfig, settings: Settings, env: str
) -> str:
    """Put ``env`` back on its latest recorded release when it does not run it (an operator action
    died mid-way, or the engine restarted and left it stopped); returns what was found and done."""
    latest = {e: store.latest_release(app.name, e) for e in (STAGING, PROD)}
    release = latest[env]
    if release is None:
        return f"{env} has no recorded release: left as it is"
    deployer = Deployer.from_releases(engine, app, settings, latest)
    if deployer.serves(env, release.image_id, release.revision):
        deployer.settle(env)
        return f"{env} runs release {release.id}, verified"
    done = deployer.redeploy(env, release, run_id=release.run_id)
    if not done.ok:
        return f"{env} did not run release {release.id} and redeploying it failed: {done.reason}"
    return f"{env} did not run release {release.id}: redeployed and verified"
