"""examples/buildkit-app deployed end to end: a multi-stage BuildKit Dockerfile whose build context is a
subdirectory of the repository, through both edges on the real engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestrator.builders import find_buildkit_cli

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "buildkit-app"


def test_the_buildkit_example_deploys_through_both_edges(busybox_app: BusyboxApp) -> None:
    if find_buildkit_cli() is None:
        pytest.skip("the example needs BuildKit: no docker CLI here has buildx or an embedded BuildKit")
    app = busybox_app
    shutil.copytree(EXAMPLE / "app", app.repo.path / "app")
    shutil.copy(app.repo.path / "busybox", app.repo.path / "app" / "busybox")
    files = {
        str(p.relative_to(app.repo.path)): p.read_text()
        for p in (app.repo.path / "app").rglob("*")
        if p.is_file() and p.name != "busybox"
    }
    sha = app.repo.commit("the BuildKit example", files)
    example = (EXAMPLE / "orchestrator.toml").read_text()
    assert 'context = "app"' in example and 'target = "runtime"' in example
    app.workspace.write_config(
        f"[apps.{app.name}]\nsource = {json.dumps(app.repo.path.as_posix())}\n"
        'context = "app"\ndockerfile = "Dockerfile"\ntarget = "runtime"\n'
        'health_path = "/health"\nversion_path = "/version"\n'
        f"staging_port = {app.staging_port}\nprod_port = {app.prod_port}\n"
    )
    run_id = app.deploy(sha)

    assert app.get("prod", "/version").body.strip() == sha
    assert "BuildKit example" in app.get("prod", "/index.html").body, "the runtime stage, not debug"
    assert "/src/index.html" in app.get("prod", "/checksums.txt").body, "the build stage ran"
    builds = [
        s["changes"] for t in app.show(run_id)["transitions"] for s in t["steps"] if s["name"] == "build"
    ]
    # One build: the prod edge promotes the image staging built and still runs (no rebuild).
    assert [(b["builder"], b["dockerfile"], b["context"]) for b in builds] == [
        ("buildkit", "app/Dockerfile", "app")
    ]
