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
from orchestrator.errors import BadInput, GateFailed, GitError, InfraUnavailable
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


def test_an_archive_started_early_is_the_one_taken_and_the_same_bytes(git_repo: MakeRepo) -> None:
    """`run start` and `deploy` start ``git archive`` before opening their database (issue 12); the build
    that reads the commit later takes that archive, byte for byte what it would have made itself."""
    repo = git_repo(files={"Dockerfile": "FROM scratch\n", "www/index.html": "hello\n"})
    with gitrepo.archive(repo.path, repo.sha) as made:
        expected = made.read()
    gitrepo.start_archive(repo.path, repo.sha)
    ((proc, _),) = gitrepo._started.values()
    with gitrepo.archive(repo.path, repo.sha) as taken:
        assert taken.read() == expected
    assert proc.returncode == 0, "the archive taken was the one started early"
    assert gitrepo._started == {}


def test_an_archive_started_early_that_fails_is_made_again_for_gits_own_error(git_repo: MakeRepo) -> None:
    repo = git_repo(files={"Dockerfile": "FROM scratch\n"})
    missing = "b" * 40
    gitrepo.start_archive(repo.path, missing)
    with pytest.raises(GitError, match=f"git archive {missing} failed in .*: fatal: not a tree object"):
        gitrepo.archive(repo.path, missing)
    assert gitrepo._started == {}


def test_an_archive_started_early_and_never_taken_ends_with_the_process(git_repo: MakeRepo) -> None:
    repo = git_repo(files={"Dockerfile": "FROM scratch\n"})
    gitrepo.start_archive(repo.path, repo.sha)
    ((proc, out),) = gitrepo._started.values()
    gitrepo.discard_started()  # what the command runs when it ends, and exiting (atexit)
    assert proc.returncode is not None and out.closed
    assert gitrepo._started == {}


@pytest.mark.parametrize("raw", ["--output=/tmp/x", "HEAD", "a" * 39, "a" * 41, "g" * 40, f"{'a' * 40}\n--x"])
def test_only_a_full_sha_is_ever_handed_to_git(raw: str) -> None:
    with pytest.raises(BadInput, match="is not a full commit sha"):
        gitrepo.parse_sha(raw)
    assert gitrepo.parse_sha(f" {'AB' * 20} ") == "ab" * 20
