"""The history the CLI lists (`runs list`, `audit`, `releases`), over the store's DB-API layer.

The same questions history.py answers for the dashboard with SQLAlchemy, asked here without it: these
commands run in CI and at an operator's prompt, and SQLAlchemy's import and statement compilation cost
more than the queries (issue 12). The values (RunFilter, RunSummary, AuditEntry, ReleasePeriod) live
here so that neither side needs the other's imports; history.py's dashboard queries take them from
here too.

Each query keeps the shape that makes it cheap on a long history (see the comments): a page is a
bounded index scan, never a sort of every match.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from orchestrator.errors import BadInput
from orchestrator.store.records import (
    ReleaseRecord,
    RunRecord,
    TransitionRecord,
    _aware,
    _release,
    utcnow,
)
from orchestrator.store.sql import Transaction, in_list
from orchestrator.verdict import TransitionOutcome

if TYPE_CHECKING:
    from orchestrator.store.repository import Store

NO_TRANSITION = "none"
# The event a rollback records (orchestrator/releases.py), with the release it made in its details.
ROLLBACK_EVENT = "rollback"
# Every way a transition can end (rejected included), and runs that never began one.
OUTCOMES = (*(o.value for o in TransitionOutcome), NO_TRANSITION)
MAX_PAGE_SIZE = 10_000
# Fewer transitions than this with an outcome, and `--outcome` looks the runs up from those transitions
# instead of testing the newest runs one by one (see _conditions).
RARE_OUTCOME = 5_000

_DURATION = r"^(\d+)([smhdw])$"
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(raw: str, *, now: datetime | None = None) -> datetime:
    """``30d``, ``12h``, ``15m`` (that long ago) or an ISO date/time (UTC unless it says otherwise)."""
    text = raw.strip()
    match = re.match(_DURATION, text)
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


@dataclass(frozen=True)
class AuditEntry:
    """One line of `audit`: a run started, a transition and its outcome, or a recorded event, in one shape
    saying who did what, when, and to which app and environment."""

    at: datetime
    kind: str
    app: str | None
    environment: str | None
    actor: str
    ci_url: str | None
    message: str
    run_id: int | None
    transition_id: int | None


@dataclass(frozen=True)
class ReleasePeriod:
    """A release as `releases` lists it: what ran in its environment from ``since`` until the next release
    there, and who made it (the transition's actor, or a rollback's)."""

    release: ReleaseRecord
    actor: str | None
    since: datetime
    until: datetime | None = None  # None: still the environment's newest release


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


HEX_DIGITS = "0123456789abcdef"


def after_prefix(prefix: str) -> str | None:
    """The smallest hex string above every string that starts with ``prefix``: "ab9" -> "aba",
    "abf" -> "ac"; None for "fff" (nothing above)."""
    kept = prefix.rstrip("f")
    if not kept:
        return None
    return kept[:-1] + HEX_DIGITS[HEX_DIGITS.index(kept[-1]) + 1]


def _conditions(f: RunFilter, *, rare_outcome: bool) -> tuple[list[str], dict[str, Any]]:
    """Every filter but the actor's (see ``Listing.runs``), on ``runs r``. The transitions they look
    at have aliases of their own (a, e, l): these conditions also go into a query over ``transitions
    t``, where they must not be correlated to that query's rows."""
    found: list[str] = []
    params: dict[str, Any] = {}
    if f.app:
        found.append("r.app = :f_app")
        params["f_app"] = f.app
    if f.state:
        found.append("r.state = :f_state")
        params["f_state"] = f.state
    if f.sha_prefix:
        # As a range over ``sha``, which the index on it answers: a LIKE cannot use that index on SQLite
        # (case-insensitive LIKE) nor on PostgreSQL outside the C collation, and would read every run.
        # Shas are stored as lowercase hex (service.common.parse_sha), whose order is the same in any
        # collation; the LIKE stays as the exact test (hex needs no escaping).
        low = f.sha_prefix.lower()
        found.append("r.sha >= :f_sha_low AND r.sha LIKE :f_sha_like")
        params.update(f_sha_low=low, f_sha_like=low + "%")
        high = after_prefix(low)
        if high is not None:
            found.append("r.sha < :f_sha_high")
            params["f_sha_high"] = high
    if f.since:
        found.append("r.created_at >= :f_since")
        params["f_since"] = f.since
    if f.until:
        found.append("r.created_at < :f_until")
        params["f_until"] = f.until
    if f.outcome == NO_TRANSITION:
        found.append("NOT EXISTS (SELECT 1 FROM transitions a WHERE a.run_id = r.id)")
    elif f.outcome and rare_outcome:
        # A rare outcome (interrupted, rejected): testing runs newest first would read all of them to
        # fill a page; the few transitions that ended so, and are their run's last, say which runs.
        found.append(
            "r.id IN (SELECT e.run_id FROM transitions e WHERE e.outcome = :f_outcome AND NOT EXISTS "
            "(SELECT 1 FROM transitions l WHERE l.run_id = e.run_id AND l.id > e.id))"
        )
        params["f_outcome"] = f.outcome
    elif f.outcome:
        # Newest runs first, each looked up by its last transition (two probes of an index): cheap per
        # run, and a page of a common outcome stops after a few dozen runs.
        found.append(
            "EXISTS (SELECT 1 FROM transitions l WHERE l.id = "
            "(SELECT max(a.id) FROM transitions a WHERE a.run_id = r.id) AND l.outcome = :f_outcome)"
        )
        params["f_outcome"] = f.outcome
    return found, params


