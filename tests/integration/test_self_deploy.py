"""The orchestrator deploys itself through its own gates: its Dockerfile stamps the revision, its image
serves /health and /version, and both edges pass on the real engine.

Slow (a Python base image via debootstrap, about a minute the first time, cached by name), so one test.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import pytest

from orchestrator.verify import REVISION_LABEL

if TYPE_CHECKING:
    from conftest import Cli, Workspace

ROOT = Path(__file__).resolve().parents[2]
# Keyed on the dependencies: the base carries a wheelhouse of them, and a base made before a dependency
# was added would fail the image's offline pip install.
_DEPS = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes())
BASE_IMAGE = f"orchestrator-python-base:bookworm-{_DEPS.hexdigest()[:12]}"

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def python_base() -> str:
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "make_python_base.sh"), BASE_IMAGE],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"could not make {BASE_IMAGE}:\n{proc.stdout}\n{proc.stderr}"
    return BASE_IMAGE


@pytest.fixture
def self_app() -> Iterator[str]:
    app = f"orch-self-{uuid.uuid4().hex[:8]}"
    yield app
    client = docker.from_env()
    for env in ("staging", "prod"):
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(f"{app}-{env}").remove(force=True)
    for image in client.images.list(name=app):
        for tag in image.tags:
            client.images.remove(tag, force=True)
    client.close()


def test_orchestrator_deploys_itself(
    python_base: str, self_app: str, workspace: Workspace, cli: Cli, free_port: Callable[[], int]
) -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"{ROOT} is not a git checkout: {head.stderr}")
        pytest.skip("not running from a git checkout of orchestrator")
    sha = head.stdout.strip()
    staging, prod = free_port(), free_port()
    workspace.write_config(
        f'[apps.{self_app}]\nsource = "{ROOT.as_posix()}"\n'
        'health_path = "/health"\nversion_path = "/version"\n'
        f"staging_port = {staging}\nprod_port = {prod}\n"
        f'build_args = {{ BASE_IMAGE = "{python_base}" }}\n'
        "[orchestrator]\nhealth_timeout_s = 60\n"
    )
    run_id = cli("run", "start", "--app", self_app, "--sha", sha, as_json=True).ok()["run_id"]

    to_staging = cli("advance", run_id, "--to", "deploy-staging", as_json=True).ok()
    assert [c["status"] for c in to_staging["checks"]] == ["pass"] * 5, to_staging
    to_prod = cli("advance", run_id, "--to", "deploy", as_json=True).ok()
    assert to_prod["state"] == "deploy"
    assert [c["name"] for c in to_prod["checks"]] == [
        "check_staging_image_fresh",
        "promote_prod",
        "verify_prod",
    ]

    client = docker.from_env()
    try:
        container = client.containers.get(f"{self_app}-prod")
        image = client.images.get(container.image.id)
        assert image.labels[REVISION_LABEL] == sha
        assert to_prod["checks"][2]["details"]["served_revision"] == sha
        assert to_prod["checks"][0]["details"]["image_id"] == container.image.id  # built once, promoted as is
    finally:
        client.close()
