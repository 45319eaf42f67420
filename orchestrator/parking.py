"""The staging build `run start` sends, parked until `advance --to deploy-staging` takes it (issue 12).

The three-call CI path pays a process start-up three times, and the staging advance could send its
build only about 100 ms after it started. `run start` already knows all the build depends on (the
app's config and the validated sha), so it sends the staging build itself. But it exits at once: the
engine cancels a legacy build whose connection closes, and a BuildKit CLI writing into a pipe nobody
reads stalls. So the build is *parked* in a private directory, held by a process that costs nothing
to start:

- legacy builder: the request goes out with ``Connection: close``, and ``cat`` is handed the socket:
  it copies the engine's answer, as it arrives, into ``response`` and ends when the engine closes
  the connection after the build. The advance reads that file as the HTTP answer it is;
- BuildKit: the docker CLI runs detached in a session of its own, its output to ``output``, the image
  id to ``iid``, and a shell wrapper writes its exit status to ``rc``.

``ticket.json`` says what was asked (the build request, the engine's socket, the files sent) and which
process holds it. A park's directory is never renamed (a BuildKit build reads its context by absolute
path while it runs, and BuildKit reuses a context it already transferred from the same path whose
files have the same size and mtime, as two commits' trees unpacked in one second do); the run's name
for it, which says for which run of which database, is a symbolic link made once the ticket is
written. The staging advance takes it
only for the very same request on the same engine (steps/ahead.py), reads those files as the build's
own output, and removes the park. Nothing is decided by a park: the build step still tags, guards and
records the image as its own build, and a park that is lost (its process killed by a CI job's
cleanup, the machine restarted) only means the step builds again. Parks nobody took are swept at a
later `run start`, once older than any build may take.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from orchestrator.holder import Holder, Liveness, holder_of, process

TICKET = "ticket.json"
RESPONSE = "response"  # legacy: the engine's HTTP answer to the build, as it came
OUTPUT = "output"  # BuildKit: the CLI's output
IID = "iid"  # BuildKit: the image id the CLI wrote
RC = "rc"  # BuildKit: the CLI's exit status, written by the wrapper once it ended
TREE = "tree"  # the commit's tree, the context the build reads

ENGINE = "engine"  # a legacy build, its answer copied by ``cat``
CLI = "cli"  # a BuildKit build, the docker CLI itself detached

# A park made by a `run start` that died before handing it over is removed after this long.
UNFINISHED_S = 3600.0
PARK_PREFIX = "park-"  # a park's own directory; runs name parks by symbolic links to them
_POLL_S = 0.005

# The wrapper of a detached CLI build: its exit status, written atomically once it ended.
_WRAPPER = 'rc=0; "$@" || rc=$?; echo "$rc" > rc.tmp && mv rc.tmp rc'


# The children this process started for parks: referenced until they end (a Popen dropped while its
# process runs warns), and reaped as new ones start.
_children: list[subprocess.Popen[bytes]] = []


def _keep(child: subprocess.Popen[bytes]) -> None:
    _children[:] = [c for c in _children if c.poll() is None]
    _children.append(child)


class ParkLost(Exception):
    """The process that held a parked build ended without its result (killed, or the machine
    restarted): the build step builds again."""


def root(environ: Mapping[str, str] = os.environ) -> Path:
    """Where parks live: the user's cache directory, like the docker CLI probe (builders.py)."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "orchestrator" / "parked"


def key(database_url: str, run_id: int) -> str:
    """A park's name: run ids repeat across databases (two configs on one runner, test suites)."""
    import hashlib  # with OpenSSL: not for the processes that only name park types

    return f"run-{run_id}-{hashlib.sha256(database_url.encode()).hexdigest()[:16]}"


def plain(value: Any) -> Any:
    """``value`` (a dataclass of the build request) as JSON reads it back: what a ticket records and
    what the advance compares its own request with."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    return json.loads(json.dumps(value, default=str))


def _kill(holder: Holder | None) -> None:
    """End the park's process group (the holder, or the CLI and its wrapper), if it is still ours."""
    if holder is not None and holder.liveness() is Liveness.ALIVE:
        with contextlib.suppress(OSError):
            os.killpg(holder.pid, signal.SIGTERM)


# making a park (`run start`) ---------------------------------------------------------------------------


