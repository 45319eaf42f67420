"""What the history commands read (`runs list`, `runs show`, `audit`, `releases`, `metrics`, `locks`):
the config and the store, nothing else.

Why apart from the operator actions (operations.py): a read needs neither an engine nor a notifier, and
CI and operators run these commands often, for a glance. Through ``RunService`` each paid for the
modules the edges share (the notifier, the run's heartbeat, the staging builds): about 7 ms of a 130 ms
start on a 2-core runner (issue 12). ``Operations``, and with it ``RunService``, extends ``Reads``, so
the dashboard and library callers keep one service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.config import Config
from orchestrator.store.repository import (
    FreezeRecord,
    LockRecord,
    ReleaseRecord,
    RunRecord,
    Store,
    TransitionRecord,
)

if TYPE_CHECKING:
    from orchestrator.metrics import MetricsReport
    from orchestrator.store.listing import Listing


class Reads:
    """The recorded history and holds, read-only."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store

    def list_runs(self, *, app: str | None, state: str | None, limit: int) -> list[RunRecord]:
        from orchestrator.machine import State

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

    def metrics(self, app: str | None, since: str) -> MetricsReport:
        """The DORA keys of ``app`` (or every app) from the recorded history."""
        from orchestrator.metrics import metrics

        return metrics(self.config, self.store, app, since)

    def history(self) -> Listing:
        """The read-only history queries the CLI lists (runs with filters, audit, release periods),
        without SQLAlchemy; the dashboard's reports are store/history.py's."""
        from orchestrator.store.listing import Listing

        return Listing(self.store)


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
