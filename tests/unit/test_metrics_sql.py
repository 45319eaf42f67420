"""The DORA keys as the database aggregates them (store/aggregates.py) equal, exactly, what
the definition (tests/metrics_reference.py) makes of the promotions its ``prod_history`` loads through
the ORM: for random histories written into the session's database (``--db``), per app, for every app,
and per day for the charts.

Exactly, not approximately: the medians and percentiles are of durations in microseconds, so the
histories have timestamps with every kind of fraction (SQLite's date functions round to milliseconds,
and .9996 s to the next second), leads that are negative (a commit dated after its promotion), failed
promotions with and without a prod step, releases and rollbacks in any id order, rollbacks after the
window and rollbacks that a failed promotion's own restore made (which are not rollbacks of a change).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metrics_reference import daily, prod_history, report

from orchestrator.metrics import DoraHistory
from orchestrator.store import models
from orchestrator.store.aggregates import dora_aggregates
from orchestrator.store.repository import Store

T0 = datetime(2026, 10, 1, 7, 30, tzinfo=UTC)
US_PER_DAY = 86_400_000_000
APPS = ("shop", "docs", "api")
# What becomes of a prod-edge transition, and transitions on other edges that must be left out.
FATES = ("succeeded", "succeeded", "succeeded", "failed", "failed_before_prod", "aborted", "staging_edge")


def _at(us: int) -> datetime:
    return T0 + timedelta(microseconds=us)


@dataclass(frozen=True)
class Promotion:
    app: str
    fate: str
    finished_us: int
    lead_us: int | None  # None: no recorded commit time
    steps: tuple[tuple[str | None, int], ...]  # (environment, started before finished, µs)
    releases: tuple[tuple[str, int], ...]  # (environment, created after finished, µs)


@dataclass(frozen=True)
class RollbackSpec:
    app: str
    at_us: int
    own_restore_of: int | None  # a promotion's index: the release a failed promotion's restore made


promotions = st.builds(
    Promotion,
    st.sampled_from(APPS),
    st.sampled_from(FATES),
    # Around a 30-day window from T0, with any fraction of a second, a few near the window's edges.
    st.one_of(
        st.integers(-2 * US_PER_DAY, 32 * US_PER_DAY),
        st.sampled_from([-1, 0, 1, 999_600, 5 * US_PER_DAY + 999_999, 30 * US_PER_DAY - 1, 30 * US_PER_DAY]),
    ),
    st.one_of(st.none(), st.integers(-3_600_000_000, 3 * US_PER_DAY), st.just(999_600)),
    st.lists(
        st.tuples(st.sampled_from(["prod", "staging", None]), st.integers(-600_000_000, 7_200_000_000)),
        max_size=3,
    ).map(tuple),
    st.lists(
        st.tuples(st.sampled_from(["prod", "prod", "staging"]), st.integers(-10_000_000, 60_000_000)),
        max_size=2,
    ).map(tuple),
)
rollbacks = st.builds(
    RollbackSpec,
    st.sampled_from(APPS),
    st.integers(-2 * US_PER_DAY, 40 * US_PER_DAY),
    st.one_of(st.none(), st.integers(0, 8)),
)


def _write(store: Store, history: list[Promotion], undo: list[RollbackSpec], order: list[int]) -> None:
    """The history as rows, with release ids in ``order`` (a permutation): ids and times need not
    agree, and both ways of computing must agree whatever they are."""
    runs, transitions, steps, releases = [], [], [], []
    for i, p in enumerate(history, start=1):
        finished = _at(p.finished_us)
        committed = finished - timedelta(microseconds=p.lead_us) if p.lead_us is not None else None
        runs.append(
            {
                "id": i,
                "app": p.app,
                "sha": f"{i:040x}",
                "state": "deploy",
                "actor": "ci",
                "created_at": finished - timedelta(days=4),
                "updated_at": finished,
                "committed_at": committed,
            }
        )
        staging = p.fate == "staging_edge"
        outcome = {"failed_before_prod": "failed", "staging_edge": "succeeded"}.get(p.fate, p.fate)
        transitions.append(
            {
                "id": i,
                "run_id": i,
                "from_state": "development" if staging else "deploy-staging",
                "to_state": "deploy-staging" if staging else "deploy",
                "actor": "ci",
                "started_at": finished - timedelta(hours=3),
                "finished_at": finished,
                "outcome": outcome,
            }
        )
        for position, (env, before) in enumerate(p.steps):
            if p.fate == "failed_before_prod" and env == "prod":
                env = "staging"
            steps.append(
                {
                    "transition_id": i,
                    "position": position,
                    "name": f"step{position}",
                    "environment": env,
                    "status": "done",
                    "started_at": finished - timedelta(microseconds=before),
                    "changes": {},
                }
            )
        for env, after in p.releases:
            releases.append(
                {"app": p.app, "environment": env, "run_id": i, "transition_id": i, "kind": "deploy"}
                | {"created_at": finished + timedelta(microseconds=after)}
            )
    for rb in undo:
        own = (
            rb.own_restore_of if rb.own_restore_of is not None and rb.own_restore_of < len(history) else None
        )
        releases.append(
            {
                "app": history[own].app if own is not None else rb.app,
                "environment": "prod",
                "run_id": None,
                "transition_id": own + 1 if own is not None else None,
                "kind": "rollback",
                "created_at": _at(rb.at_us),
            }
        )
    for n, release in enumerate(releases):
        release |= {"id": order[n] + 1, "image_id": f"sha256:{n:064x}", "revision": f"{n:040x}"}
    with store.engine.begin() as conn:
        for table in ("releases", "transition_steps", "transitions", "runs"):
            conn.execute(sa.delete(models.Base.metadata.tables[table]))
        for table, rows in (
            ("runs", runs),
            ("transitions", transitions),
            ("transition_steps", steps),
            ("releases", releases),
        ):
            if rows:
                conn.execute(sa.insert(models.Base.metadata.tables[table]), rows)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(promotions, max_size=30),
    st.lists(rollbacks, max_size=10),
    st.randoms(use_true_random=False),
    st.integers(0, 23),
    st.sampled_from([None, "shop"]),
)
def test_sql_aggregates_equal_the_computation_over_loaded_promotions(
    store: Store,
    history: list[Promotion],
    undo: list[RollbackSpec],
    rng: Any,
    offset_h: int,
    app: str | None,
) -> None:
    count = sum(len(p.releases) for p in history) + len(undo)
    order = list(range(count))
    rng.shuffle(order)
    _write(store, history, undo, order)
    since, until = T0 + timedelta(hours=offset_h), T0 + timedelta(days=30)
    names = sorted({*APPS})

    promoted, rolled = prod_history(store, app, since)
    expected = report(promoted, rolled, since, until, names)
    found = DoraHistory(dora_aggregates(store, app, since, until, by_day=True), names)
    assert found.report() == expected
    for name in names:
        mine = [p for p in promoted if p.app == name]
        assert found.daily(name) == daily(mine, [r for r in rolled if r.app == name], since, until), name


def test_a_failed_promotions_own_restore_is_not_a_rollback_of_the_release_before(store: Store) -> None:
    """Shop's release 1 runs; the next promotion fails in prod and its restore records a rollback
    release (with that transition): release 1 was not rolled back, the failure counts once."""
    good = Promotion("shop", "succeeded", US_PER_DAY, 3_600_000_000, (), (("prod", 1_000_000),))
    bad = Promotion("shop", "failed", 2 * US_PER_DAY, None, (("prod", 60_000_000),), ())
    by_hand = RollbackSpec("shop", 3 * US_PER_DAY, None)
    since, until = T0, T0 + timedelta(days=30)
    for undo, rolled_back in (([RollbackSpec("shop", 2 * US_PER_DAY + 1, 1)], 0), ([by_hand], 1)):
        _write(store, [good, bad], undo, list(range(1 + len(undo))))
        m = DoraHistory(dora_aggregates(store, None, since, until), ["shop"]).report().apps["shop"]
        assert (m.failed_in_prod, m.rolled_back, m.failures) == (1, rolled_back, 1 + rolled_back)
        promoted, rolled = prod_history(store, None, since)
        assert report(promoted, rolled, since, until, ["shop"]).apps["shop"] == m


def test_a_rollback_rolls_back_the_release_just_before_it(store: Store) -> None:
    """Two good promotions, then `orchestrator rollback`: it undoes the second release (the one running),
    not the first, and prod was restored a day minus a second after the second release. Random
    histories find this only now and then (it needs two prod releases of one app before a rollback)."""
    first = Promotion("shop", "succeeded", US_PER_DAY, None, (), (("prod", 1_000_000),))
    second = Promotion("shop", "succeeded", 2 * US_PER_DAY, None, (), (("prod", 1_000_000),))
    _write(store, [first, second], [RollbackSpec("shop", 3 * US_PER_DAY, None)], [0, 1, 2])
    since, until = T0, T0 + timedelta(days=30)
    m = DoraHistory(dora_aggregates(store, None, since, until), ["shop"]).report().apps["shop"]
    assert (m.rolled_back, m.time_to_restore_samples, m.time_to_restore_median_s) == (1, 1, 86_399.0)
    promoted, rolled = prod_history(store, None, since)
    assert report(promoted, rolled, since, until, ["shop"]).apps["shop"] == m
