"""Git failures are told apart from Docker's: a repository git cannot read is infrastructure (exit 4,
GitError), and a commit that lacks the build's context or Dockerfile is a verdict on that commit (the
build gate fails, exit 1), never a ``DockerError`` the engine did not raise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestrator import gitrepo
from orchestrator.config import AppConfig
from orchestrator.errors import GateFailed, GitError, InfraUnavailable
from orchestrator.steps.build import resolve_dockerfile

if TYPE_CHECKING:
    from conftest import GitRepo

MakeRepo = Callable[..., "GitRepo"]


def test_a_missing_repository_is_a_git_error_with_exit_4(tmp_path: Path) -> None:
    with pytest.raises(GitError) as excinfo:
        gitrepo.commit_exists(tmp_path / "gone", "a" * 40)
    assert isinstance(excinfo.value, InfraUnavailable) and excinfo.value.exit_code == 4
    assert excinfo.value.kind == "infrastructure_unavailable"


def test_a_directory_that_is_not_a_repository_is_a_git_error(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="is not a readable git repository"):
        gitrepo.commit_exists(tmp_path, "a" * 40)


def test_a_dockerfile_missing_from_the_commit_fails_the_gate(git_repo: MakeRepo) -> None:
    repo = git_repo(files={"README": "no Dockerfile here\n"})
    app = AppConfig(name="demo", source=repo.path)
    with pytest.raises(GateFailed, match=f"Dockerfile is not in commit {repo.sha[:12]}"):
        resolve_dockerfile(app, repo.sha)


def test_a_context_missing_from_the_commit_fails_the_gate(git_repo: MakeRepo) -> None:
    repo = git_repo(files={"Dockerfile": "FROM scratch\n"})
    app = AppConfig(name="demo", source=repo.path, context="web")
    with pytest.raises(GateFailed, match="build context web/ is not in commit"):
        resolve_dockerfile(app, repo.sha)