def _and(conditions: Sequence[str]) -> str:
    return "".join(f" AND {c}" for c in conditions)


class Listing:
    """The CLI's read side of a Store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def runs(self, f: RunFilter, *, limit: int = 20, offset: int = 0) -> list[RunRecord]:
        """Newest first; ``offset`` counts runs already shown (page N is offset (N-1)*limit)."""
        with self._store.reading() as tx:
            rare = bool(f.outcome and f.outcome != NO_TRANSITION and _outcome_is_rare(tx, f.outcome))
            others, params = _conditions(f, rare_outcome=rare)
            params.update(limit=limit, offset=offset)
            if f.actor:
                # "Started by A or has a transition by A" as one condition is tested run by run, newest
                # first: a rare actor reads the whole history. Instead each half reads its own index
                # backwards, (actor, id) on runs and (actor, run_id) on transitions, and stops at
                # offset + limit runs; the newest of the union lie among those.
                params.update(f_actor=f.actor, first=offset + limit)
                ids = (
                    "SELECT id FROM (SELECT r.id AS id FROM runs r WHERE r.actor = :f_actor"
                    f"{_and(others)} ORDER BY r.id DESC LIMIT :first) started UNION "
                    "SELECT id FROM (SELECT t.run_id AS id FROM transitions t JOIN runs r ON r.id = t.run_id "
                    f"WHERE t.actor = :f_actor{_and(others)} GROUP BY t.run_id ORDER BY t.run_id DESC "
                    "LIMIT :first) moved"
                )
                query = f"SELECT r.* FROM runs r WHERE r.id IN ({ids})"
            else:
                query = "SELECT r.* FROM runs r WHERE 1 = 1" + _and(others)
            rows = tx.rows(query + " ORDER BY r.id DESC LIMIT :limit OFFSET :offset", params)
        return [RunRecord.of(r) for r in rows]  # type: ignore[arg-type]

    def count_runs(self, f: RunFilter) -> int:
        """How many runs match (the dashboard's page count)."""
        conditions, params = _conditions(f, rare_outcome=False)
        if f.actor:
            conditions.append(
                "(r.actor = :f_actor OR EXISTS "
                "(SELECT 1 FROM transitions t WHERE t.run_id = r.id AND t.actor = :f_actor))"
            )
            params["f_actor"] = f.actor
        with self._store.reading() as tx:
            return int(tx.scalar("SELECT count(*) FROM runs r WHERE 1 = 1" + _and(conditions), params) or 0)

    def apps(self) -> list[str]:
        """Every app with a recorded run."""
        with self._store.reading() as tx:
            return sorted(row.app for row in tx.rows("SELECT DISTINCT app FROM runs"))

    def summaries(self, runs: Sequence[RunRecord]) -> list[RunSummary]:
        """Each run with its last transition, in one query for the page."""
        from orchestrator.store.repository import transition_records

        last: dict[int, TransitionRecord] = {}
        if runs:
            marks, params = in_list("run", [r.id for r in runs])
            with self._store.reading() as tx:
                rows = tx.rows(
                    "SELECT * FROM transitions WHERE id IN "
                    f"(SELECT max(id) FROM transitions WHERE run_id IN {marks} GROUP BY run_id)",
                    params,
                )
                for record in transition_records(tx, rows):
                    last[record.run_id] = record
        return [RunSummary(r, last.get(r.id)) for r in runs]

    def audit(
        self, app: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """Who did what, oldest first: runs started, transitions (with their outcome), and every event
        (locks, unlocks, freezes, rollbacks, recoveries). ``limit`` keeps the newest entries."""
        params: dict[str, Any] = {"limit": limit, "app": app, "since": since}
        runs, trans, events = ["1 = 1"], ["1 = 1"], ["1 = 1"]
        if app:
            runs.append("r.app = :app")
            trans.append("r.app = :app")
            events.append("app = :app")
        if since:
            runs.append("r.created_at >= :since")
            trans.append("t.started_at >= :since")
            events.append("at >= :since")
        entries: list[AuditEntry] = []
        with self._store.reading() as tx:
            for r in tx.rows(
                f"SELECT r.* FROM runs r WHERE {' AND '.join(runs)} ORDER BY r.created_at DESC LIMIT :limit",
                params,
            ):
                entries.append(
                    AuditEntry(
                        r.created_at,
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
            for t in tx.rows(
                "SELECT t.*, r.app AS app FROM transitions t JOIN runs r ON r.id = t.run_id "
                f"WHERE {' AND '.join(trans)} ORDER BY t.started_at DESC LIMIT :limit",
                params,
            ):
                summary = f"run {t.run_id}: {t.from_state} -> {t.to_state} {t.outcome}"
                if t.reason:
                    summary += f" ({t.reason.strip().splitlines()[0]})" if t.reason.strip() else ""
                entries.append(
                    AuditEntry(
                        t.started_at, "transition", t.app, None, t.actor, t.ci_url, summary, t.run_id, t.id
                    )
                )
            for e in tx.rows(
                f"SELECT * FROM events WHERE {' AND '.join(events)} ORDER BY at DESC LIMIT :limit", params
            ):
                entries.append(
                    AuditEntry(
                        e.at,
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

    def release_periods(
        self, app: str, environment: str | None = None, limit: int = 100
    ) -> list[ReleasePeriod]:
        """What ran in each environment, from when to when (the next release there ended it), newest
        first. The actor is whoever's transition made the release; a rollback's, from its event."""
        where = "rel.app = :app" + (" AND rel.environment = :env" if environment else "")
        params = {"app": app, "env": environment, "limit": limit, "kind": ROLLBACK_EVENT}
        with self._store.reading() as tx:
            rows = tx.rows(
                "SELECT rel.*, t.actor AS transition_actor FROM releases rel "
                f"LEFT JOIN transitions t ON t.id = rel.transition_id WHERE {where} "
                "ORDER BY rel.id DESC LIMIT :limit",
                params,
            )
            rollbacks = tx.rows("SELECT actor, details FROM events WHERE app = :app AND kind = :kind", params)
        by_release = {e.details.get("release_id"): e.actor for e in rollbacks if e.details}
        periods: list[ReleasePeriod] = []
        ended: dict[str, datetime] = {}
        for row in rows:
            record = _release(row)  # type: ignore[arg-type]
            who = row.transition_actor or by_release.get(record.id)
            periods.append(ReleasePeriod(record, who, record.created_at, ended.get(record.environment)))
            ended[record.environment] = record.created_at
        return periods[:limit]


def _outcome_is_rare(tx: Transaction, outcome: str) -> bool:
    """Whether fewer than RARE_OUTCOME transitions ended so: a count that stops there, on the index."""
    found = tx.scalar(
        "SELECT count(*) FROM (SELECT id FROM transitions WHERE outcome = :outcome LIMIT :rare) few",
        {"outcome": outcome, "rare": RARE_OUTCOME},
    )
    return int(found or 0) < RARE_OUTCOME
