"""Seed history straight through the store, as the service would have written it, for the dashboard's
API and browser tests (no Docker needed), and serve the dashboard in-process on a loopback port."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.gates import GateResult, GateStatus
from orchestrator.holder import Holder
from orchestrator.store.repository import Store
from orchestrator.web import make_server
from orchestrator.web.app import Backend, create_app

GOOD_SHA = "1" * 40
BAD_SHA = "2" * 40
FAILURE = "deploy_staging: shop-staging exited with code 3\n--- log ---\nfatal: cannot open the database"


@dataclass(frozen=True)
class Seeded:
    good_run: int
    bad_run: int
    release: int


def _gate(name: str, status: GateStatus, reason: str, **details: object) -> GateResult:
    return GateResult(name, status, reason, details, 0.25, datetime.now(UTC))


def seed(store: Store, app: str = "demo") -> Seeded:
    """A run promoted to staging by ci-bot (with its release), and a failed one with evidence."""
    me = Holder.me()
    good = store.create_run(app, GOOD_SHA, "ci-bot", "development").id
    t1 = store.begin_transition(
        good,
        "development",
        "deploy-staging",
        "ci-bot",
        ["staging"],
        target_environment="staging",
        holder=me,
        lease_s=60,
    )
    store.record_gate_result(t1, 0, _gate("commit_exists", GateStatus.PASS, "commit exists"))
    store.record_gate_result(
        t1,
        1,
        _gate(
            "verify_staging",
            GateStatus.PASS,
            "staging serves it",
            expected_revision=GOOD_SHA,
            found_revision=GOOD_SHA,
        ),
    )
    release = store.record_release(
        app=app,
        environment="staging",
        image_id="sha256:" + "a" * 64,
        revision=GOOD_SHA,
        run_id=good,
        transition_id=t1,
    ).id
    store.finish_transition(t1, outcome="succeeded", reason=None, result_state="deploy-staging")

    bad = store.create_run(app, BAD_SHA, "alice", "development").id
    t2 = store.begin_transition(
        bad,
        "development",
        "deploy-staging",
        "alice",
        ["staging"],
        target_environment="staging",
        holder=me,
        lease_s=60,
    )
    store.record_gate_result(t2, 0, _gate("commit_exists", GateStatus.PASS, "commit exists"))
    store.record_gate_result(
        t2,
        1,
        _gate("deploy_staging", GateStatus.FAIL, FAILURE, expected_revision=BAD_SHA, found_revision=None),
    )
    store.finish_transition(t2, outcome="failed", reason=FAILURE, result_state="development")
    return Seeded(good, bad, release)


def promote_to_prod(store: Store, run_id: int, *, fail_in_prod: bool = False, app: str = "demo") -> int:
    """A prod-edge transition as the service records it: its prod step, and its release, or (failed in
    prod) the rollback release restoring what ran before."""
    tid = store.begin_transition(
        run_id,
        "deploy-staging",
        "deploy",
        "ci",
        ["staging", "prod"],
        target_environment="prod",
        holder=Holder.me(),
        lease_s=60,
    )
    step = store.begin_step(tid, 1, "swap", "prod")
    store.finish_step(step, status="done", changes={})
    if not fail_in_prod:
        store.record_release(
            app=app,
            environment="prod",
            image_id="sha256:" + "1" * 64,
            revision="a" * 40,
            run_id=run_id,
            transition_id=tid,
        )
    elif (previous := store.latest_release(app, "prod")) is not None:
        # The failed promotion's own restore of the release prod ran before (gates' Compensation).
        store.record_release(
            app=app,
            environment="prod",
            image_id=previous.image_id,
            revision=previous.revision,
            run_id=run_id,
            transition_id=tid,
            kind="rollback",
            reason="promote_prod failed; prod restored",
        )
    store.finish_transition(
        tid,
        outcome="failed" if fail_in_prod else "succeeded",
        reason="x" if fail_in_prod else None,
        result_state="development" if fail_in_prod else "deploy",
    )
    return tid


def backdate(store: Store, transition_id: int, by: timedelta) -> None:
    """Move a finished transition (and the releases it made) back in time, as if it had run ``by``
    earlier: the store records the present only, and the charts need more than one day."""
    import sqlalchemy as sa

    from orchestrator.store.models import Release, Transition

    with store._session() as s:  # in Python: SQLite cannot subtract an interval from a timestamp
        transition = s.get(Transition, transition_id)
        assert transition is not None and transition.finished_at is not None
        transition.started_at -= by
        transition.finished_at -= by
        for release in s.scalars(sa.select(Release).where(Release.transition_id == transition_id)):
            release.created_at -= by


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> tuple[Samples, dict[str, Any]]:
    """{(sample name, sorted labels): value} and {family name: family} of an exposition."""
    samples: Samples = {}
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        found[family.name] = family
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, found


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        assert response.status == 200
        return response.read().decode(), response.headers["Content-Type"]


@contextmanager
def dashboard(port: int, config_path: str | None = None) -> Iterator[str]:
    """The dashboard on 127.0.0.1:port behind the real hardened listener; yields its base URL."""
    server = make_server("127.0.0.1", port, app=create_app(Backend(config_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
