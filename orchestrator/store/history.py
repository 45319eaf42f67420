"""Read-only queries over the recorded history for `runs list`, `audit`, `releases` and the dashboard.

Kept apart from repository.py (the writes the service needs) so the read side can grow (filters,
paging, the metrics a later change adds) without touching the code that moves runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from orchestrator.errors import BadInput
from orchestrator.machine import PROD, STAGING, State
from orchestrator.store.models import Approval, Event, Release, Run, Transition, utcnow
from orchestrator.store.records import (
    ReleaseRecord,
    RunRecord,
    TransitionRecord,
    _aware,
    _iso,
    _release,
    _transition,
)
from orchestrator.store.repository import WITH_CHECKS_AND_STEPS, Store
from orchestrator.verdict import TransitionOutcome

NO_TRANSITION = "none"
# The event a rollback records (orchestrator/releases.py), with the release it made in its details.
ROLLBACK_EVENT = "rollback"
# Every way a transition can end (rejected included), and runs that never began one.
OUTCOMES = (*(o.value for o in TransitionOutcome), NO_TRANSITION)
MAX_PAGE_SIZE = 10_000

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(raw: str, *, now: datetime | None = None) -> datetime:
    """``30d``, ``12h``, ``15m`` (that long ago) or an ISO date/time (UTC unless it says otherwise)."""
    text = raw.strip()
    match = _DURATION.match(text)
    if match:
        return (now or utcnow()) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(
            f"time {raw!r} is neither a duration (30d, 12h, 15m) nor an ISO date (2026-11-30 or "
            "2026-11-30T14:00)"
        ) from None
    return _aware(value)  # type: ignore[return-value]


@dataclass(frozen=True)
class RunFilter:
    """What `runs list --app/--state/--outcome/--sha/--actor/--since/--until` and ``/api/runs`` ask for."""

    app: str | None = None
    state: str | None = None
    outcome: str | None = None
    sha_prefix: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise BadInput(f"outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        if self.sha_prefix is not None and not re.fullmatch(r"[0-9a-fA-F]{1,40}", self.sha_prefix):
            raise BadInput(f"sha prefix {self.sha_prefix!r} is not 1 to 40 hex characters")


@dataclass(frozen=True)
class RunSummary:
    """A run with what a list needs to say about it: its last transition's edge, outcome and reason."""

    run: RunRecord
    last: TransitionRecord | None

    @property
    def outcome(self) -> str:
        return self.last.outcome if self.last else NO_TRANSITION

    @property
    def reason(self) -> str | None:
        return self.last.reason if self.last else None


HEX_DIGITS = "0123456789abcdef"


def _after_prefix(prefix: str) -> str | None:
    """The smallest hex string above every string that starts with ``prefix``: "ab9" -> "aba",
    "abf" -> "ac"; None for "fff" (nothing above)."""
    kept = prefix.rstrip("f")
    if not kept:
        return None
    return kept[:-1] + HEX_DIGITS[HEX_DIGITS.index(kept[-1]) + 1]


def _sha_starts_with(prefix: str) -> sa.ColumnElement[bool]:
    """As a range over ``sha``, which the index on it answers: a LIKE cannot use that index on SQLite
    (case-insensitive LIKE) nor on PostgreSQL outside the C collation, and would read every run. Shas
    are stored as lowercase hex (service.common.parse_sha), whose order is the same in any collation;
    the LIKE stays as the exact test."""
    low = prefix.lower()
    conditions = [Run.sha >= low, Run.sha.startswith(low, autoescape=True)]
    high = _after_prefix(low)
    if high is not None:
        conditions.append(Run.sha < high)
    return sa.and_(*conditions)


# Fewer transitions than this with an outcome, and `--outcome` looks the runs up from those transitions
# instead of testing the newest runs one by one (see _conditions).
RARE_OUTCOME = 5_000


def _outcome_is_rare(s: Session, outcome: str) -> bool:
    """Whether fewer than RARE_OUTCOME transitions ended so: a count that stops there, on the index."""
    few = sa.select(Transition.id).where(Transition.outcome == outcome).limit(RARE_OUTCOME).subquery()
    return int(s.scalar(sa.select(sa.func.count()).select_from(few)) or 0) < RARE_OUTCOME


