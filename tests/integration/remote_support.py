"""A second Docker engine reached over SSH, on this machine, for the remote-environment tests.

Two real engines on one host: a second ``dockerd`` with its own data root, exec root, pid file and unix
socket, its own bridge and no iptables rules: it must not touch the first engine's networking, and its
containers use host networking. Not ``--bridge=none``: a dockerd started that way deletes the host's
``docker0`` interface (moby's removeDefaultBridgeInterface), which breaks every bridged container of
the first engine; the bridge here is one made for the session (``orb<hex>``, 10.199.x.0/24) and
deleted with it. And Debian's ``sshd`` on a free loopback port with key authentication only, its own
host key and an ``authorized_keys`` of one key generated here. The engine also listens on
``tcp://127.0.0.1:<port>`` with ``--tlsverify`` (a CA, server and client certificate made by openssl
here), for the tcp:// + TLS path. sshd's ``SetEnv DOCKER_HOST`` points the
``docker system dial-stdio`` the SDK runs over ssh at the second engine's socket.

The client side never touches root's ~/.ssh: OpenSSH reads its config from the passwd home directory
(not $HOME), so ``bin/ssh`` here is a wrapper running the system ssh with ``-F`` a private config (the
key, a known_hosts holding the generated host key, StrictHostKeyChecking and BatchMode on). Putting
``bin`` first on PATH is what a test does to reach the engine, exactly as the SDK's ssh client path
would run ``ssh`` from PATH for an operator.

Everything is started by the session and torn down at its end: sshd and dockerd terminated (dockerd
stops its containers and its own containerd), the directories removed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.docker_engine import DockerEngine
from orchestrator.errors import InfraUnavailable

SSHD = Path("/usr/sbin/sshd")
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
SSH = shutil.which("ssh", path="/usr/bin:/bin") or "/usr/bin/ssh"
DOCKER0 = Path("/sys/class/net/docker0")  # the first engine's default bridge: must survive


class RemoteUnavailable(Exception):
    """The second engine or its sshd could not be started (missing binary, not root): a reason to skip."""


@dataclass(frozen=True)
class RemoteEngine:
    url: str  # ssh://root@127.0.0.1:<port>, what docker_host / ORCH_DOCKER_HOST_PROD take
    socket_url: str  # unix:///.../docker.sock: the test's own direct view of the second engine
    ssh_bin: Path  # put first on PATH to reach the engine through the private ssh config
    engine: DockerEngine  # connected through the socket, for assertions independent of the code under test
    port: int
    tls_url: str  # tcp://127.0.0.1:<port>: the same engine over TCP with mutual TLS
    tls_dir: Path  # ca.pem, cert.pem, key.pem: a client certificate the engine trusts
    sshd_log: Path  # one "Accepted publickey" line per ssh connection (handshake) made to the engine
    # The same sshd and engine on a second port whose connections may forward to the host's loopback
    # (AllowTcpForwarding local: zero_downtime's checks and drain); ``url``'s port refuses forwarding.
    forwarding_url: str = ""
    # A third port: TCP forwarding allowed, unix socket forwarding not (a half-open host).
    tcp_forwarding_url: str = ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = log.read_text(errors="replace")
            raise RemoteUnavailable(f"{what} exited with {proc.returncode}:\n{output}")
        if ready():
            return
        time.sleep(0.1)
    raise RemoteUnavailable(f"{what} did not come up in {timeout:g}s:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _quiet_exit_finalizers() -> None:
    """The in-process CLI calls of the tests leave some of the SDK's per-request ssh pools alive until
    interpreter exit, when their finalizers write to ssh processes that ended with the second engine:
    weakref's exit hook reports each BrokenPipe through sys.excepthook. Only that report is dropped (a
    CLI run as its own process exits clean: test_remote.py checks its stderr)."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not (isinstance(value, BrokenPipeError) and "sshconn" in "".join(traceback.format_tb(tb))):
            previous(kind, value, tb)

    sys.excepthook = hook


