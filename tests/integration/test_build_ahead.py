"""The staging build sent ahead (steps/build.py BuildAhead, docker_wire.py), on the real engine.

A deploy sends its legacy build before it imports the docker SDK and records the run, so the engine
builds meanwhile (issue 12). It must change nothing but the time: the build step takes exactly that
build, tags it and records it as its own; and a run that stops before its build step leaves nothing of
it behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.builders import find_buildkit_cli

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker

REVISION_LABEL = "org.opencontainers.image.revision"

# ORCH_BUILDER, and the builder a build step then records: the legacy builder's request goes over the
# engine's socket, BuildKit's is the docker CLI started early.
BUILDERS = [
    pytest.param("legacy", "legacy", id="legacy"),
    pytest.param(
        "buildkit",
        "buildkit",
        id="buildkit",
        marks=pytest.mark.skipif(
            find_buildkit_cli() is None, reason="no docker CLI here builds with BuildKit"
        ),
    ),
]


def _build_steps(app: BusyboxApp, run_id: int) -> list[dict[str, Any]]:
    shown = app.show(run_id)
    return [s["changes"] for t in shown["transitions"] for s in t["steps"] if s["name"] == "build"]


@pytest.mark.parametrize(("setting", "builder"), BUILDERS)
def test_the_build_sent_ahead_is_the_image_staging_and_prod_run(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch, docker_client: Any, setting: str, builder: str
) -> None:
    monkeypatch.setenv("ORCH_BUILDER", setting)
    app = busybox_app
    app.configure()
    for message in ("first", "second"):  # the second build has a recorded image for its cache
        sha = app.commit(message)
        payload = app.cli("deploy", "--app", app.name, "--sha", sha, "--actor", "ci", as_json=True).ok()
        (build,) = _build_steps(app, payload["run_id"])
        assert build["builder"] == builder
        assert build["sent_ahead_s"] >= 0, "the build step took the build sent ahead"
        image = docker_client.images.get(f"{app.name}:{sha}")
        assert image.id == build["image_id"] and image.labels[REVISION_LABEL] == sha
        for env in ("staging", "prod"):
            running = app.running(env)
            assert running is not None and running.image_id == build["image_id"], env
    if builder == "legacy":
        assert build["cache_from"] == 1


def test_the_three_call_path_sends_the_staging_build_ahead_too(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_BUILDER", "legacy")
    app = busybox_app
    app.configure()
    run_id = app.start(app.commit("three calls"))
    app.advance(run_id, "deploy-staging").ok()
    (build,) = _build_steps(app, run_id)
    assert "sent_ahead_s" in build


@pytest.mark.parametrize(("setting", "builder"), BUILDERS)
def test_no_build_is_started_ahead_of_a_staging_someone_holds(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch, docker_client: Any, setting: str, builder: str
) -> None:
    """Staging is held by hand: the edge would wait and then be refused, so no build is started ahead
    of it (one would run for nobody and leave its image behind): no image of the commit exists, tagged
    or not."""
    monkeypatch.setenv("ORCH_BUILDER", setting)
    app = busybox_app
    app.configure()
    app.cli("lock", app.name, "--env", "staging", "--reason", "maintenance", as_json=True).ok()
    sha = app.commit("refused")
    result = app.cli("deploy", "--app", app.name, "--sha", sha, "--wait", "4", as_json=True)
    assert result.exit_code == 3, result.describe()
    left = docker_client.images.list(filters={"label": f"{REVISION_LABEL}={sha}"})
    assert left == [], f"the build sent ahead left {[i.id for i in left]}"


def test_a_build_that_cannot_be_sent_ahead_is_built_by_the_step_as_before(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docker client config holds registry credentials: the SDK sends them with a build, one sent
    ahead would lack them, so nothing is sent ahead and the step builds through the SDK."""
    monkeypatch.setenv("ORCH_BUILDER", "legacy")
    monkeypatch.setenv("DOCKER_CONFIG", str(app_config_with_credentials(busybox_app)))
    app = busybox_app
    app.configure()
    payload = app.cli(
        "deploy", "--app", app.name, "--sha", app.commit("plain"), "--actor", "ci", as_json=True
    ).ok()
    (build,) = _build_steps(app, payload["run_id"])
    assert "sent_ahead_s" not in build


def app_config_with_credentials(app: BusyboxApp) -> Any:
    """A docker client config with registry credentials: the SDK would send them with the build, so
    the build is not sent ahead without them."""
    folder = app.workspace.path / "docker-config"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"auths": {"registry.invalid": {"auth": "dXNlcjpwYXNz"}}}')
    return folder
