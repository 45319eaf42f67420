"""What every benchmark script here shares: processes with a timeout and their failures shown in full,
free loopback ports, git without the user's identity or signing, and a main that always cleans up.

A benchmark that times a failed step as if it had worked prints a number that means nothing, so every
failure is a BenchmarkError that stops the run with the command's own output.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

BUSYBOX = Path("/usr/bin/busybox")  # Debian's busybox-static: the sample apps are FROM scratch
LOOPBACK = "127.0.0.1"
# Generous: a step that hangs this long is a bug to report, not a slow sample.
STEP_TIMEOUT_S = 600.0
# Commits made by a benchmark must not depend on (or sign with) the user's git configuration.
GIT_IDENTITY = (
    "-c",
    "user.name=benchmark",
    "-c",
    "user.email=benchmark@localhost",
    "-c",
    "commit.gpgsign=false",
)


class BenchmarkError(Exception):
    """A step failed: the numbers of this run would be meaningless, so stop and show why."""


def run(
    argv: Sequence[str],
    *,
    what: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run an argv list to its end (or STEP_TIMEOUT_S); the exit code is the caller's to judge."""
    try:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, env=env, cwd=cwd, timeout=STEP_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"{what}: timed out after {STEP_TIMEOUT_S:.0f}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise BenchmarkError(f"{what}: {argv[0]} is not installed ({exc})") from None


def checked(
    argv: Sequence[str],
    *,
    what: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> str:
    """Run an argv list; any non-zero exit raises with the command's stdout and stderr so a broken step
    is diagnosed from the benchmark's own output instead of being timed as if it had worked."""
    proc = run(argv, what=what, env=env, cwd=cwd, stdin=stdin)
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        raise BenchmarkError(
            f"{what} failed with exit {proc.returncode}: {' '.join(argv)}\n"
            f"--- stdout ---\n{out.strip()[-4000:]}\n--- stderr ---\n{err.strip()[-4000:]}"
        )
    return out


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out for 127.0.0.1:0, all held open at once so that they are distinct."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            ports.append(sock.getsockname()[1])
    return ports


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold off Ctrl-C and SIGTERM while cleaning up: an interrupted cleanup is how debris survives."""

    def note(signum: int, frame: FrameType | None) -> None:
        print("cleaning up, please wait...", file=sys.stderr)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def guarded(body: Callable[[], int], cleanup: Callable[[], list[str]]) -> int:
    """Run a benchmark's ``body`` with SIGTERM treated as Ctrl-C, then always ``cleanup`` (interrupts held
    off) and print what it could not remove. Exit 1 on a failed step, 130 when interrupted."""
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return body()
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        with interrupts_deferred():
            for problem in cleanup():
                print(f"cleanup: {problem}", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)


def remove_debris(name_filter: str, apps: Sequence[str], dirs: Sequence[Path]) -> list[str]:
    """Containers whose name holds ``name_filter`` (the run's random suffix: a container a killed CLI call
    started after anyone last looked is found too), then the apps' image tags, then the temp dirs.
    Returns what could not be removed."""
    problems: list[str] = []

    def attempt(what: str, argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, timeout=120)
        if proc.returncode != 0:
            problems.append(f"{what}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace")

    listed = attempt("list containers", ["docker", "ps", "-aq", "--filter", f"name={name_filter}"])
    if ids := sorted(set(listed.split())):
        attempt("remove containers", ["docker", "rm", "-f", "-v", *ids])
    refs: list[str] = []
    for app in apps:
        listed = attempt(
            "list images", ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", app]
        )
        refs.extend(line for line in listed.split() if line and not line.endswith(":<none>"))
    if refs:
        attempt("remove images", ["docker", "rmi", *refs])
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            problems.append(f"could not remove {path}")
    return problems