def _unmount_under(root: Path) -> None:
    """dockerd leaves its default network namespace bind-mounted (<exec-root>/netns/default) after it
    stops; without unmounting, the directory cannot be removed and the mount outlives the session."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", mount], check=False, capture_output=True)


def _certificates(folder: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as `dockerd --tlsverify`
    and a tcp:// client need them (openssl, 2048-bit RSA, one day)."""
    folder.mkdir(mode=0o700)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=orchestrator-test-ca", "-keyout", "ca-key.pem", "-out", "ca.pem")  # fmt: skip
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        key = "key.pem" if name == "client" else f"{name}-key.pem"
        cert = "cert.pem" if name == "client" else f"{name}-cert.pem"
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key,
                "-out", f"{name}.csr")  # fmt: skip
        (folder / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", cert)  # fmt: skip


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orchestrator-tests", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def copy_image(remote: RemoteEngine, tag: str) -> None:
    """This machine's engine's image ``tag`` onto the second engine under that tag (it has no Docker Hub
    either). Saved by that tag: ``Image.save`` names it by its first tag, which may be another
    session's (a byte-identical image has one id for all)."""
    import docker

    local, other = docker.from_env(timeout=300), docker.DockerClient(base_url=remote.socket_url, timeout=300)
    try:
        other.images.load(b"".join(local.api.get_image(tag)))
    finally:
        local.close()
        other.close()


def routed_network(remote: RemoteEngine, name: str, labels: dict[str, str]) -> Callable[[], None]:
    """Make the bridge network ``name`` on the second engine, with a bridge of our own name, and let
    traffic within that one bridge through the host's FORWARD chain; returns what undoes the rule (the
    network goes with the engine, or with whoever removes it).

    Why: the second engine runs with ``--iptables=false`` on the host of the first, whose FORWARD policy
    is DROP with bridged traffic passed to iptables (br_netfilter): packets between two containers of a
    bridge the first engine does not know are dropped. A real remote host's engine manages its own
    rules. The rule (in DOCKER-USER, meant for this) admits only traffic that enters and leaves that
    bridge, as the first engine does for its own bridges. The orchestrator keeps a network that exists,
    so making it first is enough for what it later creates on it. Call the undo once the network is
    removed or its engine stopped: it also deletes the bridge interface a stopped engine leaves."""
    import docker

    bridge = f"orz{uuid.uuid4().hex[:8]}"
    client = docker.DockerClient(base_url=remote.socket_url)
    try:
        client.networks.create(
            name, driver="bridge", labels=labels, options={"com.docker.network.bridge.name": bridge}
        )
    finally:
        client.close()
    rule = ["DOCKER-USER", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)

    def undo() -> None:
        subprocess.run(["iptables", "-D", *rule], check=False, capture_output=True)
        # A network still there when its engine stopped keeps its bridge interface on the host.
        if Path(f"/sys/class/net/{bridge}").exists():
            subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)

    return undo


def _start_sshd(
    root: Path, docker_host: str, *, forwarding: bool = False
) -> tuple[int, Path, subprocess.Popen[bytes], Path, tuple[int, int]]:
    """A key-only sshd on a free loopback port whose sessions get ``DOCKER_HOST=docker_host``, and the
    client side under ``root``: (port, ``bin`` holding the ``ssh`` wrapper, the sshd process, its log,
    the forwarding ports). The main port refuses forwarding; with ``forwarding`` two more ports of the
    same sshd allow it: the first TCP and unix-socket forwarding (zero_downtime's checks and drain),
    the second TCP only (a half-open host). The caller stops the process (``_stop``)."""
    ssh_dir = root / "ssh"
    ssh_dir.mkdir(mode=0o700)
    _keygen(ssh_dir / "host_key")
    _keygen(ssh_dir / "client_key")
    shutil.copyfile(ssh_dir / "client_key.pub", ssh_dir / "authorized_keys")
    (ssh_dir / "authorized_keys").chmod(0o600)
    port = _free_port()
    extra = (_free_port(), _free_port()) if forwarding else ()
    (ssh_dir / "sshd_config").write_text(
        f"Port {port}\n" + "".join(f"Port {p}\n" for p in extra) + "ListenAddress 127.0.0.1\n"
        f"HostKey {ssh_dir / 'host_key'}\n"
        f"PidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {ssh_dir / 'authorized_keys'}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "AllowTcpForwarding no\n"
        "X11Forwarding no\n"
        f"SetEnv DOCKER_HOST={docker_host}\n"
        "AllowStreamLocalForwarding no\n"
        + (
            f"Match LocalPort {extra[0]}\n"
            "  AllowTcpForwarding local\n"
            "  AllowStreamLocalForwarding local\n"
            f"Match LocalPort {extra[1]}\n"
            "  AllowTcpForwarding local\n"
            if extra
            else ""
        ),
        encoding="utf-8",
    )
    # sshd's privilege separation directory (Debian creates it when the service starts).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd_log = root / "sshd.log"
    with sshd_log.open("wb") as out:
        sshd = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(ssh_dir / "sshd_config")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def sshd_listens() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        _wait("sshd", sshd_listens, sshd, sshd_log)
    except BaseException:
        _stop(sshd)
        raise
    host_key = (ssh_dir / "host_key.pub").read_text().split()
    (ssh_dir / "known_hosts").write_text(
        "".join(f"[127.0.0.1]:{p} {host_key[0]} {host_key[1]}\n" for p in (port, *extra))
    )
    (ssh_dir / "ssh_config").write_text(
        "Host 127.0.0.1\n"
        f"  IdentityFile {ssh_dir / 'client_key'}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {ssh_dir / 'known_hosts'}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 10\n"
        "  LogLevel ERROR\n",
        encoding="utf-8",
    )
    bin_dir = root / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {SSH} -F {ssh_dir / "ssh_config"} "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    return port, bin_dir, sshd, sshd_log, (extra[0], extra[1]) if extra else (0, 0)


