"""Read-only queries over the recorded history for the dashboard (web/) and /metrics.

The queries the CLI shares with the dashboard (runs with filters and pages, their summaries, audit,
release periods) are store/listing.py's, over DB-API: `runs list`, `audit` and `releases` must not
import SQLAlchemy (issue 12). History answers them through Listing, so each query exists once; what
only the dashboard and /metrics ask stays here, on the ORM.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from orchestrator.machine import PROD, STAGING, State
from orchestrator.store.listing import (  # noqa: F401 - re-exported: the dashboard imports them from here
    MAX_PAGE_SIZE,
    NO_TRANSITION,
    OUTCOMES,
    ROLLBACK_EVENT,
    AuditEntry,
    Listing,
    ReleasePeriod,
    RunFilter,
    RunSummary,
    parse_when,
    revision_evidence,
)
from orchestrator.store.models import Approval, Event, Run, Transition
from orchestrator.store.records import RunRecord
from orchestrator.store.repository import Store


class History:
    """The read side of a Store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._listing = Listing(store)

    def runs(self, f: RunFilter, *, limit: int = 20, offset: int = 0) -> list[RunRecord]:
        """Newest first; ``offset`` counts runs already shown (page N is offset (N-1)*limit)."""
        return self._listing.runs(f, limit=limit, offset=offset)

    def apps(self) -> list[str]:
        """Every app with a recorded run."""
        return self._listing.apps()

    def count_runs(self, f: RunFilter) -> int:
        return self._listing.count_runs(f)

    def summaries(self, runs: Sequence[RunRecord]) -> list[RunSummary]:
        """Each run with its last transition, in one query for the page."""
        return self._listing.summaries(runs)

    def audit(
        self, app: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """Who did what, oldest first (see Listing.audit)."""
        return self._listing.audit(app, since, limit)

    def release_periods(
        self, app: str, environment: str | None = None, limit: int = 100
    ) -> list[ReleasePeriod]:
        """What ran in each environment, from when to when, newest first (see Listing.release_periods)."""
        return self._listing.release_periods(app, environment, limit)

    # what an operator alerts on (/metrics) --------------------------------------------------------

    def run_counts(self) -> dict[tuple[str, str], int]:
        """How many runs each app has in each state: (app, state) -> count, one grouped query."""
        q = sa.select(Run.app, Run.state, sa.func.count()).group_by(Run.app, Run.state)
        with self._store._session() as s:
            return {(a, st): int(n) for a, st, n in s.execute(q)}

    def transition_counts(self) -> dict[tuple[str, str, str], int]:
        """How many transitions ended (or are under way) per app, target state and outcome."""
        q = (
            sa.select(Run.app, Transition.to_state, Transition.outcome, sa.func.count())
            .join(Run, Run.id == Transition.run_id)
            .group_by(Run.app, Transition.to_state, Transition.outcome)
        )
        with self._store._session() as s:
            return {(a, to, o): int(n) for a, to, o, n in s.execute(q)}

    def awaiting_approval(self) -> list[tuple[str, str, int]]:
        """(app, environment, run_id) of every run that asked for an approval into an environment, got
        no decision yet, and still stands before that environment (not moved on, superseded or
        rejected): the people-shaped queue a deploy can wait in unnoticed."""
        before = {STAGING: State.DEVELOPMENT.value, PROD: State.DEPLOY_STAGING.value}
        decided = sa.exists().where(Approval.run_id == Run.id, Approval.environment == Event.environment)
        q = (
            sa.select(Run.app, Event.environment, Run.id)
            .join(Run, Run.id == Event.run_id)
            .where(Event.kind == "approval_requested", ~decided)
            .where(
                sa.or_(*(sa.and_(Event.environment == env, Run.state == st) for env, st in before.items()))
            )
            .distinct()
            .order_by(Run.id)
        )
        with self._store._session() as s:
            return [(a, env, int(run_id)) for a, env, run_id in s.execute(q)]
