"""Run the real CLI as a process on a pseudo-terminal, as a person at a terminal runs it: what it
prints for people (rich tables, colours, progress) is only switched on when its stdout is a TTY, so
CliRunner, whose output is a buffer, never sees it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class TtyResult:
    exit_code: int
    screen: str  # what the terminal received on stdout (and stderr, when it too was the terminal)
    stderr: str  # stderr when it was a pipe


def run_on_tty(*args: str, stderr_on_tty: bool = False, timeout_s: float = 120.0) -> TtyResult:
    """``python -m orchestrator ARGS`` with stdout on a pseudo-terminal 120 columns wide."""
    return run_argv_on_tty(
        [sys.executable, "-m", "orchestrator", *args], stderr_on_tty=stderr_on_tty, timeout_s=timeout_s
    )


def run_argv_on_tty(argv: list[str], *, stderr_on_tty: bool = False, timeout_s: float = 120.0) -> TtyResult:
    """``argv`` with stdout (and, if asked, stderr) on a pseudo-terminal 120 columns wide."""
    leader, follower = pty.openpty()
    os.set_blocking(leader, False)
    import fcntl
    import struct
    import termios

    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower if stderr_on_tty else subprocess.PIPE,
        env=env,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while True:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            # Drain what is left, then stop.
            try:
                while data := os.read(leader, 65536):
                    chunks.append(data)
            except (OSError, BlockingIOError):
                pass
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{' '.join(argv)} did not finish in {timeout_s} s")
    os.close(leader)
    stderr = proc.stderr.read().decode() if proc.stderr is not None else ""
    proc.wait(timeout=timeout_s)
    return TtyResult(proc.returncode, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n"), stderr)
