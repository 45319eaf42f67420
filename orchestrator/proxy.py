"""A haproxy container in front of one environment, so its port keeps answering while what serves it
changes (zero-downtime promotion and rollback).

Why this shape: on one node Swarm's ingress routing mesh is not always there (it needs IPVS), and two
replicas cannot both publish one host port, so a start-first update cannot hand a port over by itself;
a direct container swap has the same gap. The proxy owns the environment's port; the backends (swarm
tasks, or plain containers sharing a network alias) join a Docker network, and haproxy finds them
through Docker's embedded DNS (127.0.0.11) by one stable name. Its configuration therefore never
changes during a promotion: a new backend appears in DNS, passes haproxy's own health check and takes
traffic; an old one leaves DNS and a request that hits it while it stops is retried on another
backend (``retry-on`` + ``redispatch``). No reload, so nothing to get half-done.

A retry covers a request the old backend never began to answer, not one it is answering when it exits.
So before an old container is stopped (direct containers: ``ProxySpec.admin_socket``) it is drained
through haproxy's runtime API: its server is set to ``drain`` (no new requests; those in flight go on)
and the orchestrator waits, bounded, until haproxy counts none in flight on it. The API is a unix socket
in a directory of this machine bind-mounted into the proxy (0700, the orchestrator's user; haproxy runs as
that user): no TCP port, so neither the host's other users nor the backends on the proxy's network can
reach it. Why the runtime API and not a reload without
the old server: the servers come from DNS (``server-template``), which a configuration cannot leave one
address out of, and a reload would change the configuration this module keeps fixed; ``drain`` changes one
server's state, nothing else, and ``show stat`` says when its last request ended.

On a remote engine (``ssh://``) "this machine" is the engine's host, reached through the engine's one
ssh connection (EngineHost, orchestrator/ssh.py): the admin directory is made there by a session (0700,
the ssh user's, the proxy running as that user's uid), its socket forwarded to one in this process's
private directory, and the ports checked on the host's loopback forwarded to ports on ours. No port is
published on the host's public interfaces for it, and no second handshake is made.

Where a cluster has a working routing mesh, services can publish through it instead and need no proxy.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from orchestrator.docker_engine import ContainerInfo, DockerEngine, DockerError
from orchestrator.ssh import SshBridge, SshUnreachable, sh

# Where the configuration goes inside the container: the official haproxy image's default path.
CONFIG_PATH = "/usr/local/etc/haproxy/haproxy.cfg"
# The port haproxy listens on inside its container (published on ProxySpec.address:<env port>).
LISTEN = 8080
CONFIG_LABEL = "orchestrator.proxy.config"
# The address the port is published on, when it is not loopback (a proxy without it publishes there).
# A request carrying PROBE_HEADER gets BACKEND_HEADER back: the address of the backend that answered.
# That is how a hand-over knows the proxy sends traffic to a new backend before the old one leaves;
# ordinary clients never see backend addresses.
PROBE_HEADER = "X-Orch-Probe"
BACKEND_HEADER = "X-Orch-Backend"
ROLE_LABEL = "orchestrator.role"
# The admin socket: ADMIN_DIR inside the container is the host directory named by ADMIN_LABEL.
ADMIN_DIR = "/run/orchestrator-proxy"
ADMIN_SOCKET = "admin.sock"
ADMIN_LABEL = "orchestrator.proxy.admin"
BACKEND = "app"  # the haproxy backend (and server-template prefix) every request goes to
# haproxy's srv_admin_state bits (`show servers state`): drain forced through the API.
_FDRAIN = 0x08
RISE, FALL = 1, 2  # checks passed to be up, failed to be down
# A server's state (`show servers state`): running, its last check an HTTP answer that passed, at full
# health. haproxy puts a server it has just resolved up at `rise` health before any check, and one
# failed check takes it down again: full health means a check passed since it was resolved.
_RUNNING = "2"
_L7OK = "15"
_FULL_HEALTH = str(RISE + FALL - 1)
_DRAIN_POLL_S = 0.05
LOOPBACK = "127.0.0.1"
# mkdtemp's and mktemp's random part: how an admin directory of one proxy is told from another's.
_ADMIN_SUFFIX = "????????"
_T = TypeVar("_T")


@dataclass(frozen=True)
class ProxySpec:
    """One environment's proxy: where it listens, and the DNS name its backends answer to."""

    name: str  # the proxy container, e.g. "shop-prod-proxy"
    network: str  # the Docker network the backends and the proxy share
    backend: str  # DNS name of the backends: "tasks.<service>" (swarm) or a network alias (containers)
    backend_port: int  # the port the app listens on inside its container
    port: int  # the environment's port on ``address`` of the engine's host
    health_path: str  # haproxy's own check, so a backend takes traffic only once it answers
    image: str
    # Upper bound of backends resolved at once (replicas, plus the new ones of a start-first update).
    slots: int = 8
    # haproxy's check interval: how soon a new backend takes traffic and a dead one stops getting it.
    check_ms: int = 200
    # The runtime API socket (drain before stop). Only where the orchestrator stops backends itself
    # (direct containers: the socket's directory is bind-mounted from the engine's host, reached over
    # the engine's ssh connection when that is another machine); Swarm stops its tasks itself.
    admin_socket: bool = False
    # The host address the port is published on: loopback on this machine's engine; every interface on a
    # remote one (as the plain runtime publishes it there: where clients and the orchestrator's health
    # checks from another machine reach it).
    address: str = LOOPBACK


