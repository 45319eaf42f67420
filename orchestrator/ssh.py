"""One ssh connection per remote engine, shared by every request to it (issue 14).

The docker SDK's own ssh transport (``use_ssh_client``) starts ``ssh host docker system dial-stdio`` for
every HTTP request, and each of those is a full ssh handshake (about 0.3 s on loopback, much more across
a network): a promotion makes dozens of requests. Here one *master* ssh connection is opened per engine
(``ControlMaster``, control socket in a private 0700 directory), and a local unix socket in that directory
stands for the engine: each connection made to it runs ``docker system dial-stdio`` as a new session on
the master (no handshake), with the accepted socket as its stdin and stdout. The SDK and the docker CLI
(BuildKit builds) are pointed at ``unix://<that socket>`` and keep their connections alive, so a deploy
opens a handful of sessions over one ssh connection.

Why dial-stdio sessions rather than forwarding the engine's socket (``ssh -L sock:/var/run/docker.sock``,
slightly faster per connection): forwarding needs ``AllowStreamLocalForwarding``/``AllowTcpForwarding``,
which hardened hosts (and the test host's main sshd port) turn off, and the path of the remote socket (a
rootless engine, a context, DOCKER_HOST on the host); dial-stdio works wherever ``ssh host docker
version`` does, exactly what the SDK's transport needed before.

The same master also reaches the engine host's loopback, for zero-downtime promotions (proxy.py): a
port published on the host's 127.0.0.1 (a release checked before it takes traffic, the proxy's port) is
forwarded to a port on this machine's loopback, and the proxy's admin socket (a unix socket in a 0700
directory made on the host by a session) to a socket in the private directory here (``-O forward``,
handled by the master: no handshake, nothing published on the host's other interfaces). Those need the
host's sshd to allow ``AllowTcpForwarding local`` and ``AllowStreamLocalForwarding local`` (both on by
default); a refusal shows in the master's log and is named by ``forward_refused``.

Still the system ssh client: ~/.ssh/config, the agent's keys and known_hosts apply as for ``ssh host``;
our options only add connection sharing and limits (ConnectTimeout, ServerAlive*), which command-line
options give precedence over the config file.

Bounded: ssh's ConnectTimeout covers the TCP connect and the protocol handshake, and the wait for the
master to be ready is cut at the same limit whatever ssh does (a passphrase prompt, an accepting host that
never speaks); ServerAliveInterval/CountMax end a master whose host stopped answering. Cleaned up: every
ssh process is ended on ``close`` and dies with this process (PR_SET_PDEATHSIG) even on SIGKILL; SIGTERM
outside an edge becomes ``Interrupted`` while a connection is open, so ``close`` runs; the directory is
removed on close, and one left by a killed process is removed by the next one that opens a connection.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.logging import get_logger

_DIR_PREFIX = "orch-ssh-"
_PR_SET_PDEATHSIG = 1


class SshUnreachable(Exception):
    """The master connection could not be made; ``reason`` is fit for a message (no key material)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SshOptions:
    """How a remote engine's ssh connection is made and bounded (ORCH_ENGINE_CONNECT_TIMEOUT_S)."""

    connect_timeout_s: float = 15.0

    @property
    def keepalive(self) -> tuple[int, int]:
        """(ServerAliveInterval, ServerAliveCountMax): a host that stops answering is given up after
        about ``connect_timeout_s`` (three unanswered probes), not after TCP's minutes."""
        return max(1, math.ceil(self.connect_timeout_s / 3)), 3


