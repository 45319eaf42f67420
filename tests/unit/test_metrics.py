"""DORA keys: the definition (tests/metrics_reference.py, which the SQL aggregates must equal) on
constructed histories (examples and properties), then `orchestrator metrics` through the CLI on the
session's database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from dashboard_support import promote_to_prod
from hypothesis import given
from hypothesis import strategies as st
from metrics_reference import Promotion, Rollback, compute, daily, report

from orchestrator import views
from orchestrator.errors import BadInput
from orchestrator.metrics import parse_since
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli, Workspace

T0 = datetime(2026, 11, 1, tzinfo=UTC)
H = timedelta(hours=1)


def ok(n: int, at: datetime, lead: timedelta | None = H, app: str = "shop") -> Promotion:
    return Promotion(
        app, n, n, True, at, committed_at=at - lead if lead else None, release_id=100 + n, released_at=at
    )


def failed(n: int, at: datetime, restore: timedelta, app: str = "shop") -> Promotion:
    return Promotion(app, n, n, False, at, prod_touched_at=at - restore)


def test_a_month_of_history() -> None:
    since, until = T0, T0 + timedelta(days=30)
    promotions = [
        ok(1, T0 + 1 * H, lead=2 * H),
        ok(2, T0 + 30 * H, lead=4 * H),
        ok(3, T0 + 31 * H, lead=None),  # recorded before commit times were
        failed(4, T0 + 50 * H, restore=timedelta(minutes=3)),
        ok(5, T0 + 60 * H, lead=10 * H),
        ok(6, T0 - H),  # before the window
    ]
    rollbacks = [
        Rollback("shop", 200, T0 + 32 * H, replaced_release_id=103),  # rolls back promotion 3
        Rollback("shop", 201, T0 + 33 * H, replaced_release_id=200),  # rolls back the rollback: not a change
    ]
    m = compute(promotions, rollbacks, since, until)
    assert (m.deployments, m.deploy_days) == (4, 3)
    assert m.deploys_per_day == pytest.approx(4 / 30)
    assert (m.lead_time_samples, m.lead_time_missing) == (3, 1)
    assert m.lead_time_median_s == 4 * 3600
    assert m.lead_time_p90_s == 10 * 3600
    assert (m.attempts, m.failures, m.failed_in_prod, m.rolled_back) == (5, 2, 1, 1)
    assert m.change_failure_rate == pytest.approx(2 / 5)
    # 3 min (the failed promotion's own restore) and 1 h (release 103 live until its rollback).
    assert m.time_to_restore_samples == 2
    assert m.time_to_restore_median_s == pytest.approx((180 + 3600) / 2)


def test_no_history_is_not_a_zero_failure_rate() -> None:
    m = compute([], [], T0, T0 + timedelta(days=30))
    assert (m.deployments, m.change_failure_rate, m.lead_time_median_s, m.time_to_restore_median_s) == (
        0,
        None,
        None,
        None,
    )
    assert views.dora(m)["change_failure_rate"]["rate"] is None


def test_a_release_rolled_back_twice_is_one_failure() -> None:
    m = compute(
        [ok(1, T0 + H)],
        [Rollback("shop", 200, T0 + 2 * H, 101), Rollback("shop", 201, T0 + 3 * H, 101)],
        T0,
        T0 + timedelta(days=1),
    )
    assert (m.failures, m.rolled_back, m.time_to_restore_samples) == (1, 1, 1)
    assert m.time_to_restore_median_s == 3600


def test_report_per_app_and_all() -> None:
    r = report(
        [ok(1, T0 + H, app="a"), ok(2, T0 + H, app="b"), failed(3, T0 + H, H, app="b")],
        [],
        T0,
        T0 + timedelta(days=1),
        ["a", "b", "quiet"],
    )
    assert {n: m.deployments for n, m in r.apps.items()} == {"a": 1, "b": 1, "quiet": 0}
    assert (r.total.deployments, r.total.attempts, r.total.failures) == (2, 3, 1)
    assert list(views.metrics(r)["apps"]) == ["a", "b", "quiet"]


promotion = st.builds(
    lambda n, hours, lead, good, restore: (
        ok(n, T0 + timedelta(hours=hours), lead=timedelta(minutes=lead) if lead is not None else None)
        if good
        else failed(n, T0 + timedelta(hours=hours), timedelta(minutes=restore))
    ),
    st.integers(1, 10_000),
    st.integers(-48, 24 * 40),
    st.one_of(st.none(), st.integers(0, 10_000)),
    st.booleans(),
    st.integers(0, 600),
)


@given(st.lists(promotion, max_size=40, unique_by=lambda p: p.run_id), st.data())
def test_properties(promotions: list[Promotion], data: st.DataObject) -> None:
    since, until = T0, T0 + timedelta(days=30)
    released = [p.release_id for p in promotions if p.release_id is not None]
    rollbacks = (
        [
            Rollback("shop", 10_000 + i, T0 + timedelta(hours=h), data.draw(st.sampled_from(released)))
            for i, h in enumerate(data.draw(st.lists(st.integers(0, 24 * 40), max_size=5)))
        ]
        if released
        else []
    )
    m = compute(promotions, rollbacks, since, until)
    inside = [p for p in promotions if since <= p.finished_at < until]
    assert m.deployments == sum(p.succeeded for p in inside)
    assert m.attempts == len(inside)
    assert 0 <= m.failures <= m.attempts
    if m.change_failure_rate is not None:
        assert 0.0 <= m.change_failure_rate <= 1.0
    assert m.lead_time_samples + m.lead_time_missing == m.deployments
    assert m.time_to_restore_samples == m.failures
    if m.lead_time_median_s is not None:
        assert m.lead_time_p90_s is not None and m.lead_time_p90_s >= 0
    assert m.deploy_days <= m.deployments
    # The history's order does not matter.
    assert compute(list(reversed(promotions)), list(reversed(rollbacks)), since, until) == m


def test_daily_buckets_by_utc_day_and_clips_the_window() -> None:
    since, until = T0 + 5 * H, T0 + timedelta(days=3, hours=5)  # not midnight: first and last day clipped
    promotions = [
        ok(1, T0 + 6 * H),
        ok(2, T0 + 23 * H, lead=3 * H),
        ok(3, T0 + timedelta(days=2, hours=1)),
        failed(4, T0 + timedelta(days=2, hours=2), restore=timedelta(minutes=5)),
        ok(5, T0 + 4 * H),  # before the window, though on its first day
    ]
    # Day 1's second release is rolled back on day 3: it still counts against day 1.
    rollbacks = [Rollback("shop", 300, T0 + timedelta(days=2, hours=3), replaced_release_id=102)]
    points = daily(promotions, rollbacks, since, until)
    assert [p.day.day for p in points] == [1, 2, 3, 4]
    assert [p.dora.deployments for p in points] == [2, 0, 1, 0]
    assert [p.dora.change_failure_rate for p in points] == [0.5, None, 0.5, None]
    assert points[0].dora.lead_time_median_s == 2 * 3600
    assert points[0].dora.deploys_per_day == pytest.approx(2 / (19 / 24))  # 19 hours of day 1


@given(st.lists(promotion, max_size=40, unique_by=lambda p: p.run_id), st.integers(0, 23))
def test_the_days_add_up_to_the_window(promotions: list[Promotion], offset_h: int) -> None:
    """The charts draw the days; the numbers above them are the window's: they must agree."""
    since, until = T0 + timedelta(hours=offset_h), T0 + timedelta(days=30)
    rollbacks = [Rollback("shop", 10_000, T0 + timedelta(days=31), p.release_id) for p in promotions[:1]]
    points = daily(promotions, rollbacks, since, until)
    whole = compute(promotions, rollbacks, since, until)
    assert len(points) == 30
    assert points[0].day == since.date() and points[-1].day == (until - H).date()
    assert len({p.day for p in points}) == len(points)
    assert sum(p.dora.deployments for p in points) == whole.deployments
    assert sum(p.dora.attempts for p in points) == whole.attempts
    assert sum(p.dora.failures for p in points) == whole.failures
    assert sum(p.dora.lead_time_samples for p in points) == whole.lead_time_samples
    assert sum(1 for p in points if p.dora.deployments) == whole.deploy_days


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("30d", T0 - timedelta(days=30)), ("12h", T0 - 12 * H), ("2w", T0 - timedelta(days=14))],
)
def test_parse_since(raw: str, expected: datetime) -> None:
    assert parse_since(raw, T0) == expected
    assert parse_since("2026-10-01", T0) == datetime(2026, 10, 1, tzinfo=UTC)


