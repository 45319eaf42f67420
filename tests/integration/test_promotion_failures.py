"""Promotions that must fail, through the real CLI on the real engine: fail closed before prod, or
restore prod after it was touched, and say why with the evidence.

Most tests first deploy a good release A, so that "prod was left alone" is checked against a real
container and image rather than against nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.verify import REVISION_LABEL

if TYPE_CHECKING:
    from conftest import BusyboxApp, Deployed

pytestmark = pytest.mark.docker

STAGING_GATES_UNTIL = ["commit_exists", "build_image", "image_revision", "deploy_staging", "staging_check"]


def expect_failed(app: BusyboxApp, result: Any, *, gates: list[str], failing: str) -> dict[str, Any]:
    """Exit 1, back in development, ``gates`` ran in order and only ``failing`` failed; its check."""
    assert result.exit_code == 1, result.describe()
    payload = result.payload
    assert (payload["outcome"], payload["state"]) == ("failed", "development"), payload
    assert app.verdicts(payload) == [(g, "fail" if g == failing else "pass") for g in gates], payload
    assert payload["reason"].startswith(f"{failing}: "), payload["reason"]
    return next(c for c in payload["checks"] if c["name"] == failing)


@dataclass(frozen=True)
class Release:
    sha: str
    run_id: int
    prod: Deployed
    staging: Deployed


def deploy_release_a(app: BusyboxApp) -> Release:
    """A good release on both environments, with what the engine reports each of them runs."""
    sha = app.commit("release A")
    run_id = app.deploy(sha)
    prod, staging = app.running("prod"), app.running("staging")
    assert prod is not None and staging is not None
    return Release(sha, run_id, prod, staging)


# edge 1: development -> deploy-staging --------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "found", "why"),
    [
        ({"label": None}, None, f"image has no {REVISION_LABEL} label"),
        ({"arg_after_label": True}, "", f"{REVISION_LABEL} is empty"),
    ],
    ids=["label-missing", "arg-declared-after-label"],
)
def test_image_without_a_usable_revision_label_fails_closed(
    busybox_app: BusyboxApp, variant: dict[str, Any], found: str | None, why: str
) -> None:
    """Hazard: an image that cannot prove which commit it is gets deployed anyway. A Dockerfile without
    the LABEL, or with ``ARG GIT_SHA`` declared after it (the label expands to nothing), must stop the
    edge at image_revision, before staging is touched."""
    app = busybox_app
    a = deploy_release_a(app)
    sha = app.commit("release B", **variant)
    run_id = app.start(sha)

    check = expect_failed(
        app, app.advance(run_id, "deploy-staging"), gates=STAGING_GATES_UNTIL[:3], failing="image_revision"
    )
    assert check["reason"].startswith(why), check["reason"]
    assert "ARG GIT_SHA" in check["reason"], "the reason says how to fix the Dockerfile"
    assert check["details"]["expected_revision"] == sha
    assert check["details"]["found_revision"] == found
    assert app.show(run_id)["state"] == "development"
    assert app.running("staging") == a.staging, "staging never ran the unprovable image"
    assert app.running("prod") == a.prod


def test_forged_revision_label_fails_with_expected_and_found(busybox_app: BusyboxApp) -> None:
    """Hazard: a label that ignores GIT_SHA (hard-coded, here to the current prod release's sha) makes
    any image claim to be a validated commit. The mismatch must fail with both revisions on record."""
    app = busybox_app
    a = deploy_release_a(app)
    sha_b = app.commit("release B claims to be A", label=a.sha)
    run_id = app.start(sha_b)

    check = expect_failed(
        app, app.advance(run_id, "deploy-staging"), gates=STAGING_GATES_UNTIL[:3], failing="image_revision"
    )
    assert a.sha in check["reason"] and sha_b in check["reason"], check["reason"]
    assert check["details"]["expected_revision"] == sha_b
    assert check["details"]["found_revision"] == a.sha
    assert app.running("staging") == a.staging
    assert app.running("prod") == a.prod


def test_health_never_green_fails_with_the_health_evidence(busybox_app: BusyboxApp) -> None:
    """Hazard: a container that starts but never serves its health path being called deployed, or the
    failure arriving without anything to debug it with. The edge must fail after the (short) health
    timeout with the attempts and the last answer on record."""
    app = busybox_app
    app.configure(health_timeout_s=3)
    a = deploy_release_a(app)
    sha = app.commit("release B has no /health", health=False)
    run_id = app.start(sha)

    check = expect_failed(
        app, app.advance(run_id, "deploy-staging"), gates=STAGING_GATES_UNTIL[:4], failing="deploy_staging"
    )
    assert "not healthy after" in check["reason"], check["reason"]
    recorded = app.show(run_id)["transitions"][-1]
    assert recorded["result_state"] == "development"
    health = next(c for c in recorded["checks"] if c["name"] == "deploy_staging")["details"]["health"]
    assert health["healthy"] is False
    assert health["url"] == f"http://127.0.0.1:{app.staging_port}/health"
    assert health["last_status"] == 404, health
    assert health["attempts"] > 1 and sum(health["seen"].values()) == health["attempts"], health
    assert check["details"]["container_status"] == "running", "the app was alive, just never healthy"
    assert app.show(run_id)["releases"] == [], "an unhealthy staging is not a release"
    assert app.running("prod") == a.prod


def test_failing_stub_staging_check_is_recorded_with_its_output(busybox_app: BusyboxApp) -> None:
    """Hazard: a healthy container serving the wrong revision (say, an image that reads its version from
    somewhere stale). The stub staging check must fail the edge and its output must be persisted."""
    app = busybox_app
    a = deploy_release_a(app)
    sha = app.commit("release B serves a wrong /version", version=app.wrong_revision)
    run_id = app.start(sha)

    expect_failed(
        app, app.advance(run_id, "deploy-staging"), gates=STAGING_GATES_UNTIL, failing="staging_check"
    )
    recorded = next(c for c in app.show(run_id)["transitions"][-1]["checks"] if c["name"] == "staging_check")
    assert recorded["status"] == "fail"
    assert recorded["details"]["staging_check_exit_code"] == 1
    output = recorded["details"]["staging_check_output"]
    assert "ok: GET /health -> 200" in output, output
    assert f"expected revision {sha}" in output and app.wrong_revision in output, output
    assert recorded["reason"].startswith("staging check failed (exit 1)"), recorded["reason"]
    assert app.running("prod") == a.prod


class _Squatter(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"someone else's server\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
        pass


@pytest.fixture
def squat() -> Iterator[Any]:
    """``squat(port)``: serve 200 on everything at 127.0.0.1:port until the test ends."""
    servers: list[ThreadingHTTPServer] = []

    def start(port: int) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", port), _Squatter)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_port_served_by_someone_else_fails_deploy_staging(busybox_app: BusyboxApp, squat: Any) -> None:
    """Hazard: our container dies on "address already in use" while the health check gets someone
    else's 200, and a dead deploy looks green. deploy_staging must fail naming the port."""
    app = busybox_app
    a = deploy_release_a(app)
    app.engine.remove_container(f"{app.name}-staging")  # staging gone; its port taken by a stranger
    squat(app.staging_port)
    sha = app.commit("release B")
    run_id = app.start(sha)

    check = expect_failed(
        app, app.advance(run_id, "deploy-staging"), gates=STAGING_GATES_UNTIL[:4], failing="deploy_staging"
    )
    assert f"port {app.staging_port}" in check["reason"] and "already in use" in check["reason"], check
    assert app.running("staging") is None, "nothing of ours is left pretending to be staging"
    stranger = app.get("staging", "/health")
    assert (stranger.status, stranger.body) == (200, "someone else's server\n"), "the stranger is untouched"
    assert app.show(run_id)["releases"] == []
    assert app.running("prod") == a.prod


# edge 2: deploy-staging -> deploy ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prod_behaviour", "gates", "failing", "timeout"),
    [
        ("wrong_version", ["check_staging_image_fresh", "promote_prod", "verify_prod"], "verify_prod", 10),
        ("no_health", ["check_staging_image_fresh", "promote_prod"], "promote_prod", 3),
    ],
    ids=["verify-fails", "health-fails"],
)
def test_prod_failure_after_the_swap_restores_the_previous_release(
    busybox_app: BusyboxApp, prod_behaviour: str, gates: list[str], failing: str, timeout: float
) -> None:
    """Hazard: a release that passes staging but misbehaves in prod (here: only when ORCH_ENVIRONMENT=prod)
    stays serving, or the restore is assumed rather than checked. Prod must be back on release A's image,
    in a fresh container, verified, with a rollback release recording why."""
    app = busybox_app
    app.configure(health_timeout_s=timeout)
    a = deploy_release_a(app)
    release_a = next(r for r in app.show(a.run_id)["releases"] if r["environment"] == "prod")
    sha_b = app.commit("release B breaks in prod", prod=prod_behaviour)
    run_id = app.start(sha_b)
    app.advance(run_id, "deploy-staging").ok()

    result = app.advance(run_id, "deploy")
    assert result.exit_code == 1, result.describe()
    payload = result.payload
    assert (payload["outcome"], payload["state"]) == ("failed", "development"), payload
    assert app.verdicts(payload) == [
        *((g, "fail" if g == failing else "pass") for g in gates),
        ("rollback_prod", "pass"),
    ], payload
    assert payload["reason"].startswith(f"{failing}: "), payload["reason"]
    assert "; rollback_prod: prod restored" in payload["reason"], payload["reason"]
    fresh, promote = payload["checks"][:2]
    image_b = fresh["details"]["image_id"]
    assert image_b != a.prod.image_id
    assert promote["details"]["image_id"] == image_b, "B really reached prod before it failed"
    assert promote["details"]["prod_before"] == {
        "container_id": a.prod.container_id,
        "image_id": a.prod.image_id,
    }
    rollback = payload["checks"][-1]
    assert rollback["details"]["restored_release"] == release_a["release_id"]
    assert rollback["details"]["found_revision"] == a.sha

    restored = app.running("prod")
    assert restored is not None and restored.status == "running"
    assert restored.image_id == a.prod.image_id, "prod runs release A's image again"
    assert restored.revision == a.sha
    assert restored.container_id not in (a.prod.container_id, promote["details"]["container_id"])
    assert app.tagged("prod") == a.prod.image_id, f"{app.name}:prod points back at A"
    assert app.tags_of(image_b) <= {f"{app.name}:{sha_b}", f"{app.name}:staging"}, "no prod tag names B"
    served = app.get("prod", "/version")
    assert (served.status, served.body.strip()) == (200, a.sha)

    prod_releases = [r for r in app.show(run_id)["releases"] if r["environment"] == "prod"]
    assert [(r["kind"], r["image_id"], r["revision"]) for r in prod_releases] == [
        ("rollback", a.prod.image_id, a.sha)
    ], "B is never recorded as a prod release; the rollback is"
    assert prod_releases[0]["reason"].startswith(f"{failing}: "), prod_releases[0]


