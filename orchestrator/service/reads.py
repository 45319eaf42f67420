"""What the history commands (`runs list`, `runs show`, `audit`, `releases`, `metrics`, `locks`),
`status` and the dashboard's pages read: the recorded history, the holds, and what runs where. Nothing
here changes anything.

Why apart from the operator actions (operations.py): a read needs no notifier, and most need no engine;
CI and operators run these commands often, for a glance. Through ``RunService`` each paid for the
modules the edges share (the notifier, the run's heartbeat, the staging builds): about 5 ms of a 150 ms
`runs list` on a 2-core runner (issue 12). ``Operations``, and with it ``RunService``, extends
``Reads``, so a caller that also acts keeps one service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from orchestrator.config import Config
from orchestrator.store.repository import (
    ApprovalRecord,
    FreezeRecord,
    LockRecord,
    ReleaseRecord,
    RunRecord,
    Store,
    TransitionRecord,
)

if TYPE_CHECKING:
    from orchestrator.docker_engine import DockerEngine
    from orchestrator.metrics import DoraHistory, MetricsReport
    from orchestrator.releases import EnvStatus
    from orchestrator.store.history import History
    from orchestrator.store.listing import Listing


class Reads:
    """The recorded history, the holds and the environments' status, read-only."""

    def __init__(
        self, config: Config, store: Store, engine_factory: Callable[[], DockerEngine] | None = None
    ) -> None:
        self.config = config
        self.store = store
        # For `status`, which asks the engines what runs (and for the operator actions of the subclass);
        # the local engine when not given.
        self.engine_factory = engine_factory or _connect_engine

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

    def metrics(self, app: str | None, since: str) -> MetricsReport:
        """The DORA keys of ``app`` (or every app) from the recorded history."""
        from orchestrator.metrics import metrics

        return metrics(self.config, self.store, app, since)

    def dora(self, since: str, *, now: datetime | None = None, by_day: bool = False) -> DoraHistory:
        """Every app's DORA keys since ``since``, per day too with ``by_day`` (the dashboard's charts)."""
        from orchestrator.metrics import load

        return load(self.config, self.store, None, since, now=now, by_day=by_day)

    def history(self) -> Listing:
        """The read-only history queries the CLI lists (runs with filters, audit, release periods),
        without SQLAlchemy."""
        from orchestrator.store.listing import Listing

        return Listing(self.store)

    def reports(self) -> History:
        """The same queries and what only the dashboard and /metrics ask (counts by state and outcome,
        the approval queue), on SQLAlchemy's ORM."""
        from orchestrator.store.history import History

        return History(self.store)

    def approvals(self, run_id: int) -> list[ApprovalRecord]:
        """The decisions recorded on ``run_id``, oldest first."""
        return self.store.approvals(run_id)

    def status(self, app: str | None) -> list[EnvStatus]:
        """What runs in each environment of ``app`` (of every app), against its recorded release."""
        from orchestrator.releases import status

        return status(self.config, self.store, self.engine_factory, app)


def _connect_engine() -> DockerEngine:
    """service/common.py's ``connect_engine``, imported when an engine is first asked for: a read that
    never asks need not load what the edges share."""
    from orchestrator.service.common import connect_engine

    return connect_engine()


@dataclass(frozen=True)
class RunHistory:
    """A run with every transition (its gate results and steps) and every release it made."""

    run: RunRecord
    transitions: list[TransitionRecord]
    releases: list[ReleaseRecord]


@dataclass(frozen=True)
class Holds:
    """The locks and freezes that stop promotions of an app (or of every app), as `locks` lists them."""

    locks: list[LockRecord]
    freezes: list[FreezeRecord]
