"""The shared ssh connection of a remote engine (orchestrator/ssh.py): the options it passes, and that a
host that never answers is given up within the connect timeout with nothing left behind. These run the
real ssh client against loopback sockets that never speak; the engine behind a working connection is
tested with two real engines (tests/integration/test_remote.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.errors import BadInput
from orchestrator.ssh import (
    SshBridge,
    SshDestination,
    SshOptions,
    SshUnreachable,
    _before_host,
    _reason,
    sh,
    ssh_argv,
    sweep_stale,
)

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")


def option(argv: list[str], name: str) -> str | None:
    values = [
        argv[i + 1].split("=", 1)[1]
        for i, a in enumerate(argv[:-1])
        if a == "-o" and argv[i + 1].startswith(f"{name}=")
    ]
    return values[0] if values else None


def test_the_master_is_bounded_shared_and_ends_with_us() -> None:
    """Hazard: a master that waits on TCP's minutes for a dead host, outlives the command
    (ControlPersist), or a host that an argv could read as an option."""
    dest = SshDestination.parse("ssh://deploy@prod-1.example.com:2222")
    argv = ssh_argv("ssh", dest, Path("/tmp/orch-ssh-1-x/master"), SshOptions(10), master=True)
    assert argv[0] == "ssh" and argv[-2:] == ["--", "prod-1.example.com"]
    assert argv[argv.index("-l") : argv.index("-l") + 2] == ["-l", "deploy"]
    assert argv[argv.index("-p") : argv.index("-p") + 2] == ["-p", "2222"]
    assert "-M" in argv and "-N" in argv
    assert option(argv, "ControlMaster") == "yes" and option(argv, "ControlPersist") == "no"
    assert option(argv, "ControlPath") == "/tmp/orch-ssh-1-x/master"
    assert option(argv, "ConnectTimeout") == "10"
    assert (option(argv, "ServerAliveInterval"), option(argv, "ServerAliveCountMax")) == ("4", "3")


def test_the_master_logs_what_a_refused_forward_says() -> None:
    """Hazard: a host whose sshd refuses forwarding, seen only as checks that never answer. ssh logs the
    refusal at INFO, which a LogLevel ERROR in ~/.ssh/config would hide: the master asks for INFO (its log
    is ours alone, read for forward_refused and a failure's reason)."""
    dest = SshDestination.parse("ssh://deploy@prod-1.example.com")
    assert option(ssh_argv("ssh", dest, Path("/m"), SshOptions(), master=True), "LogLevel") == "INFO"
    assert option(ssh_argv("ssh", dest, Path("/m"), SshOptions()), "LogLevel") is None


def test_control_commands_and_remote_scripts_keep_the_host_last() -> None:
    """``-O forward -L spec`` goes before ``-- host`` (after it, ssh would run it as a command), and a
    script reaches the host's login shell, whatever it is, as one ``sh -c`` word."""
    dest = SshDestination.parse("ssh://deploy@prod-1.example.com")
    argv = _before_host(ssh_argv("ssh", dest, Path("/m"), SshOptions()), "-O", "forward", "-L", "a:b")
    assert argv[-6:] == ["-O", "forward", "-L", "a:b", "--", "prod-1.example.com"]
    assert sh("umask 077; echo '$HOME'") == """sh -c 'umask 077; echo '"'"'$HOME'"'"''"""


def test_a_session_rides_the_master() -> None:
    dest = SshDestination.parse("ssh://prod-1")
    argv = ssh_argv("ssh", dest, Path("/d/master"), SshOptions(2.5))
    assert "-M" not in argv and "-N" not in argv and "-l" not in argv and "-p" not in argv
    assert option(argv, "ControlMaster") == "no" and option(argv, "ControlPath") == "/d/master"
    assert option(argv, "ConnectTimeout") == "3"  # whole seconds, rounded up, never 0
    assert option(argv, "ServerAliveInterval") == "1"
    assert argv[-2:] == ["--", "prod-1"]


REFUSED = "ssh: connect to host 10.0.0.1 port 22: Connection refused"
DENIED = "deploy@h: Permission denied (publickey)."


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (REFUSED + "\n", REFUSED),
        ('Load key "/root/.ssh/id_ed25519": bad permissions\n' + DENIED + "\n", DENIED),
        ("Warning: Identity file /home/x/.ssh/id_rsa not accessible: No such file or directory.\n", None),
        ("", None),
    ],
)
def test_the_reason_is_ssh_s_last_word_without_file_names(stderr: str, reason: str | None) -> None:
    """Hazard: a key's path (or anything read from a key file) in an error message, a log or --json."""
    assert _reason(stderr) == reason