@dataclass(frozen=True)
class SshDestination:
    """``ssh://[user@]host[:port]`` split the way ssh's argv takes it."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, url: str) -> SshDestination:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise ValueError(f"not an ssh:// engine URL: {url!r}")
        return cls(parts.hostname, parts.username, parts.port)


def ssh_argv(
    ssh: str, dest: SshDestination, control_path: Path, options: SshOptions, *, master: bool = False
) -> list[str]:
    """The argv prefix of every ssh run for ``dest`` (a command or ``-O`` follows the ``--``-less host
    at the end, so the host can never be read as an option)."""
    interval, count = options.keepalive
    argv = [
        ssh,
        "-o", f"ControlPath={control_path}",
        "-o", f"ConnectTimeout={max(1, math.ceil(options.connect_timeout_s))}",
        "-o", f"ServerAliveInterval={interval}",
        "-o", f"ServerAliveCountMax={count}",
    ]  # fmt: skip
    if master:
        # -N: no command, the connection only carries the sessions; ControlPersist=no: it ends with us.
        # LogLevel INFO (ssh's default, whatever the config says): a channel the host refuses is logged
        # at that level, and its log is only read by forward_refused and for a failure's reason.
        argv += ["-M", "-N", "-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-o", "LogLevel=INFO"]
    else:
        # A session rides the master; were it gone, ssh would connect on its own (slower, still bounded).
        argv += ["-o", "ControlMaster=no"]
    if dest.user:
        argv += ["-l", dest.user]
    if dest.port:
        argv += ["-p", str(dest.port)]
    return [*argv, "--", dest.host]


def _before_host(argv: list[str], *options: str) -> list[str]:
    """``argv`` (from ``ssh_argv``) with ``options`` before its ``-- host``."""
    return [*argv[:-2], *options, *argv[-2:]]


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# What the master logs when the host's sshd refuses a forwarded channel (AllowTcpForwarding no, ...).
_PROHIBITED = "administratively prohibited"
_FORWARD_ATTEMPTS = 3


def _libc_prctl() -> Any:
    import ctypes  # only in a process that starts ssh: about 3 ms of every other one's start-up

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the processes are still ended by close()
        return None


# libc's prctl (False: there is none), looked up in the parent before the first fork (``_death_signal``):
# between fork and exec only the call itself should run.
_PRCTL: Any = None


def _death_signal() -> Callable[[], None]:
    """The ``preexec_fn`` that makes a child die with us, its lookup done here, before the fork."""
    global _PRCTL
    if _PRCTL is None:
        _PRCTL = _libc_prctl() or False
    return _die_with_parent


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it ends (the process killed,
    even by SIGKILL, or the bridge's thread gone), so no ssh outlives us."""
    if _PRCTL:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (a Ctrl-C at the terminal goes to the CLI, whose undo still needs
    the connection), dying with us.

    A ``preexec_fn`` makes Python run its after-fork callbacks in the parent (``logging`` registers one).
    A SIGTERM handled there (an edge's, or ``_TermRaises``) raises ``Interrupted`` inside the callback,
    where Python prints it ("Exception ignored in ...") and drops it: the cancelled command went on
    waiting. Such an exception is kept and raised again once the child is started, after ending it."""
    from orchestrator.lifecycle import Interrupted

    main = threading.current_thread() is threading.main_thread()  # where signal handlers run
    dropped: list[BaseException] = []
    previous = sys.unraisablehook

    def keep(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            dropped.append(unraisable.exc_value)
        else:
            previous(unraisable)

    if main:
        sys.unraisablehook = keep
    try:
        proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=_death_signal(), **kwargs)
    finally:
        if main:
            sys.unraisablehook = previous
    if dropped:
        proc.kill()
        proc.wait()
        raise dropped[0]
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(tmp: Path | None = None) -> list[Path]:
    """Remove what SIGKILLed processes left (``orch-ssh-<pid>-*`` of a pid that is gone, owned by us)."""
    # shutil and tempfile here and below, not at the top: only a remote engine's process uses this
    # module, and docker_engine's import of it was 5 ms of every local promotion's start (issue 12).
    import shutil
    import tempfile

    removed = []
    root = Path(tmp or tempfile.gettempdir())
    for path in root.glob(f"{_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(_DIR_PREFIX).split("-", 1)[0]
        try:
            mine = path.lstat().st_uid == os.getuid() and path.is_dir() and not path.is_symlink()
        except OSError:
            continue
        if mine and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _reason(stderr: str) -> str | None:
    """ssh's own last word (``Connection refused``, ``Permission denied (publickey).``, ``Host key
    verification failed.``), without lines that name files: a key's path is not for messages."""
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if line and "/" not in line and 'key "' not in line.lower() and "identity" not in line.lower():
            return line[:200]
    return None


class _TermRaises:
    """While any connection is open, SIGTERM (left at its default, i.e. outside an edge, which has its
    own handler) raises Interrupted in the main thread instead of killing the process on the spot, so
    the ``finally`` that closes the connection runs. Counted, so nested connections restore once; a
    handler someone else installed meanwhile is left alone."""

    _lock = threading.Lock()
    _depth = 0
    _installed: Any = None

    @staticmethod
    def _raise(signum: int, _frame: Any) -> None:
        from orchestrator.lifecycle import Interrupted

        raise Interrupted(signum)

    @classmethod
    def enter(cls) -> None:
        with cls._lock:
            cls._depth += 1
            if threading.current_thread() is not threading.main_thread() or cls._installed is not None:
                return
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, cls._raise)
                cls._installed = signal.getsignal(signal.SIGTERM)

    @classmethod
    def leave(cls) -> None:
        with cls._lock:
            cls._depth = max(0, cls._depth - 1)
            if cls._depth or cls._installed is None:
                return
            if threading.current_thread() is threading.main_thread():
                if signal.getsignal(signal.SIGTERM) == cls._installed:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                cls._installed = None


