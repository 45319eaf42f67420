"""`orchestrator status` on the real engine: what runs per environment, compared with the last recorded
release, for a compose app (with a registry) and a directly run app; drift is reported with what differs
when a container is removed or replaced by hand, or a tag is moved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import docker
    from conftest import BusyboxApp, ComposeApp, LocalRegistry

    from orchestrator.docker_engine import ImageInfo

pytestmark = pytest.mark.docker

HAND_REVISION = "e" * 40  # the label of the image someone runs by hand


def status(app: BusyboxApp, *args: str) -> dict[str, dict[str, Any]]:
    """``status --json`` per environment, asserting the exit code (0 all ok, 5 anything drifted or
    unhealthy) and that the top-level flags agree with the environments."""
    result = app.cli("status", *args, as_json=True)
    payload = result.payload
    assert isinstance(payload, dict) and "environments" in payload, result.describe()
    environments = payload["environments"]
    assert payload["drift"] == any(e["drift"] for e in environments), payload
    assert payload["ok"] == all(e["ok"] for e in environments), payload
    assert all(e["ok"] == (e["cause"] is None) for e in environments), payload
    assert result.exit_code == (0 if payload["ok"] else 5), result.describe()
    found = {e["environment"]: e for e in environments if e["app"] == app.name}
    assert set(found) == {"staging", "prod"}, payload
    return found


def expect_in_sync(env: dict[str, Any], container_id: str, image_id: str, sha: str) -> None:
    assert (env["ok"], env["cause"], env["drift"], env["differences"]) == (True, None, False, []), env
    assert (env["container_id"], env["container_status"]) == (container_id, "running"), env
    assert (env["image_id"], env["revision"], env["healthy"]) == (image_id, sha, True), env
    assert env["release"]["image_id"] == image_id, env


def test_compose_status_reports_drift_when_prod_is_replaced_or_removed_by_hand(
    compose_app: ComposeApp,
    registry: LocalRegistry,
    busybox_image: Callable[..., ImageInfo],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    """Hazard: the record says release N while something else serves, and nobody can tell. Right after a
    deploy status shows no drift (container, image id, registry digest, label, health); after someone
    runs ``docker compose up -d`` with their own override, it names the foreign image and label; after
    the container is removed by hand, it says the container is gone. Staging stays in sync throughout."""
    app = compose_app
    app.write_compose(registry=registry)
    app.configure()
    sha = app.app.commit("release")
    app.app.deploy(sha)
    prod, staging = app.running("prod"), app.running("staging")
    assert prod is not None and staging is not None

    now = status(app.app, app.name)
    expect_in_sync(now["prod"], prod.container_id, prod.image_id, sha)
    expect_in_sync(now["staging"], staging.container_id, staging.image_id, sha)
    assert now["prod"]["container"] == f"{app.project}-{app.prod_service}-1"
    assert now["prod"]["release"]["digest"] in now["prod"]["digests"], "the pinned digest is what runs"

    # (b) someone replaces prod by hand through compose, with their own override.
    hand = busybox_image(HAND_REVISION)
    hand_override = tmp_path / "by-hand.yml"
    hand_override.write_text(f'services:\n  "{app.prod_service}":\n    image: "{hand.id}"\n')
    app.compose("up", "-d", app.prod_service, overrides=[hand_override])
    replaced = app.running("prod")
    assert replaced is not None and replaced.image_id == hand.id

    now = status(app.app, app.name)
    drifted = now["prod"]
    assert drifted["drift"] is True and drifted["container_id"] == replaced.container_id, drifted
    assert drifted["cause"] == "another_image", "the image, not its failing health, is the cause"
    assert drifted["image_id"] == hand.id and drifted["revision"] == HAND_REVISION
    assert drifted["healthy"] is False, "the hand-run image does not serve /health"
    image_diff = [d for d in drifted["differences"] if "runs image" in d]
    assert len(image_diff) == 1 and hand.id[:19] in image_diff[0] and prod.image_id[:19] in image_diff[0]
    assert any(d.startswith("revision label:") and HAND_REVISION in d for d in drifted["differences"])
    expect_in_sync(now["staging"], staging.container_id, staging.image_id, sha)

    # (a) someone removes prod by hand.
    docker_client.containers.get(replaced.container_id).remove(force=True)

    now = status(app.app, app.name)
    gone = now["prod"]
    assert (gone["drift"], gone["container_id"], gone["cause"]) == (True, None, "container_gone"), gone
    assert len(gone["differences"]) == 1 and "the container is gone" in gone["differences"][0], gone
    expect_in_sync(now["staging"], staging.container_id, staging.image_id, sha)


def test_direct_status_reports_a_removed_container_one_run_by_hand_and_a_moved_tag(
    busybox_app: BusyboxApp,
    busybox_image: Callable[..., ImageInfo],
    docker_client: docker.DockerClient,
    docker_cleanup: Callable[..., None],
) -> None:
    """Hazard: the same, for an app the orchestrator runs itself (``<app>-prod``). After a deploy: no
    drift. ``docker rm -f <app>-prod``: gone (also in the human output). ``docker run`` of another image
    under the same name with host networking on the prod port: the image and label differ. ``docker
    tag`` of another image as ``<app>:prod``: the moved tag is named."""
    app = busybox_app
    sha = app.commit("release")
    app.deploy(sha)
    prod = app.running("prod")
    assert prod is not None

    expect_in_sync(status(app)["prod"], prod.container_id, prod.image_id, sha)

    docker_client.containers.get(f"{app.name}-prod").remove(force=True)
    gone = status(app)["prod"]
    assert (gone["drift"], gone["container"], gone["cause"]) == (True, None, "container_gone"), gone
    assert "the container is gone" in gone["differences"][0], gone
    human = app.cli("status", app.name)
    assert human.exit_code == 5, human.describe()
    assert "problem: container gone" in human.stdout, human.stdout
    assert "drift: the container is gone" in human.stdout, human.stdout

    hand = busybox_image(HAND_REVISION)
    docker_cleanup(container=f"{app.name}-prod")  # before the image it runs, pass or fail
    docker_client.containers.run(
        hand.id,
        name=f"{app.name}-prod",
        network_mode="host",
        environment={"PORT": str(app.prod_port)},
        detach=True,
    )
    by_hand = status(app)["prod"]
    assert by_hand["drift"] is True and by_hand["image_id"] == hand.id, by_hand
    assert by_hand["cause"] == "another_image", by_hand
    assert any("runs image" in d and hand.id[:19] in d for d in by_hand["differences"]), by_hand
    assert any(d.startswith("revision label:") for d in by_hand["differences"]), by_hand
    assert not any(d.startswith("tag ") for d in by_hand["differences"]), "the tag was not moved yet"

    docker_client.images.get(hand.id).tag(app.name, "prod")
    moved = status(app)["prod"]
    assert any(d.startswith(f"tag {app.name}:prod points at {hand.id[:19]}") for d in moved["differences"])
    assert status(app)["staging"]["drift"] is False


def test_status_exit_code_and_cause_for_an_unhealthy_and_a_stopped_prod(
    busybox_app: BusyboxApp, docker_client: docker.DockerClient
) -> None:
    """Hazard: CI runs ``orchestrator status`` as its check and it exits 0 while prod answers 404 on
    /health (the right image, so no drift) or is stopped. In sync: exit 0 and both outputs name the
    config and database used. Health file removed inside the running container: exit 5, cause
    ``unhealthy``, no drift. Container stopped: exit 5, cause ``not_running``."""
    app = busybox_app
    sha = app.commit("release")
    app.deploy(sha)
    prod = app.running("prod")
    assert prod is not None

    result = app.cli("status", app.name, as_json=True)
    assert result.exit_code == 0, result.describe()
    payload = result.payload
    assert payload["ok"] is True and payload["config"] == str(app.workspace.config_path.resolve()), payload
    assert (payload["config_source"], payload["database_source"]) == (
        "found in the current directory",
        "ORCH_DATABASE_URL",
    ), payload
    assert payload["database"].split("://", 1)[0] == app.workspace.db_url.split("://", 1)[0], payload
    human = app.cli("status", app.name)
    assert human.exit_code == 0, human.describe()
    assert f"config:   {app.workspace.config_path.resolve()} (found in the current directory)" in human.stdout
    assert "database: " in human.stdout and "(ORCH_DATABASE_URL)" in human.stdout, human.stdout

    docker_client.containers.get(prod.container_id).exec_run(["/bin/busybox", "rm", "-f", "/www/health"])
    sick = status(app)["prod"]
    assert (sick["ok"], sick["cause"], sick["drift"], sick["healthy"]) == (False, "unhealthy", False, False)
    assert sick["problem"].startswith("unhealthy: HTTP 404"), sick
    human = app.cli("status", app.name)
    assert human.exit_code == 5 and "problem: unhealthy: HTTP 404" in human.stdout, human.describe()
    assert status(app)["staging"]["ok"] is True

    docker_client.containers.get(prod.container_id).stop(timeout=1)
    stopped = status(app)["prod"]
    assert (stopped["ok"], stopped["cause"], stopped["drift"]) == (False, "not_running", True), stopped
    assert stopped["container_status"] == "exited", stopped
