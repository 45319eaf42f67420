"""`orchestrator rollback` on the real engine: back to the previous release and to a named one by digest
(compose with a registry, and a directly run app whose image was pruned locally), verified like a
promotion and recorded with its reason; refused with nothing changed when there is nothing to roll back
to or the image is gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import docker
    from conftest import BusyboxApp, ComposeApp, Deployed, LocalRegistry

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker


def prod_release_of(app: BusyboxApp, run_id: int) -> dict[str, Any]:
    (release,) = [r for r in app.show(run_id)["releases"] if r["environment"] == "prod"]
    return release


def rollback(app: BusyboxApp, *args: str) -> Any:
    return app.cli("rollback", app.name, "--env", "prod", *args, as_json=True)


def release_count(store: Store, app: str) -> dict[str, int]:
    return {env: len(store.releases(app, env, limit=10_000)) for env in ("staging", "prod")}


def test_rollback_to_the_previous_and_to_a_named_release_by_digest(
    compose_app: ComposeApp, registry: LocalRegistry
) -> None:
    """Hazard: a rollback that redeploys by tag (whatever the tag names today), touches staging, or leaves
    no trace. After releases A, B, C: ``rollback`` returns prod to B and ``rollback --to <A's release>``
    to A, each by its registry digest: prod is recreated on the target's image id and label, the
    override pins the target's digest for prod only, the registry's ``latest`` follows, and each
    rollback is a recorded release with its reason and its own anchor."""
    app = compose_app
    app.write_compose(registry=registry)
    app.configure()
    repo = registry.repository(app.name)
    shas = [app.app.commit(f"release {n}") for n in "ABC"]
    releases = [prod_release_of(app.app, app.app.deploy(sha)) for sha in shas]
    rel_a, rel_b, rel_c = releases
    assert all(r["digest"] == f"{repo}@{registry.digest(app.name, r['revision'])}" for r in releases)
    staging = app.running("staging")
    assert staging is not None and staging.revision == shas[2]
    staging_pin = app.override_pins()[app.staging_service]
    c_container = app.running("prod")
    assert c_container is not None and c_container.image_id == rel_c["image_id"]

    def expect_rolled_back(payload: dict[str, Any], target: dict[str, Any], reason: str) -> Deployed:
        assert payload["outcome"] == "rolled_back", payload
        assert payload["to_release"]["release_id"] == target["release_id"], payload
        recorded = payload["release"]
        assert (recorded["environment"], recorded["kind"], recorded["reason"]) == ("prod", "rollback", reason)
        assert (recorded["image_id"], recorded["revision"], recorded["digest"]) == (
            target["image_id"],
            target["revision"],
            target["digest"],
        )
        now = app.running("prod")
        assert now is not None and now.status == "running"
        assert (now.image_id, now.revision) == (target["image_id"], target["revision"])
        served = app.app.get("prod", "/version")
        assert (served.status, served.body.strip()) == (200, target["revision"])
        pins = app.override_pins()
        assert pins == {app.prod_service: target["digest"], app.staging_service: staging_pin}, pins
        assert registry.digest(app.name, "latest") == target["digest"].split("@", 1)[1]
        anchor = app.anchors("prod")[-1]
        assert anchor.name == f"prod-release-{recorded['release_id']:06d}.yml"
        assert anchor.read_text() == app.override_file.read_text()
        assert app.running("staging") == staging, "a prod rollback never touches staging"
        return now

    previous = rollback(app.app, "--reason", "C breaks checkout").ok()
    on_b = expect_rolled_back(previous, rel_b, "C breaks checkout")
    assert previous["from_release"]["release_id"] == rel_c["release_id"]
    assert on_b.container_id != c_container.container_id

    named = rollback(app.app, "--to", str(rel_a["release_id"]), "--actor", "ops-oncall").ok()
    on_a = expect_rolled_back(named, rel_a, f"rollback to release {rel_a['release_id']} by ops-oncall")
    assert on_a.container_id != on_b.container_id
    assert app.git_status() == ""


def test_rollback_with_nothing_to_roll_back_to_changes_nothing(compose_app: ComposeApp, store: Store) -> None:
    """Hazard: a rollback that "succeeds" by redeploying what already runs, or half-starts something
    before finding out there is nothing to go back to. With a single release in each environment (the
    prod edge promoted staging's checked image without a rebuild), rolling back prod or staging is a
    conflict (exit 3) that changes nothing; an unknown ``--to`` is bad input (exit 2)."""
    app = compose_app
    app.write_compose(registry=None)
    app.configure()
    app.app.deploy(app.app.commit("the only release"))
    before = {env: app.running(env) for env in ("staging", "prod")}
    override = app.override_file.read_bytes()
    counts = release_count(store, app.name)
    assert counts == {"staging": 1, "prod": 1}

    prod = rollback(app.app).error(3, "conflict")
    assert "nothing to roll back to" in prod, prod
    staging = app.app.cli("rollback", app.name, "--env", "staging", as_json=True).error(3, "conflict")
    assert "nothing to roll back to" in staging, staging
    unknown = rollback(app.app, "--to", "999999").error(2, "bad_input")
    assert "999999" in unknown, unknown

    assert {env: app.running(env) for env in ("staging", "prod")} == before
    assert app.override_file.read_bytes() == override
    assert release_count(store, app.name) == counts, "no release recorded"


def test_rollback_to_a_pruned_image_without_a_registry_is_refused(
    compose_app: ComposeApp, store: Store, docker_client: docker.DockerClient
) -> None:
    """Hazard: a rollback target that only exists in the database. Without a registry a release's image
    id is its only pin: once ``docker rmi`` pruned it, rolling back must fail as a conflict (exit 3)
    saying the image is gone, with prod, the override and the release history untouched."""
    app = compose_app
    app.write_compose(registry=None)
    app.configure()
    sha_a = app.app.commit("release A")
    rel_a = prod_release_of(app.app, app.app.deploy(sha_a))
    app.app.deploy(app.app.commit("release B"))
    before = app.running("prod")
    assert before is not None and before.image_id != rel_a["image_id"]
    override = app.override_file.read_bytes()
    counts = release_count(store, app.name)
    docker_client.images.remove(rel_a["image_id"], force=True)  # docker rmi -f
    assert app.app.engine.image(rel_a["image_id"]) is None

    message = rollback(app.app).error(3, "conflict")

    assert f"release {rel_a['release_id']}" in message and "is gone (pruned" in message, message
    assert "nothing changed" in message, message
    assert app.running("prod") == before
    assert app.override_file.read_bytes() == override
    assert release_count(store, app.name) == counts


def deploy_two_and_prune_the_first(
    app: BusyboxApp, registry: LocalRegistry, client: docker.DockerClient
) -> tuple[dict[str, Any], str]:
    """Releases A and B through ORCH_REGISTRY, then A's image pruned locally; (A's prod release, its
    registry digest)."""
    repo = registry.repository(app.name)
    sha_a = app.commit("release A")
    rel_a = prod_release_of(app, app.deploy(sha_a))
    sha_b = app.commit("release B")
    rel_b = prod_release_of(app, app.deploy(sha_b))
    digest_a = registry.digest(app.name, sha_a)
    assert digest_a is not None
    assert rel_a["digest"] == f"{repo}@{digest_a}", "a directly run app records its registry digest too"
    assert rel_b["digest"] == f"{repo}@{registry.digest(app.name, sha_b)}"
    on_b = app.running("prod")
    assert on_b is not None and on_b.image_id == rel_b["image_id"]
    client.images.remove(rel_a["image_id"], force=True)  # docker rmi -f
    assert app.engine.image(rel_a["image_id"]) is None
    return rel_a, digest_a


def test_rollback_pulls_a_pruned_image_back_by_digest(
    registry_app: BusyboxApp, registry: LocalRegistry, docker_client: docker.DockerClient
) -> None:
    """Hazard: a host that pruned old images cannot roll back, or rolls back to whatever a tag names now.
    With ORCH_REGISTRY set and the previous release's image pruned locally, rollback pulls exactly the
    recorded digest back (the same image id), runs it, verifies it and records it; the registry's
    ``latest`` follows."""
    app = registry_app
    rel_a, digest_a = deploy_two_and_prune_the_first(app, registry, docker_client)

    done = rollback(app).ok()

    assert app.engine.image(rel_a["image_id"]) is not None, "the digest pulled back the very image id"
    now = app.running("prod")
    assert now is not None and now.status == "running"
    assert (now.image_id, now.revision) == (rel_a["image_id"], rel_a["revision"])
    served = app.get("prod", "/version")
    assert (served.status, served.body.strip()) == (200, rel_a["revision"])
    recorded = done["release"]
    assert (recorded["kind"], recorded["image_id"], recorded["digest"]) == (
        "rollback",
        rel_a["image_id"],
        rel_a["digest"],
    )
    assert recorded["reason"].startswith(f"rollback to release {rel_a['release_id']} by "), recorded
    assert registry.digest(app.name, "latest") == digest_a


def test_rollback_refuses_a_pruned_image_the_registry_no_longer_serves(
    registry_app: BusyboxApp, registry: LocalRegistry, store: Store, docker_client: docker.DockerClient
) -> None:
    """Hazard: a rollback target that exists only in the database. With the image pruned locally and its
    manifest deleted from the registry, rollback must be a conflict (exit 3) saying the image is gone
    and not pullable, with prod and the release history untouched."""
    app = registry_app
    rel_a, digest_a = deploy_two_and_prune_the_first(app, registry, docker_client)
    registry.delete(app.name, digest_a)
    before = app.running("prod")
    counts = release_count(store, app.name)

    refused = rollback(app).error(3, "conflict")

    assert f"release {rel_a['release_id']}" in refused, refused
    assert "is gone (pruned, and the registry does not serve it)" in refused, refused
    assert app.running("prod") == before
    assert release_count(store, app.name) == counts
