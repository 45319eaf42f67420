"""Every compose app runs in a compose project of its own (issue 10, "Nothing lost").

Hazard: without ``-p`` compose names the project after the compose file's folder, so two apps whose
compose files sit in folders of the same name (``deploy/``) share one project; when their services have
the same names (``web-staging``, ``web-prod``: the usual ones), deploying one app recreates the other
app's containers as its own. The other app is gone from staging and prod, and nothing failed.

Real engine, Compose v2. The last test goes through the CLI; the others drive ``Compose`` directly,
including how deployments made before projects were named (under the folder's name) are carried over.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import pytest

from orchestrator.compose import Compose, ComposeError, project_name

if TYPE_CHECKING:
    from conftest import BusyboxApp

    from orchestrator.docker_engine import DockerEngine, ImageInfo

pytestmark = pytest.mark.docker

COMPOSE = ("docker", "compose")
BUSYBOX = Path("/usr/bin/busybox")
APP_LABEL = "orchestrator.tests.app"  # tests/integration/conftest.py: on every layer of an app's images


def compose_cli(*args: str, cwd: Path) -> str:
    """``docker compose ARGS`` as an operator would type it; asserts success."""
    proc = subprocess.run(
        [*COMPOSE, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )
    assert proc.returncode == 0, f"docker compose {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def containers(client: docker.DockerClient, compose_file: Path) -> dict[str, Any]:
    """``{service: container}`` of everything created from ``compose_file``, whatever its project (by
    compose's own labels, not by asking the code under test)."""
    found: dict[str, Any] = {}
    for c in client.containers.list(all=True, filters={"label": "com.docker.compose.service"}):
        files = c.labels.get("com.docker.compose.project.config_files", "").split(",")
        if str(compose_file) in files:
            service = c.labels["com.docker.compose.service"]
            assert service not in found, f"two containers for {service} of {compose_file}"
            found[service] = c
    return found


@pytest.fixture
def compose_projects(
    docker_cleanup: Callable[..., None],  # set up first so it is torn down last: images outlive containers
) -> Iterator[Callable[[str | None, Path], None]]:
    """``track(project, compose_file)``: ``docker compose [-p project] -f file down -t 0`` at teardown."""
    tracked: list[tuple[str | None, Path]] = []

    def track(project: str | None, compose_file: Path) -> None:
        tracked.append((project, compose_file))

    yield track
    errors: list[str] = []
    for project, compose_file in reversed(tracked):
        argv = [*COMPOSE, *(["-p", project] if project else []), "-f", str(compose_file), "down", "-t", "0"]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=compose_file.parent, timeout=300)
        if proc.returncode != 0:
            errors.append(f"{' '.join(argv)}: {proc.stderr.strip()[-300:]}")
    if errors:
        pytest.fail("cleanup failed: " + "; ".join(errors))


def own_image(busybox_image: Callable[..., ImageInfo]) -> ImageInfo:
    """A busybox image of this test alone: the plain one has the same id for every test that builds it,
    so removing it at teardown could pull it from under another test's containers."""
    unique = uuid.uuid4().hex[:8]
    return busybox_image(tag=f"orch-test-iso-{unique}:test", labels={"orchestrator.tests.iso": unique})