class SshBridge:
    """A unix socket standing for the engine at ``url``, served over one ssh master connection."""

    def __init__(self, url: str, options: SshOptions | None = None, *, ssh: str = "ssh") -> None:
        self.dest = SshDestination.parse(url)
        self.options = options or SshOptions()
        self._ssh = ssh
        sweep_stale()
        import tempfile

        self.dir = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))  # 0700
        self.control = self.dir / "master"
        self.socket_path = self.dir / "docker.sock"
        self._session_log = self.dir / "sessions.log"
        self._master: subprocess.Popen[bytes] | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._sessions: list[subprocess.Popen[bytes]] = []
        # Forwards the master holds: the remote end ("127.0.0.1:<port>" or a socket path) -> the local one.
        self._forwards: dict[str, str] = {}
        self._lock = threading.Lock()
        self._closed = False
        _TermRaises.enter()
        try:
            self._start_master()
            self._listen()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """What the SDK and the docker CLI connect to."""
        return f"unix://{self.socket_path}"

    @property
    def pids(self) -> list[int]:
        """The ssh processes alive now (the master and open sessions), for tests and diagnostics."""
        procs = [self._master, *self._sessions]
        return [p.pid for p in procs if p is not None and p.poll() is None]

    def session_error(self) -> str | None:
        """What the sessions' ssh (or the host's ``docker system dial-stdio``) last complained about,
        e.g. ``bash: docker: command not found``: why the engine did not answer over a connection that
        works."""
        try:
            return _reason(self._session_log.read_text(errors="replace"))
        except OSError:
            return None

    def _argv(self, *, master: bool = False) -> list[str]:
        return ssh_argv(self._ssh, self.dest, self.control, self.options, master=master)

    # the engine host's loopback, through the master ----------------------------------------------

    def run(self, command: str, *, timeout_s: float | None = None) -> str:
        """``command`` (run by the host's shell) as a session on the master; its stdout. A failure raises
        SshUnreachable with the host's last word (e.g. ``mkdir: cannot create directory``)."""
        timeout = timeout_s if timeout_s is not None else max(5.0, self.options.connect_timeout_s)
        # As subprocess.run, whose shape this is (through _spawn): leaving ``with`` closes the pipes and
        # waits for the killed child, on every path.
        with _spawn(
            [*self._argv(), command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise SshUnreachable(
                    f"a command on {self.dest.host} did not end within {timeout:g} s"
                ) from None
            except BaseException:
                proc.kill()
                raise
        if proc.returncode != 0:
            reason = _reason(stderr.decode(errors="replace"))
            raise SshUnreachable(reason or f"a command on {self.dest.host} exited with {proc.returncode}")
        return stdout.decode(errors="replace")

    def forward_port(self, port: int) -> int:
        """A port on this machine's loopback whose connections reach ``127.0.0.1:<port>`` on the host,
        as channels of the master (kept until ``close``; asking twice returns the same port)."""
        remote = f"127.0.0.1:{port}"
        with self._lock:
            if (known := self._forwards.get(remote)) is not None:
                return int(known)
        last = ""
        for _ in range(_FORWARD_ATTEMPTS):
            # Free when asked, taken by someone else before the master binds it: the master says so
            # ("Port forwarding failed") and another is tried.
            local = _free_loopback_port()
            try:
                self._forward(f"127.0.0.1:{local}:{remote}")
            except SshUnreachable as exc:
                last = exc.reason
                continue
            with self._lock:
                self._forwards[remote] = str(local)
            return local
        raise SshUnreachable(f"could not forward a local port to {remote} on {self.dest.host}: {last}")

    def forward_socket(self, path: str) -> Path:
        """A unix socket in the private directory whose connections reach the unix socket ``path`` on
        the host (OpenSSH's streamlocal forwarding), kept until ``cancel`` or ``close``."""
        with self._lock:
            if (known := self._forwards.get(path)) is not None:
                return Path(known)
        import hashlib

        local = self.dir / f"fwd-{hashlib.sha256(path.encode()).hexdigest()[:12]}.sock"
        local.unlink(missing_ok=True)
        self._forward(f"{local}:{path}")
        with self._lock:
            self._forwards[path] = str(local)
        return local

    def cancel(self, remote: str) -> bool:
        """End the forward to ``remote`` (a socket path, or ``127.0.0.1:<port>``) and remove its local
        socket; True when there was one."""
        with self._lock:
            local = self._forwards.pop(remote, None)
        if local is None:
            return False
        spec = f"127.0.0.1:{local}:{remote}" if local.isdigit() else f"{local}:{remote}"
        with contextlib.suppress(SshUnreachable):
            self._control("cancel", spec)
        if not local.isdigit():
            Path(local).unlink(missing_ok=True)
        return True

    @property
    def forwards(self) -> dict[str, str]:
        """The forwards held now (remote end -> local end), for records and tests."""
        with self._lock:
            return dict(self._forwards)

    def forward_refused(self) -> str | None:
        """Why the host refused a forwarded channel, when it did (its sshd forbids forwarding), else
        None: the reason a check through a forward saw its connection closed at once."""
        try:
            text = (self.dir / "master.log").read_text(errors="replace")
        except OSError:
            return None
        if _PROHIBITED not in text:
            return None
        return (
            f"the ssh server of {self.dest.host} refuses forwarding ({_PROHIBITED}): zero_downtime on a "
            "remote engine reaches the host's loopback through the ssh connection; allow it there "
            "(sshd_config: AllowTcpForwarding local, AllowStreamLocalForwarding local)"
        )

    def _forward(self, spec: str) -> None:
        self._control("forward", spec)

    def _control(self, operation: str, spec: str) -> None:
        """``ssh -O forward|cancel -L spec``: asks the master, which binds (or unbinds) the local end."""
        argv = _before_host(self._argv(), "-O", operation, "-L", spec)
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(5.0, self.options.connect_timeout_s),
                start_new_session=True,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SshUnreachable(f"the ssh master did not answer '-O {operation}'") from None
        if done.returncode != 0:
            raise SshUnreachable(
                _reason(done.stderr.decode(errors="replace")) or f"'-O {operation}' exited {done.returncode}"
            )

    def _start_master(self) -> None:
        log = self.dir / "master.log"
        with log.open("wb") as err:
            self._master = _spawn(
                self._argv(master=True), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + self.options.connect_timeout_s
        # The control socket appears once the connection is authenticated: that is "ready".
        while not self.control.exists():
            if self._master.poll() is not None:
                reason = _reason(log.read_text(errors="replace"))
                raise SshUnreachable(reason or f"ssh exited with status {self._master.returncode}")
            if time.monotonic() >= deadline:
                raise SshUnreachable(
                    f"no ssh connection within {self.options.connect_timeout_s:g} s "
                    "(ORCH_ENGINE_CONNECT_TIMEOUT_S)"
                )
            time.sleep(0.01)

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(16)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name=f"ssh-bridge {self.dest.host}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._listener is not None
        argv = [*self._argv(), "docker system dial-stdio"]
        errors = self._session_log.open("ab")
        try:
            self._accept(argv, errors)
        finally:
            errors.close()

    def _accept(self, argv: list[str], errors: Any) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with conn, self._lock:
                if self._closed:
                    return
                self._sessions = [p for p in self._sessions if p.poll() is None]
                try:
                    # The session reads and writes the accepted socket itself: no copying here.
                    self._sessions.append(
                        _spawn(argv, stdin=conn.fileno(), stdout=conn.fileno(), stderr=errors)
                    )
                except OSError as exc:
                    get_logger().warning("ssh_session_failed", host=self.dest.host, error=str(exc))

    def close(self) -> None:
        """End every ssh process and remove the directory; safe to call twice. The master's forwards
        end with it (their local ports unbound), their local sockets go with the directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sessions, self._sessions = self._sessions, []
            self._forwards.clear()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for proc in [*sessions, self._master]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*sessions, self._master]:
            if proc is None:
                continue
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
        _TermRaises.leave()


def sh(script: str) -> str:
    """``script`` as one command for the host's login shell, whatever it is: ``sh -c '<script>'``."""
    return f"sh -c {shlex.quote(script)}"


@contextlib.contextmanager
def bridge(url: str, options: SshOptions | None = None) -> Iterator[SshBridge]:
    opened = SshBridge(url, options)
    try:
        yield opened
    finally:
        opened.close()
