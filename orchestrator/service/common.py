"""What every part of the service shares: input parsing, the engine connected on first use, how an edge
ends, and the handful of recording helpers (notification, step log, heartbeat) the edge and recovery both
use."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator import identity, views
from orchestrator.config import LOCAL_ENGINE, AppConfig, Config, EngineTarget, Settings
from orchestrator.errors import BadInput, Conflict, InfraUnavailable
from orchestrator.holder import Holder
from orchestrator.lifecycle import Heartbeat
from orchestrator.machine import PROD, STAGING, Edge, State
from orchestrator.notify import Notification, Notifier
from orchestrator.store.repository import RunRecord, Store, TransitionRecord
from orchestrator.verdict import GateResult, TransitionOutcome

if TYPE_CHECKING:
    from orchestrator.docker_engine import DockerEngine
    from orchestrator.engines import AppEngines
    from orchestrator.recovery import Reconciler
    from orchestrator.steps import StepLog, StepStatus
    from orchestrator.steps.ahead import BuildAhead, ParkedAhead


def parse_sha(raw: str) -> str:
    """The service layer's name for ``gitrepo.parse_sha``; gitrepo (and subprocess with it) loads when a
    sha is parsed, not in commands that only read the history."""
    from orchestrator import gitrepo

    return gitrepo.parse_sha(raw)


def connect_engine() -> DockerEngine:
    # Imported here so that commands that never touch Docker (run start, runs list) do not pay for the SDK.
    from orchestrator.docker_engine import DockerEngine

    return DockerEngine.connect()


def connect_target(
    target: EngineTarget, what: str = "an environment", settings: Settings | None = None
) -> DockerEngine:
    """Another machine's engine (``docker_host``); exit 4 naming the host when it does not answer
    within ``engine_connect_timeout_s``."""
    from orchestrator.docker_engine import DockerEngine

    assert target.url is not None, "the local engine comes from the engine factory"
    tls = (target.tls.ca, target.tls.cert, target.tls.key) if target.tls is not None else None
    missing = [str(path) for path in tls or () if not path.is_file()]
    if missing:
        # Checked here, not at load: history commands work on a machine without the certificates.
        raise BadInput(
            f"the TLS files for {what} on {target.host} are missing: {', '.join(missing)} "
            "(tls_ca, tls_cert, tls_key are paths relative to orchestrator.toml)"
        )
    settings = settings or Settings(database_url="")
    return DockerEngine.connect_remote(
        target.url,
        host=target.host,
        what=what,
        tls_files=tls,
        connect_timeout_s=settings.engine_connect_timeout_s,
        ssh_multiplex=settings.ssh_multiplex,
    )


# How an edge ends (the short names are the enum's members).
SUCCEEDED, FAILED, ABORTED = TransitionOutcome.SUCCEEDED, TransitionOutcome.FAILED, TransitionOutcome.ABORTED


def default_actor() -> str:
    """``--actor`` unset: the CI's name for who triggered the job, else the OS user."""
    return identity.default_actor()


MAX_ACTOR = 200  # the column width; longer would fail in PostgreSQL, not here


def parse_actor(raw: str | None) -> str:
    actor = (raw if raw is not None else default_actor()).strip()
    if not actor or len(actor) > MAX_ACTOR:
        raise BadInput(f"--actor must be 1 to {MAX_ACTOR} characters (got {len(actor)})")
    return actor


def check_wait(wait_s: float) -> None:
    if wait_s < 0:
        raise BadInput(f"--wait must be 0 or more seconds (got {wait_s:g})")


def refuse_if_frozen(store: Store, app: str) -> None:
    """A freeze of ``app`` (or of every app) refuses any edge of its runs: exit 3, naming the freeze and
    what lifts it."""
    frozen = store.frozen(app)
    if frozen is not None:
        what = "" if frozen.app == "*" else f" {app}"
        raise Conflict(
            f"{frozen.describe()}: no run of {app} may advance until 'orchestrator unfreeze{what}'",
            details={"freeze": views.freeze_record(frozen)},
        )


def target_environment(edge: Edge) -> str:
    return PROD if edge.dest == State.DEPLOY else STAGING