def test_failed_first_promotion_stops_prod(busybox_app: BusyboxApp) -> None:
    """Hazard: with no earlier release to restore, the failed image keeps serving prod (or stays tagged
    as the rollback anchor). Prod must be stopped, no prod tag left on that image, and the reason must
    say so."""
    app = busybox_app
    assert app.running("prod") is None
    sha = app.commit("first release breaks in prod", prod="wrong_version")
    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()

    result = app.advance(run_id, "deploy")
    assert result.exit_code == 1, result.describe()
    assert app.verdicts(result.payload) == [
        ("check_staging_image_fresh", "pass"),
        ("promote_prod", "pass"),
        ("verify_prod", "fail"),
        ("rollback_prod", "pass"),
    ], result.payload
    assert app.wrong_revision in result.payload["checks"][2]["reason"], "verify_prod names what prod served"
    assert "rollback_prod: no previous prod release to restore: prod stopped" in result.payload["reason"]
    assert result.payload["state"] == "development"
    assert app.running("prod") is None, f"no {app.name}-prod container is left"
    failed_image = result.payload["checks"][0]["details"]["image_id"]
    # Only the build tag and staging's (staging did run it) may name the failed image; a prod tag left
    # on it (``<app>:prod``, or ``<app>:latest`` that compose services and operators start) would bring
    # the broken release back with the next plain ``docker run``/``compose up``.
    tags = app.tags_of(failed_image)
    assert tags <= {f"{app.name}:{sha}", f"{app.name}:staging"}, (
        f"a prod tag still names the failed image: {tags}"
    )
    assert [r for r in app.show(run_id)["releases"] if r["environment"] == "prod"] == []