@pytest.mark.parametrize("raw", ["0d", "soon", "30x", "2027-01-01"])
def test_parse_since_refuses(raw: str) -> None:
    with pytest.raises(BadInput, match="--since"):
        parse_since(raw, T0)


# --------------------------------------------------------------------------------------------------
# the store and the CLI


@pytest.mark.usefixtures("docker_free_gates")
def test_metrics_from_recorded_history(cli: Cli, workspace: Workspace, store: Store) -> None:
    runs = []
    for _ in range(3):
        run = cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, as_json=True).ok()["run_id"]
        runs.append(run)
    for run_id in runs:
        cli("advance", run_id, "--to", "deploy-staging", as_json=True).ok()
    promote_to_prod(store, runs[0])
    promote_to_prod(store, runs[1], fail_in_prod=True)
    promote_to_prod(store, runs[2])
    # Roll prod back from the third run's release to the first's.
    first, third = (store.releases_of_run(r)[0] for r in (runs[0], runs[2]))
    store.record_release(
        app="demo",
        environment="prod",
        image_id=first.image_id,
        revision=first.revision,
        run_id=runs[0],
        transition_id=None,
        kind="rollback",
    )
    assert third.id > first.id

    payload = cli("metrics", "demo", "--since", "1d", as_json=True).ok()
    m = payload["apps"]["demo"]
    assert m["deployment_frequency"]["deployments"] == 2
    assert m["change_failure_rate"] == {
        "rate": pytest.approx(2 / 3, abs=1e-3),
        "failures": 2,
        "failed_in_prod": 1,
        "rolled_back": 1,
        "promotions": 3,
    }
    lead = m["lead_time_for_changes"]
    # The commit time was recorded at run start, from the repository's git.
    assert lead["samples"] == 2 and lead["missing_commit_time"] == 0 and lead["median_s"] >= 0
    assert m["time_to_restore"]["samples"] == 2

    human = cli("metrics", "--since", "1d")
    human.ok()
    assert "all apps:" in human.stdout and "demo:" in human.stdout
    assert "change failure rate    67% (2 of 3: 1 failed in prod, 1 rolled back)" in human.stdout
    assert "unknown app 'nope'" in cli("metrics", "nope").error(2, "bad_input")
    assert "--since" in cli("metrics", "--since", "soon", as_json=True).error(2, "bad_input")


