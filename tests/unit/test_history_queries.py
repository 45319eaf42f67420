"""The history every history test reads (36 runs of two apps, with a plain reading of what each filter
should find; tests/unit/test_listing.py checks `runs list`'s queries against it), and the report queries
that must stay fast over 100,000 runs (benchmarks/scale.py): `metrics` and /metrics read their indexes.

Times are not asserted (they depend on the machine); what makes them is: on SQLite, the plan's use of the
indexes of migrations 0006 and 0008.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from orchestrator.gates import GateResult, GateStatus
from orchestrator.holder import Holder
from orchestrator.store.aggregates import dora_aggregates
from orchestrator.store.history import History, RunFilter
from orchestrator.store.repository import Store

ACTORS = ("ci", "alice", "bob")
# Shas on both sides of every boundary a prefix range has: digit to letter, a carried 'f', the very top.
EDGE_SHAS = ("9" + "f" * 39, "a" + "0" * 39, "a" + "f" * 39, "af" + "0" * 38, "b" + "0" * 39, "f" * 40)


@dataclass(frozen=True)
class Known:
    """A run as a plain reading of the history sees it."""

    id: int
    app: str
    sha: str
    actor: str
    movers: frozenset[str]
    outcome: str


def _gate(name: str) -> GateResult:
    return GateResult(name, GateStatus.PASS, f"{name} ok", {"n": 1}, 0.1, datetime.now(UTC))


def _edge(store: Store, run_id: int, actor: str, outcome: str, *, to: str = "deploy-staging") -> None:
    frm = "development" if to == "deploy-staging" else "deploy-staging"
    t = store.begin_transition(
        run_id, frm, to, actor, [], target_environment="staging", holder=Holder.me(), lease_s=60
    )
    store.record_gate_result(t, 0, _gate("commit_exists"))
    store.record_gate_result(t, 1, _gate("build_image"))
    result = to if outcome == "succeeded" else "development"
    store.finish_transition(
        t, outcome=outcome, reason=None if outcome == "succeeded" else "no", result_state=result
    )


@pytest.fixture
def history(store: Store) -> list[Known]:
    """36 runs of two apps: started by one actor, moved by the same or another, some twice (a failed
    edge, then a retry), some never; shas from EDGE_SHAS and random ones."""
    rng = random.Random(13)
    known: list[Known] = []
    for n in range(36):
        app = "shop" if n % 3 else "docs"
        sha = EDGE_SHAS[n] if n < len(EDGE_SHAS) else f"{rng.getrandbits(160):040x}"
        actor = ACTORS[n % 3]
        run = store.create_run(app, sha, actor, "development").id
        movers: set[str] = set()
        outcome = "none"
        for _ in range(n % 4):  # 0 to 3 edges: fail, fail, succeed
            mover = rng.choice(ACTORS)
            outcome = "succeeded" if len(movers) == 2 or rng.random() < 0.4 else "failed"
            _edge(store, run, mover, outcome)
            movers.add(mover)
            if outcome == "succeeded":
                break
        known.append(Known(run, app, sha, actor, frozenset(movers), outcome))
    return known


def _expected(known: list[Known], f: RunFilter) -> list[int]:
    picked = [
        k.id
        for k in known
        if (f.app is None or k.app == f.app)
        and (f.sha_prefix is None or k.sha.startswith(f.sha_prefix.lower()))
        and (f.actor is None or f.actor == k.actor or f.actor in k.movers)
        and (f.outcome is None or f.outcome == k.outcome)
    ]
    return sorted(picked, reverse=True)


FILTERS = [
    RunFilter(),
    RunFilter(app="docs"),
    RunFilter(outcome="failed"),
    RunFilter(outcome="succeeded", app="shop"),
    RunFilter(outcome="none"),
    *(RunFilter(actor=a) for a in ACTORS),
    RunFilter(actor="bob", outcome="failed"),
    RunFilter(actor="alice", app="docs", outcome="succeeded"),
    RunFilter(actor="nobody"),
    *(RunFilter(sha_prefix=p) for p in ("9", "9f", "a", "A", "af", "a0", "b", "f", "ff", "f" * 40, "0")),
    RunFilter(sha_prefix="a", actor="ci"),
]


@contextmanager
def counted(store: Store) -> Iterator[list[tuple[str, object]]]:
    """Every statement the store sends meanwhile, with its parameters."""
    statements: list[tuple[str, object]] = []

    def seen(_conn: object, _cursor: object, statement: str, params: object, *_args: object) -> None:
        statements.append((statement, params))

    sa.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", seen)


@pytest.fixture
def sqlite_only(db_backend: str) -> None:
    if db_backend != "sqlite":
        pytest.skip("plans are read on SQLite (PostgreSQL's planner reads tiny tables sequentially)")


@pytest.mark.usefixtures("sqlite_only")
def test_metrics_reads_its_window_and_counts_runs_from_indexes(store: Store, history: list[Known]) -> None:
    """`metrics` and the dashboard's charts read the window's transitions from the index alone and
    every other table by probes (no scan of a table: the work grows with the window, not the history);
    /metrics counts runs per app and state from its index (migration 0008)."""
    now = datetime.now(UTC)
    with counted(store) as statements:
        dora_aggregates(store, None, now - timedelta(days=30), now, by_day=True)
    plans = "\n".join(_explain(store, *s) for s in statements)
    assert "SEARCH transitions USING COVERING INDEX ix_transitions_to_state_outcome_finished_at" in plans
    assert not re.search(r"SCAN (transitions|runs|releases|transition_steps)\b", plans), plans
    with counted(store) as statements:
        History(store).run_counts()
    plans = "\n".join(_explain(store, *s) for s in statements)
    assert "USING COVERING INDEX ix_runs_app_state" in plans, plans


def _explain(store: Store, statement: str, params: object) -> str:
    """SQLite's plan of a statement as the store sent it."""
    with store.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        rows = raw.execute(f"EXPLAIN QUERY PLAN {statement}", params).fetchall()  # type: ignore[arg-type]
    return "\n".join(str(r[-1]) for r in rows)
