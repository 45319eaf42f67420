"""The service layer: what `run start` and `advance` mean, independent of how they are invoked.

The order inside ``advance`` is the crash-safety contract: validate everything that needs no side
effect, claim the run and its environments while writing the transition ``in_progress``, run gates
recording each result as it lands, then close the transition and move the run in one commit.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.compose import keep_anchor
from orchestrator.config import AppConfig, Config
from orchestrator.errors import BadInput, InfraUnavailable
from orchestrator.gates import (
    FAILURE_REASON,
    Gate,
    GateContext,
    GateResult,
    ReleaseIntent,
    gates_for,
    run_compensations,
    run_gates,
)
from orchestrator.logging import get_logger
from orchestrator.machine import EDGE_ENVIRONMENTS, ENVIRONMENTS, Edge, RunMachine, State
from orchestrator.store.repository import ReleaseRecord, RunRecord, Store

if TYPE_CHECKING:
    from orchestrator.docker_engine import DockerEngine


def connect_engine() -> DockerEngine:
    # Imported here so that commands that never touch Docker (run start, runs list) do not pay for the SDK.
    from orchestrator.docker_engine import DockerEngine

    return DockerEngine.connect()


_SHA = re.compile(r"^[0-9a-f]{40}$")

SUCCEEDED = "succeeded"
FAILED = "failed"
ABORTED = "aborted"


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


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
class AdvanceResult:
    run_id: int
    transition_id: int
    from_state: State
    to_state: State
    state: State
    outcome: str
    reason: str | None
    checks: tuple[GateResult, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "transition_id": self.transition_id,
            "from": self.from_state.value,
            "to": self.to_state.value,
            "state": self.state.value,
            "outcome": self.outcome,
            "reason": self.reason,
            "checks": [c.as_dict() for c in self.checks],
        }


class RunService:
    def __init__(
        self, config: Config, store: Store, engine_factory: Callable[[], DockerEngine] = connect_engine
    ) -> None:
        self.config = config
        self.store = store
        self.engine_factory = engine_factory

    def start_run(self, app: str, sha: str, actor: str | None = None) -> RunRecord:
        self.config.app(app)
        run = self.store.create_run(app, parse_sha(sha), parse_actor(actor), State.DEVELOPMENT.value)
        get_logger(run_id=run.id, app=run.app, sha=run.sha).info("run_started", actor=run.actor)
        return run

    def advance(self, run_id: int, to: str, actor: str | None = None) -> AdvanceResult:
        target = State.parse(to)
        run = self.store.get_run(run_id)
        machine = RunMachine(State(run.state))
        edge = machine.edge_to(target)
        app = self.config.app(run.app)
        actor = parse_actor(actor)

        gates = gates_for(edge)
        from orchestrator.deploy import preflight

        preflight(app)
        # Connect before anything is written: an engine that does not answer changes nothing at all.
        engine = self.engine_factory() if any(g.needs_docker for g in gates) else None
        try:
            return self._advance(run, edge, machine, app, actor, gates, engine)
        finally:
            if engine is not None:
                engine.close()

    def _advance(
        self,
        run: RunRecord,
        edge: Edge,
        machine: RunMachine,
        app: AppConfig,
        actor: str,
        gates: list[type[Gate]],
        engine: DockerEngine | None,
    ) -> AdvanceResult:
        with structlog.contextvars.bound_contextvars(run_id=run.id, app=run.app, sha=run.sha, edge=edge.name):
            log = get_logger()
            previous = {env: self.store.latest_release(run.app, env) for env in ENVIRONMENTS}
            transition_id = self.store.begin_transition(
                run.id, edge.source.value, edge.dest.value, actor, EDGE_ENVIRONMENTS[edge]
            )
            log.info("transition_started", transition_id=transition_id, actor=actor)
            ctx = GateContext(
                run_id=run.id,
                app=app,
                sha=run.sha,
                edge=edge,
                settings=self.config.settings,
                log=log,
                engine=engine,
                previous_releases=previous,
            )
            position = 0

            def record(result: GateResult) -> None:
                nonlocal position
                position += 1
                self.store.record_gate_result(transition_id, position, result)

            try:
                checks = run_gates(gates, ctx, record)
            except InfraUnavailable as exc:
                # Nothing was decided about the commit: the run stays where it was. Side effects already
                # made (tags moved, prod swapped) are still undone where the engine lets us.
                reason = exc.message
                if ctx.compensations:
                    ctx.shared[FAILURE_REASON] = reason
                    undone = run_compensations(ctx, record)
                    reason += "".join(f"; {u.name}: {u.reason}" for u in undone)
                self._record_releases(ctx, transition_id)
                self.store.finish_transition(
                    transition_id, outcome=ABORTED, reason=reason, result_state=edge.source.value
                )
                log.error("transition_aborted", reason=exc.message)
                exc.details.update(run_id=run.id, transition_id=transition_id, state=edge.source.value)
                raise

            blocking = next((c for c in checks if c.status.blocks), None)
            if blocking is None:
                outcome, reason, state = SUCCEEDED, None, machine.succeed(edge)
            else:
                reason = f"{blocking.name}: {blocking.reason}"
                ctx.shared[FAILURE_REASON] = reason
                undone = run_compensations(ctx, record)
                checks += undone
                reason += "".join(f"; {u.name}: {u.reason}" for u in undone)
                outcome, state = FAILED, machine.fail()
            self._record_releases(ctx, transition_id)
            self.store.finish_transition(
                transition_id, outcome=outcome, reason=reason, result_state=state.value
            )
            log.info("transition_finished", outcome=outcome, reason=reason, state=state.value)
            return AdvanceResult(
                run.id, transition_id, edge.source, edge.dest, state, outcome, reason, tuple(checks)
            )

    def _record_releases(self, ctx: GateContext, transition_id: int) -> None:
        for intent in ctx.releases:
            record_release(self.store, ctx.app, intent, run_id=ctx.run_id, transition_id=transition_id)
        ctx.releases.clear()


def record_release(
    store: Store, app: AppConfig, intent: ReleaseIntent, *, run_id: int | None, transition_id: int | None
) -> ReleaseRecord:
    """Persist a release and, for compose apps, keep the override it applied as a rollback anchor."""
    release = store.record_release(
        app=app.name,
        environment=intent.environment,
        image_id=intent.image_id,
        revision=intent.revision,
        run_id=run_id,
        transition_id=transition_id,
        kind=intent.kind,
        reason=intent.reason,
        digest=intent.digest,
    )
    if intent.override is not None and app.override_file is not None:
        keep_anchor(app.override_file, intent.environment, release.id, intent.override, app.keep_releases)
    return release
