"""Staging of a compose app does not share prod's data by accident (issue 11, "Compose apps, made
explicit").

Hazard: staging and prod are two services of one compose file. In one compose project they share the
project's network and named volumes, and ``docker compose up -d web-staging`` starts the services it
depends on *in that project*: staging's release talks to prod's database. A staging release that
migrates or wipes its database then does it to prod's. So staging runs in a project of its own
(``<project>-staging``) by default; ``staging_project = "prod"`` shares on purpose.

Real engine, Compose v2: the database is a service with a named volume; which container and volume each
environment got is read from the engine by compose's labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import docker
import pytest

if TYPE_CHECKING:
    from conftest import ComposeApp

    from orchestrator.docker_engine import ImageInfo

pytestmark = pytest.mark.docker


def db_of(client: docker.DockerClient, app: ComposeApp, project: str) -> Any | None:
    found = client.containers.list(
        all=True,
        filters={
            "label": [f"com.docker.compose.project={project}", f"com.docker.compose.service={app.db_service}"]
        },
    )
    assert len(found) <= 1, [c.name for c in found]
    return found[0] if found else None


def volume_of(container: Any) -> str:
    (mount,) = [m for m in container.attrs["Mounts"] if m["Destination"] == "/data"]
    return str(mount["Name"])


def exec_ok(container: Any, *cmd: str) -> tuple[int, str]:
    code, out = container.exec_run(list(cmd))
    return code, out.decode(errors="replace").strip()


def test_staging_gets_its_own_database_by_default(
    compose_app: ComposeApp, docker_client: docker.DockerClient, busybox_image: Callable[..., ImageInfo]
) -> None:
    app = compose_app
    db_image = f"{app.name}-db:test"
    busybox_image(tag=db_image)
    app.write_compose(registry=None, db_image=db_image)
    app.configure()
    sha = app.app.commit("release")
    app.app.deploy(sha)

    staging, prod = app.running("staging"), app.running("prod")
    assert staging is not None and staging.revision == sha and staging.status == "running"
    assert prod is not None and prod.revision == sha and prod.status == "running"
    assert app.container(app.staging_service) is None, "staging is not in prod's project"
    prod_db, staging_db = (
        db_of(docker_client, app, app.project),
        db_of(docker_client, app, app.staging_project),
    )
    assert prod_db is not None and staging_db is not None, "each environment started its own database"
    assert prod_db.id != staging_db.id
    assert volume_of(prod_db) == f"{app.project}_data"
    assert volume_of(staging_db) == f"{app.staging_project}_data"

    assert exec_ok(prod_db, "/bin/busybox", "sh", "-c", "echo prod-row > /data/rows")[0] == 0
    assert exec_ok(staging_db, "/bin/busybox", "sh", "-c", "echo staging-row > /data/rows")[0] == 0
    assert exec_ok(prod_db, "/bin/busybox", "cat", "/data/rows") == (0, "prod-row"), (
        "staging never wrote prod's data"
    )
    assert app.app.get("prod", "/version").body.strip() == sha


def test_staging_project_prod_shares_prods_database_on_purpose(
    compose_app: ComposeApp, docker_client: docker.DockerClient, busybox_image: Callable[..., ImageInfo]
) -> None:
    app = compose_app
    db_image = f"{app.name}-db:test"
    busybox_image(tag=db_image)
    app.write_compose(registry=None, db_image=db_image)
    app.configure(staging_project="prod")
    sha = app.app.commit("release")
    app.app.deploy(sha)

    shared = app.container(app.staging_service)
    assert shared is not None and shared.revision == sha, "staging runs in prod's project"
    assert db_of(docker_client, app, app.staging_project) is None
    assert db_of(docker_client, app, app.project) is not None


def test_staging_deployed_in_prods_project_moves_to_its_own_and_prod_is_untouched(
    compose_app: ComposeApp, docker_client: docker.DockerClient, busybox_image: Callable[..., ImageInfo]
) -> None:
    """An app deployed before staging had its own project (or with staging_project = "prod") switches
    to the default: the next staging deploy removes staging's old container from prod's project (it
    would hold staging's port) and starts staging in its own; prod's container and database stay, and
    the move is a recorded step."""
    app = compose_app
    db_image = f"{app.name}-db:test"
    busybox_image(tag=db_image)
    app.write_compose(registry=None, db_image=db_image)
    app.configure(staging_project="prod")
    sha_a = app.app.commit("release A")
    app.app.deploy(sha_a)
    prod_before = app.running("prod")
    prod_db = db_of(docker_client, app, app.project)
    assert prod_before is not None and prod_db is not None
    old_staging = app.container(app.staging_service)
    assert old_staging is not None

    app.configure()
    sha_b = app.app.commit("release B")
    run_b = app.app.start(sha_b)
    app.app.advance(run_b, "deploy-staging").ok()

    assert app.container(app.staging_service) is None, "the old staging container left prod's project"
    staging = app.running("staging")
    assert staging is not None and staging.revision == sha_b and staging.status == "running"
    assert app.running("prod") == prod_before, "prod was not touched"
    assert db_of(docker_client, app, app.project).id == prod_db.id
    steps = [s["name"] for t in app.app.show(run_b)["transitions"] for s in t.get("steps", [])]
    assert "staging_move" in steps, steps
    assert app.app.get("staging", "/version").body.strip() == sha_b