class Park:
    """A park being made: a private directory with the commit's tree in it, and the build sent from it.
    ``hand_over`` gives it its run's name; ``discard`` undoes it (the run was never recorded)."""

    def __init__(self, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = Path(tempfile.mkdtemp(prefix=PARK_PREFIX, dir=where))
        self.tree = self.path / TREE
        self.tree.mkdir()
        self._sock: socket.socket | None = None  # legacy: the build's connection, its answer not read yet
        self._cli: subprocess.Popen[bytes] | None = None
        self._holder: Holder | None = None

    def send(self, socket_path: str, query: Mapping[str, str], body: IO[bytes], timeout_s: float) -> None:
        """Send a legacy build; its answer is left for ``cat`` (``hand_over``)."""
        from orchestrator.build_context import post_build

        self._sock = post_build(socket_path, query, body, timeout_s)

    def start_cli(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        """Start a BuildKit CLI build detached: it outlives `run start`, and a signal to the park's
        process group (``discard``, the advance ending a park it does not take) ends it and its build."""
        with open(self.path / OUTPUT, "wb") as output:
            self._cli = subprocess.Popen(
                ["/bin/sh", "-c", _WRAPPER, "sh", *argv],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.path,
                env=dict(env),
                start_new_session=True,
            )
        _keep(self._cli)
        self._holder = process(self._cli.pid)

    def hand_over(self, name: str, ticket: Mapping[str, Any]) -> None:
        """Leave the build to whoever takes park ``name``: a legacy build's connection goes to ``cat``;
        the ticket is written; then the park appears under its name, whole."""
        if self._sock is not None:
            sock = self._sock
            with open(self.path / RESPONSE, "wb") as response, open(self.path / "holder.log", "wb") as log:
                holder = subprocess.Popen(
                    ["cat"],
                    stdin=sock.fileno(),
                    stdout=response,
                    stderr=log,
                    cwd=self.path,
                    start_new_session=True,
                )
            _keep(holder)
            self._holder = process(holder.pid)
            sock.close()  # this process's copy; cat's stays connected
            self._sock = None
        assert self._holder is not None, "nothing was sent"
        data = {
            **ticket,
            "kind": ENGINE if self._cli is None else CLI,
            "holder": {"host": self._holder.host, "pid": self._holder.pid, "start": self._holder.start},
            "parked_at": time.time(),
        }
        (self.path / (TICKET + ".tmp")).write_text(json.dumps(data))
        (self.path / (TICKET + ".tmp")).rename(self.path / TICKET)
        link = self.path.parent / name
        if os.path.lexists(link):  # left by an earlier database's run of the same name: never to be taken
            earlier = _resolve(link)
            if earlier is not None:
                Parked.at(earlier).discard()
        staged = self.path.parent / f".{name}.{self.path.name}"
        os.symlink(self.path.name, staged)
        os.replace(staged, link)
        self._cli = None

    def discard(self) -> None:
        """Cancel what was sent (closing a legacy build's connection cancels it; the CLI is ended) and
        remove the park."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            self._sock = None
        if self._cli is not None:
            _kill(self._holder)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._cli.wait(timeout=10)
            self._cli = None
        shutil.rmtree(self.path, ignore_errors=True)


def _resolve(link: Path) -> Path | None:
    """The park a run's name points to, if it is one of ours (in the same folder)."""
    try:
        target = os.readlink(link)
    except OSError:
        return None
    return link.parent / target if target.startswith(PARK_PREFIX) and "/" not in target else None


def sweep(where: Path, older_than_s: float, now: float | None = None) -> list[str]:
    """Remove the parks nobody took (the staging advance ran elsewhere, or never): handed over more
    than ``older_than_s`` ago (any build has ended by then, or been ended), or never finished by a
    `run start` that died an hour ago; and the names left pointing at nothing. Returns what it
    removed."""
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        entries = sorted(os.scandir(where), key=lambda e: not e.name.startswith(PARK_PREFIX))
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink():
            if not path.exists():
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(entry.name)
            continue
        if not entry.name.startswith(PARK_PREFIX):
            continue
        try:
            ticket = json.loads((path / TICKET).read_text())
            age = now - float(ticket["parked_at"])
            limit = older_than_s
        except (OSError, ValueError, KeyError, TypeError):
            try:
                age, limit = now - entry.stat().st_mtime, UNFINISHED_S
            except OSError:
                continue
        if age > limit:
            Parked.at(path).discard()
            removed.append(entry.name)
    return removed


# taking a park (the staging advance) -------------------------------------------------------------------


@dataclass
class Parked:
    """A park found under a run's name: the ticket says what was sent, the files what came of it."""

    path: Path
    ticket: dict[str, Any]

    @classmethod
    def at(cls, path: Path) -> Parked:
        try:
            ticket = json.loads((path / TICKET).read_text())
        except (OSError, ValueError):
            ticket = {}
        return cls(path, ticket if isinstance(ticket, dict) else {})

    @classmethod
    def claim(cls, where: Path, name: str) -> Parked | None:
        """The park run ``name`` points to, made this process's by taking the name away (a rename,
        atomic: of two advances of one run, one gets it, and the other, refused anyway, cannot end
        it); None if there is none."""
        taken = where / f".{name}.taken-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(where / name, taken)
        except OSError:
            return None
        path = _resolve(taken)
        with contextlib.suppress(OSError):
            taken.unlink()
        if path is None or not path.is_dir():
            return None
        found = cls.at(path)
        if not found.ticket:
            found.discard()
            return None
        return found

    @property
    def holder(self) -> Holder | None:
        about = self.ticket.get("holder") or {}
        return holder_of(about.get("host"), about.get("pid"), about.get("start"))

    def alive(self) -> bool:
        holder = self.holder
        return holder is not None and holder.liveness() is Liveness.ALIVE

    @property
    def started(self) -> float:
        """When the build was sent, on this process's monotonic clock (deadlines count from it)."""
        sent = float(self.ticket.get("sent_at", self.ticket.get("parked_at", time.time())))
        return time.monotonic() - max(0.0, time.time() - sent)

    def discard(self) -> None:
        """End what still runs (the engine cancels its build) and remove the park."""
        _kill(self.holder)
        shutil.rmtree(self.path, ignore_errors=True)


class _Tail:
    """The whole lines a park's file gains, as its writer adds them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except OSError:
            return []
        self._pos += len(chunk)
        *whole, self._partial = (self._partial + chunk).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in whole]

    def rest(self) -> str:
        """A last line without its newline (its writer has ended)."""
        rest, self._partial = self._partial, b""
        return rest.decode("utf-8", errors="replace")


class _Following(io.RawIOBase):
    """A park's file read as the stream it copies: a read waits while the writer still runs (``wait``
    says how long it may: it raises once the build's time is up), and is the end once it has ended."""

    def __init__(self, path: Path, writing: Callable[[], bool], wait: Callable[[], Any]) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed with this reader
        self._writing, self._wait = writing, wait

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            got = self._file.readinto(buffer)
            if got:
                return got
            if not self._writing():
                return self._file.readinto(buffer) or 0  # what it wrote before it ended, or the end
            self._wait()
            time.sleep(_POLL_S)

    def close(self) -> None:
        self._file.close()
        super().close()


class ParkedEngineBuild:
    """A legacy build's answer as ``cat`` copied it, read like build_context.PendingBuild's (
    DockerEngine.finish_build reads either)."""

    def __init__(self, parked: Parked) -> None:
        self._parked = parked
        self.socket_path = str(parked.ticket.get("socket_path"))
        self.started = parked.started

    def messages(self, wait_s: Callable[[], Any]) -> Iterator[dict[str, Any]]:
        """The engine's messages in order; ``wait_s()`` raises once the build's time is up. An answer
        that ends before the engine ended it (``cat`` killed, or the engine gone): ParkLost, and the
        build step builds again (and meets the engine's state itself)."""
        from orchestrator.docker_wire import answer_messages

        raw = _Following(self._parked.path / RESPONSE, self._parked.alive, wait_s)
        try:
            yield from answer_messages(raw)
        except ConnectionError as exc:
            raise ParkLost(f"the answer to the build `run start` sent ended early: {exc}") from None
        finally:
            raw.close()

    def cancel(self) -> None:
        """Read to its end or given up: either way the park is done with."""
        self._parked.discard()


class ParkedCliBuild:
    """A BuildKit build the CLI runs detached, read like builders.CliBuild."""

    def __init__(self, parked: Parked, tag: str) -> None:
        self._parked = parked
        self.tag = tag
        self.iidfile = parked.path / IID
        self.started = parked.started
        self.lines: list[str] = []
        self._tail = _Tail(parked.path / OUTPUT)
        self._on_line: Callable[[str], None] | None = None

    def _pump(self, *, ended: bool = False) -> None:
        new = self._tail.lines()
        if ended and (rest := self._tail.rest()):
            new.append(rest)
        for line in new:
            self.lines.append(line + "\n")
            if self._on_line is not None:
                self._on_line(line)

    def attach(self, on_line: Callable[[str], None] | None) -> None:
        """From now on each line goes to ``on_line``, the lines so far first."""
        if on_line is not None:
            for line in self.lines:
                on_line(line.rstrip("\n"))
        self._on_line = on_line

    def finish(self, timeout_s: float | None) -> str:
        """Wait for the CLI's exit status (``timeout_s`` counted from when the build was sent) and
        return the image id it wrote, as builders.CliBuild.finish does."""
        from orchestrator import builders

        rc = self._parked.path / RC
        try:
            while True:
                self._pump()
                if rc.exists():
                    try:
                        code = int(rc.read_text().strip())
                    except (OSError, ValueError):
                        code = -1
                    self._pump(ended=True)
                    return builders.cli_build_result(self.tag, code, "".join(self.lines), self.iidfile)
                if not self._parked.alive() and not rc.exists():
                    raise ParkLost("the docker CLI building for `run start` ended without an exit status")
                if timeout_s is not None and time.monotonic() - self.started > timeout_s:
                    raise builders.cli_build_timeout(self.tag, timeout_s, self.started, self.lines)
                time.sleep(_POLL_S)
        finally:
            self._parked.discard()  # read, failed or given up: the park is done with (its CLI ended)

    def cancel(self) -> None:
        self._parked.discard()
