"""examples/compose-stack, deployed as a user would: a web service and the database it talks to
(issue 11, "Guides and examples").

The example's own files (Dockerfile, compose file, the db image's Dockerfile) are copied into a fresh
git repository and committed; the db image is built from examples/compose-stack/db; then one release
goes through both edges and a second one follows. What is checked is what a user of the example would
see: each environment answers /version with its commit, talks to *its own* database (staging's visits
never show up in prod's counter), and prod's data survives the next release.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestrator.compose import project_name

if TYPE_CHECKING:
    from conftest import BusyboxApp

    from orchestrator.docker_engine import DockerEngine

pytestmark = pytest.mark.docker

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compose-stack"
BUSYBOX = Path("/usr/bin/busybox")
COMPOSE = ("docker", "compose")


@pytest.fixture
def stack(
    busybox_app: BusyboxApp,
    engine: DockerEngine,
    docker_cleanup: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[BusyboxApp]:
    """busybox_app's repository and ports, holding the example instead of the test app."""
    app = busybox_app
    repo = Path(app.repo.path)
    for item in ("Dockerfile", "docker-compose.yml", "www"):
        source = EXAMPLE / item
        if source.is_dir():
            shutil.copytree(source, repo / item, dirs_exist_ok=True)
        else:
            shutil.copy2(source, repo / item)
    db_context = repo.parent / f"{app.name}-db"
    shutil.copytree(EXAMPLE / "db", db_context)
    shutil.copy2(BUSYBOX, db_context / "busybox")
    db_image = f"{app.name}-db:1"
    docker_cleanup(image=db_image)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        tar.add(db_context, arcname=".")
    context.seek(0)
    engine.build(context, tag=db_image)
    # The compose file reads these from the environment it runs in (ports per test, the db image).
    monkeypatch.setenv("WEB_STAGING_PORT", str(app.staging_port))
    monkeypatch.setenv("WEB_PROD_PORT", str(app.prod_port))
    monkeypatch.setenv("DB_IMAGE", db_image)
    app.workspace.write_config(
        f"[orchestrator]\nhealth_timeout_s = {app.health_timeout_s}\n\n"
        f"[apps.{app.name}]\n"
        f"source = {json.dumps(repo.as_posix())}\n"
        'health_path = "/health"\nversion_path = "/version"\n'
        f"staging_port = {app.staging_port}\nprod_port = {app.prod_port}\n"
        'compose_file = "' + (repo / "docker-compose.yml").as_posix() + '"\n'
        'staging_service = "web-staging"\nprod_service = "web-prod"\n'
    )
    try:
        yield app
    finally:
        for project in (project_name(app.name), project_name(app.name) + "-staging"):
            subprocess.run(
                [*COMPOSE, "-p", project, "-f", str(repo / "docker-compose.yml"), "down", "-t", "0", "-v"],
                capture_output=True,
                cwd=repo,
                timeout=300,
                check=False,
            )


def visits(app: BusyboxApp, env: str) -> str:
    probe = app.get(env, "/cgi-bin/visits")
    assert probe.status == 200, (env, probe)
    return probe.body.strip()


def test_the_compose_stack_example_deploys_with_a_database_per_environment(stack: BusyboxApp) -> None:
    app = stack
    sha_a = app.repo.commit("example release A", {"www/index.html": "A\n"})
    app.deploy(sha_a)
    for env in ("staging", "prod"):
        assert app.get(env, "/version").body.strip() == sha_a, env
    assert [visits(app, "prod") for _ in range(3)] == ["1", "2", "3"]
    assert visits(app, "staging") == "1", "staging counts in its own database, not prod's"

    sha_b = app.repo.commit("example release B", {"www/index.html": "B\n"})
    app.deploy(sha_b)
    assert app.get("prod", "/version").body.strip() == sha_b
    assert app.get("prod", "/").body.strip() == "B"
    assert visits(app, "prod") == "4", "prod's data survived the release"
    assert visits(app, "staging") == "2"