@dataclass(frozen=True)
class SshEngine:
    """An engine that is already running (the suite's own) reached over ssh: what a swarm manager on
    another host looks like to the orchestrator, with no second engine (a swarm needs the first)."""

    url: str  # ssh://root@127.0.0.1:<port>
    ssh_bin: Path  # put first on PATH to reach the engine through the private ssh config
    port: int
    sshd_log: Path  # one "Accepted publickey" line per ssh connection (handshake)


@contextlib.contextmanager
def ssh_to_engine(root: Path, docker_host: str = "unix:///var/run/docker.sock") -> Iterator[SshEngine]:
    """An sshd like ``remote_engine``'s whose sessions reach ``docker_host`` (this machine's engine by
    default); stopped and ``root`` removed at the end. Starts no dockerd."""
    if os.geteuid() != 0:
        raise RemoteUnavailable("sshd needs root")
    for binary in (SSHD, Path(SSH)):
        if not binary.is_file():
            raise RemoteUnavailable(f"{binary} is missing (apt-get install -y openssh-server)")
    root.mkdir(parents=True, exist_ok=True)
    sshd: subprocess.Popen[bytes] | None = None
    try:
        port, bin_dir, sshd, sshd_log, _ = _start_sshd(root, docker_host)
        yield SshEngine(f"ssh://root@127.0.0.1:{port}", bin_dir, port, sshd_log)
    finally:
        gc.collect()
        _quiet_exit_finalizers()
        _stop(sshd)
        shutil.rmtree(root, ignore_errors=True)


HAPROXY = Path("/usr/sbin/haproxy")


