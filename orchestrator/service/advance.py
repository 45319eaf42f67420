"""One edge of one run, in the order that is the crash-safety contract: validate everything that needs
no side effect, claim the run and its environments while writing the transition ``in_progress``, run
gates recording each result as it lands, then close the transition and move the run in one commit. An
edge stopped without a verdict is undone here, or left ``interrupted`` with its locks for `recover`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.config import AppConfig, Settings
from orchestrator.errors import Conflict, InfraUnavailable
from orchestrator.gates import (
    Gate,
    GateContext,
    GateResult,
    ReleaseIntent,
    first_line,
    gates_for,
    run_compensations,
    run_gates,
)
from orchestrator.lifecycle import Interrupted, interruptible, signals_deferred
from orchestrator.logging import bound_context, get_logger
from orchestrator.machine import (
    EDGE_ENVIRONMENTS,
    ENVIRONMENTS,
    PROD,
    TO_PROD,
    TO_STAGING,
    Edge,
    RunMachine,
    State,
)
from orchestrator.records import record_release
from orchestrator.service.approval import ApprovalWait
from orchestrator.service.builds import StagingBuilds, recorded_images
from orchestrator.service.claims import Claims
from orchestrator.service.common import (
    ABORTED,
    FAILED,
    SUCCEEDED,
    LazyEngine,
    Shared,
    parse_actor,
    refuse_if_frozen,
    target_environment,
)
from orchestrator.service.results import AdvanceResult, edge_reason
from orchestrator.store.repository import RunRecord

if TYPE_CHECKING:
    from orchestrator.prune import ImagesAhead


def load_ahead(edge: Edge, settings: Settings) -> threading.Thread:
    """Import, in a daemon thread, what ``edge`` needs once its gates are done: the transitions library
    (the machine fires the move), the staging check's stub (argparse, http.client with email and ssl) on
    the staging edge, prune on the prod edge when it prunes after a deploy. 10-35 ms of each edge's
    critical path otherwise (issue 12): here the imports run while the edge waits on the engine (the
    build, a container's stop and start), which releases the interpreter lock. Nothing depends on the
    thread: a module it has not finished is imported by whoever needs it (the import lock makes them
    wait for it), and one that fails to load fails there, with its error."""

    def load() -> None:
        try:
            import transitions  # noqa: F401 - loaded for RunMachine's move

            if edge == TO_STAGING:
                from orchestrator.steps.staging_check import load_stub

                load_stub()
            elif settings.prune_after_deploy:
                import orchestrator.prune  # noqa: F401 - loaded for the prune after the deploy
        except Exception:  # raised again where the module is used, and reported there
            return

    thread = threading.Thread(target=load, name="load-ahead", daemon=True)
    thread.start()
    return thread


def list_images_ahead(app: AppConfig, engine: LazyEngine) -> list[ImagesAhead]:
    """Prod's engine starts listing its images for the prune after the deploy (prune.ImagesAhead), when it
    is one several threads may call (the local wire); else nothing is read ahead and the prune lists
    them itself. Called once prod's tag step is done, when prod's engine is connected; it must not raise
    into the promotion, whatever goes wrong."""
    from orchestrator.prune import ImagesAhead

    try:
        prod = engine.get(app.engine(PROD))
        return [ImagesAhead(prod)] if prod.calls_in_parallel else []
    except Exception:  # nothing read ahead: the prune lists the images itself, and reports what fails
        return []


class EdgeRunner:
    """Crosses one edge for RunService (advance, and each edge of deploy); the engine it is handed
    belongs to the caller, which closes it."""

    def __init__(
        self, shared: Shared, approvals: ApprovalWait, claims: Claims, builds: StagingBuilds
    ) -> None:
        self.shared = shared
        self.config = shared.config
        self.store = shared.store
        self.approvals = approvals
        self.claims = claims
        self.builds = builds

    def preflight(self, app: AppConfig, sha: str, edge: Edge) -> None:
        """What the edge's runtime and build would refuse anyway (exit 2 or 4), before anything is
        recorded. The builder and the Dockerfile are looked at only on the edge that always builds: the
        deploy edge rebuilds only when staging went stale, and its build step then refuses what it
        cannot build as a failed gate."""
        from orchestrator.runtimes import preflight

        preflight(app, sha)
        # The deploy edge's build preflight looks only at build secrets: without any, the build step
        # (with the builders and the parks, 5-9 ms) is not even imported (issue 12).
        if any(g.needs_docker for g in gates_for(edge)) and (edge == TO_STAGING or app.secrets):
            from orchestrator.steps.build import preflight as build_preflight

            build_preflight(app, self.config.settings, sha, always_builds=edge == TO_STAGING)

    def advance(
        self,
        run: RunRecord,
        target: State,
        actor: str | None,
        wait_s: float,
        engine: LazyEngine,
        *,
        preflighted: bool = False,
    ) -> AdvanceResult:
        if run.state == State.REJECTED:
            raise self.approvals.rejected(run.id)
        machine = RunMachine(State(run.state))
        edge = machine.edge_to(target)
        app = self.config.app(run.app)
        actor = parse_actor(actor)
        refuse_if_frozen(self.store, app.name)
        # Before any preflight or claim: a run waiting for a person holds no environment meanwhile.
        approval, wait_s = self.approvals.wait(run, edge, app, actor, wait_s)

        gates = gates_for(edge)
        if edge == TO_STAGING and engine.build_ahead is None:
            # Before the preflight, whose git reads run while the build is prepared; a refusal cancels
            # it (the caller closes the engine). `run start` may have sent it already.
            engine.build_ahead = self.builds.parked(app, run.sha, run.id) or self.builds.send(app, run.sha)
        if not preflighted:
            self.preflight(app, run.sha, edge)
        # Connect before anything is written: an engine that does not answer changes nothing at all (exit
        # 4 naming its host). The edge's environments' engines and the build engine; no other host.
        if any(g.needs_docker for g in gates):
            engine.connect_for(app, EDGE_ENVIRONMENTS[edge])
            from orchestrator.runtimes import engine_preflight

            engine_preflight(engine.for_app(app), app, EDGE_ENVIRONMENTS[edge])
        with (
            bound_context(run_id=run.id, app=run.app, sha=run.sha, edge=edge.name),
            interruptible(),
        ):
            transition_id = self.claims.claim(run, edge, actor, engine, wait_s)
            if approval is not None:
                self.approvals.record(transition_id, approval)
            return self._run_edge(run, edge, machine, app, actor, gates, engine, transition_id)

    def _run_edge(
        self,
        run: RunRecord,
        edge: Edge,
        machine: RunMachine,
        app: AppConfig,
        actor: str,
        gates: list[type[Gate]],
        engine: LazyEngine,
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

        steps = self.shared.step_log(transition_id)
        images_ahead: list[ImagesAhead] = []
        if edge == TO_PROD and self.config.settings.prune_after_deploy:
            steps.when_done(f"{PROD}_tag", lambda: images_ahead.extend(list_images_ahead(app, engine)))

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
            engines=engine.for_app(app) if engine.connected is not None else None,
            previous_releases=previous,
            run_releases=self.store.releases_of_run(run.id),
            recorded_images=recorded_images(self.store, app),
            steps=steps,
            on_release=release_now,
        )
        heartbeat = self.shared.heartbeat(transition_id, f"transition {transition_id}")
        load_ahead(edge, self.config.settings)
        with heartbeat:
            try:
                checks = run_gates(gates, ctx, record)
            except InfraUnavailable as exc:
                message = self._abort(run, edge, app, engine, transition_id, exc.message, record, ctx)
                log.error("transition_aborted", reason=message)
                self.shared.notify(
                    "aborted",
                    run,
                    target_environment(edge),
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
        self.shared.notify(
            "promoted" if outcome == SUCCEEDED else "failed",
            run,
            target_environment(edge),
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
            self._prune_after_deploy(run, actor, engine, images_ahead[0] if images_ahead else None)
        return AdvanceResult(
            run.id, transition_id, edge.source, edge.dest, state, outcome, reason, tuple(checks)
        )

    def _prune_after_deploy(
        self, run: RunRecord, actor: str, engine: LazyEngine, ahead: ImagesAhead | None
    ) -> None:
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
                ahead=ahead,
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

    def _abort(
        self,
        run: RunRecord,
        edge: Edge,
        app: AppConfig,
        engine: LazyEngine,
        transition_id: int,
        why: str,
        record: Callable[[GateResult], None],
        ctx: GateContext,
    ) -> str:
        """The edge stopped without a verdict (engine gone, step timed out, signal): nothing is decided
        about the commit, so put every environment it touched back as it was, then close the transition
        with the run where it started. If the engine cannot be reached to do that, leave the transition
        ``interrupted`` with its locks for `recover`, and say so."""
        from orchestrator.recovery import Mode, touched

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
            outcome = self.shared.reconciler(engine, app, transition, run.sha, ctx.steps, record).reconcile(
                Mode.UNDO, envs, reason=f"undo of transition {transition_id}: {why}"
            )
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
