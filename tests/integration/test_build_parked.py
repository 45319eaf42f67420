"""The staging build `run start` sends and parks for the staging advance (parking.py, steps/ahead.py),
on the real engine.

The three-call CI path (`run start`, `advance --to deploy-staging`, `advance --to deploy`) gains the
time between the first call and the staging advance's own build (issue 12). It must change nothing but
the time: the advance takes the parked build only if it is the very build it would make, records it as
its own and leaves no park behind; a park that was lost, or is not the build asked for, is built again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator import parking
from orchestrator.builders import find_buildkit_cli
from orchestrator.holder import Liveness, holder_of

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker

REVISION_LABEL = "org.opencontainers.image.revision"
HAS_BUILDKIT = find_buildkit_cli() is not None
BUILDERS = [
    pytest.param("legacy", "engine", id="legacy"),
    pytest.param(
        "buildkit",
        "cli",
        id="buildkit",
        marks=pytest.mark.skipif(not HAS_BUILDKIT, reason="no docker CLI here builds with BuildKit"),
    ),
]
# A build that surely runs for a while after `run start` returns: its park cannot have finished yet.
SLOW = 'RUN ["/bin/busybox", "sleep", "3"]\n'


def _park_of(sha: str) -> Path | None:
    """The park whose ticket names ``sha`` (each test commits its own)."""
    root = parking.root()
    if not root.is_dir():
        return None
    for entry in root.iterdir():
        if entry.is_symlink():  # a run's name for a park
            continue
        try:
            ticket = json.loads((entry / parking.TICKET).read_text())
        except (OSError, ValueError):
            continue
        if ticket.get("sha") == sha:
            return entry
    return None


def _left(park: Path) -> list[str]:
    """What is left of ``park``: its directory, and any name pointing at it."""
    names = [p.name for p in park.parent.iterdir() if p.is_symlink() and os.readlink(p) == park.name]
    return names + ([park.name] if park.exists() else [])


def _ticket(park: Path) -> dict[str, Any]:
    return json.loads((park / parking.TICKET).read_text())


def _holder_ended(ticket: dict[str, Any], within_s: float = 10.0) -> bool:
    about = ticket["holder"]
    holder = holder_of(about["host"], about["pid"], about["start"])
    assert holder is not None
    deadline = time.monotonic() + within_s
    while holder.liveness() is Liveness.ALIVE:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _build_step(app: BusyboxApp, run_id: int) -> dict[str, Any]:
    shown = app.show(run_id)
    (build,) = [s["changes"] for t in shown["transitions"] for s in t["steps"] if s["name"] == "build"]
    return build


@pytest.mark.parametrize(("setting", "kind"), BUILDERS)
def test_run_start_parks_the_staging_build_and_the_advance_takes_it(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch, docker_client: Any, setting: str, kind: str
) -> None:
    monkeypatch.setenv("ORCH_BUILDER", setting)
    app = busybox_app
    app.configure()
    sha = app.commit("parked")
    run_id = app.start(sha)
    park = _park_of(sha)
    assert park is not None, "run start parked no build"
    ticket = _ticket(park)
    assert ticket["kind"] == kind
    assert os.readlink(park.parent / parking.key(app.workspace.db_url, run_id)) == park.name

    app.advance(run_id, "deploy-staging").ok()
    build = _build_step(app, run_id)
    assert build["sent_by"] == "run start", build
    assert "ahead_lost" not in build
    image = docker_client.images.get(f"{app.name}:{sha}")
    assert image.id == build["image_id"] and image.labels[REVISION_LABEL] == sha
    running = app.running("staging")
    assert running is not None and running.image_id == build["image_id"]
    assert _left(park) == [], "the taken park was left behind"
    assert _holder_ended(ticket), "the park's process outlived the advance"


@pytest.mark.parametrize(("setting", "kind"), BUILDERS)
def test_a_park_whose_process_was_killed_is_built_again_by_the_advance(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch, docker_client: Any, setting: str, kind: str
) -> None:
    """A CI job's cleanup killed what `run start` left running: the advance builds the image itself."""
    monkeypatch.setenv("ORCH_BUILDER", setting)
    app = busybox_app
    app.configure()
    sha = app.commit("killed park", extra=SLOW)
    run_id = app.start(sha)
    park = _park_of(sha)
    assert park is not None
    ticket = _ticket(park)
    os.killpg(ticket["holder"]["pid"], signal.SIGKILL)
    assert _holder_ended(ticket)

    app.advance(run_id, "deploy-staging").ok()
    build = _build_step(app, run_id)
    # Legacy: found lost when taken (its process never said whether the SDK would send the same files);
    # BuildKit: taken, then found lost (no exit status). Either way the step built it.
    assert build.get("ahead_lost") is True or "sent_by" not in build, build
    image = docker_client.images.get(f"{app.name}:{sha}")
    assert image.id == build["image_id"] and image.labels[REVISION_LABEL] == sha
    running = app.running("staging")
    assert running is not None and running.image_id == image.id
    assert _left(park) == []