@dataclass(frozen=True)
class TlsFront:
    """An engine that is already running (the suite's own, a swarm manager) reached over ``tcp://`` with
    mutual TLS: what a manager started with ``-H tcp://... --tlsverify`` on another host looks like to
    the orchestrator, without restarting the suite's engine."""

    url: str  # tcp://127.0.0.1:<port>
    tls_dir: Path  # ca.pem, cert.pem, key.pem: a client certificate the front requires
    port: int
    stats_socket: Path  # haproxy's runtime API: `show stat` counts the sessions that passed TLS
    log: Path  # one "engine_tls/1: <reason>" line per connection refused at the TLS handshake

    def sessions(self) -> int:
        """Connections that completed the TLS handshake with a client certificate the CA signed and were
        forwarded to the engine (the frontend's cumulative sessions)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(str(self.stats_socket))
            conn.sendall(b"show stat\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode().removeprefix("# ").splitlines()
        names = lines[0].split(",")
        for line in lines[1:]:
            row = dict(zip(names, line.split(","), strict=False))
            if row.get("svname") == "FRONTEND":
                return int(row["stot"] or 0)
        raise AssertionError(f"no FRONTEND row in haproxy's stats: {lines}")

    def handshake_failures(self) -> int:
        """Connections refused before anything reached the engine (haproxy logs them as
        ``engine_tls/1: <reason>``: a certificate not trusted, no TLS at all, ...; a forwarded session
        as ``engine_tls~ engine/engine``)."""
        return self.log.read_text(errors="replace").count(" engine_tls/1: ")


@contextlib.contextmanager
def tls_front(root: Path, engine_socket: str = "/var/run/docker.sock") -> Iterator[TlsFront]:
    """Debian's haproxy on a free loopback port, TLS only, requiring a client certificate the session's
    CA signed (``verify required``), each connection forwarded byte for byte (mode tcp: hijacked
    streams, attach and logs included) to ``engine_socket``; stopped and ``root`` removed at the end.
    Starts no dockerd."""
    if os.geteuid() != 0:
        raise RemoteUnavailable("the engine's socket needs root")
    if not HAPROXY.is_file():
        raise RemoteUnavailable(f"{HAPROXY} is missing (apt-get install -y haproxy)")
    root.mkdir(parents=True, exist_ok=True)
    proc: subprocess.Popen[bytes] | None = None
    try:
        tls_dir = root / "tls"
        _certificates(tls_dir)
        server = tls_dir / "server.pem"  # haproxy takes the certificate and its key in one file
        server.write_bytes(
            (tls_dir / "server-cert.pem").read_bytes() + (tls_dir / "server-key.pem").read_bytes()
        )
        port = _free_port()
        stats = root / "stats.sock"
        config = root / "haproxy.cfg"
        config.write_text(
            "global\n"
            "  log stdout format raw local0 info\n"
            f"  stats socket {stats} mode 600 level admin\n"
            "defaults\n"
            "  mode tcp\n"
            "  log global\n"
            "  option tcplog\n"
            "  timeout connect 5s\n"
            # An engine request may stream for long (events, logs, a pull): no idle cut-off shorter
            # than what the SDK's own timeout allows.
            "  timeout client 1h\n"
            "  timeout server 1h\n"
            "frontend engine_tls\n"
            f"  bind 127.0.0.1:{port} ssl crt {server} ca-file {tls_dir / 'ca.pem'} verify required\n"
            "  default_backend engine\n"
            "backend engine\n"
            f"  server engine {engine_socket}\n",
            encoding="utf-8",
        )
        log = root / "haproxy.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(HAPROXY), "-db", "-f", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def listens() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.5)
                return probe.connect_ex(("127.0.0.1", port)) == 0 and stats.exists()

        _wait("haproxy (the TLS front)", listens, proc, log)
        yield TlsFront(f"tcp://127.0.0.1:{port}", tls_dir, port, stats, log)
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def remote_engine(root: Path) -> Iterator[RemoteEngine]:
    """Start the second engine and its sshd under ``root``; stop both and remove ``root`` at the end."""
    if os.geteuid() != 0:
        raise RemoteUnavailable("a second dockerd and sshd need root")
    for binary in (SSHD, Path(DOCKERD), Path(SSH)):
        if not binary.is_file():
            raise RemoteUnavailable(f"{binary} is missing (apt-get install -y openssh-server docker.io)")
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    bridge = f"orb{uuid.uuid4().hex[:8]}"
    had_docker0 = DOCKER0.exists()
    bridge_made = False
    dockerd: subprocess.Popen[bytes] | None = None
    sshd: subprocess.Popen[bytes] | None = None
    engine: DockerEngine | None = None
    try:
        subnet = f"10.199.{int(bridge[3:7], 16) % 250 + 1}"
        for argv in (
            ["ip", "link", "add", "name", bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{subnet}.1/24", "dev", bridge],
            ["ip", "link", "set", bridge, "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)
            bridge_made = True
        tls_dir = root / "tls"
        _certificates(tls_dir)
        tls_port = _free_port()
        dockerd_log = root / "dockerd.log"
        with dockerd_log.open("wb") as out:
            dockerd = subprocess.Popen(
                [
                    DOCKERD,
                    "--data-root", str(root / "data"),
                    "--exec-root", str(root / "exec"),
                    "--pidfile", str(root / "dockerd.pid"),
                    "-H", f"unix://{sock}",
                    "-H", f"tcp://127.0.0.1:{tls_port}",
                    "--tlsverify",
                    "--tlscacert", str(tls_dir / "ca.pem"),
                    "--tlscert", str(tls_dir / "server-cert.pem"),
                    "--tlskey", str(tls_dir / "server-key.pem"),
                    "--bridge", bridge,
                    "--iptables=false",
                    "--ip-masq=false",
                    "--ip-forward=false",
                    "--log-level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

        def engine_answers() -> bool:
            try:
                DockerEngine.connect(f"unix://{sock}", timeout=5).close()
            except InfraUnavailable:
                return False
            return True

        _wait("the second dockerd", engine_answers, dockerd, dockerd_log)
        if had_docker0 and not DOCKER0.exists():
            raise AssertionError(
                "starting the second dockerd removed the host's docker0: the first engine's bridged "
                "containers are broken until it is recreated"
            )
        engine = DockerEngine.connect(f"unix://{sock}", timeout=60)

        port, bin_dir, sshd, sshd_log, (forwarding_port, tcp_port) = _start_sshd(
            root, f"unix://{sock}", forwarding=True
        )
        yield RemoteEngine(
            f"ssh://root@127.0.0.1:{port}",
            f"unix://{sock}",
            bin_dir,
            engine,
            port,
            f"tcp://127.0.0.1:{tls_port}",
            tls_dir,
            sshd_log,
            f"ssh://root@127.0.0.1:{forwarding_port}",
            f"ssh://root@127.0.0.1:{tcp_port}",
        )
    finally:
        if engine is not None:
            engine.close()
        # The SDK's ssh transport leaves a pool per request to the garbage collector; collected while
        # sshd still runs, their ssh processes end quietly instead of with a BrokenPipe at exit.
        gc.collect()
        _quiet_exit_finalizers()
        _stop(sshd)
        _stop(dockerd, timeout=60)
        if bridge_made:
            subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