def _conditions(f: RunFilter, *, rare_outcome: bool = False) -> list[sa.ColumnElement[bool]]:
    """Every filter but the actor's (see ``_run_ids_by_actor``), on ``runs``. The transitions they
    look at are aliased: these conditions also go into a query over ``transitions`` itself, where an
    unaliased table would be correlated to that query's rows instead."""
    found: list[sa.ColumnElement[bool]] = []
    if f.app:
        found.append(Run.app == f.app)
    if f.state:
        found.append(Run.state == f.state)
    if f.sha_prefix:
        found.append(_sha_starts_with(f.sha_prefix))
    if f.since:
        found.append(Run.created_at >= f.since)
    if f.until:
        found.append(Run.created_at < f.until)
    any_transition = aliased(Transition)
    if f.outcome == NO_TRANSITION:
        found.append(~sa.exists().where(any_transition.run_id == Run.id))
    elif f.outcome and rare_outcome:
        # A rare outcome (interrupted, rejected): testing runs newest first would read all of them to
        # fill a page; the few transitions that ended so, and are their run's last, say which runs.
        ended = aliased(Transition)
        later = aliased(Transition)
        last_of_run = ~sa.exists().where(later.run_id == ended.run_id, later.id > ended.id)
        found.append(Run.id.in_(sa.select(ended.run_id).where(ended.outcome == f.outcome, last_of_run)))
    elif f.outcome:
        # Newest runs first, each looked up by its last transition (two probes of an index): cheap per
        # run, and a page of a common outcome stops after a few dozen runs.
        newest = (
            sa.select(sa.func.max(any_transition.id))
            .where(any_transition.run_id == Run.id)
            .correlate(Run)
            .scalar_subquery()
        )
        last = aliased(Transition)
        found.append(sa.exists().where(last.id == newest, last.outcome == f.outcome))
    return found


def _run_query(f: RunFilter, *, rare_outcome: bool = False) -> sa.Select[Any]:
    q = sa.select(Run).where(*_conditions(f, rare_outcome=rare_outcome))
    if f.actor:
        by_transition = sa.exists().where(Transition.run_id == Run.id, Transition.actor == f.actor)
        q = q.where(sa.or_(Run.actor == f.actor, by_transition))
    return q


def _run_ids_by_actor(f: RunFilter, first: int, *, rare_outcome: bool = False) -> sa.CompoundSelect:
    """The ids of the newest ``first`` runs an actor started or moved (with the other filters).

    "Started by A or has a transition by A" as one condition is tested run by run, newest first: a
    rare actor reads the whole history. Instead each half reads its own index backwards, (actor, id)
    on runs and (actor, run_id) on transitions, and stops at ``first`` runs; the newest ``first`` of
    the union lie among those, however common or rare the actor is."""
    others = _conditions(f, rare_outcome=rare_outcome)
    started = (
        sa.select(Run.id.label("id"))
        .where(Run.actor == f.actor, *others)
        .order_by(Run.id.desc())
        .limit(first)
        .subquery()
    )
    moved = (
        sa.select(Transition.run_id.label("id"))
        .join(Run, Run.id == Transition.run_id)
        .where(Transition.actor == f.actor, *others)
        .group_by(Transition.run_id)
        .order_by(Transition.run_id.desc())
        .limit(first)
        .subquery()
    )
    return sa.union(sa.select(started.c.id), sa.select(moved.c.id))


