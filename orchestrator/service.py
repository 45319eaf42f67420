"""The service layer: what `run start` and `advance` mean, independent of how they are invoked.

The order inside ``advance`` is the crash-safety contract: validate everything that needs no side
effect, claim the run and its environments while writing the transition ``in_progress``, run gates
recording each result as it lands, then close the transition and move the run in one commit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator import identity
from orchestrator.config import AppConfig, Config, check_app_paths
from orchestrator.errors import (
    AwaitingApproval,
    BadInput,
    Conflict,
    InfraUnavailable,
    OrchestratorError,
    Rejected,
)
from orchestrator.gates import (
    Gate,
    GateContext,
    GateResult,
    GateStatus,
    ProdOutcome,
    ReleaseIntent,
    first_line,
    gates_for,
    prod_outcome,
    run_compensations,
    run_gates,
)
from orchestrator.holder import Holder
from orchestrator.lifecycle import Heartbeat, Interrupted, interruptible, signals_deferred
from orchestrator.logging import get_logger
from orchestrator.machine import (
    EDGE_ENVIRONMENTS,
    ENVIRONMENTS,
    PROD,
    STAGING,
    TO_STAGING,
    Edge,
    RunMachine,
    State,
    edge_between,
)
from orchestrator.notify import Notification, Notifier
from orchestrator.records import record_release
from orchestrator.steps import StepLog, StepStatus
from orchestrator.store.repository import (
    ApprovalRecord,
    FreezeRecord,
    LockHeld,
    LockRecord,
    ReleaseRecord,
    RunRecord,
    Store,
    Superseded,
    TransitionRecord,
    UnfinishedTransition,
)
from orchestrator.verdict import TransitionOutcome

if TYPE_CHECKING:
    from orchestrator.approvals import Decision, DecisionResult
    from orchestrator.docker_engine import DockerEngine
    from orchestrator.metrics import MetricsReport
    from orchestrator.operator import Unlocked
    from orchestrator.prune import PruneResult
    from orchestrator.releases import EnvStatus, RollbackResult
    from orchestrator.store.history import History


def connect_engine() -> DockerEngine:
    # Imported here so that commands that never touch Docker (run start, runs list) do not pay for the SDK.
    from orchestrator.docker_engine import DockerEngine

    return DockerEngine.connect()


_SHA = re.compile(r"^[0-9a-f]{40}$")

# How an edge ends (the short names are the enum's members).
SUCCEEDED, FAILED, ABORTED = TransitionOutcome.SUCCEEDED, TransitionOutcome.FAILED, TransitionOutcome.ABORTED
# How often a waiting advance retries the lock: well under a second, so a freed environment is taken
# at once rather than after a long back-off.
LOCK_POLL_S = 0.2
# How often `advance --wait` looks for a person's decision.
APPROVAL_POLL_S = 0.5


def default_actor() -> str:
    """``--actor`` unset: the CI's name for who triggered the job, else the OS user."""
    return identity.default_actor()


MAX_ACTOR = 200  # the column width; longer would fail in PostgreSQL, not here


def parse_actor(raw: str | None) -> str:
    actor = (raw if raw is not None else default_actor()).strip()
    if not actor or len(actor) > MAX_ACTOR:
        raise BadInput(f"--actor must be 1 to {MAX_ACTOR} characters (got {len(actor)})")
    return actor


def parse_sha(raw: str) -> str:
    sha = raw.strip().lower()
    if not _SHA.match(sha):
        raise BadInput(f"sha {raw!r} is not a full commit sha (40 hex characters); use 'git rev-parse HEAD'")
    return sha


@dataclass(frozen=True)
class FailureSummary:
    """Why a failed edge failed and what was done about prod, as `advance` prints it."""

    gate: str
    reason: str
    prod: ProdOutcome
    container: str | None = None
    exit_code: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "reason": self.reason,
            "container": self.container,
            "exit_code": self.exit_code,
            "prod": self.prod.as_dict(),
        }


def edge_reason(parts: Sequence[tuple[str, str]]) -> str:
    """One transition reason from ``(gate, reason)`` pairs: the first line of each, joined, is the
    summary; the evidence some reasons carry on further lines (a container's log) follows it."""
    heads: list[str] = []
    evidence: list[str] = []
    for name, reason in parts:
        head, _, rest = reason.partition("\n")
        heads.append(f"{name}: {head}")
        if rest:
            evidence.append(rest)
    return "\n".join(["; ".join(heads), *evidence])


