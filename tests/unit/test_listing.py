"""The CLI's history queries over DB-API (orchestrator/store/listing.py), on the session's backend
(``--db``): every filter and page gives what a plain reading of the whole history gives (the same
history and expectations as test_history_queries.py's ORM queries), in a fixed number of statements,
and on SQLite through the indexes of migration 0006.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
import test_history_queries
from test_history_queries import FILTERS, Known, _expected

from orchestrator.store.listing import Listing, RunFilter, after_prefix
from orchestrator.store.repository import Store

# The same 36 runs as test_history_queries.py's, with the same plain reading of them.
history = test_history_queries.history


@contextmanager
def traced(store: Store) -> Iterator[list[tuple[str, Mapping[str, Any]]]]:
    """Every statement the store's DB-API layer sends meanwhile, with its parameters."""
    statements: list[tuple[str, Mapping[str, Any]]] = []
    store._db.trace = lambda statement, params: statements.append((statement, params))
    try:
        yield statements
    finally:
        store._db.trace = None


@pytest.mark.parametrize("rare", [True, False], ids=["outcome-from-transitions", "outcome-run-by-run"])
@pytest.mark.parametrize("f", FILTERS, ids=repr)
def test_every_filter_and_page_matches_a_plain_reading_of_the_history(
    store: Store, history: list[Known], f: RunFilter, rare: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not rare:
        monkeypatch.setattr("orchestrator.store.listing.RARE_OUTCOME", 0)
    expected = _expected(history, f)
    found = Listing(store)
    assert [r.id for r in found.runs(f, limit=1000)] == expected
    assert found.count_runs(f) == len(expected)
    for limit in (1, 4):
        pages = [
            [r.id for r in found.runs(f, limit=limit, offset=offset)]
            for offset in range(0, len(expected) + limit, limit)
        ]
        assert [i for page in pages for i in page] == expected, f"pages of {limit}"


def test_apps_are_every_app_with_a_run(store: Store, history: list[Known]) -> None:
    assert Listing(store).apps() == ["docs", "shop"]


def test_the_range_after_a_sha_prefix() -> None:
    assert after_prefix("ab9") == "aba"
    assert after_prefix("abf") == "ac"
    assert after_prefix("9") == "a"
    assert after_prefix("0ff") == "1"
    assert after_prefix("fff") is None


def test_a_run_and_a_page_of_runs_are_read_in_a_fixed_number_of_queries(
    store: Store, history: list[Known]
) -> None:
    """Not two more queries per transition (its gate results, its steps, one by one)."""
    busiest = max(history, key=lambda k: len(store.transitions(k.id)))
    with traced(store) as statements:
        transitions = store.transitions(busiest.id)
    assert len(transitions) >= 3 and all(len(t.checks) == 2 for t in transitions)
    assert len(statements) == 3, statements
    found = Listing(store)
    page = found.runs(RunFilter(), limit=20)
    with traced(store) as statements:
        summaries = found.summaries(page)
    assert sum(1 for s in summaries if s.last is not None) >= 10
    assert len(statements) == 3, statements
    # The last transition of each run, as a plain reading sees it.
    for summary in summaries:
        every = store.transitions(summary.run.id)
        assert summary.last == (every[-1] if every else None)


def test_the_reads_use_their_indexes(store: Store, history: list[Known], db_backend: str) -> None:
    if db_backend != "sqlite":
        pytest.skip("plans are read on SQLite (PostgreSQL's planner reads tiny tables sequentially)")
    found = Listing(store)
    with traced(store) as statements:
        found.runs(RunFilter(sha_prefix="a0"))
    assert any("ix_runs_sha" in p for p in _plans(store, statements)), statements
    with traced(store) as statements:
        found.runs(RunFilter(actor="bob"))
    assert any(
        "ix_runs_actor_id" in p and "ix_transitions_actor_run_id" in p for p in _plans(store, statements)
    ), statements


def _plans(store: Store, statements: list[tuple[str, Mapping[str, Any]]]) -> list[str]:
    with store.reading() as tx:
        return [
            "\n".join(str(r[-1]) for r in tx._conn.execute(f"EXPLAIN QUERY PLAN {s}", p).fetchall())
            for s, p in statements
        ]


def test_audit_and_release_periods_read_what_was_recorded(store: Store, history: list[Known]) -> None:
    found = Listing(store)
    entries = found.audit(limit=10_000)
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    started = [e for e in entries if e.kind == "run_started"]
    assert {e.run_id for e in started} == {k.id for k in history}
    assert all(e.at.tzinfo is not None for e in entries)
    moved = [e for e in entries if e.kind == "transition"]
    assert {e.run_id for e in moved} == {k.id for k in history if k.outcome != "none"}
    assert len(found.audit(app="docs", limit=3)) == 3
    assert all(e.app == "docs" for e in found.audit(app="docs"))
    run = history[-1]
    store.record_release(
        app=run.app,
        environment="prod",
        image_id="sha256:1",
        revision=run.sha,
        run_id=run.id,
        transition_id=None,
    )
    second = store.record_release(
        app=run.app,
        environment="prod",
        image_id="sha256:2",
        revision=run.sha,
        run_id=run.id,
        transition_id=None,
        kind="rollback",
    )
    store.record_event("rollback", "carol", "rolled back", app=run.app, details={"release_id": second.id})
    newest, older = found.release_periods(run.app, "prod")
    assert (newest.release.id, newest.actor, newest.until) == (second.id, "carol", None)
    assert older.until == newest.since and older.actor is None
