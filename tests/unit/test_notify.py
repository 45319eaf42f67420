"""Webhook notifications against real HTTP receivers on 127.0.0.1: one that answers 200, one that
answers 500, one that never answers. None of them may change an outcome or its exit code; every failed
delivery is logged and recorded as a ``notify_failed`` event, without the webhook's secret path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from notify_support import Receiver, start_receiver

from orchestrator.gates import Verdict
from orchestrator.machine import TO_PROD
from orchestrator.notify import ATTEMPTS, Notification, Notifier, safe_url
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli, Workspace


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    found = {mode: start_receiver(mode) for mode in ("ok", "error", "notfound", "hang")}
    yield found
    for r in found.values():
        r.stop()


def note(**kw: Any) -> Notification:
    values: dict[str, Any] = {
        "event": "promoted",
        "app": "shop",
        "environment": "prod",
        "run_id": 7,
        "sha": "a" * 40,
        "actor": "ci",
    }
    values.update(kw)
    return Notification(**values)


# --------------------------------------------------------------------------------------------------
# the notifier on its own


def test_delivers_the_payload_without_secrets(receivers: dict[str, Receiver]) -> None:
    ok = receivers["ok"]
    notifier = Notifier([ok.url], timeout_s=2, secrets_for=lambda app: ["hunter2-db-pass"])
    notifier.send(
        note(
            event="failed",
            reason="staging_check: app said DB_PASSWORD=hunter2-db-pass and token: abcdefgh1234",
            details={"log": "connecting with hunter2-db-pass"},
            transition_id=41,
        )
    )
    assert notifier.close() == []
    (request,) = ok.requests
    assert request["type"] == "application/json"
    body = request["json"]
    assert {k: body[k] for k in ("source", "event", "app", "environment", "run_id", "transition_id")} == {
        "source": "orchestrator",
        "event": "failed",
        "app": "shop",
        "environment": "prod",
        "run_id": 7,
        "transition_id": 41,
    }
    assert body["sha"] == "a" * 40 and body["at"]
    text = json.dumps(body)
    assert "hunter2" not in text and "abcdefgh1234" not in text, text
    assert "DB_PASSWORD=***" in body["reason"]


def test_a_500_is_retried_then_reported(receivers: dict[str, Receiver]) -> None:
    bad = receivers["error"]
    notifier = Notifier([bad.url], timeout_s=2)
    notifier.send(note())
    (failure,) = notifier.close()
    assert len(bad.requests) == ATTEMPTS
    assert (failure.ok, failure.attempts, failure.error) == (False, ATTEMPTS, "HTTP 500")
    assert failure.url == safe_url(bad.url) and "SECRET" not in failure.url


def test_a_404_is_not_retried(receivers: dict[str, Receiver]) -> None:
    notifier = Notifier([receivers["notfound"].url], timeout_s=2)
    notifier.send(note())
    (failure,) = notifier.close()
    assert (failure.attempts, failure.error) == (1, "HTTP 404")
    assert len(receivers["notfound"].requests) == 1


def test_a_hung_receiver_is_abandoned_within_the_budget(receivers: dict[str, Receiver]) -> None:
    """send() returns at once; close() returns once the budget is spent, with the delivery reported
    as failed (the thread is a daemon: it cannot keep the process alive)."""
    hang, ok = receivers["hang"], receivers["ok"]
    notifier = Notifier([hang.url, ok.url], timeout_s=0.2)
    notifier.send(note())
    failures = notifier.close()
    assert [f.url for f in failures] == [safe_url(hang.url)]
    assert "timed out" in (failures[0].error or "") or "abandoned" in (failures[0].error or "")
    assert len(ok.requests) == 1, "a hung receiver must not keep the others from being told"


def test_the_one_setting_bounds_the_whole_wait() -> None:
    """README: a command waits for its notifications "at most about three times" ``notify_timeout_s``.
    The back-offs between attempts are parts of that timeout, so a short timeout is a short wait (not
    1.5 s of fixed back-off whatever the setting), and the default's budget is what it always was."""
    assert Notifier(timeout_s=5.0).budget_s == pytest.approx(3 * 5.0 + 0.5 + 1.0)
    assert Notifier(timeout_s=0.2).budget_s == pytest.approx(3.3 * 0.2)