@dataclass(frozen=True)
class AdvanceResult:
    run_id: int
    transition_id: int
    from_state: State
    to_state: State
    state: State
    outcome: TransitionOutcome
    reason: str | None
    checks: tuple[GateResult, ...]

    @property
    def failure(self) -> FailureSummary | None:
        """The gate that blocked the edge, its reason, its container, and what became of prod."""
        blocking = next((c for c in self.checks if c.status.blocks), None)
        if self.outcome != FAILED or blocking is None:
            return None
        exit_code = blocking.details.get("exit_code")
        return FailureSummary(
            blocking.name,
            blocking.reason,
            prod_outcome(self.checks),
            blocking.details.get("container"),
            exit_code if isinstance(exit_code, int) else None,
        )

    def as_dict(self) -> dict[str, Any]:
        failure = self.failure
        return {
            "run_id": self.run_id,
            "transition_id": self.transition_id,
            "from": self.from_state.value,
            "to": self.to_state.value,
            "state": self.state.value,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "failure": failure.as_dict() if failure else None,
            "checks": [c.as_dict() for c in self.checks],
        }


@dataclass(frozen=True)
class DeployResult:
    """`deploy`: the run it started and the result of each edge it ran (the staging edge, and the prod
    edge unless staging failed). Its outcome is the last edge's."""

    run: RunRecord
    edges: tuple[AdvanceResult, ...]

    @property
    def outcome(self) -> str:
        return self.edges[-1].outcome

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run.id,
            "app": self.run.app,
            "sha": self.run.sha,
            "actor": self.run.actor,
            "state": self.run.state,
            "outcome": self.outcome,
            "edges": [e.as_dict() for e in self.edges],
        }


def _check_wait(wait_s: float) -> None:
    if wait_s < 0:
        raise BadInput(f"--wait must be 0 or more seconds (got {wait_s:g})")


@dataclass(frozen=True)
class RecoveryReport:
    """What `recover` found about one abandoned transition (or run-less lock) and what it did."""

    app: str
    transition_id: int | None
    run_id: int | None
    found: str
    outcome: str
    reason: str
    actions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "transition_id": self.transition_id,
            "run_id": self.run_id,
            "found": self.found,
            "outcome": self.outcome,
            "reason": self.reason,
            "actions": self.actions,
        }


class _Engine:
    """The engine, connected on first use: recovery of a transition that never reached Docker needs none."""

    def __init__(self, factory: Callable[[], DockerEngine]) -> None:
        self._factory = factory
        self._engine: DockerEngine | None = None

    def get(self) -> DockerEngine:
        if self._engine is None:
            self._engine = self._factory()
        return self._engine

    @property
    def connected(self) -> DockerEngine | None:
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _target_environment(edge: Edge) -> str:
    return PROD if edge.dest == State.DEPLOY else STAGING