@pytest.mark.usefixtures("docker_free_gates")
def test_metrics_fills_missing_commit_times_from_git(cli: Cli, workspace: Workspace, store: Store) -> None:
    """Runs recorded before commit times were get theirs from the app's repository when `metrics`
    reads them (and keep it); where the repository is gone they are counted as missing, not guessed."""
    import sqlalchemy as sa

    from orchestrator.store.models import Run

    runs = [
        cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, as_json=True).ok()["run_id"]
        for _ in range(2)
    ]
    for run_id in runs:
        cli("advance", run_id, "--to", "deploy-staging", as_json=True).ok()
        promote_to_prod(store, run_id)
    with store.engine.begin() as conn:  # as a history recorded before 0004 left them
        conn.execute(sa.update(Run).values(committed_at=None))

    lead = cli("metrics", "demo", "--since", "1d", as_json=True).ok()["apps"]["demo"]["lead_time_for_changes"]
    assert (lead["samples"], lead["missing_commit_time"]) == (2, 0)
    with store.engine.connect() as conn:
        kept = conn.execute(sa.select(Run.committed_at).where(Run.id.in_(runs))).scalars().all()
    assert len(kept) == 2 and None not in kept

    with store.engine.begin() as conn:
        conn.execute(sa.update(Run).values(committed_at=None))
    workspace.set_apps({"demo": workspace.path / "gone"})
    lead = cli("metrics", "demo", "--since", "1d", as_json=True).ok()["apps"]["demo"]["lead_time_for_changes"]
    assert (lead["samples"], lead["missing_commit_time"]) == (0, 2)
