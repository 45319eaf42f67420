"""Compose apps on the real engine with Compose v2 and a real registry: the plain-tag no-op hazard, how
post-deploy verification catches it, how digest pinning through the override file fixes it, rollback
anchors, and a compose file that does not have the services the config names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import ComposeApp, Deployed, LocalRegistry

    from orchestrator.docker_engine import ImageInfo

pytestmark = pytest.mark.docker


def running(app: ComposeApp, env: str) -> Deployed:
    found = app.running(env)
    assert found is not None, f"{app.name} has no {env} container"
    assert found.status == "running", found
    return found


def prod_releases(app: ComposeApp, run_id: int) -> list[tuple[str, str, str | None]]:
    """``[(kind, image_id, reason), ...]`` of the prod releases a run recorded."""
    shown = app.app.show(run_id)
    return [(r["kind"], r["image_id"], r["reason"]) for r in shown["releases"] if r["environment"] == "prod"]


def test_plain_tag_deploy_is_a_noop_that_verification_catches_and_pinning_fixes(
    compose_app: ComposeApp, registry: LocalRegistry, busybox_image: Callable[..., ImageInfo]
) -> None:
    """Hazard: a deploy host whose local ``<repo>:latest`` is stale while the registry's ``latest`` already
    names the new digest. ``docker compose up -d web-prod`` then keeps the old container, succeeds, and a
    tool that trusts its exit code reports a deploy that never happened.

    Sequence: staging pulls on every ``up`` (``pull_policy: always``) so the staging edges go through;
    prod pulls only what is missing, like most hosts. (1) plain-tag mode (``pin_digests = false``):
    release A through both edges; prod pulls ``:latest`` (missing locally) and runs A. (2) release B in
    plain-tag mode: the registry's ``latest`` moves to B but the host's ``:latest`` is still A, so
    ``up -d`` is a no-op: the prod container is the very same one (asserted: this is the hazard), the
    post-deploy check fails the edge (exit 1) and prod is restored to A on record. (3) the same app in
    pinned mode (the default) deploys B again in a new run: the override pins ``repo@sha256:...``, prod is
    recreated and verified, and only the app's two services are pinned: ``cache`` and the primary
    compose file are untouched."""
    app = compose_app
    cache = f"{app.name}-cache:test"
    busybox_image(tag=cache)
    compose_text = app.write_compose(registry=registry, cache_image=cache, staging_pull_always=True)
    app.configure(pin_digests=False)
    repo = registry.repository(app.name)

    # (1) release A, plain tags.
    sha_a = app.app.commit("release A")
    app.app.deploy(sha_a)
    a = running(app, "prod")
    assert a.revision == sha_a
    assert app.app.engine.image(f"{repo}:latest").id == a.image_id, "prod pulled :latest, which was A"
    digest_a = registry.digest(app.name, sha_a)
    assert digest_a is not None and registry.digest(app.name, "latest") == digest_a
    assert not app.override_file.exists(), "plain-tag mode writes no override"
    app.compose("up", "-d", app.cache_service)
    cache_before = app.container(app.cache_service)
    assert cache_before is not None and cache_before.status == "running"

    # (2) release B, plain tags: the registry moves, the deploy host's tag does not.
    sha_b = app.app.commit("release B")
    run_b = app.app.start(sha_b)
    staged = app.app.advance(run_b, "deploy-staging").ok()
    b_image = staged["checks"][1]["details"]["image_id"]
    assert running(app, "staging").image_id == b_image, "staging pulled :staging and runs B"
    assert app.app.engine.image(f"{repo}:latest").id == a.image_id, "the prod host's :latest is stale"

    result = app.app.advance(run_b, "deploy")

    assert result.exit_code == 1, result.describe()
    payload = result.payload
    assert (payload["outcome"], payload["state"]) == ("failed", "development"), payload
    assert app.app.verdicts(payload) == [
        ("check_staging_image_fresh", "pass"),
        ("promote_prod", "fail"),
        ("rollback_prod", "pass"),
    ], payload
    promote = payload["checks"][1]
    assert "post-deploy verification" in promote["reason"], promote["reason"]
    assert "still runs image" in promote["reason"], promote["reason"]
    assert promote["details"]["running_image_id"] == a.image_id, promote["details"]
    assert promote["details"]["container_id"] == a.container_id, "compose kept the old container"
    after_noop = running(app, "prod")
    assert after_noop.container_id == a.container_id, "the hazard: 'docker compose up -d' recreated nothing"
    assert (after_noop.image_id, after_noop.revision) == (a.image_id, sha_a), "prod still runs A"
    assert registry.digest(app.name, "latest") == digest_a, "the restore moved the registry's latest back"
    releases = prod_releases(app, run_b)
    assert [(kind, image) for kind, image, _ in releases] == [("rollback", a.image_id)], releases
    assert "post-deploy verification" in (releases[0][2] or ""), "the rollback records why"

    # (3) the same app, pinned (the default): a new run for B.
    app.configure()
    run_pinned = app.app.deploy(sha_b)

    b = running(app, "prod")
    assert b.container_id != a.container_id, "the pinned deploy recreated prod"
    assert (b.image_id, b.revision) == (b_image, sha_b)
    served = app.app.get("prod", "/version")
    assert (served.status, served.body.strip()) == (200, sha_b)
    digest_b = registry.digest(app.name, sha_b)
    assert digest_b is not None and digest_b != digest_a
    shown = app.app.show(run_pinned)
    prod = [r for r in shown["releases"] if r["environment"] == "prod"]
    assert [(r["kind"], r["image_id"], r["digest"]) for r in prod] == [
        ("deploy", b_image, f"{repo}@{digest_b}")
    ], prod
    assert app.override_pins() == {
        app.staging_service: f"{repo}@{digest_b}",
        app.prod_service: f"{repo}@{digest_b}",
    }, "the override pins the app's two services, and only those"
    assert app.images(app.override_file)[app.cache_service] == cache, "cache keeps its own image"
    cache_after = app.container(app.cache_service)
    assert cache_after == cache_before, "the cache container was not touched"
    assert app.compose_file.read_bytes() == compose_text, "the primary compose file is never edited"
    assert app.images()[app.prod_service] == f"{repo}:latest"
    # The human-readable tags still move (people and other hosts use them); the pin did not need them.
    assert registry.digest(app.name, "latest") == digest_b
    assert app.app.tagged("latest") == b_image
    assert app.app.engine.image(f"{repo}:latest").id == a.image_id, "pinned deploys never read the tag"
    assert (app.override_file.parent / ".gitignore").is_file()
    assert app.git_status() == "", "deploying leaves the app's git tree clean"
    anchor = app.anchors("prod")[-1]
    assert anchor.name == f"prod-release-{prod[0]['release_id']:06d}.yml", app.anchors("prod")
    assert anchor.read_text() == app.override_file.read_text()


def test_without_a_registry_the_image_id_is_the_pin_and_old_anchors_are_pruned(
    compose_app: ComposeApp,
) -> None:
    """Hazard: an unbounded pile of anchors, or a pin that is not immutable. Without a registry the
    override pins the image id (``sha256:...``, immutable on this engine) and no digest is recorded;
    with ``keep_releases = 2``, three deploys leave exactly the newest two anchors per environment."""
    app = compose_app
    app.write_compose(registry=None)
    app.configure(keep_releases=2)

    runs = [app.app.deploy(app.app.commit(f"release {n}")) for n in "ABC"]

    c = running(app, "prod")
    assert app.override_pins() == {app.staging_service: c.image_id, app.prod_service: c.image_id}
    assert c.image_id.startswith("sha256:")
    released = {
        env: [r for run in runs for r in app.app.show(run)["releases"] if r["environment"] == env]
        for env in ("staging", "prod")
    }
    # One staging release per run: the prod edge found staging still on it and did not redeploy.
    assert len(released["prod"]) == 3 and len(released["staging"]) == 3, released
    assert all(r["digest"] is None for rs in released.values() for r in rs), "no registry, no digest"
    for env, releases in released.items():
        newest = sorted(r["release_id"] for r in releases)[-2:]
        assert [p.name for p in app.anchors(env)] == [f"{env}-release-{i:06d}.yml" for i in newest]
    assert app.anchors("prod")[-1].read_text() == app.override_file.read_text()


def test_compose_file_without_the_named_service_is_refused_before_anything_runs(
    compose_app: ComposeApp,
) -> None:
    """Hazard: a typo in ``prod_service`` discovered halfway through a promotion (after a build, a push or
    a staging swap). The edge must be refused as bad input (exit 2) before any side effect: no transition
    recorded, no image built, no container, no override written."""
    app = compose_app
    app.write_compose(registry=None)
    app.configure(prod_service="web-production")
    sha = app.app.commit("release")
    run_id = app.app.start(sha)

    result = app.app.advance(run_id, "deploy-staging")

    message = result.error(2, "bad_input")
    assert "'web-production'" in message and app.prod_service in message, message
    shown = app.app.show(run_id)
    assert (shown["state"], shown["transitions"], shown["releases"]) == ("development", [], [])
    assert app.app.tagged(sha) is None, "nothing was built"
    assert app.running("staging") is None and app.running("prod") is None
    assert not app.override_file.parent.exists(), "no override was written"