@pytest.mark.skipif(not HAS_BUILDKIT, reason="no docker CLI here builds with BuildKit")
def test_a_park_that_is_not_the_build_asked_for_is_ended_and_built_anew(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch, docker_client: Any
) -> None:
    """The builder setting changed between `run start` and the advance: the parked legacy build is not
    the BuildKit build the step now asks for, so it is cancelled and the step builds."""
    app = busybox_app
    app.configure()
    sha = app.commit("changed request", extra=SLOW)
    monkeypatch.setenv("ORCH_BUILDER", "legacy")
    run_id = app.start(sha)
    park = _park_of(sha)
    assert park is not None
    ticket = _ticket(park)
    monkeypatch.setenv("ORCH_BUILDER", "buildkit")
    app.advance(run_id, "deploy-staging").ok()
    build = _build_step(app, run_id)
    assert build["builder"] == "buildkit" and "sent_by" not in build, build
    assert _left(park) == []
    assert _holder_ended(ticket), "the park not taken was left running"
    assert docker_client.images.get(f"{app.name}:{sha}").labels[REVISION_LABEL] == sha


@pytest.mark.parametrize(("setting", "kind"), BUILDERS)
def test_a_parked_build_that_fails_fails_the_gate_as_the_advance_own_would(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch, setting: str, kind: str
) -> None:
    monkeypatch.setenv("ORCH_BUILDER", setting)
    app = busybox_app
    app.configure()
    sha = app.commit("broken build", extra='RUN ["/bin/busybox", "sh", "-c", "echo doomed; exit 7"]\n')
    run_id = app.start(sha)
    park = _park_of(sha)
    assert park is not None and _ticket(park)["kind"] == kind
    result = app.advance(run_id, "deploy-staging")
    assert result.exit_code == 1, result.describe()
    build = _build_step(app, run_id)
    assert build["sent_by"] == "run start"
    failed = [c for c in result.payload["checks"] if c["status"] == "fail"]
    assert failed and "doomed" in json.dumps(failed), result.describe()
    assert _left(park) == []


def test_run_start_parks_nothing_when_told_not_to(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORCH_BUILD_AT_RUN_START=false (the advance runs on another machine): nothing is sent by `run
    start`; the advance sends its own build ahead as before."""
    monkeypatch.setenv("ORCH_BUILDER", "legacy")
    monkeypatch.setenv("ORCH_BUILD_AT_RUN_START", "false")
    app = busybox_app
    app.configure()
    sha = app.commit("not parked")
    run_id = app.start(sha)
    assert _park_of(sha) is None
    app.advance(run_id, "deploy-staging").ok()
    assert _build_step(app, run_id)["sent_by"] == "this process"


@pytest.mark.parametrize(("setting", "kind"), BUILDERS)
def test_commits_unpacked_alike_are_each_built_from_their_own_tree(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch, setting: str, kind: str
) -> None:
    """git archive stamps every file with its commit's time, so two commits made in the same second,
    differing only in a file's content, unpack into trees of the same names, sizes and mtimes. BuildKit
    reuses a context it already transferred from the same path when those match: a park whose context
    path repeated (a relative one did) built the previous commit's files with this commit's build args.
    Each park reads its own tree from a path of its own."""
    monkeypatch.setenv("ORCH_BUILDER", setting)
    for variable in ("GIT_COMMITTER_DATE", "GIT_AUTHOR_DATE"):
        monkeypatch.setenv(variable, "2026-01-01T00:00:00+00:00")
    app = busybox_app
    app.configure()
    for marker in ("release A", "release B"):
        sha = app.commit(marker, marker=marker)
        run_id = app.start(sha)
        app.advance(run_id, "deploy-staging").ok()
        assert _build_step(app, run_id)["sent_by"] == "run start"
        served = app.get("staging", "/")
        assert marker in served.body, f"staging serves {served.body!r} for the commit of {marker!r}"