class RunService:
    def __init__(
        self,
        config: Config,
        store: Store,
        engine_factory: Callable[[], DockerEngine] = connect_engine,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.engine_factory = engine_factory
        self.notifier = notifier if notifier is not None else Notifier()

    def _notify(self, event: str, run: RunRecord, environment: str | None, actor: str, **extra: Any) -> None:
        """Announce an outcome already recorded (orchestrator/notify.py): returns at once, never raises."""
        self.notifier.send(Notification(event, run.app, environment, run.id, run.sha, actor, **extra))

    @property
    def lease_s(self) -> float:
        return self.config.settings.lock_lease_s

    @contextmanager
    def engine(self) -> Iterator[_Engine]:
        """An engine connected on first use and closed at the end, for operator actions."""
        engine = _Engine(self.engine_factory)
        try:
            yield engine
        finally:
            engine.close()

    def start_run(self, app: str, sha: str, actor: str | None = None) -> RunRecord:
        config = self.config.app(app)
        sha, actor = parse_sha(sha), parse_actor(actor)
        check_app_paths(config)
        from orchestrator.gitrepo import commit_time

        run = self.store.create_run(
            app, sha, actor, State.DEVELOPMENT.value, committed_at=commit_time(config.source, sha)
        )
        get_logger(run_id=run.id, app=run.app, sha=run.sha).info("run_started", actor=run.actor)
        return run

    def refuse_if_frozen(self, app: str) -> None:
        frozen = self.store.frozen(app)
        if frozen is not None:
            what = "" if frozen.app == "*" else f" {app}"
            raise Conflict(
                f"{frozen.describe()}: no run of {app} may advance until 'orchestrator unfreeze{what}'",
                details={"freeze": frozen.as_dict()},
            )

    def advance(
        self, run_id: int, to: str, actor: str | None = None, *, wait_s: float = 0.0
    ) -> AdvanceResult:
        target = State.parse(to)
        _check_wait(wait_s)
        run = self.store.get_run(run_id)
        engine = _Engine(self.engine_factory)
        try:
            return self._advance_run(run, target, actor, wait_s, engine)
        finally:
            engine.close()

    def deploy(self, app: str, sha: str, actor: str | None = None, *, wait_s: float = 0.0) -> DeployResult:
        """`run start` and both edges in one process: the natural CI call. Same gates, same records and
        the same verdicts as the three calls; a failed staging edge stops there. What three processes
        paid three times (imports, config, database, engine connection, builder detection) is paid once.

        Everything that can be refused without a side effect is refused before the run is created
        (bad input, a freeze, an engine that does not answer), so a deploy that could never start
        leaves no run behind. An error after that carries the run id and the edges done so far."""
        config = self.config.app(app)
        sha, who = parse_sha(sha), parse_actor(actor)
        _check_wait(wait_s)
        check_app_paths(config)
        self.refuse_if_frozen(config.name)
        self._preflight(config, sha, TO_STAGING)
        engine = _Engine(self.engine_factory)
        try:
            engine.get()
            run = self.start_run(config.name, sha, who)
            done: list[AdvanceResult] = []
            try:
                for target in (State.DEPLOY_STAGING, State.DEPLOY):
                    result = self._advance_run(
                        self.store.get_run(run.id), target, who, wait_s, engine, preflighted=True
                    )
                    done.append(result)
                    if result.outcome == FAILED:
                        break
            except OrchestratorError as exc:
                exc.details = {**exc.details, "run_id": run.id, "edges": [r.as_dict() for r in done]}
                raise
            return DeployResult(self.store.get_run(run.id), tuple(done))
        finally:
            engine.close()

    def _preflight(self, app: AppConfig, sha: str, edge: Edge) -> None:
        """What the edge's runtime and build would refuse anyway (exit 2 or 4), before anything is
        recorded. The builder is looked for (a docker CLI probed per process) only on the edge that
        always builds: the deploy edge rebuilds only when staging went stale, and its build step then
        refuses what it cannot build as a failed gate."""
        from orchestrator.runtimes import preflight

        preflight(app, sha)
        if any(g.needs_docker for g in gates_for(edge)):
            from orchestrator.steps.build import preflight as build_preflight

            build_preflight(app, self.config.settings, sha, detect_builder=edge == TO_STAGING)

    def _advance_run(
        self,
        run: RunRecord,
        target: State,
        actor: str | None,
        wait_s: float,
        engine: _Engine,
        *,
        preflighted: bool = False,
    ) -> AdvanceResult:
        if run.state == State.REJECTED:
            raise self._rejected(run.id)
        machine = RunMachine(State(run.state))
        edge = machine.edge_to(target)
        app = self.config.app(run.app)
        actor = parse_actor(actor)
        self.refuse_if_frozen(app.name)
        # Before any preflight or claim: a run waiting for a person holds no environment meanwhile.
        approval, wait_s = self._await_approval(run, edge, app, actor, wait_s)

        gates = gates_for(edge)
        if not preflighted:
            self._preflight(app, run.sha, edge)
        # Connect before anything is written: an engine that does not answer changes nothing at all.
        if any(g.needs_docker for g in gates):
            engine.get()
        with (
            structlog.contextvars.bound_contextvars(run_id=run.id, app=run.app, sha=run.sha, edge=edge.name),
            interruptible(),
        ):
            transition_id = self._claim(run, edge, actor, engine, wait_s)
            if approval is not None:
                self._record_approval(transition_id, approval)
            return self._advance(run, edge, machine, app, actor, gates, engine, transition_id)

    # approval -------------------------------------------------------------------------------------

    def _await_approval(
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
                raise self._rejected(run.id)
            # A run a newer one overtook would be superseded on its claim: end it now rather than
            # ask a person to approve a commit that will never ship.
            newer = self.store.newer_contender(run.id, edge.dest.value, env)
            if newer is not None:
                superseded = Superseded(run.id, *newer)
                self._supersede(run, edge, actor, superseded)
                raise superseded
            if self.store.approval_requested(run.id, run.app, env, actor):
                get_logger(run_id=run.id, app=run.app).info("awaiting_approval", environment=env)
                self._notify("awaiting_approval", run, env, actor)
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

    def _rejected(self, run_id: int) -> Rejected:
        decision = next((d for d in reversed(self.store.approvals(run_id)) if d.decision == "rejected"), None)
        what = decision.describe() if decision else "rejected"
        return Rejected(
            f"run {run_id} was {what}; it will not be promoted (start a new run to deploy again)",
            details={"run_id": run_id, "approval": decision.as_dict() if decision else None},
        )

    def _record_approval(self, transition_id: int, approval: ApprovalRecord) -> None:
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

    # claiming -------------------------------------------------------------------------------------

    def _claim(self, run: RunRecord, edge: Edge, actor: str, engine: _Engine, wait_s: float) -> int:
        """Take the run and its environments; recover whatever a dead holder left on the way; with
        ``wait_s`` wait for a live holder, saying so, so that a newer waiting run supersedes us."""
        log = get_logger()
        target_env = _target_environment(edge)
        deadline = time.monotonic() + wait_s
        waiting_since: float | None = None
        renewed = 0.0
        try:
            while True:
                try:
                    return self.store.begin_transition(
                        run.id,
                        edge.source.value,
                        edge.dest.value,
                        actor,
                        EDGE_ENVIRONMENTS[edge],
                        target_environment=target_env,
                        holder=Holder.me(),
                        lease_s=self.lease_s,
                    )
                except Superseded as exc:
                    self._supersede(run, edge, actor, exc)
                    raise
                except (UnfinishedTransition, LockHeld) as exc:
                    if isinstance(exc, UnfinishedTransition):
                        if self._recover_if_abandoned(exc.transition, engine, actor):
                            continue
                    elif self._free_abandoned(exc.locks, engine, actor):
                        continue
                    now = time.monotonic()
                    if now >= deadline:
                        if waiting_since is not None:
                            raise Conflict(
                                f"{exc.message} (waited {now - waiting_since:.0f} s)", details=exc.details
                            ) from None
                        raise
                    if waiting_since is None:
                        waiting_since = now
                        log.info("waiting_for_lock", holder=exc.message, wait_s=wait_s)
                    if now - renewed > self.lease_s / 3:
                        self.store.wait_for(run.app, target_env, run.id, self.lease_s)
                        renewed = now
                    time.sleep(min(LOCK_POLL_S, max(deadline - now, 0.01)))
        finally:
            if waiting_since is not None:
                self.store.stop_waiting(run.app, target_env, run.id)

    def _supersede(self, run: RunRecord, edge: Edge, actor: str, exc: Superseded) -> None:
        self.store.supersede(run.id, edge.source.value, edge.dest.value, actor, exc.message)
        get_logger().warning("run_superseded", newer_run_id=exc.newer_run_id, reason=exc.message)
        self._notify("superseded", run, _target_environment(edge), actor, reason=exc.message)

    def _free_abandoned(self, locks: Sequence[LockRecord], engine: _Engine, actor: str) -> bool:
        freed = False
        for lock in locks:
            if not lock.abandoned:
                continue
            if lock.transition_id is not None:
                freed |= self._recover_if_abandoned(
                    self.store.get_transition(lock.transition_id), engine, actor
                )
            else:
                self._repair_after_operator(lock, engine, actor)
                freed = True
        return freed

    # the edge -------------------------------------------------------------------------------------

    def _advance(
        self,
        run: RunRecord,
        edge: Edge,
        machine: RunMachine,
        app: AppConfig,
        actor: str,
        gates: list[type[Gate]],
        engine: _Engine,
        transition_id: int,
    ) -> AdvanceResult:
        log = get_logger()
        log.info("transition_started", transition_id=transition_id, actor=actor)
        previous = {env: self.store.latest_release(run.app, env) for env in ENVIRONMENTS}
        position = 0

        def record(result: GateResult) -> None:
            nonlocal position
            position += 1
            self.store.record_gate_result(transition_id, position, result)

        steps = self._step_log(transition_id)

        def release_now(intent: ReleaseIntent) -> None:
            with steps.step("record_release", intent.environment) as step:
                release = record_release(self.store, app, intent, run_id=run.id, transition_id=transition_id)
                step.changed(release_id=release.id, image_id=intent.image_id, kind=intent.kind)

        ctx = GateContext(
            run_id=run.id,
            app=app,
            sha=run.sha,
            edge=edge,
            settings=self.config.settings,
            log=log,
            engine=engine.connected,
            previous_releases=previous,
            run_releases=self.store.releases_of_run(run.id),
            recorded_images=self._recorded_images(app),
            steps=steps,
            on_release=release_now,
        )
        heartbeat = self._heartbeat(transition_id, f"transition {transition_id}")
        with heartbeat:
            try:
                checks = run_gates(gates, ctx, record)
            except InfraUnavailable as exc:
                message = self._abort(run, edge, app, engine, transition_id, exc.message, record, ctx)
                log.error("transition_aborted", reason=message)
                self._notify(
                    "aborted",
                    run,
                    _target_environment(edge),
                    actor,
                    reason=message,
                    transition_id=transition_id,
                )
                raise type(exc)(
                    message,
                    details={
                        **exc.details,
                        "run_id": run.id,
                        "transition_id": transition_id,
                        "state": edge.source.value,
                    },
                ) from None
            except Interrupted as exc:
                with signals_deferred():
                    why = f"interrupted by {exc.signal_name}"
                    message = self._abort(run, edge, app, engine, transition_id, why, record, ctx)
                    log.error("transition_interrupted", reason=message, signal=exc.signal_name)
                exc.args = (message,)
                raise

            # From here the verdict is in: a signal now must not leave it half-written.
            with signals_deferred():
                blocking = next((c for c in checks if c.status.blocks), None)
                if blocking is None:
                    outcome, reason, state = SUCCEEDED, None, machine.succeed(edge)
                else:
                    ctx.failure_reason = f"{blocking.name}: {first_line(blocking.reason)}"
                    undone = run_compensations(ctx, record)
                    checks += undone
                    reason = edge_reason([(c.name, c.reason) for c in (blocking, *undone)])
                    outcome, state = FAILED, machine.fail()
                    lost = next((u for u in undone if u.details.get("infrastructure")), None)
                    if lost is not None:
                        # The undo never reached the engine: prod may be down or half-restored. Closing
                        # the transition would free its locks with nobody left to put prod back.
                        message = self._leave_for_recovery(transition_id, edge, app, reason, lost.reason)
                        log.error("transition_interrupted", reason=message)
                        raise InfraUnavailable(
                            message,
                            details={
                                "run_id": run.id,
                                "transition_id": transition_id,
                                "state": edge.source.value,
                            },
                        )
                self.store.finish_transition(
                    transition_id, outcome=outcome, reason=reason, result_state=state.value
                )
        log.info("transition_finished", outcome=outcome, reason=reason, state=state.value)
        self._notify(
            "promoted" if outcome == SUCCEEDED else "failed",
            run,
            _target_environment(edge),
            actor,
            reason=reason,
            transition_id=transition_id,
        )
        if (
            outcome == SUCCEEDED
            and state == State.DEPLOY
            and self.config.settings.prune_after_deploy
            and engine.connected is not None  # an edge that never reached the engine built nothing
        ):
            self._prune_after_deploy(run, actor, engine)
        return AdvanceResult(
            run.id, transition_id, edge.source, edge.dest, state, outcome, reason, tuple(checks)
        )

    def _recorded_images(self, app: AppConfig) -> list[str]:
        """The images this orchestrator built and released for ``app``, newest first: the builds' cache
        may reuse their layers and nothing else (steps/build.py, CachePolicy)."""
        found = [
            release
            for env in ENVIRONMENTS
            for release in self.store.releases(app.name, env, limit=app.keep_releases)
        ]
        return [r.image_id for r in sorted(found, key=lambda r: r.id, reverse=True)]

    def _prune_after_deploy(self, run: RunRecord, actor: str, engine: _Engine) -> None:
        """Housekeeping once the promotion is recorded as succeeded (so nothing here can change its
        verdict), under a lock of its own: a run that took the environments in between wins, and this
        prune is skipped (the next one catches up). Whatever goes wrong, including a signal, is logged
        and recorded as a ``prune_failed`` event; the deploy stands and `advance` exits 0."""
        from orchestrator.prune import prune

        log = get_logger()
        try:
            pruned = prune(
                self.config,
                self.store,
                engine.get,
                run.app,
                actor=actor,
                holder=f"prune after run {run.id} by {actor}",
                run_id=run.id,
            )
        except (Exception, Interrupted) as exc:
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            # Another run (or an operator) took the environments first: not a failure, the next
            # successful promotion prunes instead.
            kind, what = (
                ("prune_skipped", "skipped") if isinstance(exc, Conflict) else ("prune_failed", "failed")
            )
            log.warning(kind, error=message, why="the deploy stands; 'orchestrator prune' retries")
            try:
                self.store.record_event(
                    kind,
                    actor,
                    f"prune after run {run.id} {what} (the deploy stands): {message}",
                    app=run.app,
                    run_id=run.id,
                    details={"error": type(exc).__name__},
                )
            except Exception as record_exc:  # the database may be what failed
                log.warning("prune_failure_not_recorded", error=str(record_exc))
            return
        log.info("pruned_after_deploy", bytes_reclaimed=pruned.bytes_reclaimed, images=len(pruned.images))

    def _heartbeat(self, transition_id: int, what: str) -> Heartbeat:
        """Renews this process's lease on the transition (and its locks) every third of a lease."""
        return Heartbeat(
            lambda: self.store.renew_lease(transition_id, Holder.me(), self.lease_s), self.lease_s / 3, what
        )

    def _step_log(self, transition_id: int, position: int = 0) -> StepLog:
        def begin(pos: int, name: str, env: str | None) -> int:
            return self.store.begin_step(transition_id, pos, name, env)

        def finish(step_id: int, status: StepStatus, changes: dict[str, Any], error: str | None) -> None:
            self.store.finish_step(step_id, status=status.value, changes=changes, error=error)

        return StepLog(begin, finish, position=position)

    def _abort(
        self,
        run: RunRecord,
        edge: Edge,
        app: AppConfig,
        engine: _Engine,
        transition_id: int,
        why: str,
        record: Callable[[GateResult], None],
        ctx: GateContext,
    ) -> str:
        """The edge stopped without a verdict (engine gone, step timed out, signal): nothing is decided
        about the commit, so put every environment it touched back as it was, then close the transition
        with the run where it started. If the engine cannot be reached to do that, leave the transition
        ``interrupted`` with its locks for `recover`, and say so."""
        from orchestrator.recovery import Mode, Reconciler, touched

        if ctx.compensations:
            # The undos gates registered for their own side effects run first, as on a failed gate.
            ctx.failure_reason = why
            with signals_deferred():
                undone = run_compensations(ctx, record)
            why += "".join(f"; {u.name}: {u.reason}" for u in undone)
        transition = self.store.get_transition(transition_id)
        envs = [env for env in EDGE_ENVIRONMENTS[edge] if touched(transition.steps, env)]
        if not envs or engine.connected is None:
            self.store.finish_transition(
                transition_id, outcome=ABORTED, reason=why, result_state=edge.source.value
            )
            return why
        try:
            outcome = Reconciler(
                self.store,
                engine.connected,
                app,
                self.config.settings,
                transition,
                run.sha,
                ctx.steps,
                record,
            ).reconcile(Mode.UNDO, envs, reason=f"undo of transition {transition_id}: {why}")
        except InfraUnavailable as exc:
            return self._leave_for_recovery(transition_id, edge, app, why, exc.message)
        reason = f"{why}; undone: {outcome.summary()}"
        self.store.finish_transition(
            transition_id, outcome=ABORTED, reason=reason, result_state=edge.source.value
        )
        return reason

    def _leave_for_recovery(
        self, transition_id: int, edge: Edge, app: AppConfig, why: str, cause: str
    ) -> str:
        """The engine went away before the edge's work could be undone: keep the transition (as
        ``interrupted``) and its locks for `recover`, and say so."""
        from orchestrator.recovery import touched

        steps = self.store.get_transition(transition_id).steps
        where = " and ".join(env for env in EDGE_ENVIRONMENTS[edge] if touched(steps, env))
        message = (
            f"{why}; {where or 'the environment'} may be down or half-changed: it stays locked for "
            f"recovery, and 'orchestrator recover' (or the next advance or rollback of {app.name}) "
            f"restores it once the engine answers ({cause})"
        )
        self.store.interrupt_transition(transition_id, message)
        return message

    # recovery -------------------------------------------------------------------------------------

    def recover(self, app: str | None = None, actor: str | None = None) -> list[RecoveryReport]:
        """Reconcile every abandoned transition and run-less lock (of ``app``) with the engine."""
        if app is not None:
            self.config.app(app)
        actor = parse_actor(actor)
        engine = _Engine(self.engine_factory)
        reports: list[RecoveryReport] = []
        try:
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
        finally:
            engine.close()
        return reports

    def _restart_stopped(self, app: AppConfig, engine: _Engine, actor: str) -> list[RecoveryReport]:
        """An engine killed and restarted can leave even an ``unless-stopped`` container exited: an
        environment whose latest release is not running at all is redeployed from that release (never
        while someone holds its lock: that holder is changing it)."""
        from orchestrator.deploy import Deployer
        from orchestrator.recovery import repair_environment

        latest = {env: self.store.latest_release(app.name, env) for env in ENVIRONMENTS}
        if all(r is None for r in latest.values()):
            return []
        deployer = Deployer.from_releases(engine.get(), app, self.config.settings, latest)
        locked = {lock.environment for lock in self.store.locks(app.name)}
        reports: list[RecoveryReport] = []
        for env, release in latest.items():
            if release is None or env in locked:
                continue
            found = deployer.current(env)
            if found is not None and found.running:
                continue
            seen = f"{app.name} {env} is {found.status if found else 'gone'}; release {release.id} should run"
            note = repair_environment(self.store, engine.get(), app, self.config.settings, env)
            self.store.record_event("repaired", actor, f"{seen}; {note}", app=app.name, environment=env)
            reports.append(RecoveryReport(app.name, None, None, seen, "repaired", note))
        return reports

    def recover_environments(
        self, app: str, environments: Sequence[str], actor: str, engine: _Engine
    ) -> None:
        """Before an operator action on ``environments``: recover what a dead holder left there."""
        for lock in self.store.locks(app, environments):
            if lock.abandoned:
                self._free_abandoned([lock], engine, actor)

    def _recover_if_abandoned(self, transition: TransitionRecord, engine: _Engine, actor: str) -> bool:
        return self._recover(transition, engine, actor) is not None

    def _recover(self, transition: TransitionRecord, engine: _Engine, actor: str) -> RecoveryReport | None:
        from orchestrator.recovery import Mode, Reconciler, abandoned

        if not abandoned(transition):
            return None
        run = self.store.get_run(transition.run_id)
        if not self.store.claim_transition(
            transition.id, transition.holder, Holder.me(), self.lease_s, actor
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
        rejected = next((c for c in transition.checks if c.status == "fail"), None)
        undone_state, undone_outcome = (
            (RunMachine(edge.source).fail(), FAILED) if rejected is not None else (edge.source, ABORTED)
        )
        if not transition.steps:
            outcome, state, summary = undone_outcome, undone_state, "no step had started: nothing to undo"
        else:
            try:
                app = self.config.app(run.app)
                steps = self._step_log(transition.id, position=len(transition.steps))
                with self._heartbeat(transition.id, f"recovery of transition {transition.id}"):
                    result = Reconciler(
                        self.store,
                        engine.get(),
                        app,
                        self.config.settings,
                        transition,
                        run.sha,
                        steps,
                        record,
                    ).reconcile(
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
        self._notify(
            "recovered",
            run,
            _target_environment(edge),
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

    def _repair_after_operator(self, lock: LockRecord, engine: _Engine, actor: str) -> RecoveryReport:
        """An operator action (rollback) died holding ``lock``: put the environment back on its latest
        recorded release if it does not run it, then free the lock."""
        from orchestrator.recovery import repair_environment

        who = lock.process.describe() if lock.process else "its holder"
        found = f"{lock.holder} ({who}) left {lock.app} {lock.environment} locked"
        note = "app no longer configured: environment not checked"
        if lock.app in self.config.apps:
            note = repair_environment(
                self.store, engine.get(), self.config.apps[lock.app], self.config.settings, lock.environment
            )
        self.store.delete_lock(lock.app, lock.environment, actor=actor, why=f"{found}; recovered: {note}")
        return RecoveryReport(lock.app, None, None, found, "repaired", note)

    # what the CLI reads and the operator actions it runs: every command goes through here, none
    # reaches the store on its own --------------------------------------------------------------------

    def list_runs(self, *, app: str | None, state: str | None, limit: int) -> list[RunRecord]:
        wanted = State.parse(state).value if state is not None else None
        return self.store.list_runs(app=app, state=wanted, limit=limit)

    def run_history(self, run_id: int) -> RunHistory:
        return RunHistory(
            self.store.get_run(run_id), self.store.transitions(run_id), self.store.releases_of_run(run_id)
        )

    def holds(self, app: str | None) -> Holds:
        """The locks and freezes that stop promotions of ``app`` (of every app without one)."""
        if app is not None:
            self.config.app(app)
        freezes = [f for f in self.store.freezes() if app is None or f.app in (app, "*")]
        return Holds(self.store.locks(app), freezes)

    def lock(self, app: str, env: str, *, reason: str | None, actor: str | None) -> LockRecord:
        from orchestrator import operator

        return operator.lock(self.config, self.store, app, env, reason=reason, actor=actor)

    def unlock(self, app: str, env: str, *, force: bool, actor: str | None) -> Unlocked:
        from orchestrator import operator

        return operator.unlock(
            self.config, self.store, self.engine_factory, app, env, force=force, actor=actor
        )

    def freeze(self, app: str | None, *, reason: str | None, actor: str | None) -> FreezeRecord:
        from orchestrator import operator

        return operator.freeze(self.config, self.store, app, reason=reason, actor=actor)

    def unfreeze(self, app: str | None, *, actor: str | None) -> FreezeRecord:
        from orchestrator import operator

        return operator.unfreeze(self.config, self.store, app, actor=actor)

    def rollback(
        self, app: str, env: str, *, to: int | None, actor: str | None, reason: str | None
    ) -> RollbackResult:
        from orchestrator.releases import rollback

        return rollback(
            self.config,
            self.store,
            self.engine_factory,
            app,
            env,
            to=to,
            actor=actor,
            reason=reason,
            notifier=self.notifier,
        )

    def decide(
        self, run_id: int, decision: Decision, *, actor: str | None, reason: str | None
    ) -> DecisionResult:
        """A person's approval or rejection of ``run_id``'s next edge, recorded and announced."""
        from orchestrator.approvals import decide

        return decide(
            self.config, self.store, run_id, decision, actor=actor, reason=reason, notifier=self.notifier
        )

    def metrics(self, app: str | None, since: str) -> MetricsReport:
        """The DORA keys of ``app`` (or every app) from the recorded history."""
        from orchestrator.metrics import metrics

        return metrics(self.config, self.store, app, since)

    def history(self) -> History:
        """The read-only history queries (runs with filters, audit, release periods) for the CLI and
        the dashboard."""
        from orchestrator.store.history import History

        return History(self.store)

    def status(self, app: str | None) -> list[EnvStatus]:
        from orchestrator.releases import status

        return status(self.config, self.store, self.engine_factory, app)

    def prune(self, app: str | None, *, dry_run: bool, actor: str | None) -> PruneReport:
        """Prune ``app`` (or every app). One busy app must not stop the housekeeping of the others: its
        Conflict is reported in ``locked``; asked for one app by name, it is raised."""
        from orchestrator.prune import prune

        names = [self.config.app(app).name] if app else sorted(self.config.apps)
        if not names:
            raise BadInput("no apps configured: add [apps.NAME] to orchestrator.toml")
        who = parse_actor(actor)
        results: list[PruneResult] = []
        locked: dict[str, Conflict] = {}
        with self.engine() as engine:
            for name in names:
                try:
                    results.append(
                        prune(self.config, self.store, engine.get, name, dry_run=dry_run, actor=who)
                    )
                except Conflict as exc:
                    if app:
                        raise
                    locked[name] = exc
        return PruneReport(dry_run, results, locked)

    def upgrade_database(self) -> tuple[str | None, str | None]:
        """Apply pending migrations; (revision before, revision after)."""
        from orchestrator.store import db

        return db.upgrade(self.store.engine)


@dataclass(frozen=True)
class RunHistory:
    """A run with every transition (its gate results and steps) and every release it made."""

    run: RunRecord
    transitions: list[TransitionRecord]
    releases: list[ReleaseRecord]


@dataclass(frozen=True)
class Holds:
    locks: list[LockRecord]
    freezes: list[FreezeRecord]


@dataclass(frozen=True)
class PruneReport:
    dry_run: bool
    results: list[PruneResult]
    # Apps not pruned because another run or an operator held them, with why.
    locked: dict[str, Conflict]