# the engine itself ------------------------------------------------------------------------------------


def test_unreachable_engine_decides_nothing(busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hazard: an outage read as a verdict (a run bounced to development, a transition on record) or a
    half-done edge. Both edges must exit 4 saying what to do, and leave runs, history and prod as they
    were."""
    app = busybox_app
    a = deploy_release_a(app)
    sha_b = app.commit("release B")
    staged = app.start(sha_b)
    app.advance(staged, "deploy-staging").ok()
    staging_before = app.running("staging")
    fresh = app.start(sha_b)
    history = {run: app.show(run)["transitions"] for run in (staged, fresh)}

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    messages = [
        app.advance(fresh, "deploy-staging", as_json=False).error(4, "infrastructure_unavailable"),
        app.advance(staged, "deploy").error(4, "infrastructure_unavailable"),
    ]
    monkeypatch.delenv("DOCKER_HOST")

    for message in messages:
        assert message.startswith("Docker engine is unreachable"), message
        assert "Start it" in message and "try again" in message, "the message says what to do"
    assert app.show(fresh)["state"] == "development"
    assert app.show(staged)["state"] == "deploy-staging"
    assert {run: app.show(run)["transitions"] for run in history} == history, "no transition recorded"
    assert app.running("staging") == staging_before
    assert app.running("prod") == a.prod
