"""The API's state-changing endpoints (issue 13): approve, reject, lock, unlock, rollback, freeze,
unfreeze (the rollback on the real engine: tests/integration/test_dashboard_live.py).

Served by the real hardened listener on loopback. For every endpoint: disabled without ORCH_API_TOKEN
(403), refused without a bearer token or with a wrong one (401), refused with the token in the query
string (400, the token never echoed nor logged), and each refusal leaves the history exactly as it was;
with the right token the action is done through the service, recorded with the API's actor, and
answered with the CLI's --json object.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from dashboard_support import GOOD_SHA, dashboard

from orchestrator import views
from orchestrator.store.repository import Store
from orchestrator.web.actions import MIN_TOKEN_LENGTH, api_actor, authorize

if TYPE_CHECKING:
    from conftest import Cli, Workspace

TOKEN = "s3cret-token-" + "x" * 20
WRONG = "s3cret-token-" + "y" * 20


# --------------------------------------------------------------------------------------------------
# the rule, without a server


@pytest.mark.parametrize(
    ("token", "header", "query", "status", "error"),
    [
        (TOKEN, f"Bearer {TOKEN}", b"", None, None),
        (TOKEN, f"bearer  {TOKEN} ", b"", None, None),
        (None, f"Bearer {TOKEN}", b"", 403, "api_disabled"),
        ("short", "Bearer short", b"", 403, "api_disabled"),
        (TOKEN, None, b"", 401, "unauthorized"),
        (TOKEN, f"Basic {TOKEN}", b"", 401, "unauthorized"),
        (TOKEN, "Bearer ", b"", 401, "unauthorized"),
        (TOKEN, f"Bearer {WRONG}", b"", 401, "unauthorized"),
        (TOKEN, f"Bearer {TOKEN[:-1]}", b"", 401, "unauthorized"),
        (TOKEN, f"Bearer {TOKEN}", f"token={TOKEN}".encode(), 400, "query_string_refused"),
        (None, None, b"access_token=x", 400, "query_string_refused"),
    ],
)
def test_authorize(
    token: str | None, header: str | None, query: bytes, status: int | None, error: str | None
) -> None:
    refusal = authorize(token, header, query)
    assert (refusal.status, refusal.error) == (status, error) if refusal else status is None
    if refusal is not None:
        assert TOKEN not in refusal.message and WRONG not in refusal.message
    if refusal is not None and refusal.status == 401:
        assert refusal.challenge is not None and refusal.challenge.startswith("Bearer ")


def test_min_token_length_is_what_the_rule_uses() -> None:
    assert authorize("a" * MIN_TOKEN_LENGTH, "Bearer " + "a" * MIN_TOKEN_LENGTH, b"") is None
    assert authorize("a" * (MIN_TOKEN_LENGTH - 1), "Bearer " + "a" * (MIN_TOKEN_LENGTH - 1), b"") is not None


def test_the_api_actor() -> None:
    assert api_actor(None) == api_actor("  ") == "api"
    assert api_actor("alice") == "api:alice"


# --------------------------------------------------------------------------------------------------
# through the server


def post(
    url: str, body: Any = None, *, token: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data or b"", method="POST", headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


@pytest.fixture
def awaiting(workspace: Workspace, store: Store) -> list[int]:
    """demo requires approval for prod; two runs wait in deploy-staging for it."""
    workspace.write_config(workspace.config_path.read_text(encoding="utf-8") + "require_approval = true\n")
    return [store.create_run("demo", GOOD_SHA, "ci", "deploy-staging").id for _ in range(2)]


def serve(workspace: Workspace, free_port: Callable[[], int]) -> Any:
    return dashboard(free_port(), str(workspace.config_path))


def history(store: Store, runs: list[int]) -> Any:
    """Everything the actions could change."""
    return (
        [(r, store.get_run(r).state, store.approvals(r)) for r in runs],
        store.locks(),
        store.freezes(),
        [(e.kind, e.actor) for e in store.events(limit=100)],
    )


def every_action(runs: list[int]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"/api/runs/{runs[0]}/approve", {"reason": "looks good"}),
        (f"/api/runs/{runs[1]}/reject", {"reason": "not today"}),
        ("/api/apps/demo/prod/lock", {"reason": "db migration"}),
        ("/api/apps/demo/prod/unlock", {}),
        ("/api/apps/demo/prod/rollback", {"reason": "slow"}),
        ("/api/freeze", {"reason": "holiday"}),
        ("/api/unfreeze", {}),
    ]


@pytest.fixture
def site(
    workspace: Workspace, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("ORCH_API_TOKEN", TOKEN)
    with serve(workspace, free_port) as url:
        yield url


def test_disabled_without_a_token_configured(
    workspace: Workspace, store: Store, awaiting: list[int], free_port: Callable[[], int]
) -> None:
    before = history(store, awaiting)
    with serve(workspace, free_port) as url:
        for path, body in every_action(awaiting):
            status, answer, _ = post(url + path, body, token=TOKEN)
            assert status == 403, path
            assert answer["error"] == "api_disabled" and "ORCH_API_TOKEN" in answer["message"]
    assert history(store, awaiting) == before


@pytest.mark.parametrize("token", [None, WRONG, ""], ids=["missing", "wrong", "empty"])
def test_refused_without_the_right_token_and_nothing_changes(
    site: str, store: Store, awaiting: list[int], token: str | None
) -> None:
    before = history(store, awaiting)
    for path, body in every_action(awaiting):
        status, answer, headers = post(site + path, body, token=token)
        assert status == 401, (path, answer)
        assert answer["error"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith('Bearer realm="orchestrator"')
    assert history(store, awaiting) == before


def test_a_token_in_the_query_string_is_refused_and_never_echoed_or_logged(
    site: str, store: Store, awaiting: list[int], capfd: pytest.CaptureFixture[str]
) -> None:
    before = history(store, awaiting)
    for path, body in every_action(awaiting):
        for query in (f"token={TOKEN}", f"access_token={TOKEN}"):
            # Even with the right header beside it: the URL has already been written to some log.
            for header in (None, TOKEN):
                status, answer, _ = post(f"{site}{path}?{query}", body, token=header)
                assert status == 400 and answer["error"] == "query_string_refused", (path, answer)
                assert TOKEN not in json.dumps(answer)
    assert history(store, awaiting) == before
    out, err = capfd.readouterr()
    assert TOKEN not in out and TOKEN not in err


def test_the_right_token_acts_through_the_service_as_the_api_actor(
    site: str, cli: Cli, store: Store, awaiting: list[int]
) -> None:
    approved, rejected = awaiting
    as_alice = {"X-Orchestrator-Actor": "alice"}

    status, answer, _ = post(
        f"{site}/api/runs/{approved}/approve", {"reason": "looks good"}, token=TOKEN, headers=as_alice
    )
    assert status == 200, answer
    (approval,) = store.approvals(approved)
    assert (approval.decision, approval.actor, approval.reason) == ("approved", "api:alice", "looks good")
    assert answer["run_id"] == approved and answer["approval"]["actor"] == "api:alice"
    # Approving twice is the CLI's conflict, with the HTTP status that fits.
    status, answer, _ = post(f"{site}/api/runs/{approved}/approve", {}, token=TOKEN)
    assert status == 409 and answer["error"] == "conflict"

    status, answer, _ = post(f"{site}/api/runs/{rejected}/reject", {"reason": "not today"}, token=TOKEN)
    assert status == 200, answer
    assert store.get_run(rejected).state == "rejected"
    assert store.approvals(rejected)[0].actor == "api"
    status, answer, _ = post(f"{site}/api/runs/{rejected}/reject", {}, token=TOKEN)
    assert status == 400 and "reason" in answer["message"], (
        "a rejection needs a reason, as on the command line"
    )
    status, answer, _ = post(f"{site}/api/runs/{rejected}/reject", {"reason": "again"}, token=TOKEN)
    assert status == 409, "a run already rejected"

    status, answer, _ = post(f"{site}/api/apps/demo/prod/lock", {"reason": "db migration"}, token=TOKEN)
    assert status == 200, answer
    (held,) = store.locks()
    assert (held.app, held.environment, held.kind, held.holder, held.reason) == (
        "demo",
        "prod",
        "manual",
        "api",
        "db migration",
    )
    assert answer == {"lock": views.lock_record(held)}, "the CLI's 'lock --json' object"
    status, answer, _ = post(f"{site}/api/apps/demo/prod/unlock", {}, token=TOKEN)
    assert status == 200, answer
    assert store.locks() == []

    status, answer, _ = post(f"{site}/api/freeze", {"app": "demo", "reason": "holiday"}, token=TOKEN)
    assert status == 200, answer
    (frozen,) = store.freezes()
    assert (frozen.app, frozen.actor, frozen.reason) == ("demo", "api", "holiday")
    assert answer == {"freeze": views.freeze_record(frozen)}
    status, answer, _ = post(f"{site}/api/unfreeze", {"app": "demo"}, token=TOKEN)
    assert status == 200 and store.freezes() == []

    audit = cli("audit", "demo", as_json=True).ok()["entries"]
    assert {"api", "api:alice"} <= {e["actor"] for e in audit}


def test_bad_requests_change_nothing(site: str, store: Store, awaiting: list[int]) -> None:
    before = history(store, awaiting)
    # A form body is what a cross-site form would send: refused even with the token.
    status, answer, _ = post(
        f"{site}/api/apps/demo/prod/lock",
        b"reason=x",
        token=TOKEN,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 400 and "JSON" in answer["message"]
    status, answer, _ = post(f"{site}/api/apps/demo/prod/lock", {}, token=TOKEN)
    assert status == 400, "a lock needs a reason, as on the command line"
    status, answer, _ = post(f"{site}/api/apps/demo/prod/lock", {"reason": 3}, token=TOKEN)
    assert status == 400
    status, answer, _ = post(f"{site}/api/apps/nope/prod/lock", {"reason": "x"}, token=TOKEN)
    assert status == 400 and "unknown app 'nope'" in answer["message"]
    status, answer, _ = post(f"{site}/api/runs/9999/approve", {}, token=TOKEN)
    assert status == 404
    for to in ("3", True, 1.5):
        status, answer, _ = post(f"{site}/api/apps/demo/prod/rollback", {"to": to}, token=TOKEN)
        assert status == 400 and "'to' must be a release id" in answer["message"], to
    assert history(store, awaiting) == before


# --------------------------------------------------------------------------------------------------
# the dashboard's buttons, in the browser


def use_token(page: Any, token: str, actor: str = "") -> None:
    page.fill("#api-token input[name=token]", token)
    page.fill("#api-token input[name=actor]", actor)
    page.click("#api-token button[type=submit]")


def test_buttons_lock_unlock_freeze_and_unfreeze_with_the_token(
    site: str, page: Any, store: Store, awaiting: list[int]
) -> None:
    from playwright.sync_api import expect

    page.goto(site + "/")
    use_token(page, TOKEN, "alice")
    expect(page.locator("#api-token-state")).to_have_text("Token set for this tab (acting as api:alice).")
    assert page.locator("#api-token input[name=token]").input_value() == "", "the field is cleared"

    page.select_option("form.lock select[name=env]", "prod")
    page.fill("form.lock input[name=reason]", "db migration")
    with page.expect_navigation():
        page.click("form.lock button")
    expect(page.locator("#api-status")).to_have_text("Locked.")
    assert "api:alice" in page.locator("#locks li.lock").inner_text()
    (held,) = store.locks()
    assert (held.environment, held.holder, held.reason) == ("prod", "api:alice", "db migration")

    with page.expect_navigation():
        page.click("form.unlock button")
    assert store.locks() == [] and page.locator("#locks li.lock").count() == 0

    page.fill("form.freeze input[name=reason]", "holiday")
    with page.expect_navigation():
        page.click("form.freeze button")
    assert "every app frozen by api:alice" in page.locator("#locks li.freeze").inner_text()
    with page.expect_navigation():
        page.click("form.unfreeze button")
    assert store.freezes() == [] and page.locator("#locks li.freeze").count() == 0


def test_a_wrong_token_in_the_browser_is_told_and_changes_nothing(
    site: str, page: Any, store: Store, awaiting: list[int]
) -> None:
    from playwright.sync_api import expect

    before = history(store, awaiting)
    page.goto(site + "/")
    page.fill("form.lock input[name=reason]", "no token yet")
    page.click("form.lock button")
    expect(page.locator("#api-status")).to_contain_text("Enter the API token first")
    use_token(page, WRONG)
    page.click("form.lock button")
    expect(page.locator("#api-status")).to_have_text(
        "401: the bearer token is not the server's ORCH_API_TOKEN"
    )
    assert history(store, awaiting) == before


def test_the_run_page_approves_a_run_awaiting_approval(
    site: str, page: Any, store: Store, awaiting: list[int]
) -> None:
    run = awaiting[0]
    page.goto(f"{site}/runs/{run}")
    assert "awaits approval for prod" in page.locator("#decision").inner_text()
    use_token(page, TOKEN)
    page.fill("form.approve input[name=reason]", "checked staging")
    with page.expect_navigation():
        page.click("form.approve button")
    (approval,) = store.approvals(run)
    assert (approval.decision, approval.actor, approval.reason) == ("approved", "api", "checked staging")
    assert page.locator("#decision").count() == 0, "nothing left to decide"


def test_without_a_token_configured_the_dashboard_offers_no_buttons(
    workspace: Workspace, page: Any, awaiting: list[int], free_port: Callable[[], int]
) -> None:
    with serve(workspace, free_port) as url:
        page.goto(url + "/")
        assert "Actions are disabled" in page.locator("#api-disabled").inner_text()
        assert page.locator("form[data-api]").count() == 0
        page.goto(f"{url}/runs/{awaiting[0]}")
        assert page.locator("form[data-api]").count() == 0


def test_pages_allow_only_their_own_script(site: str) -> None:
    with urllib.request.urlopen(site + "/", timeout=30) as response:
        policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    with urllib.request.urlopen(site + "/static/actions.js", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/javascript")