def sleeper_compose(path: Path, image: str, *services: str) -> Path:
    """A compose file at ``path`` whose services only sleep (no network: nothing can clash). Each app's
    services carry its own path in their environment, as two apps' services would differ somehow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(
        f"  {s}:\n    image: {json.dumps(image)}\n    network_mode: none\n    stop_grace_period: 1s\n"
        f"    environment:\n      APP: {json.dumps(str(path))}\n"
        for s in services
    )
    path.write_text("services:\n" + body, encoding="utf-8")
    return path


def test_same_named_folders_share_a_project_without_p_and_not_with_it(
    tmp_path: Path,
    busybox_image: Callable[..., ImageInfo],
    compose_projects: Callable[[str | None, Path], None],
    docker_client: docker.DockerClient,
) -> None:
    """The hazard first, as compose has it: two compose files in folders of the same name, one service
    name, no ``-p``: the second ``up`` takes over the first one's container. Then with each app's own
    project (what the orchestrator passes): both keep their containers."""
    folder = f"deploy-{uuid.uuid4().hex[:8]}"  # the same for both apps; unique to this test run
    image = own_image(busybox_image)
    file_a = sleeper_compose(tmp_path / "alpha" / folder / "docker-compose.yml", image.id, "web")
    file_b = sleeper_compose(tmp_path / "beta" / folder / "docker-compose.yml", image.id, "web")
    for f in (file_a, file_b):
        compose_projects(None, f)

    # (1) no project named: one shared project, one container.
    Compose(file_a, file_a.parent / ".deploy" / "o.yml").up("web", pinned=False)
    first = containers(docker_client, file_a)["web"]
    Compose(file_b, file_b.parent / ".deploy" / "o.yml").up("web", pinned=False)
    assert containers(docker_client, file_a) == {}, "the hazard: alpha's container now belongs to beta"
    assert containers(docker_client, file_b)["web"].name == first.name
    compose_cli("-f", str(file_b), "down", "-t", "0", cwd=file_b.parent)

    # (2) a project per app.
    project_a, project_b = (f"orch-test-{n}-{uuid.uuid4().hex[:8]}" for n in ("alpha", "beta"))
    compose_projects(project_a, file_a)
    compose_projects(project_b, file_b)
    alpha = Compose(file_a, file_a.parent / ".deploy" / "o.yml", project=project_a)
    beta = Compose(file_b, file_b.parent / ".deploy" / "o.yml", project=project_b)
    alpha.up("web", pinned=False)
    a_id = alpha.container_id("web", pinned=False)
    beta.up("web", pinned=False)
    b_id = beta.container_id("web", pinned=False)
    assert a_id and b_id and a_id != b_id
    assert (
        Compose(file_a, file_a.parent / ".deploy" / "o.yml", project=project_a).container_id(
            "web", pinned=False
        )
        == a_id
    ), "alpha keeps its own container"
    a, b = containers(docker_client, file_a)["web"], containers(docker_client, file_b)["web"]
    assert (a.id.startswith(a_id), a.status) == (True, "running")
    assert (a.labels["com.docker.compose.project"], b.labels["com.docker.compose.project"]) == (
        project_a,
        project_b,
    )


def test_a_deployment_under_the_folder_project_is_adopted_not_orphaned(
    tmp_path: Path,
    busybox_image: Callable[..., ImageInfo],
    compose_projects: Callable[[str | None, Path], None],
    docker_client: docker.DockerClient,
) -> None:
    """Existing deployments ran under compose's default project (the folder's name). Switching to the
    app's project silently would start a second container beside the old one (and give its databases
    empty volumes): while only this compose file's containers live there, that project is kept."""
    folder = f"shop-{uuid.uuid4().hex[:8]}"
    image = own_image(busybox_image)
    compose_file = sleeper_compose(tmp_path / folder / "docker-compose.yml", image.id, "web", "db")
    compose_projects(None, compose_file)
    compose_cli("-f", str(compose_file), "up", "-d", "web", "db", cwd=compose_file.parent)  # "before"
    before = containers(docker_client, compose_file)

    wanted = f"orch-test-app-{uuid.uuid4().hex[:8]}"
    compose_projects(wanted, compose_file)
    compose = Compose(compose_file, compose_file.parent / ".deploy" / "o.yml", project=wanted)
    found = compose.container_id("web", pinned=False)
    assert found and before["web"].id.startswith(found)
    assert compose.project_in_use() == folder
    compose.up("web", pinned=False)
    after = containers(docker_client, compose_file)
    assert set(after) == {"web", "db"}, "no second set beside the old one"
    assert {s: c.labels["com.docker.compose.project"] for s, c in after.items()} == {
        "web": folder,
        "db": folder,
    }
    assert after["db"].id == before["db"].id


def test_a_folder_project_shared_with_another_app_is_refused(
    tmp_path: Path,
    busybox_image: Callable[..., ImageInfo],
    compose_projects: Callable[[str | None, Path], None],
    docker_client: docker.DockerClient,
) -> None:
    """Two apps already deployed into one shared folder project (different service names, so both
    survived): neither keeping it nor starting a second set elsewhere is safe, so the next deploy stops
    with what to do, and nothing is touched."""
    folder = f"deploy-{uuid.uuid4().hex[:8]}"
    image = own_image(busybox_image)
    file_a = sleeper_compose(tmp_path / "alpha" / folder / "docker-compose.yml", image.id, "alpha-web")
    file_b = sleeper_compose(tmp_path / "beta" / folder / "docker-compose.yml", image.id, "beta-web")
    for f in (file_a, file_b):
        compose_projects(None, f)
        compose_cli("-f", str(f), "up", "-d", cwd=f.parent)
    before = {**containers(docker_client, file_a), **containers(docker_client, file_b)}

    compose = Compose(
        file_a, file_a.parent / ".deploy" / "o.yml", project=f"orch-test-{uuid.uuid4().hex[:8]}"
    )
    with pytest.raises(ComposeError) as caught:
        compose.up("alpha-web", pinned=False)
    message = caught.value.message
    assert f"compose project {folder!r}" in message and str(file_b.parent) in message
    assert f"docker compose -p {folder} -f {file_a} rm -s -f" in message
    after = {**containers(docker_client, file_a), **containers(docker_client, file_b)}
    assert {s: c.id for s, c in after.items()} == {s: c.id for s, c in before.items()}


# --------------------------------------------------------------------------------------------------
# through the CLI


def compose_text(app: BusyboxApp) -> str:
    """The app's two environments as compose services, named like every other app's."""

    def web(service: str, env: str, tag: str, port: int) -> str:
        return (
            f"  {service}:\n"
            f"    image: {json.dumps(f'{app.name}:{tag}')}\n"
            "    network_mode: host\n"
            f'    environment:\n      PORT: "{port}"\n      ORCH_ENVIRONMENT: {env}\n'
            "    stop_grace_period: 1s\n"
        )

    return (
        "services:\n"
        + web("web-staging", "staging", "staging", app.staging_port)
        + web("web-prod", "prod", "latest", app.prod_port)
    )