def test_settings_bound_and_switch_the_transport(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_config(env={}).settings
    assert settings.engine_connect_timeout_s == 15.0 and settings.ssh_multiplex is True
    env = {"ORCH_ENGINE_CONNECT_TIMEOUT_S": "2.5", "ORCH_SSH_MULTIPLEX": "false"}
    settings = load_config(env=env).settings
    assert settings.engine_connect_timeout_s == 2.5 and settings.ssh_multiplex is False
    with pytest.raises(BadInput, match="ORCH_ENGINE_CONNECT_TIMEOUT_S"):
        load_config(env={"ORCH_ENGINE_CONNECT_TIMEOUT_S": "0"})


def test_what_a_killed_process_left_is_swept_and_nothing_else(tmp_path: Path) -> None:
    """Hazard: SIGKILL leaves the private directory behind (its ssh processes die with us, the files do
    not); the next connection removes it, but never a live process's directory."""
    child = subprocess.Popen(["true"])
    child.wait()
    stale = tmp_path / f"orch-ssh-{child.pid}-abc"
    live = tmp_path / f"orch-ssh-{os.getpid()}-def"
    other = tmp_path / "orch-ssh-notapid-ghi"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / "master.log").write_text("x")
    assert sweep_stale(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


@pytest.fixture
def silent_host() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word (a host whose packets go nowhere
    after the handshake, or a firewall that answers SYNs)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A loopback port whose accept queue is full: further SYNs are dropped, as for a blackholed host."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    queued = []
    for _ in range(3):
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        queued.append(client)
    yield port
    for client in queued:
        client.close()
    server.close()


def leftovers(before: set[str]) -> tuple[list[str], list[str]]:
    """ssh processes whose argv names one of our private directories, and those directories, that
    were not there ``before``."""
    procs = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"orch-ssh-{os.getpid()}-" in cmdline:
            procs.append(cmdline)
    dirs = [str(p) for p in Path("/tmp").glob(f"orch-ssh-{os.getpid()}-*") if str(p) not in before]
    return procs, dirs


@needs_ssh
@pytest.mark.parametrize("host", ["silent_host", "full_backlog"])
def test_a_host_that_never_answers_is_given_up_within_the_timeout(
    host: str, request: pytest.FixtureRequest
) -> None:
    """Hazard: a blackholed prod host hanging a deploy (and its lock) forever. The master is given up
    after the connect timeout with a reason; no ssh process and no file is left."""
    port = request.getfixturevalue(host)
    before = {str(p) for p in Path("/tmp").glob("orch-ssh-*")}
    with pytest.raises(SshUnreachable) as caught:
        SshBridge(f"ssh://deploy@127.0.0.1:{port}", SshOptions(1))
    reason = caught.value.reason
    assert "within 1 s" in reason or "timed out" in reason, reason
    assert leftovers(before) == ([], [])


SIGTERM_IN_AFTER_FORK = """
import os, signal, subprocess, sys
import logging  # registers an after-fork callback, as in the CLI
from orchestrator import ssh
from orchestrator.lifecycle import Interrupted

armed = [True]

def after_fork_in_parent():
    if armed[0]:
        armed[0] = False
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # Python code after the signal: its handler runs here, inside the callback
            pass

os.register_at_fork(after_in_parent=after_fork_in_parent)

def handler(signum, frame):
    raise Interrupted(signum)

signal.signal(signal.SIGTERM, handler)
try:
    proc = ssh._spawn(["sleep", sys.argv[1]], stdin=subprocess.DEVNULL)
except Interrupted as exc:
    print("interrupted", exc.exit_code)
else:
    print("went on")
    proc.kill()
"""


def test_a_sigterm_during_the_spawn_of_ssh_is_not_dropped() -> None:
    """Hazard: SIGTERM (a cancelled CI job) handled inside the fork's after-fork callbacks, where Python
    prints the exception and drops it: `status` went on waiting for a host that never answered. The
    exception is raised once ssh is started, and that ssh is ended."""
    marker = "30.4711"  # a sleep of our own, to find it among the machine's processes
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_IN_AFTER_FORK, marker], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "interrupted 143", done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if _read(p) == f"sleep\0{marker}\0"]
    assert not left, "the ssh started while the signal was handled still runs"


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