class LazyEngine:
    """The engines of one command, each connected on first use: recovery of a transition that never
    reached Docker needs none, and a staging edge never connects to prod's host. ``factory`` makes this
    machine's engine (tests hand in their own); an environment's ``docker_host`` is connected with
    ``connect`` (by default with ``settings``' connect timeout and ssh sharing).

    An engine that could not be reached is remembered for the command: asking again (prod and staging
    on the same host that is down) fails at once instead of waiting out the connect timeout twice."""

    # How long connecting an engine waits for the build ahead to be sent first (steps/build.py
    # BuildAhead.wait_sent): long enough for any context that sends fast, short enough that a huge one
    # does not hold up recording the run.
    AHEAD_FIRST_S = 1.0

    def __init__(
        self,
        factory: Callable[[], DockerEngine],
        connect: Callable[[EngineTarget, str], DockerEngine] | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        self._factory = factory
        self._connect = connect or (lambda target, what: connect_target(target, what, settings))
        self._engines: dict[str, DockerEngine] = {}
        self._unreachable: dict[str, InfraUnavailable] = {}
        # The run's build, sent before the engine was connected (steps/build.py); ended on close.
        self.build_ahead: BuildAhead | ParkedAhead | None = None

    def get(self, target: EngineTarget | None = None, what: str = "an environment") -> DockerEngine:
        key = LOCAL_ENGINE.key if target is None else target.key
        if key in self._unreachable:
            raise self._unreachable[key]
        if key not in self._engines:
            if self.build_ahead is not None:
                self.build_ahead.wait_sent(self.AHEAD_FIRST_S)
            try:
                if target is None or target.is_local:
                    self._engines[key] = self._factory()
                else:
                    self._engines[key] = self._connect(target, what)
            except InfraUnavailable as exc:
                self._unreachable[key] = exc
                raise
        return self._engines[key]

    def for_app(self, app: AppConfig) -> AppEngines:
        """The engines of ``app``'s build and environments, each connected when first asked for."""
        from orchestrator.engines import AppEngines

        return AppEngines(app, self.get, self.build_ahead)

    def connect_for(self, app: AppConfig, environments: Sequence[str]) -> None:
        """Connect now to the build engine and each of ``environments``' engines: an engine that does
        not answer is refused (exit 4, naming its host) before anything is written."""
        self.get(app.builds_on, f"{app.name}'s builds")
        for env in environments:
            self.get(app.engine(env), f"{app.name} {env}")

    @property
    def connected(self) -> DockerEngine | None:
        """An engine this command reached, if any (whether anything could have changed on one)."""
        return next(iter(self._engines.values()), None)

    def close(self) -> None:
        if self.build_ahead is not None:
            self.build_ahead.close()
            self.build_ahead = None
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()


@dataclass(frozen=True)
class Shared:
    """What the edge, the approval wait, the claim and recovery are each given: one config, one store,
    one notifier, so that they record and announce alike."""

    config: Config
    store: Store
    notifier: Notifier

    @property
    def lease_s(self) -> float:
        return self.config.settings.lock_lease_s

    def notify(self, event: str, run: RunRecord, environment: str | None, actor: str, **extra: Any) -> None:
        """Announce an outcome already recorded (orchestrator/notify.py): returns at once, never raises."""
        self.notifier.send(Notification(event, run.app, environment, run.id, run.sha, actor, **extra))

    def heartbeat(self, transition_id: int, what: str) -> Heartbeat:
        """Renews this process's lease on the transition (and its locks) every third of a lease."""
        return Heartbeat(
            lambda: self.store.renew_lease(transition_id, Holder.me(), self.lease_s), self.lease_s / 3, what
        )

    def step_log(self, transition_id: int, position: int = 0) -> StepLog:
        from orchestrator.steps import StepLog

        def begin(pos: int, name: str, env: str | None) -> int:
            return self.store.begin_step(transition_id, pos, name, env)

        def finish(step_id: int, status: StepStatus, changes: dict[str, Any], error: str | None) -> None:
            self.store.finish_step(step_id, status=status.value, changes=changes, error=error)

        return StepLog(begin, finish, position=position)

    def reconciler(
        self,
        engine: LazyEngine,
        app: AppConfig,
        transition: TransitionRecord,
        sha: str,
        steps: StepLog,
        record: Callable[[GateResult], None],
    ) -> Reconciler:
        """What puts the environments ``transition`` touched back in order: for the undo of an edge that
        stopped without a verdict (advance.py) and for `recover` (recover.py)."""
        from orchestrator.recovery import Reconciler

        return Reconciler(
            self.store, engine.for_app(app), app, self.config.settings, transition, sha, steps, record
        )
