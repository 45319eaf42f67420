"""Read-only access to an app's git repository, through the git CLI (argv lists, never a shell).

The repository is the source of truth for what a run may deploy; if it cannot be read the
orchestrator knows nothing, which is an infrastructure problem (exit 4), not a verdict on the commit.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import IO

from orchestrator.errors import InfraUnavailable


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=120)
    except FileNotFoundError:
        raise InfraUnavailable("git is not installed: install it (apt-get install -y git)") from None
    except subprocess.TimeoutExpired:
        raise InfraUnavailable(f"git {args[0]} in {repo} did not finish within 120 s") from None
    if check and proc.returncode != 0:
        raise InfraUnavailable(
            f"git {' '.join(args)} failed in {repo}: {proc.stderr.decode(errors='replace').strip()}"
        )
    return proc


def ensure_repository(repo: Path) -> None:
    if not repo.is_dir():
        raise InfraUnavailable(f"app source {repo} does not exist: check 'source' in orchestrator.toml")
    proc = _git(repo, "rev-parse", "--git-dir", check=False)
    if proc.returncode != 0:
        raise InfraUnavailable(
            f"app source {repo} is not a readable git repository: "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )


def commit_exists(repo: Path, sha: str) -> bool:
    """True only for a full sha naming a commit object (not a tree, blob or tag) in ``repo``."""
    ensure_repository(repo)
    return _git(repo, "cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0


def commit_subject(repo: Path, sha: str) -> str:
    return _git(repo, "log", "-1", "--format=%s", sha).stdout.decode(errors="replace").strip()


def path_in_commit(repo: Path, sha: str, path: str) -> bool:
    return _git(repo, "cat-file", "-e", f"{sha}:{path}", check=False).returncode == 0


def file_at(repo: Path, sha: str, path: str) -> bytes | None:
    """The bytes ``path`` (relative to the repository root) has in commit ``sha``; None if it has none."""
    proc = _git(repo, "cat-file", "blob", f"{sha}:{path}", check=False)
    return proc.stdout if proc.returncode == 0 else None


def archive(repo: Path, sha: str) -> IO[bytes]:
    """The committed tree at ``sha`` as a tar stream: exactly what was validated, never the working tree,
    so an uncommitted file can never leak into an image. Spooled to disk past 64 MiB."""
    ensure_repository(repo)
    out = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)  # noqa: SIM115 - returned open to the caller
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", sha],
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        out.close()
        raise InfraUnavailable(f"git archive of {sha} in {repo} did not finish within 300 s") from None
    if proc.returncode != 0:
        out.close()
        raise InfraUnavailable(
            f"git archive {sha} failed in {repo}: {proc.stderr.decode(errors='replace').strip()}"
        )
    out.seek(0)
    return out  # type: ignore[return-value]