def test_no_urls_means_no_threads() -> None:
    notifier = Notifier([])
    notifier.send(note())
    assert notifier.close() == []


def test_safe_url_hides_path_query_and_password() -> None:
    assert safe_url("https://user:pw@hooks.example.com:8443/services/T0/B0/XYZ?token=1") == (
        "https://hooks.example.com:8443/…"
    )


# --------------------------------------------------------------------------------------------------
# through the CLI: outcomes are announced, failures recorded, exit codes untouched


def configure(workspace: Workspace, urls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    text = workspace.config_path.read_text(encoding="utf-8")
    listed = ", ".join(f'"{u}"' for u in urls)
    workspace.write_config(
        f"[orchestrator]\nnotify_urls = [{listed}]\n\n" + text + "require_approval = true\n"
    )
    monkeypatch.setenv("ORCH_NOTIFY_TIMEOUT_S", "0.2")


@pytest.mark.usefixtures("docker_free_gates")
def test_every_outcome_is_announced_and_failed_deliveries_recorded(
    cli: Cli,
    workspace: Workspace,
    store: Store,
    receivers: dict[str, Receiver],
    monkeypatch: pytest.MonkeyPatch,
    register_gate: Any,
) -> None:
    ok, bad, hang = receivers["ok"], receivers["error"], receivers["hang"]
    configure(workspace, [ok.url, bad.url, hang.url], monkeypatch)
    sha = workspace.repo.sha
    run_id = cli("run", "start", "--app", "demo", "--sha", sha, as_json=True).ok()["run_id"]
    cli("advance", run_id, "--to", "deploy-staging", as_json=True).ok()
    cli("advance", run_id, "--to", "deploy").error(3, "awaiting_approval")
    cli("approve", run_id, "--actor", "alice").ok()
    cli("advance", run_id, "--to", "deploy", as_json=True).ok()

    second = cli("run", "start", "--app", "demo", "--sha", sha, as_json=True).ok()["run_id"]
    cli("advance", second, "--to", "deploy-staging", as_json=True).ok()
    cli("reject", second, "--reason", "not today", "--actor", "bob").ok()

    third = cli("run", "start", "--app", "demo", "--sha", sha, as_json=True).ok()["run_id"]
    cli("advance", third, "--to", "deploy-staging", as_json=True).ok()
    cli("approve", third).ok()
    register_gate("prod_probe", TO_PROD, Verdict.failed("prod answered 503"))
    failed = cli("advance", third, "--to", "deploy", as_json=True)
    assert failed.exit_code == 1 and failed.payload["outcome"] == "failed", failed.describe()

    seen = [(b["event"], b["run_id"], b["environment"]) for b in ok.bodies()]
    assert seen == [
        ("promoted", run_id, "staging"),
        ("awaiting_approval", run_id, "prod"),
        ("approved", run_id, "prod"),
        ("promoted", run_id, "prod"),
        ("promoted", second, "staging"),
        ("rejected", second, "prod"),
        ("promoted", third, "staging"),
        ("approved", third, "prod"),
        ("failed", third, "prod"),
    ]
    rejected = next(b for b in ok.bodies() if b["event"] == "rejected")
    assert (rejected["actor"], rejected["reason"]) == ("bob", "not today")

    failures = [e for e in store.events(limit=500) if e.kind == "notify_failed"]
    assert len(failures) == 2 * len(seen), "each outcome failed once at the 500 and once at the hung one"
    assert {e.details["url"] for e in failures} == {safe_url(bad.url), safe_url(hang.url)}
    # Every command gave the hung receiver up (its own timeouts, or the budget when they ran over it):
    # nothing waited for it to answer.
    hung = [e.message for e in failures if e.details["url"] == safe_url(hang.url)]
    assert len(hung) == len(seen) and all("timed out" in m or "abandoned" in m for m in hung), hung
    assert all(
        "SECRET-TOKEN" not in e.message and "SECRET-TOKEN" not in json.dumps(e.details) for e in failures
    )
    assert store.get_run(run_id).state == "deploy"
