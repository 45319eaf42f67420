"""Zero-downtime promotion and rollback with prod on a remote engine reached over ssh (issue 14).

Staging runs on the suite's engine, prod on the second dockerd behind the key-only sshd (remote_support),
on the sshd port that allows forwarding to the host's loopback (``forwarding_url``). The new release is
checked on a port published on the remote host's loopback, reached through the engine's one ssh
connection (a forward of its master), and the old one is drained through the proxy's admin socket on
the remote host, forwarded the same way (orchestrator/proxy.py EngineHost). The "remote" host is this
machine, so a forward that was skipped would not show in the client loop: the recorded steps say how the
host's loopback was reached, and the drain's counts show it asked the remote proxy.

Before this, ``zero_downtime`` with a remote ``docker_host`` was refused at load (exit 2).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import pytest
from client_loop import client_loop, slow_client_loop
from remote_support import copy_image, routed_network
from test_remote import handshakes, ssh_dirs, ssh_leftovers, sweep_remote
from test_zero_downtime import assert_serves, backends, commit, killed_then_recovered, zero_downtime

from orchestrator.proxy import ADMIN_LABEL, forget_admin_dirs

if TYPE_CHECKING:
    from conftest import BusyboxApp
    from remote_support import RemoteEngine

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def remote_haproxy_image(haproxy_image: str, remote_engine: RemoteEngine) -> Iterator[str]:
    """The suite's haproxy image, copied onto the second engine."""
    copy_image(remote_engine, haproxy_image)
    yield haproxy_image
    remote_engine.engine.remove_image(haproxy_image)


@pytest.fixture
def remote_client(remote_engine: RemoteEngine) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=remote_engine.socket_url)
    yield client
    client.close()


def sweep_zero_downtime(client: docker.DockerClient, app: str) -> None:
    """Every container and network of ``app`` on one engine, and the proxies' admin directories (the
    remote host is this machine: both engines' directories are under this machine's /run)."""
    for container in client.containers.list(all=True, filters={"name": f"^/{app}-"}, sparse=True):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    for network in client.networks.list():
        if network.name.startswith(f"{app}-"):
            network.remove()
    forget_admin_dirs(f"{app}-")


@pytest.fixture
def serving_network(remote_engine: RemoteEngine) -> Iterator[Any]:
    """Makes ``<app>-prod`` on the second engine routable between its containers (see
    remote_support.routed_network: a quirk of two engines on one host, not of a remote one)."""
    undo: list[Any] = []
    yield lambda app: undo.append(
        routed_network(remote_engine, f"{app}-prod", {"orchestrator.role": "app-network"})
    )
    for step in undo:
        step()


def prod_on(app: BusyboxApp, url: str, monkeypatch: pytest.MonkeyPatch, remote: RemoteEngine) -> None:
    monkeypatch.setenv("ORCH_DOCKER_HOST_PROD", url)
    monkeypatch.setenv("PATH", f"{remote.ssh_bin}:{os.environ['PATH']}")