class History:
    """The read side of a Store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def runs(self, f: RunFilter, *, limit: int = 20, offset: int = 0) -> list[RunRecord]:
        """Newest first; ``offset`` counts runs already shown (page N is offset (N-1)*limit)."""
        with self._store._session() as s:
            rare = bool(f.outcome and f.outcome != NO_TRANSITION and _outcome_is_rare(s, f.outcome))
            if f.actor:
                ids = _run_ids_by_actor(f, offset + limit, rare_outcome=rare)
                q = sa.select(Run).where(Run.id.in_(ids))
            else:
                q = _run_query(f, rare_outcome=rare)
            q = q.order_by(Run.id.desc()).limit(limit).offset(offset)
            return [RunRecord.of(r) for r in s.scalars(q)]

    def apps(self) -> list[str]:
        """Every app with a recorded run."""
        with self._store._session() as s:
            return sorted(s.scalars(sa.select(Run.app).distinct()))

    def count_runs(self, f: RunFilter) -> int:
        q = sa.select(sa.func.count()).select_from(_run_query(f).subquery())
        with self._store._session() as s:
            return int(s.scalar(q) or 0)

    def summaries(self, runs: Sequence[RunRecord]) -> list[RunSummary]:
        """Each run with its last transition, in one query for the page."""
        ids = [r.id for r in runs]
        last: dict[int, TransitionRecord] = {}
        if ids:
            newest = (
                sa.select(sa.func.max(Transition.id))
                .where(Transition.run_id.in_(ids))
                .group_by(Transition.run_id)
            )
            q = sa.select(Transition).where(Transition.id.in_(newest)).options(*WITH_CHECKS_AND_STEPS)
            with self._store._session() as s:
                for row in s.scalars(q):
                    last[row.run_id] = _transition(row)
        return [RunSummary(r, last.get(r.id)) for r in runs]

    # audit -----------------------------------------------------------------------------------------

    def audit(
        self, app: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """Who did what, oldest first: runs started, transitions (with their outcome), and every event
        (locks, unlocks, freezes, rollbacks, recoveries). ``limit`` keeps the newest entries."""
        entries: list[AuditEntry] = []
        with self._store._session() as s:
            runs = sa.select(Run).order_by(Run.created_at.desc()).limit(limit)
            trans = (
                sa.select(Transition, Run.app)
                .join(Run, Run.id == Transition.run_id)
                .order_by(Transition.started_at.desc())
                .limit(limit)
            )
            events = sa.select(Event).order_by(Event.at.desc()).limit(limit)
            if app:
                runs, trans = runs.where(Run.app == app), trans.where(Run.app == app)
                events = events.where(Event.app == app)
            if since:
                runs = runs.where(Run.created_at >= since)
                trans = trans.where(Transition.started_at >= since)
                events = events.where(Event.at >= since)
            for r in s.scalars(runs):
                entries.append(
                    AuditEntry(
                        _aware(r.created_at),  # type: ignore[arg-type]
                        "run_started",
                        r.app,
                        None,
                        r.actor,
                        r.ci_url,
                        f"run {r.id} started for {r.sha[:12]}",
                        r.id,
                        None,
                    )
                )
            for t, t_app in s.execute(trans):
                summary = f"run {t.run_id}: {t.from_state} -> {t.to_state} {t.outcome}"
                if t.reason:
                    summary += f" ({t.reason.strip().splitlines()[0]})" if t.reason.strip() else ""
                entries.append(
                    AuditEntry(
                        _aware(t.started_at),  # type: ignore[arg-type]
                        "transition",
                        t_app,
                        None,
                        t.actor,
                        t.ci_url,
                        summary,
                        t.run_id,
                        t.id,
                    )
                )
            for e in s.scalars(events):
                entries.append(
                    AuditEntry(
                        _aware(e.at),  # type: ignore[arg-type]
                        e.kind,
                        e.app,
                        e.environment,
                        e.actor,
                        e.ci_url,
                        e.message,
                        e.run_id,
                        e.transition_id,
                    )
                )
        entries.sort(key=lambda entry: entry.at)
        return entries[-limit:]

    # releases --------------------------------------------------------------------------------------

    def release_periods(
        self, app: str, environment: str | None = None, limit: int = 100
    ) -> list[ReleasePeriod]:
        """What ran in each environment, from when to when (the next release there ended it), newest
        first. The actor is whoever's transition made the release; a rollback's, from its event."""
        q = sa.select(Release, Transition.actor).outerjoin(Transition, Transition.id == Release.transition_id)
        q = q.where(Release.app == app).order_by(Release.id.desc())
        if environment:
            q = q.where(Release.environment == environment)
        rollbacks = sa.select(Event).where(Event.app == app, Event.kind == ROLLBACK_EVENT)
        with self._store._session() as s:
            rows = list(s.execute(q.limit(limit)))
            by_release = {e.details.get("release_id"): e.actor for e in s.scalars(rollbacks) if e.details}
        periods: list[ReleasePeriod] = []
        ended: dict[str, datetime] = {}
        for release, actor in rows:
            record = _release(release)
            who = actor or by_release.get(record.id)
            periods.append(ReleasePeriod(record, who, record.created_at, ended.get(record.environment)))
            ended[record.environment] = record.created_at
        return periods[:limit]

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


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    kind: str
    app: str | None
    environment: str | None
    actor: str
    ci_url: str | None
    message: str
    run_id: int | None
    transition_id: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "kind": self.kind,
            "app": self.app,
            "environment": self.environment,
            "actor": self.actor,
            "ci_url": self.ci_url,
            "message": self.message,
            "run_id": self.run_id,
            "transition_id": self.transition_id,
        }


@dataclass(frozen=True)
class ReleasePeriod:
    release: ReleaseRecord
    actor: str | None
    since: datetime
    until: datetime | None = None  # None: still the environment's newest release

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.release.as_dict(),
            "actor": self.actor,
            "ci_url": self.release.ci_url,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "current": self.until is None,
        }


def revision_evidence(details: Any) -> tuple[str | None, str | None]:
    """The expected and found revision a verification recorded, wherever it sits in a gate's details."""
    if isinstance(details, dict):
        if "expected_revision" in details or "found_revision" in details:
            return details.get("expected_revision"), details.get("found_revision")
        for value in details.values():
            found = revision_evidence(value)
            if found != (None, None):
                return found
    elif isinstance(details, list):
        for value in details:
            found = revision_evidence(value)
            if found != (None, None):
                return found
    return None, None