def render(spec: ProxySpec) -> str:
    """The haproxy configuration for ``spec``; a pure function, so its tests need no engine."""
    return "\n".join(
        [
            "global",
            # Server state changes reach `docker logs`; requests themselves are not logged.
            "  log stdout format raw local0 notice",
            # Only the orchestrator's user reaches it (see the module docstring).
            *(
                [f"  stats socket {ADMIN_DIR}/{ADMIN_SOCKET} mode 600 level admin"]
                if spec.admin_socket
                else []
            ),
            "defaults",
            "  mode http",
            "  log global",
            # A backend that left the network (disconnected, its container gone) does not refuse a
            # connection: nothing answers at all. A short connect timeout bounds what the request that
            # hits it waits before its retry on another backend (a local or overlay connect takes
            # milliseconds), and a health check slower than the interval on a busy host must not mark
            # the only backend down (503 for everyone).
            "  timeout connect 300ms",
            "  timeout check 2s",
            "  timeout client 60s",
            "  timeout server 60s",
            # A request whose backend refused, reset or vanished is retried on another backend: this is
            # what makes removing an old backend invisible to clients.
            "  retries 3",
            "  option redispatch 1",
            "  retry-on all-retryable-errors",
            "resolvers docker",
            "  nameserver dns 127.0.0.11:53",
            "  accepted_payload_size 8192",
            # Asked every 200 ms (`hold valid` is the interval between two resolutions): a swarm task
            # Swarm replaces leaves the service's DNS 2 s before it is stopped (its fixed gossip delay),
            # and that is all the drain it gets; each second haproxy kept sending it requests would be
            # a second less for the last of them to end.
            "  hold valid 200ms",
            "  hold obsolete 0s",
            "  timeout resolve 200ms",
            "  timeout retry 200ms",
            "frontend app",
            f"  bind :{LISTEN}",
            f"  default_backend {BACKEND}",
            f"backend {BACKEND}",
            f"  http-request set-var(txn.orch_probe) bool(true) if {{ req.hdr({PROBE_HEADER}) -m found }}",
            f"  http-response set-header {BACKEND_HEADER} %si if {{ var(txn.orch_probe) -m bool }}",
            f"  option httpchk GET {spec.health_path}",
            # Only the health check decides whether a backend is up, never a request's failed connect
            # (`observe layer4`): a backend haproxy has just resolved is up before its first check, so
            # requests sent to it before its network answers fail up to `timeout connect` later, by then
            # after its check passed and it answered others, and marked the only backend left down (a
            # 503 for everyone until the next check). A backend leaving is drained or out of DNS first.
            f"  default-server inter {spec.check_ms}ms fall {FALL} rise {RISE} check resolvers docker"
            " init-addr none",
            f"  server-template {BACKEND} {spec.slots} {spec.backend}:{spec.backend_port}",
            "",
        ]
    )


