"""Poisoned build cache (issue 10): an image that no commit contains must never reach prod.

The legacy builder takes, for each Dockerfile step, the newest local image whose parent is the current
step's image and whose container config matches the step: anyone who can reach the engine can make such
an image with ``docker commit``, and the next build of the app then ships the attacker's layer, with every
gate green (the label, the image id guard and the staging check all describe the poisoned build itself).
"""

from __future__ import annotations

import io
import tarfile
from typing import TYPE_CHECKING, Any

import docker
import pytest

from orchestrator.builders import find_buildkit_cli

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker

REVISION_LABEL = "org.opencontainers.image.revision"
APP_LABEL = "orchestrator.tests.app"
# The step the attacker poisons: before ARG GIT_SHA, so the legacy builder's cache key for it does not
# change from one commit to the next (the build args in scope are part of a RUN step's key).
RUN_STEP = ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /www && echo compiled > /www/artifact"]
BACKDOOR = "backdoor.txt"

SERVE = """\
bb=/bin/busybox
echo "$APP_REVISION" > /www/version
exec $bb httpd -f -p "127.0.0.1:$PORT" -h /www
"""


def _prefix(app: str) -> str:
    """The Dockerfile lines before the poisoned step (the attacker builds exactly these when the app's
    own builds leave no intermediate images behind, as BuildKit's do)."""
    return f"FROM scratch\nCOPY busybox /bin/busybox\nLABEL orchestrator.tests=1 {APP_LABEL}={app}\n"


def _commit(app: BusyboxApp, marker: str) -> str:
    run = ", ".join(f'"{part}"' for part in RUN_STEP)
    dockerfile = (
        _prefix(app.name) + f"RUN [{run}]\n"
        "COPY rootfs /\n"
        "ARG GIT_SHA\nENV APP_REVISION=$GIT_SHA\n"
        f"LABEL {REVISION_LABEL}=$GIT_SHA\n"
        'CMD ["/bin/busybox", "sh", "/serve.sh"]\n'
    )
    return app.repo.commit(
        marker,
        {
            "Dockerfile": dockerfile,
            "rootfs/serve.sh": SERVE,
            "rootfs/www/health": "ok\n",
            "rootfs/www/index.html": f"{marker}\n",
        },
    )


def _ancestors(api: docker.APIClient, image_id: str) -> list[dict[str, Any]]:
    chain = []
    while image_id:
        attrs = api.inspect_image(image_id)
        chain.append(attrs)
        image_id = attrs.get("Parent") or ""
    return chain


def _layer_before_run_step(app: BusyboxApp, client: docker.DockerClient, staged_image: str) -> str:
    """The intermediate image the poisoned step builds on: from the staged image's parent chain (the
    legacy builder keeps it), else built by the attacker with the legacy builder from the same lines."""
    for attrs in _ancestors(client.api, staged_image):
        if (attrs.get("ContainerConfig") or {}).get("Cmd") == RUN_STEP:
            return str(attrs["Parent"])
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        tar.add(str(app.repo.path / "busybox"), arcname="busybox")
        dockerfile = _prefix(app.name).encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    image, _ = client.images.build(fileobj=context, custom_context=True, rm=True, forcerm=True)
    return str(image.id)


def _poison(client: docker.DockerClient, layer: str, cleanup: Any) -> str:
    """``docker run`` the step's own command on ``layer``, add a file, ``docker commit``: the container's
    config is the step's, so the legacy builder takes the result as that step's cache."""
    container = client.containers.create(layer, command=RUN_STEP, detach=True)
    cleanup(container=container.id)
    container.start()
    assert container.wait(timeout=60)["StatusCode"] == 0
    payload = b"not in any commit\n"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(BACKDOOR)
        info.size = len(payload)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(payload))
    assert container.put_archive("/www", archive.getvalue())
    poisoned = container.commit()
    cleanup(image=poisoned.id, best_effort=True)
    return str(poisoned.id)


@pytest.fixture(params=["legacy", "buildkit"])
def builder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each builder in turn (ORCH_BUILDER); BuildKit is skipped, with the reason, where no docker CLI
    here can drive it."""
    if request.param == "buildkit" and find_buildkit_cli() is None:
        pytest.skip("no docker CLI here has buildx or an embedded BuildKit (docker.io 20.10)")
    monkeypatch.setenv("ORCH_BUILDER", request.param)
    return str(request.param)


def test_a_poisoned_build_cache_never_reaches_prod(
    busybox_app: BusyboxApp,
    docker_client: docker.DockerClient,
    docker_cleanup: Any,
    builder: str,
) -> None:
    """Deploy to staging; poison the cache of the app's RUN step with ``docker commit``; advance a new
    commit through both edges: the builds must come from the committed tree, so prod serves no
    backdoor (and neither did staging). BuildKit keeps its cache in its own store, so the attack must
    miss there too (the attacker's layer is made the same way; BuildKit just never looks at it)."""
    app = busybox_app
    app.configure()
    first = app.start(_commit(app, "release one"))
    app.advance(first, "deploy-staging").ok()
    staged = app.running("staging")
    assert staged is not None
    layer = _layer_before_run_step(app, docker_client, staged.image_id)
    _poison(docker_client, layer, docker_cleanup)

    sha = _commit(app, "release two")
    second = app.start(sha)
    app.advance(second, "deploy-staging").ok()
    # Staging gone: the prod edge cannot promote from the record and rebuilds, the cache poisoned too.
    app.engine.remove_container(f"{app.name}-staging")
    app.advance(second, "deploy").ok()
    assert app.get("prod", "/index.html").body == "release two\n"
    assert app.get("prod", "/artifact").body == "compiled\n"
    served = app.get("prod", f"/{BACKDOOR}")
    assert served.status == 404, f"prod serves a file in no commit: {served}"
    shown = app.show(second)
    builds = [s["changes"] for t in shown["transitions"] for s in t["steps"] if s["name"] == "build"]
    assert [b["builder"] for b in builds] == [builder, builder]
    releases = shown["releases"]
    assert {r["environment"] for r in releases} == {"staging", "prod"}
    for release in releases:
        assert release["revision"] == sha
        assert docker_client.images.get(release["image_id"]).labels[REVISION_LABEL] == sha


def test_the_freshness_rebuild_reuses_only_the_runs_own_layers(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The legacy builder's cache is constrained, not switched off: the prod edge's rebuild of the commit
    staging already built reuses those recorded layers step for step, so it yields the very image staging
    ran. The first build of an app (nothing recorded yet) is made without the cache."""
    monkeypatch.setenv("ORCH_BUILDER", "legacy")
    app = busybox_app
    app.configure()
    sha = _commit(app, "release one")
    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()
    # Staging stopped: the prod edge rebuilds from the commit instead of promoting from the record.
    assert app.engine.stop_container(f"{app.name}-staging")
    app.advance(run_id, "deploy").ok()
    shown = app.show(run_id)
    staged, rebuilt, promoted = (r["image_id"] for r in shown["releases"])
    assert staged == rebuilt == promoted
    builds = [s["changes"] for t in shown["transitions"] for s in t["steps"] if s["name"] == "build"]
    assert [b["cache_from"] for b in builds] == [0, 1]