@pytest.fixture
def app(
    registry_app: BusyboxApp,
    remote_engine: RemoteEngine,
    remote_haproxy_image: str,
    remote_client: docker.DockerClient,
    docker_client: docker.DockerClient,
    serving_network: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[BusyboxApp]:
    """``registry_app`` behind the proxy, prod on the second engine through the forwarding sshd port."""
    zero_downtime(registry_app, remote_haproxy_image)
    serving_network(registry_app.name)
    prod_on(registry_app, remote_engine.forwarding_url, monkeypatch, remote_engine)
    yield registry_app
    sweep_zero_downtime(remote_client, registry_app.name)
    sweep_zero_downtime(docker_client, registry_app.name)
    sweep_remote(remote_engine, registry_app.name)


def prod_loop(app: BusyboxApp) -> Any:
    """The client loop (every 20 ms) on prod's port of the remote host."""
    return client_loop(f"http://127.0.0.1:{app.port('prod')}/version")


def step(steps: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [s for s in steps if s["name"] == name]
    assert len(found) == 1, [s["name"] for s in steps]
    return found[0]


def assert_through_ssh(app: BusyboxApp, remote: RemoteEngine, steps: list[dict[str, Any]]) -> None:
    """The new release was checked, taken over and the old one drained through the ssh connection:
    the candidate's check went to a forwarded local port (not the port the remote host published), and
    the drain asked the remote proxy, which named the old release's server and saw none left."""
    via = f"ssh root@127.0.0.1:{remote.forwarding_url.rsplit(':', 1)[1]}"
    start = step(steps, "prod_start")["changes"]
    assert start["via"] == via, start
    assert start["checked_at"] != f"http://127.0.0.1:{start['port']}", start  # a forward, not the port
    takeover = step(steps, "prod_takeover")["changes"]
    assert takeover["via"] == via and str(app.port("prod")) not in takeover["checked_at"], takeover
    drain = step(steps, "prod_drain")
    assert drain["status"] != "failed", drain
    assert drain["changes"]["via"] == via and drain["changes"]["servers"], drain
    # Asked through the socket's forward in the ssh connection's private directory, not the path on
    # the host (which, the host being this machine, would also answer).
    assert "/orch-ssh-" in drain["changes"]["admin_socket"], drain
    assert drain["changes"]["left"] == 0, drain


def test_promotion_and_rollback_on_the_remote_engine_cost_no_request(
    app: BusyboxApp, remote_engine: RemoteEngine, remote_client: docker.DockerClient
) -> None:
    """Hazard: a remote prod that drops requests while it changes release, or that runs something else
    than staging verified. A client every 20 ms on the remote prod port sees no failure during the
    promotion and the rollback; the remote engine runs the very image (by registry digest) staging
    verified; the promotion makes one ssh handshake and leaves no ssh process, forward or directory."""
    old = commit(app, "old")
    app.deploy(old)
    first = assert_serves(remote_client, app, "prod", old)
    assert app.engine.container(f"{app.name}-prod-proxy") is None  # prod's proxy is not on this engine

    new = commit(app, "new")
    run_id = app.start(new)
    app.advance(run_id, "deploy-staging").ok()
    before_dirs, before = ssh_dirs(), handshakes(remote_engine)
    with prod_loop(app) as promotion:
        result = app.advance(run_id, "deploy").ok()
    assert result["state"] == "deploy", result
    assert handshakes(remote_engine) - before == 1, remote_engine.sshd_log.read_text()[-3000:]
    assert ssh_leftovers(before_dirs) == ([], [])
    assert promotion.failed == [], promotion.summary()
    assert promotion.bodies == {old, new}, "the loop saw the old release, then the new one"
    second = assert_serves(remote_client, app, "prod", new)
    assert second.id != first.id

    shown = app.show(run_id)
    staged = [r for r in shown["releases"] if r["environment"] == "staging"][-1]
    released = [r for r in shown["releases"] if r["environment"] == "prod"][-1]
    assert released["image_id"] == staged["image_id"] == second.attrs["Image"]
    assert released["digest"] in remote_client.images.get(second.attrs["Image"]).attrs["RepoDigests"]
    assert_through_ssh(app, remote_engine, shown["transitions"][-1]["steps"])

    with prod_loop(app) as rollback:
        back = app.cli("rollback", app.name, "--env", "prod", as_json=True).ok()
    assert back["to_release"]["revision"] == old, back
    assert rollback.failed == [], rollback.summary()
    assert rollback.bodies == {new, old}
    assert_serves(remote_client, app, "prod", old)


def test_a_request_in_flight_on_the_remote_engine_finishes_on_its_release(
    app: BusyboxApp, remote_engine: RemoteEngine, remote_client: docker.DockerClient
) -> None:
    """The old release is stopped while it answers slow requests: drained first through the remote
    proxy's admin socket (forwarded over ssh), each completes from the release that began it. Were the
    drain out of reach, the step would fail and the release be stopped mid-answer (a cut response)."""
    old = commit(app, "old")
    app.deploy(old)
    new = commit(app, "new")
    run_id = app.start(new)
    app.advance(run_id, "deploy-staging").ok()

    with slow_client_loop(f"http://127.0.0.1:{app.port('prod')}/cgi-bin/slow") as slow:
        app.advance(run_id, "deploy").ok()
    assert slow.failed == [], slow.summary()
    assert f"{old}\n{old}" in slow.bodies, slow.bodies
    steps = app.show(run_id)["transitions"][-1]["steps"]
    assert_through_ssh(app, remote_engine, steps)
    assert step(steps, "prod_drain")["changes"]["in_flight"] >= 1, step(steps, "prod_drain")
    assert_serves(remote_client, app, "prod", new)


def test_admin_dirs_of_a_proxy_removed_outside_are_cleaned_on_its_next_creation(
    app: BusyboxApp, remote_client: docker.DockerClient
) -> None:
    """A proxy removed by ``docker rm -f`` leaves its admin directory on the host; the next promotion
    recreates the proxy with a new directory and removes the one left behind (0700, the ssh user's)."""
    app.deploy(commit(app, "first"))
    proxy = remote_client.containers.get(f"{app.name}-prod-proxy")
    left = Path(proxy.labels[ADMIN_LABEL])
    assert left.is_dir() and left.stat().st_mode & 0o777 == 0o700, left
    proxy.remove(force=True)

    run_id = app.deploy(commit(app, "second"))
    recreated = remote_client.containers.get(f"{app.name}-prod-proxy")
    now = Path(recreated.labels[ADMIN_LABEL])
    assert now != left and now.is_dir() and not left.exists(), (left, now)
    assert recreated.attrs["Config"]["User"] == f"{os.geteuid()}:{os.getegid()}"
    proxy_step = step(app.show(run_id)["transitions"][-1]["steps"], "prod_proxy")
    assert proxy_step["changes"]["recreated"] is True, proxy_step


def test_a_host_whose_sshd_refuses_forwarding_fails_before_anything_starts(
    app: BusyboxApp,
    remote_engine: RemoteEngine,
    remote_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sshd port of ``remote_engine.url`` forbids forwarding: the prod edge fails at its proxy step
    naming the sshd settings to change, no release is started there, and prod answers nothing new."""
    prod_on(app, remote_engine.url, monkeypatch, remote_engine)
    run_id = app.start(commit(app, "refused"))
    app.advance(run_id, "deploy-staging").ok()
    result = app.advance(run_id, "deploy")
    assert result.exit_code != 0, result.describe()
    assert "AllowTcpForwarding" in result.stdout + result.stderr, result.describe()
    assert backends(remote_client, app, "prod") == []
    steps = app.show(run_id)["transitions"][-1]["steps"]
    failed = step(steps, "prod_proxy")
    assert failed["status"] == "failed" and "AllowTcpForwarding" in str(failed), failed
    assert "prod_start" not in [s["name"] for s in steps]


def test_zero_downtime_on_a_tcp_engine_is_refused_naming_ssh(
    app: BusyboxApp, remote_engine: RemoteEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ssh connection to forward through: refused at load (exit 2), naming ssh:// as the way."""
    monkeypatch.setenv("ORCH_DOCKER_HOST_PROD", remote_engine.tls_url)
    message = app.cli("status", app.name, as_json=True).error(2, "bad_input")
    assert "tcp://" in message and "ssh://user@host" in message, message


def test_a_runner_killed_mid_hand_over_on_the_remote_engine_is_settled_by_recover(
    app: BusyboxApp, remote_engine: RemoteEngine, remote_client: docker.DockerClient, store: Store
) -> None:
    """SIGKILL with the new release in the alias beside the old one (two serving): ``recover``, a new
    process with its own ssh connection, takes the new one over, drains and retires the old one through
    that connection, and prod answers throughout."""
    killed_then_recovered(app, store, remote_client, "after:prod_connect", serves_new=True)


def test_a_host_that_refuses_unix_socket_forwarding_fails_the_takeover_saying_so(
    app: BusyboxApp,
    remote_engine: RemoteEngine,
    remote_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TCP forwarding allowed, unix socket forwarding not: the proxy's admin socket is out of reach, so
    whether haproxy checked the new release up cannot be known. The hand-over fails naming the sshd
    setting (an empty answer is never read as "no servers"), and the release is removed."""
    prod_on(app, remote_engine.tcp_forwarding_url, monkeypatch, remote_engine)
    run_id = app.start(commit(app, "half-open"))
    app.advance(run_id, "deploy-staging").ok()
    result = app.advance(run_id, "deploy")
    assert result.exit_code != 0, result.describe()
    assert "AllowStreamLocalForwarding" in result.stdout, result.describe()
    steps = app.show(run_id)["transitions"][-1]["steps"]
    failed = step(steps, "prod_takeover")
    assert failed["status"] == "failed" and "AllowStreamLocalForwarding" in str(failed), failed
    assert step(steps, "prod_start")["status"] != "failed"  # its checks went through the TCP forward
    assert backends(remote_client, app, "prod") == []
