"""Read-only access to an app's git repository, through the git CLI (argv lists, never a shell).

The repository is the source of truth for what a run may deploy; if it cannot be read the
orchestrator knows nothing, which is an infrastructure problem (GitError, exit 4), not a verdict on the
commit.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from orchestrator.errors import BadInput, GitError

_SHA = re.compile(r"[0-9a-f]{40}")


def parse_sha(raw: str) -> str:
    """A full commit sha, lowercased: the only form a run records, and the only one handed to git (never
    a ref, a range, or anything git could read as an option)."""
    sha = raw.strip().lower()
    if not _SHA.fullmatch(sha):
        raise BadInput(f"sha {raw!r} is not a full commit sha (40 hex characters); use 'git rev-parse HEAD'")
    return sha


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=120)
    except FileNotFoundError:
        raise GitError("git is not installed: install it (apt-get install -y git)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} in {repo} did not finish within 120 s") from None
    if check and proc.returncode != 0:
        raise GitError(
            f"git {' '.join(args)} failed in {repo}: {proc.stderr.decode(errors='replace').strip()}"
        )
    return proc


def ensure_repository(repo: Path) -> None:
    if not repo.is_dir():
        raise GitError(f"app source {repo} does not exist: check 'source' in orchestrator.toml")
    proc = _git(repo, "rev-parse", "--git-dir", check=False)
    if proc.returncode != 0:
        raise GitError(
            f"app source {repo} is not a readable git repository: "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )


def commit_exists(repo: Path, sha: str) -> bool:
    """True only for a full sha naming a commit object (not a tree, blob or tag) in ``repo``. A source
    that is not a readable repository is an error, not a missing commit: asked only when git said no
    (one git process, not two, on every deploy's path)."""
    if _git(repo, "cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0:
        return True
    ensure_repository(repo)
    return False


def commit_subject(repo: Path, sha: str) -> str:
    return _git(repo, "log", "-1", "--format=%s", sha).stdout.decode(errors="replace").strip()


def commit_time(repo: Path, sha: str) -> datetime | None:
    """The committer date of ``sha`` (when the change was made final), for the lead time of changes;
    None when the repository or the commit cannot be read: a missing date leaves one sample out of a
    metric, it never stops a run."""
    try:
        proc = _git(repo, "log", "-1", "--format=%cI", f"{sha}^{{commit}}", "--", check=False)
    except GitError:
        return None
    text = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0 or not text:
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None


def _in_tree(sha: str, path: str) -> str:
    """``<sha>:./<path>``: the path relative to ``repo`` (git reads ``./`` against the directory it runs
    in). Plain ``<sha>:<path>`` is relative to the repository's root, which for an app whose ``source`` is
    a subdirectory of a repository (a monorepo) names the wrong file; ``git archive`` run there archives
    that subdirectory, so the paths checked must be read the same way."""
    return f"{sha}:./{path.removeprefix('./')}"


def path_in_commit(repo: Path, sha: str, path: str) -> bool:
    """Whether ``path`` (relative to ``repo``; a file or a directory) is in commit ``sha``."""
    return _git(repo, "cat-file", "-e", _in_tree(sha, path), check=False).returncode == 0


def file_at(repo: Path, sha: str, path: str) -> bytes | None:
    """The bytes ``path`` (relative to ``repo``) has in commit ``sha``; None if it has none."""
    proc = _git(repo, "cat-file", "blob", _in_tree(sha, path), check=False)
    return proc.stdout if proc.returncode == 0 else None


# Archives started ahead (``start_archive``) by (repository, sha): the running git and its output file.
_started: dict[tuple[str, str], tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
_started_lock = threading.Lock()


def start_archive(repo: Path, sha: str) -> None:
    """Start ``git archive`` of ``sha`` now, for ``archive`` to take later in this process. `run start`
    and `deploy` send their staging build as soon as they can (issue 12); the archive is the first thing
    that build needs and depends on nothing else, so it runs in its own process while this one imports
    and opens its database (about 20 ms of git, for a small app, off the critical path). Best effort:
    a git that cannot start here is met again, with its error, by ``archive``."""
    import atexit
    import tempfile

    key = (str(repo), sha)
    with _started_lock:
        if key in _started:
            return
        out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to ``archive``'s caller, or closed at exit
        try:
            proc = subprocess.Popen(
                ["git", "-C", str(repo), "archive", "--format=tar", sha],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            out.close()
            return
        if not _started:
            atexit.register(discard_started)
        _started[key] = (proc, out)


def discard_started() -> None:
    """End the archives started and not taken (the command sent no build, or was refused): by the
    command that started them when it ends, and at the latest with the process."""
    with _started_lock:
        left = list(_started.values())
        _started.clear()
    for proc, out in left:
        proc.kill()
        proc.wait()
        out.close()


def _take_started(repo: Path, sha: str) -> IO[bytes] | None:
    with _started_lock:
        taken = _started.pop((str(repo), sha), None)
    if taken is None:
        return None
    proc, out = taken
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    if code != 0:  # asked again below, for git's own words
        out.close()
        return None
    out.seek(0)
    return out


def archive(repo: Path, sha: str) -> IO[bytes]:
    """The committed tree at ``sha`` as a tar stream: exactly what was validated, never the working tree,
    so an uncommitted file can never leak into an image. Spooled to disk past 64 MiB; the one
    ``start_archive`` began, if it did."""
    started = _take_started(repo, sha)
    if started is not None:
        return started
    import tempfile

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
        raise GitError(f"git archive of {sha} in {repo} did not finish within 300 s") from None
    if proc.returncode != 0:
        out.close()
        ensure_repository(repo)  # a source that is no repository says so, not "archive failed"
        raise GitError(f"git archive {sha} failed in {repo}: {proc.stderr.decode(errors='replace').strip()}")
    out.seek(0)
    return out  # type: ignore[return-value]


def unpack(repo: Path, sha: str, folder: Path) -> None:
    """``git archive`` of ``sha`` unpacked into ``folder`` (which exists). The ``tar`` filter keeps every
    path inside the folder whatever the tree holds."""
    import tarfile  # with shutil, bz2 and lzma: only where a tree is unpacked

    with archive(repo, sha) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r:") as tar:
                tar.extractall(folder, filter="tar")
        except (tarfile.TarError, OSError) as exc:
            raise GitError(f"could not unpack git archive {sha} of {repo} into {folder}: {exc}") from None


@contextmanager
def extracted(repo: Path, sha: str) -> Iterator[Path]:
    """The committed tree of ``sha`` (``unpack``) in a private temporary directory, removed afterwards: a
    build context on disk that holds exactly the commit (for the docker CLI, which reads a directory)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="orchestrator-context-") as folder:
        unpack(repo, sha, Path(folder))
        yield Path(folder)
