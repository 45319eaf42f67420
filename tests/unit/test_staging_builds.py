"""When a run's staging build is sent early (orchestrator/service/builds.py): only where the staging edge
is about to build it. Each case here is a build the engine would make for nothing, or one that would wait
for a person or a lock while holding the engine; sending itself is tested on the real engine
(tests/integration/test_build_ahead.py, test_build_parked.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.config import load_config
from orchestrator.service.builds import StagingBuilds, recorded_images
from orchestrator.steps.ahead import BuildAhead
from orchestrator.store.records import MANUAL_LOCK

if TYPE_CHECKING:
    from conftest import Workspace

    from orchestrator.store.repository import Store


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each BuildAhead.start call, instead of a build: what was decided, not what the engine did."""
    calls: list[dict[str, Any]] = []

    def start(app: Any, settings: Any, sha: str, recorded: Any, *_: Any, park: Path | None = None) -> Any:
        calls.append({"app": app.name, "sha": sha, "recorded": list(recorded), "park": park})
        return object()

    monkeypatch.setattr(BuildAhead, "start", start)
    return calls


def builds(workspace: Workspace, store: Store, extra: str = "") -> tuple[StagingBuilds, Any]:
    if extra:
        text = workspace.config_path.read_text(encoding="utf-8")
        workspace.write_config(text.rstrip("\n") + f"\n{extra}\n")
    config = load_config(str(workspace.config_path))
    return StagingBuilds(config, store), config.app(workspace.app)


def test_sent_and_parked_with_the_apps_recorded_images_newest_first(
    workspace: Workspace, store: Store, started: list[dict[str, Any]]
) -> None:
    sha = workspace.repo.sha
    for env, image in (("staging", "sha256:aa"), ("prod", "sha256:bb"), ("staging", "sha256:cc")):
        store.record_release(
            app="demo", environment=env, image_id=image, revision=sha, run_id=None, transition_id=None
        )
    store.record_release(
        app="other",
        environment="staging",
        image_id="sha256:dd",
        revision=sha,
        run_id=None,
        transition_id=None,
    )
    sender, app = builds(workspace, store)
    assert recorded_images(store, app) == ["sha256:cc", "sha256:bb", "sha256:aa"]
    assert sender.send(app, sha) is not None
    assert sender.park(app, sha) is not None
    assert [(c["sha"], c["recorded"], c["park"] is not None) for c in started] == [
        (sha, ["sha256:cc", "sha256:bb", "sha256:aa"], False),
        (sha, ["sha256:cc", "sha256:bb", "sha256:aa"], True),
    ]


def test_not_sent_when_the_staging_edge_waits_for_an_approval(
    workspace: Workspace, store: Store, started: list[dict[str, Any]]
) -> None:
    sender, app = builds(workspace, store, 'require_approval = ["staging"]')
    assert sender.send(app, workspace.repo.sha) is None
    assert sender.park(app, workspace.repo.sha) is None
    assert started == []


def test_sent_when_only_prod_waits_for_an_approval(
    workspace: Workspace, store: Store, started: list[dict[str, Any]]
) -> None:
    sender, app = builds(workspace, store, 'require_approval = ["prod"]')
    assert sender.send(app, workspace.repo.sha) is not None
    assert len(started) == 1


def test_not_sent_while_staging_is_held(
    workspace: Workspace, store: Store, started: list[dict[str, Any]]
) -> None:
    store.acquire_locks("demo", ["prod"], holder="alice", kind=MANUAL_LOCK, reason="maintenance")
    sender, app = builds(workspace, store)
    assert sender.send(app, workspace.repo.sha) is not None  # prod held: the staging edge builds
    store.acquire_locks("demo", ["staging"], holder="alice", kind=MANUAL_LOCK, reason="maintenance")
    assert sender.send(app, workspace.repo.sha) is None
    assert sender.park(app, workspace.repo.sha) is None
    assert len(started) == 1


def test_not_parked_when_build_at_run_start_is_off(
    workspace: Workspace, store: Store, started: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_BUILD_AT_RUN_START", "false")
    sender, app = builds(workspace, store)
    assert sender.park(app, workspace.repo.sha) is None
    assert started == []
    assert sender.send(app, workspace.repo.sha) is not None  # `deploy` sends its own build still


@pytest.mark.parametrize(
    "extra,sha,reads",
    [
        ("", None, True),
        ("", "not-a-sha", False),
        ("ORCH_BUILD_AT_RUN_START=false", None, False),
        ('require_approval = ["staging"]', None, False),
    ],
    ids=["sent", "no sha", "build_at_run_start off", "staging waits for approval"],
)
def test_the_source_is_read_early_only_for_a_build_likely_sent(
    workspace: Workspace, extra: str, sha: str | None, reads: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run start` starts ``git archive`` before its database is open (source_read_early): only where
    StagingBuilds would then send the build, and never with anything but a full sha."""
    from orchestrator import build_context, gitrepo
    from orchestrator.service.builds import source_read_early

    begun: list[tuple[Path, str]] = []
    monkeypatch.setattr(gitrepo, "start_archive", lambda repo, sha: begun.append((repo, sha)))
    monkeypatch.setattr(build_context, "local_socket", lambda environ: "/var/run/docker.sock")
    if extra.startswith("ORCH_"):
        monkeypatch.setenv(*extra.split("=", 1))
    elif extra:
        text = workspace.config_path.read_text(encoding="utf-8")
        workspace.write_config(text.rstrip("\n") + f"\n{extra}\n")
    config = load_config(str(workspace.config_path))
    with source_read_early(config, workspace.app, sha or workspace.repo.sha, at_run_start=True):
        pass
    app = config.app(workspace.app)
    assert begun == ([(app.source, workspace.repo.sha)] if reads else [])
