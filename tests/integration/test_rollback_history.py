"""`orchestrator rollback` over a longer history, and of a release that is recorded but not running.

On the real engine with a directly run busybox app: four releases A..D, then plain rollbacks walk back
C, B, A and stop (exit 3), never flip-flopping between the last two; a release promoted afterwards rolls
back to what ran before it. ``rollback --to`` the recorded release when prod's container is gone or was
replaced by hand repairs prod instead of answering "already runs".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    import docker
    from conftest import BusyboxApp

    from orchestrator.docker_engine import ImageInfo
    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker

HAND_REVISION = "e" * 40


def prod_release_of(app: BusyboxApp, run_id: int) -> dict[str, Any]:
    (release,) = [r for r in app.show(run_id)["releases"] if r["environment"] == "prod"]
    return release


def rollback(app: BusyboxApp, *args: str) -> Any:
    return app.cli("rollback", app.name, "--env", "prod", *args, as_json=True)


def expect_prod_runs(app: BusyboxApp, release: dict[str, Any]) -> None:
    """What the engine and the app say, not what the orchestrator recorded."""
    now = app.running("prod")
    assert now is not None and now.status == "running", now
    assert (now.image_id, now.revision) == (release["image_id"], release["revision"])
    served = app.get("prod", "/version")
    assert (served.status, served.body.strip()) == (200, release["revision"])


def test_plain_rollbacks_walk_back_through_four_releases_and_stop(
    busybox_app: BusyboxApp, store: Store
) -> None:
    """Hazard (issue 11): the second plain rollback returned to the release the first one had left, so
    two bad releases in a row could not be escaped by rolling back twice."""
    app = busybox_app
    rel = {n: prod_release_of(app, app.deploy(app.commit(f"release {n}"))) for n in "ABCD"}
    assert len({r["image_id"] for r in rel.values()}) == 4
    expect_prod_runs(app, rel["D"])

    walked = []
    for expected in "CBA":
        done = rollback(app).ok()
        walked.append(done["to_release"]["release_id"])
        assert done["to_release"]["release_id"] == rel[expected]["release_id"], done
        assert done["release"]["kind"] == "rollback"
        expect_prod_runs(app, rel[expected])
    assert walked == [rel[n]["release_id"] for n in "CBA"]

    before = len(store.releases(app.name, "prod", limit=10_000))
    refused = rollback(app).error(3, "conflict")
    assert "no earlier release" in refused and "nothing to roll back to" in refused, refused
    assert len(store.releases(app.name, "prod", limit=10_000)) == before, "nothing recorded"
    expect_prod_runs(app, rel["A"])

    # A release promoted after the rollbacks rolls back to what ran before it (A), not to D, C or B.
    rel["E"] = prod_release_of(app, app.deploy(app.commit("release E")))
    expect_prod_runs(app, rel["E"])
    back = rollback(app).ok()
    assert back["to_release"]["image_id"] == rel["A"]["image_id"], back
    expect_prod_runs(app, rel["A"])


@pytest.mark.parametrize("drift", ["container gone", "another image by hand"])
def test_rollback_to_the_recorded_release_repairs_drift(
    busybox_app: BusyboxApp,
    store: Store,
    busybox_image: Callable[..., ImageInfo],
    docker_client: docker.DockerClient,
    docker_cleanup: Callable[..., None],
    drift: str,
) -> None:
    """Hazard (issue 11): prod's recorded release is not what runs (its container was removed, or someone
    ran another image under its name), and ``rollback --to <that release>`` answered "already runs",
    leaving the operator no command to put it back. It redeploys the release, verifies it and records
    the repair."""
    app = busybox_app
    app.deploy(app.commit("release A"))
    rel_b = prod_release_of(app, app.deploy(app.commit("release B")))
    container = f"{app.name}-prod"
    docker_client.containers.get(container).remove(force=True)
    if drift == "another image by hand":
        hand = busybox_image(HAND_REVISION)
        docker_cleanup(container=container)
        docker_client.containers.run(
            hand.id,
            name=container,
            network_mode="host",
            environment={"PORT": str(app.prod_port)},
            detach=True,
        )
    status = app.cli("status", app.name, as_json=True)
    assert status.payload["drift"] is True, status.describe()

    done = rollback(app, "--to", str(rel_b["release_id"]), "--reason", "prod drifted").ok()

    assert done["to_release"]["release_id"] == rel_b["release_id"], done
    assert (done["release"]["kind"], done["release"]["reason"]) == ("rollback", "prod drifted")
    assert done["release"]["image_id"] == rel_b["image_id"]
    expect_prod_runs(app, rel_b)
    after = app.cli("status", app.name, as_json=True)
    assert after.exit_code == 0 and after.payload["drift"] is False, after.describe()

    # In sync now: the same request is the no-op it says it is.
    again = rollback(app, "--to", str(rel_b["release_id"])).error(3, "conflict")
    assert "already runs" in again, again