def config_hash(text: str, address: str = LOOPBACK) -> str:
    """What CONFIG_LABEL holds: a proxy whose configuration or published address differs is recreated.
    The default address adds nothing, so the proxies made before it was configurable are kept."""
    import hashlib  # with OpenSSL: only where a proxy is used

    extra = "" if address == LOOPBACK else f"\n# bind {address}"
    return hashlib.sha256(f"{text}{extra}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Drained:
    """What draining one backend found: the haproxy servers holding its address, the requests in flight
    on them when the drain began, how many were still in flight when the wait ended (0: all finished;
    more: ``drain_s`` ran out and they will be cut), and how long it waited."""

    address: str
    servers: tuple[str, ...]
    in_flight: int
    left: int
    waited_s: float


def _admin_base() -> Path:
    """Where the proxies' admin directories live: under /run for root (a tmpfs cleared at boot, never by a
    temp cleaner while the proxy runs), else the user's runtime directory."""
    if os.geteuid() == 0:
        base = Path("/run/orchestrator/proxy")
    else:
        import tempfile

        runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        base = Path(runtime) / f"orchestrator-{os.geteuid()}" / "proxy"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


class EngineHost:
    """The host an engine runs on, as this process reaches its loopback and its files: this machine (the
    local engine, a unix:// one), or another machine through the ssh connection the engine already keeps
    (``DockerEngine.ssh``): sessions and forwards on its master, no second handshake."""

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self.ssh: SshBridge | None = engine.ssh

    @property
    def remote(self) -> bool:
        return self.ssh is not None

    def loopback(self, port: int) -> tuple[str, int]:
        """Where this process connects to reach ``127.0.0.1:<port>`` of the engine's host."""
        if self.ssh is None:
            return LOOPBACK, port
        return LOOPBACK, self._ssh("forward a port", lambda ssh: ssh.forward_port(port))

    def url(self, port: int, path: str = "") -> str:
        address, local = self.loopback(port)
        return f"http://{address}:{local}{path}"

    def via(self) -> str:
        """How the host's loopback is reached, for records: ``local``, or ``ssh <user@host:port>``."""
        return "local" if self.ssh is None else f"ssh {self.engine.where}"

    def make_admin_dir(self, name: str) -> tuple[str, str]:
        """A new 0700 directory for proxy ``name``'s admin socket on the engine's host, and the
        ``uid:gid`` the proxy runs as (the directory's owner). Directories of ``name`` left by a proxy
        removed by other means (``docker rm -f``) are removed first: the proxy is being (re)created, so
        none of them is in use."""
        if self.ssh is None:
            # Here, not at the top: shutil and tempfile (with bz2, lzma, random) only where a proxy
            # is made; a plain runtime imports this module for its names (issue 12).
            import shutil
            import tempfile

            base = _admin_base()
            for stale in base.glob(f"{name}-{_ADMIN_SUFFIX}"):
                shutil.rmtree(stale, ignore_errors=True)
            made = tempfile.mkdtemp(prefix=f"{name}-", dir=base)
            return made, f"{os.geteuid()}:{os.getegid()}"
        # The same places as _admin_base, on the host, for its ssh user; umask 077: 0700 all the way.
        script = (
            "umask 077; "
            'if [ "$(id -u)" = 0 ]; then b=/run/orchestrator/proxy; '
            'else b="${XDG_RUNTIME_DIR:-/tmp}/orchestrator-$(id -u)/proxy"; fi; '
            f'mkdir -p "$b" && rm -rf "$b"/{shlex.quote(name)}-{_ADMIN_SUFFIX} && '
            f'd=$(mktemp -d "$b"/{shlex.quote(name)}-XXXXXXXX) && echo "$(id -u):$(id -g) $d"'
        )
        answer = self._ssh("make the proxy's admin directory", lambda ssh: ssh.run(sh(script))).split()
        if len(answer) != 2 or not answer[1].startswith("/"):
            raise DockerError(
                f"making the proxy's admin directory on {self.engine.where} answered {answer!r}"
            )
        return answer[1], answer[0]

    def has_dir(self, path: str) -> bool:
        if self.ssh is None:
            return Path(path).is_dir()
        try:
            self._ssh(
                "look for the proxy's admin directory", lambda ssh: ssh.run(f"test -d {shlex.quote(path)}")
            )
        except DockerError:
            return False
        return True

    def remove_dir(self, path: str) -> None:
        """Remove an admin directory and end the forward to its socket (best effort: the proxy is gone)."""
        if self.ssh is None:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
            return
        self.ssh.cancel(f"{path}/{ADMIN_SOCKET}")
        with contextlib.suppress(SshUnreachable):  # else the next (re)creation of this proxy removes it
            self.ssh.run(f"rm -rf {shlex.quote(path)}")

    def socket(self, path: str) -> Path:
        """Where this process connects to reach the unix socket ``path`` of the engine's host."""
        if self.ssh is None:
            return Path(path)
        return self._ssh("forward the admin socket", lambda ssh: ssh.forward_socket(path))

    def refused(self) -> str | None:
        """The host's sshd refused a forward (see SshBridge.forward_refused)."""
        return self.ssh.forward_refused() if self.ssh is not None else None

    def _ssh(self, what: str, action: Callable[[SshBridge], _T]) -> _T:
        assert self.ssh is not None
        try:
            return action(self.ssh)
        except SshUnreachable as exc:
            raise DockerError(f"could not {what} on {self.engine.where} over ssh: {exc.reason}") from None


def forget_admin_dirs(prefix: str) -> list[Path]:
    """Remove the admin directories of proxies named ``prefix``* that were removed by other means than
    ``Proxy.remove`` (``docker rm -f``, a test's or benchmark's sweep); returns what it removed."""
    import shutil

    gone = sorted(_admin_base().glob(f"{prefix}*-*"))
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


class Proxy:
    """Keeps one environment's proxy container running with ``spec``'s configuration, and drains its
    backends through haproxy's runtime API."""

    def __init__(
        self, engine: DockerEngine, spec: ProxySpec, *, overlay: bool = False, pull_timeout_s: float = 600
    ) -> None:
        self.engine = engine
        self.spec = spec
        # How long pulling the proxy image may take, where the engine lacks it (ORCH_PULL_TIMEOUT_S).
        self.pull_timeout_s = pull_timeout_s
        self.host = EngineHost(engine)
        # Swarm services need a swarm-scoped (overlay) network; plain containers share a bridge.
        self.driver = "overlay" if overlay else "bridge"

    def ensure(self) -> ContainerInfo:
        """The proxy runs with this configuration: kept when it already does (the usual case, so a
        promotion never touches it), otherwise (re)created. Recreating drops the port for as long as
        haproxy takes to start; it happens only when the configuration itself changed (or its admin
        directory is gone: a reboot empties /run)."""
        text = render(self.spec)
        want = config_hash(text, self.spec.address)
        self.engine.ensure_network(self.spec.network, driver=self.driver, labels={ROLE_LABEL: "app-network"})
        current = self.engine.container(self.spec.name)
        if (
            current is not None
            and current.running
            and current.labels.get(CONFIG_LABEL) == want
            and self._admin_kept(current)
        ):
            return current
        if current is not None:
            self.remove()
        labels = {CONFIG_LABEL: want, ROLE_LABEL: "proxy"}
        if not self.spec.admin_socket:
            return self._run(text, labels)
        admin, user = self.host.make_admin_dir(self.spec.name)
        # As the user owning the directory (ours, or the ssh user's on a remote host), so the socket
        # haproxy creates is theirs (mode 600) in a directory nobody else may enter; binding the
        # unprivileged LISTEN needs no root.
        return self._run(text, {**labels, ADMIN_LABEL: admin}, user=user, binds={admin: ADMIN_DIR})

    def _admin_kept(self, current: ContainerInfo) -> bool:
        if not self.spec.admin_socket:
            return True
        admin = current.labels.get(ADMIN_LABEL)
        return admin is not None and self.host.has_dir(admin)

    def _run(
        self,
        text: str,
        labels: dict[str, str],
        *,
        user: str | None = None,
        binds: dict[str, str] | None = None,
    ) -> ContainerInfo:
        self._pull_if_missing()
        return self.engine.run(
            self.spec.name,
            self.spec.image,
            # -W: master-worker, so SIGTERM from `docker stop` ends it cleanly; -db: stay in the foreground.
            command=["-W", "-db", "-f", CONFIG_PATH],
            host_network=False,
            network=self.spec.network,
            publish={LISTEN: (self.spec.address, self.spec.port)},
            labels=labels,
            restart=True,
            files={CONFIG_PATH: text.encode()},
            user=user,
            binds=binds,
        )

    def _pull_if_missing(self) -> None:
        """``engine.run`` never pulls, and nothing else brings the proxy image to an engine: on a remote
        host (or a fresh one) the first proxy would fail with "image ... is not on this engine". Pulled
        here, by the engine that runs it, only when it lacks the image (one inspection per (re)creation,
        which is rare); an image already there is used as it is, never pulled again behind its back."""
        if self.engine.image(self.spec.image) is not None:
            return
        try:
            self.engine.pull(self.spec.image, timeout_s=self.pull_timeout_s)
        except DockerError as exc:
            raise DockerError(
                f"the proxy image {self.spec.image} is not on the engine ({self.engine.where}) and could not "
                f"be pulled there ({exc}): pull it on that host, or set proxy_image to an image its engine "
                "can pull"
            ) from None

    def remove(self) -> bool:
        """Take the proxy down (the environment stops answering); True when something was removed."""
        current = self.engine.container(self.spec.name)
        removed = self.engine.remove_container(self.spec.name)
        if current is not None and (admin := current.labels.get(ADMIN_LABEL)):
            self.host.remove_dir(admin)
        return removed

    # the runtime API ------------------------------------------------------------------------------

    def admin_socket(self) -> tuple[str, Path]:
        """The admin socket's path on the engine's host, and where this process connects to reach it:
        the same path here, a forward of it in the ssh connection's private directory for a remote
        host (recorded by the drain step, so a record shows which way it went)."""
        current = self.engine.container(self.spec.name)
        admin = current.labels.get(ADMIN_LABEL) if current is not None else None
        if current is None or not current.running or not admin:
            raise DockerError(f"the proxy {self.spec.name} is not running (or predates its admin socket)")
        path = f"{admin}/{ADMIN_SOCKET}"
        return path, self.host.socket(path)

    def admin(self, command: str) -> str:
        """One command on the admin socket, its whole answer."""
        path, local = self.admin_socket()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(5)
                conn.connect(str(local))
                conn.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise DockerError(
                f"the proxy {self.spec.name}'s admin socket {path} did not answer {command!r}: {exc}; "
                + self._why_no_answer()
            ) from exc
        # haproxy answers every command with at least a newline: nothing at all is a forward the host's
        # sshd closed at once (refused, or no socket there), which must not read as "no servers".
        if not chunks:
            raise DockerError(
                f"the proxy {self.spec.name}'s admin socket {path} gave no answer to {command!r}: "
                + self._why_no_answer()
            )
        return b"".join(chunks).decode(errors="replace")

    def _why_no_answer(self) -> str:
        if not self.host.remote:
            return f"see 'docker logs {self.spec.name}'"
        return self.host.refused() or (
            "its forward over the ssh connection was closed at once: the host's sshd refuses unix socket "
            "forwarding (allow it: AllowStreamLocalForwarding local), or the proxy made no socket (see "
            f"'docker logs {self.spec.name}' there)"
        )

    def servers(self) -> list[dict[str, str]]:
        """``show servers state`` of the backend: one dict per server slot (srv_name, srv_addr,
        srv_admin_state, ...)."""
        lines = [line for line in self.admin(f"show servers state {BACKEND}").splitlines() if line.strip()]
        header = next((line for line in lines if line.startswith("# ")), None)
        if header is None:
            return []
        names = header[2:].split()
        # The first line is the format's version (one number); every server line starts with be_id.
        rows = [line for line in lines if line[0].isdigit() and " " in line]
        return [dict(zip(names, row.split(), strict=False)) for row in rows]

    def checked_up(self, address: str) -> bool:
        """Whether haproxy's own health check has found the backend at ``address`` up (not merely
        resolved): only then may the backends it replaces leave."""
        return any(
            (s.get("srv_op_state"), s.get("srv_check_status"), s.get("srv_check_health"))
            == (_RUNNING, _L7OK, _FULL_HEALTH)
            for s in self.servers()
            if s.get("srv_addr") == address
        )

    def in_flight(self, servers: Iterable[str]) -> int:
        """Requests on ``servers`` now: being answered (scur) or queued for them (qcur)."""
        import csv

        wanted = set(servers)
        text = self.admin("show stat").removeprefix("# ")
        total = 0
        for row in csv.DictReader(text.splitlines()):
            if row.get("pxname") == BACKEND and row.get("svname") in wanted:
                total += int(row.get("scur") or 0) + int(row.get("qcur") or 0)
        return total

    def drain(self, address: str, *, timeout_s: float) -> Drained:
        """No new request for the backend at ``address``; wait (up to ``timeout_s``) until none it
        began is in flight. Its server keeps the drain state until ``undrain``: the container is stopped
        next, and a slot that came back to life would take requests again."""
        servers = tuple(s["srv_name"] for s in self.servers() if s.get("srv_addr") == address)
        for name in servers:
            self.admin(f"set server {BACKEND}/{name} state drain")
        started = time.monotonic()
        in_flight = left = self.in_flight(servers) if servers else 0
        while left and time.monotonic() - started < timeout_s:
            time.sleep(_DRAIN_POLL_S)
            left = self.in_flight(servers)
        return Drained(address, servers, in_flight, left, round(time.monotonic() - started, 3))

    def undrain(self) -> list[str]:
        """Every drained server slot back to ready: once its container is gone, haproxy gives the slot to
        whatever address DNS names next (the next release), which must take requests."""
        names = [s["srv_name"] for s in self.servers() if int(s.get("srv_admin_state") or 0) & _FDRAIN]
        for name in names:
            self.admin(f"set server {BACKEND}/{name} state ready")
        return names
