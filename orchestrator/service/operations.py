"""The operator actions the CLI and the dashboard run; the reads are reads.py's, its base class. Every
command goes through the service, none reaches the store on its own. Each method is the service's door
to a module that does the work (orchestrator/operator.py, releases.py, approvals.py, prune.py), imported
when called so that a command pays only for what it uses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.config import Config
from orchestrator.errors import BadInput, Conflict
from orchestrator.notify import Notifier
from orchestrator.service.common import LazyEngine, parse_actor
from orchestrator.service.reads import Reads
from orchestrator.store.repository import FreezeRecord, LockRecord, Store

if TYPE_CHECKING:
    from orchestrator.approvals import Decision, DecisionResult
    from orchestrator.docker_engine import DockerEngine
    from orchestrator.operator import Unlocked
    from orchestrator.prune import PruneResult
    from orchestrator.releases import RollbackResult


class Operations(Reads):
    """The operator-facing half of RunService (its base class, so the CLI calls ``service.lock(...)``
    as before): hand-run actions, none of which crosses an edge of a run, and the reads."""

    def __init__(
        self,
        config: Config,
        store: Store,
        engine_factory: Callable[[], DockerEngine],
        notifier: Notifier,
    ) -> None:
        super().__init__(config, store, engine_factory)
        self.notifier = notifier

    @contextmanager
    def engine(self) -> Iterator[LazyEngine]:
        """An engine connected on first use and closed at the end, for operator actions."""
        engine = LazyEngine(self.engine_factory, settings=self.config.settings)
        try:
            yield engine
        finally:
            engine.close()

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
class PruneReport:
    """What `prune` of one app or every app reports: each pruned app's result, and the apps left alone
    because they were held."""

    dry_run: bool
    results: list[PruneResult]
    # Apps not pruned because another run or an operator held them, with why.
    locked: dict[str, Conflict]