def app_table(app: BusyboxApp) -> str:
    return (
        f"[apps.{app.name}]\n"
        f"source = {json.dumps(Path(app.repo.path).as_posix())}\n"
        'health_path = "/health"\nversion_path = "/version"\n'
        f"staging_port = {app.staging_port}\nprod_port = {app.prod_port}\n"
        f"compose_file = {json.dumps((Path(app.repo.path) / 'deploy' / 'docker-compose.yml').as_posix())}\n"
        'staging_service = "web-staging"\nprod_service = "web-prod"\n'
    )


@pytest.fixture
def second_app(
    busybox_app: BusyboxApp,
    git_repo: Callable[..., Any],
    free_port: Callable[[], int],
    docker_client: docker.DockerClient,
    engine: DockerEngine,
) -> Iterator[BusyboxApp]:
    """Another busybox app in the same workspace as ``busybox_app`` (its own repository, ports and
    name); its containers and images are removed afterwards, pass or fail."""
    name = f"orch-test-app-{uuid.uuid4().hex[:8]}"
    repo = git_repo(name, files={"README.md": f"{name}\n"})
    shutil.copyfile(BUSYBOX, repo.path / "busybox")
    (repo.path / "busybox").chmod(0o755)
    taken = {busybox_app.staging_port, busybox_app.prod_port}

    def port() -> int:
        while (p := free_port()) in taken:
            pass
        taken.add(p)
        return p

    app = type(busybox_app)(name, repo, port(), port(), busybox_app.workspace, busybox_app.cli, engine, port)
    yield app
    errors: list[str] = []
    compose_file = Path(repo.path) / "deploy" / "docker-compose.yml"
    for project in (project_name(name), project_name(name) + "-staging", None):
        argv = [*COMPOSE, *(["-p", project] if project else []), "-f", str(compose_file), "down", "-t", "0"]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=compose_file.parent, timeout=300)
        if proc.returncode != 0:
            errors.append(f"{' '.join(argv)}: {proc.stderr.strip()[-300:]}")
    # Children before parents: a layer still shared with a child goes on a later pass.
    for _ in range(5):
        images = {i.id for i in docker_client.images.list(name=name)} | {
            i.id for i in docker_client.images.list(all=True, filters={"label": f"{APP_LABEL}={name}"})
        }
        for image in images:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                docker_client.images.remove(image, force=True)
    leftover = docker_client.images.list(all=True, filters={"label": f"{APP_LABEL}={name}"})
    errors += [f"image {i.id} ({', '.join(i.tags) or 'untagged'})" for i in leftover]
    if errors:
        pytest.fail("cleanup failed: " + "; ".join(errors))


def test_two_apps_with_compose_files_in_folders_named_deploy_keep_their_own_containers(
    busybox_app: BusyboxApp, second_app: BusyboxApp, docker_client: docker.DockerClient
) -> None:
    """The attack through the CLI: apps alpha and beta, each with ``deploy/docker-compose.yml`` naming
    ``web-staging`` and ``web-prod``, deployed one after the other through both edges. Before each app
    had its own project, beta's deploy recreated alpha's containers as beta's: alpha vanished from
    staging and prod while every gate passed. Now both keep theirs, prod in the project named after
    the app and staging in its own ``<project>-staging``."""
    alpha, beta = busybox_app, second_app
    for app in (alpha, beta):
        app.repo.commit("compose file", {"deploy/docker-compose.yml": compose_text(app)})
    alpha.workspace.write_config(
        f"[orchestrator]\nhealth_timeout_s = {alpha.health_timeout_s}\n\n"
        + app_table(alpha)
        + "\n"
        + app_table(beta)
    )
    files = {app.name: Path(app.repo.path) / "deploy" / "docker-compose.yml" for app in (alpha, beta)}
    shas = {}
    for app in (alpha, beta):
        shas[app.name] = app.commit("release")
        app.deploy(shas[app.name])
        if app is alpha:
            alpha_before = {s: c.id for s, c in containers(docker_client, files[alpha.name]).items()}
            assert set(alpha_before) == {"web-staging", "web-prod"}

    for app in (alpha, beta):
        found = containers(docker_client, files[app.name])
        assert set(found) == {"web-staging", "web-prod"}, f"{app.name} lost containers: {found}"
        for service, container in found.items():
            assert container.status == "running", (app.name, service, container.status)
            own = project_name(app.name) + ("-staging" if service == "web-staging" else "")
            assert container.labels["com.docker.compose.project"] == own
            image = app.engine.image(container.image.id)
            assert image is not None
            assert image.label("org.opencontainers.image.revision") == shas[app.name]
        for env in ("staging", "prod"):
            assert app.get(env, "/version").body.strip() == shas[app.name]
    assert {s: c.id for s, c in containers(docker_client, files[alpha.name]).items()} == alpha_before
