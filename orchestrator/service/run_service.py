"""RunService, the entry point of the service layer: what `run start`, `advance`, `deploy` and `recover`
mean, independent of how they are invoked. It owns the engine's lifetime for each call and hands the work
to its collaborators: the edge (advance.py), which waits for approval (approval.py) and claims
(claims.py), and recovery (recover.py). The operator commands come from its base class (operations.py).

The collaborators are made, and their modules imported, when first used: `deploy` and `run start` send
their staging build (builds.py) first, and a command that never crosses an edge never loads them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from orchestrator import views
from orchestrator.config import Config, check_app_paths
from orchestrator.errors import OrchestratorError
from orchestrator.logging import bound_context, get_logger
from orchestrator.machine import ENVIRONMENTS, TO_STAGING, State
from orchestrator.notify import Notifier
from orchestrator.service.builds import StagingBuilds
from orchestrator.service.common import (
    FAILED,
    LazyEngine,
    Shared,
    check_wait,
    connect_engine,
    parse_actor,
    parse_sha,
    refuse_if_frozen,
)
from orchestrator.service.operations import Operations
from orchestrator.store.repository import RunRecord, Store

if TYPE_CHECKING:
    from orchestrator.docker_engine import DockerEngine
    from orchestrator.service.advance import EdgeRunner
    from orchestrator.service.recover import Recovery
    from orchestrator.service.results import AdvanceResult, DeployResult, RecoveryReport


class RunService(Operations):
    def __init__(
        self,
        config: Config,
        store: Store,
        engine_factory: Callable[[], DockerEngine] = connect_engine,
        notifier: Notifier | None = None,
    ) -> None:
        super().__init__(config, store, engine_factory, notifier if notifier is not None else Notifier())
        self._shared = Shared(config, store, self.notifier)
        self._builds = StagingBuilds(config, store)

    @cached_property
    def _recovery(self) -> Recovery:
        from orchestrator.service.recover import Recovery

        return Recovery(self._shared)

    @cached_property
    def _edges(self) -> EdgeRunner:
        from orchestrator.service.advance import EdgeRunner
        from orchestrator.service.approval import ApprovalWait
        from orchestrator.service.claims import Claims

        shared = self._shared
        return EdgeRunner(shared, ApprovalWait(shared), Claims(shared, self._recovery), self._builds)

    def start_run(
        self, app: str, sha: str, actor: str | None = None, *, send_build: bool = False
    ) -> RunRecord:
        """Record a run of ``app`` at ``sha`` in development. With ``send_build`` (`run start`, the
        first of the three CI calls) its staging build is sent now and parked for the staging advance
        (parking.py), unless ``build_at_run_start`` is off: the engine builds while CI starts the next
        process."""
        config = self.config.app(app)
        sha, actor = parse_sha(sha), parse_actor(actor)
        check_app_paths(config)
        ahead = self._builds.park(config, sha) if send_build else None
        from orchestrator.gitrepo import commit_time

        try:
            run = self.store.create_run(
                app, sha, actor, State.DEVELOPMENT.value, committed_at=commit_time(config.source, sha)
            )
        except BaseException:
            if ahead is not None:
                ahead.close()  # no run, nobody to take it
            raise
        with bound_context(run_id=run.id, app=run.app, sha=run.sha):
            if ahead is not None:
                from orchestrator import parking

                ahead.park(parking.key(self.config.settings.database_url, run.id))
            get_logger().info("run_started", actor=run.actor)
        return run

    def refuse_if_frozen(self, app: str) -> None:
        refuse_if_frozen(self.store, app)

    def advance(
        self, run_id: int, to: str, actor: str | None = None, *, wait_s: float = 0.0
    ) -> AdvanceResult:
        target = State.parse(to)
        check_wait(wait_s)
        run = self.store.get_run(run_id)
        engine = LazyEngine(self.engine_factory, settings=self.config.settings)
        try:
            return self._edges.advance(run, target, actor, wait_s, engine)
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
        check_wait(wait_s)
        check_app_paths(config)
        refuse_if_frozen(self.store, config.name)
        engine = LazyEngine(self.engine_factory, settings=self.config.settings)
        try:
            # The build first (issue 12): it is the critical path, and everything until the staging
            # edge takes it (importing the edges' modules, the preflight's git reads, connecting,
            # recording the run) runs while it is prepared and built. A refusal cancels it
            # (engine.close).
            engine.build_ahead = self._builds.send(config, sha)
            if engine.build_ahead is not None:
                # Until it is going out: the preflight's imports and git reads would hold the interpreter
                # lock that unpacking the tree and making the context's tar need (they fit in the build).
                engine.build_ahead.wait_sent(LazyEngine.AHEAD_FIRST_S)
            self._edges.preflight(config, sha, TO_STAGING)
            engine.connect_for(config, ENVIRONMENTS)
            run = self.start_run(config.name, sha, who)
            done: list[AdvanceResult] = []
            try:
                for target in (State.DEPLOY_STAGING, State.DEPLOY):
                    result = self._edges.advance(
                        self.store.get_run(run.id), target, who, wait_s, engine, preflighted=True
                    )
                    done.append(result)
                    if result.outcome == FAILED:
                        break
            except OrchestratorError as exc:
                exc.details = {**exc.details, "run_id": run.id, "edges": [views.advance(r) for r in done]}
                raise
            from orchestrator.service.results import DeployResult

            return DeployResult(self.store.get_run(run.id), tuple(done))
        finally:
            engine.close()

    def recover(self, app: str | None = None, actor: str | None = None) -> list[RecoveryReport]:
        """Reconcile every abandoned transition and run-less lock (of ``app``) with the engine."""
        if app is not None:
            self.config.app(app)
        actor = parse_actor(actor)
        engine = LazyEngine(self.engine_factory, settings=self.config.settings)
        try:
            return self._recovery.recover(app, actor, engine)
        finally:
            engine.close()

    def recover_environments(
        self, app: str, environments: Sequence[str], actor: str, engine: LazyEngine
    ) -> None:
        """Before an operator action on ``environments``: recover what a dead holder left there."""
        self._recovery.recover_environments(app, environments, actor, engine)
