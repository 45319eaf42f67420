"""Webhook notifications for the outcomes only a real engine produces (issue 13): ``rolled_back`` from
`orchestrator rollback` of prod, and ``recovered`` from `orchestrator recover` after the runner of a
prod promotion was SIGKILLed mid-swap (prod left without a container). The receiver is the test's own,
on loopback; the kill is the documented test hook (ORCH_TEST_CRASH_AT) in a real child process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from faults_support import Orchestrator
from notify_support import Receiver, start_receiver

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A receiver answering 200; ORCH_NOTIFY_URLS points every orchestrator process of the test
    (in-process CLI and child processes alike) at it."""
    receiver = start_receiver("ok")
    monkeypatch.setenv("ORCH_NOTIFY_URLS", receiver.url)
    try:
        yield receiver
    finally:
        receiver.stop()


def events(bodies: list[dict[str, Any]], app: str) -> list[tuple[str, str | None]]:
    return [(b["event"], b["environment"]) for b in bodies if b["app"] == app]


def test_a_rollback_of_prod_is_announced_as_rolled_back(busybox_app: BusyboxApp, receiver: Receiver) -> None:
    app = busybox_app
    first = app.commit("one")
    app.deploy(first)
    second = app.deploy(app.commit("two"))
    receiver.requests.clear()

    done = app.cli(
        "rollback", app.name, "--env", "prod", "--actor", "carol", "--reason", "two is slow", as_json=True
    )
    done.ok()
    assert app.running("prod") is not None and app.running("prod").revision == first  # type: ignore[union-attr]
    assert events(receiver.bodies(), app.name) == [("rolled_back", "prod")]
    (body,) = receiver.bodies()
    assert (body["actor"], body["sha"]) == ("carol", first)
    assert "two is slow" in (body["reason"] or "")
    assert body["run_id"] != second  # the run whose release prod runs again


def test_a_recovery_after_a_killed_runner_is_announced_as_recovered(
    busybox_app: BusyboxApp, receiver: Receiver
) -> None:
    app = busybox_app
    app.deploy(app.commit("baseline"))
    orch = Orchestrator(app.workspace.path)
    run_id = orch.start_run(app.name, app.commit("killed mid-swap"))
    orch.advance(run_id, "deploy-staging").ok()
    receiver.requests.clear()

    killed = orch.advance(run_id, "deploy", crash_at="after:prod_stop")
    assert killed.returncode == -9, killed.describe()
    assert app.running("prod") is None, "the kill left prod without a container"
    assert receiver.bodies() == [], "a killed runner announces nothing"

    (report,) = app.cli("recover", app.name, "--actor", "dave", as_json=True).ok()["recovered"]
    assert app.running("prod") is not None
    assert events(receiver.bodies(), app.name) == [("recovered", "prod")]
    (body,) = receiver.bodies()
    assert (body["run_id"], body["transition_id"], body["actor"]) == (run_id, report["transition_id"], "dave")
    assert body["details"]["outcome"] == report["outcome"] == "aborted"
    assert "prod restored" in body["reason"]
