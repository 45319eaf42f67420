"""Zero-downtime redeploy of staging on a remote engine reached over ssh (issue 14).

test_remote_zero_downtime.py has prod on the second engine behind its kept proxy; here it is staging:
staging on the second dockerd (remote_support) through the sshd port that allows forwarding
(``forwarding_url``), prod on the suite's engine. The build runs where staging is (the default build
engine), so prod gets the image through the suite's loopback registry, by digest. While staging is
redeployed, a client every 20 ms on staging's port of the remote host counts every failed request; the
recorded steps of the staging edge say the new release was checked and the old one drained through the
engine's ssh connection (the remote host is this machine, so a skipped forward would not show in the
client loop alone).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import docker
import pytest
from client_loop import client_loop, slow_client_loop
from remote_support import routed_network
from test_remote import handshakes, sweep_remote
from test_remote_zero_downtime import (  # noqa: F401 (fixtures)
    remote_client,
    remote_haproxy_image,
    step,
    sweep_zero_downtime,
)
from test_zero_downtime import assert_serves, commit, zero_downtime

if TYPE_CHECKING:
    from conftest import BusyboxApp
    from remote_support import RemoteEngine

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker


@pytest.fixture
def app(
    registry_app: BusyboxApp,
    remote_engine: RemoteEngine,
    remote_haproxy_image: str,  # noqa: F811
    remote_client: docker.DockerClient,  # noqa: F811
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[BusyboxApp]:
    """``registry_app`` behind the proxy in both environments, staging on the second engine through the
    forwarding sshd port, prod here."""
    zero_downtime(registry_app, remote_haproxy_image)
    # <app>-staging routable between its containers on the second engine (remote_support.routed_network:
    # a quirk of two engines on one host, not of a remote one).
    undo = routed_network(remote_engine, f"{registry_app.name}-staging", {"orchestrator.role": "app-network"})
    monkeypatch.setenv("ORCH_DOCKER_HOST_STAGING", remote_engine.forwarding_url)
    monkeypatch.setenv("PATH", f"{remote_engine.ssh_bin}:{os.environ['PATH']}")
    try:
        yield registry_app
    finally:
        sweep_zero_downtime(remote_client, registry_app.name)
        sweep_zero_downtime(docker_client, registry_app.name)
        sweep_remote(remote_engine, registry_app.name)
        undo()


def staging_loop(app: BusyboxApp) -> Any:
    """The client loop (every 20 ms) on staging's port of the remote host."""
    return client_loop(f"http://127.0.0.1:{app.port('staging')}/version")


def assert_staging_through_ssh(remote: RemoteEngine, steps: list[dict[str, Any]]) -> None:
    """The new staging release was checked, took over and the old one was drained through the ssh
    connection: the candidate's check went to a forwarded local port, and the drain asked the remote
    proxy's admin socket through its forward, which named the old release's server and saw none left."""
    via = f"ssh root@127.0.0.1:{remote.forwarding_url.rsplit(':', 1)[1]}"
    start = step(steps, "staging_start")["changes"]
    assert start["via"] == via, start
    assert start["checked_at"] != f"http://127.0.0.1:{start['port']}", start  # a forward, not the port
    takeover = step(steps, "staging_takeover")["changes"]
    assert takeover["via"] == via, takeover
    drain = step(steps, "staging_drain")
    assert drain["status"] != "failed", drain
    assert drain["changes"]["via"] == via and drain["changes"]["servers"], drain
    assert "/orch-ssh-" in drain["changes"]["admin_socket"], drain
    assert drain["changes"]["left"] == 0, drain


def test_a_staging_redeploy_on_the_remote_engine_costs_no_request(
    app: BusyboxApp,
    remote_engine: RemoteEngine,
    remote_client: docker.DockerClient,  # noqa: F811
    docker_client: docker.DockerClient,
) -> None:
    """Hazard: a remote staging that drops requests while it changes release (its proxy made on the
    wrong engine, its candidate checked on a port nothing forwards, its old release stopped undrained),
    or a prod that runs something else than staging verified. A client every 20 ms on the remote
    staging port sees no failure while staging is redeployed; the staging edge makes one ssh
    handshake and its steps show the remote proxy was used; prod, on this machine's engine, then runs
    the very image staging verified, by its registry digest."""
    old = commit(app, "old")
    app.deploy(old)
    first = assert_serves(remote_client, app, "staging", old)
    assert app.engine.container(f"{app.name}-staging-proxy") is None  # staging's proxy is not here
    assert remote_client.containers.get(f"{app.name}-staging-proxy").status == "running"

    new = commit(app, "new")
    run_id = app.start(new)
    before = handshakes(remote_engine)
    with staging_loop(app) as redeploy:
        assert app.advance(run_id, "deploy-staging").ok()["state"] == "deploy-staging"
    assert handshakes(remote_engine) - before == 1, remote_engine.sshd_log.read_text()[-3000:]
    assert redeploy.failed == [], redeploy.summary()
    assert redeploy.bodies == {old, new}, "the loop saw the old release, then the new one"
    second = assert_serves(remote_client, app, "staging", new)
    assert second.id != first.id
    shown = app.show(run_id)
    assert_staging_through_ssh(remote_engine, shown["transitions"][-1]["steps"])

    app.advance(run_id, "deploy").ok()
    shown = app.show(run_id)
    staged = [r for r in shown["releases"] if r["environment"] == "staging"][-1]
    released = [r for r in shown["releases"] if r["environment"] == "prod"][-1]
    assert staged["engine"] == f"root@127.0.0.1:{remote_engine.forwarding_url.rsplit(':', 1)[1]}", staged
    assert released["engine"] == "local", released
    assert released["image_id"] == staged["image_id"] == second.attrs["Image"]
    prod = assert_serves(docker_client, app, "prod", new)
    assert released["digest"] in docker_client.images.get(prod.attrs["Image"]).attrs["RepoDigests"]


def test_a_request_in_flight_on_remote_staging_finishes_on_its_release(
    app: BusyboxApp,
    remote_engine: RemoteEngine,
    remote_client: docker.DockerClient,  # noqa: F811
) -> None:
    """The old staging release is stopped while it answers slow requests: drained first through the
    remote proxy's admin socket (forwarded over ssh), each completes from the release that began it."""
    old = commit(app, "old")
    app.deploy(old)
    new = commit(app, "new")
    run_id = app.start(new)
    with slow_client_loop(f"http://127.0.0.1:{app.port('staging')}/cgi-bin/slow") as slow:
        app.advance(run_id, "deploy-staging").ok()
    assert slow.failed == [], slow.summary()
    assert f"{old}\n{old}" in slow.bodies, slow.bodies
    steps = app.show(run_id)["transitions"][-1]["steps"]
    assert_staging_through_ssh(remote_engine, steps)
    assert step(steps, "staging_drain")["changes"]["in_flight"] >= 1, step(steps, "staging_drain")
    assert_serves(remote_client, app, "staging", new)


def test_both_environments_on_the_remote_engine_deploy_in_one_command_without_a_failed_request(
    app: BusyboxApp,
    remote_engine: RemoteEngine,
    remote_client: docker.DockerClient,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hazard: two kept proxies on one remote host mixed up by the one process that deploys both edges
    over one ssh connection (a forward, an admin socket or a checked port of one environment used for
    the other). `deploy` takes a commit through staging and prod, both on the second engine, while a
    client loop runs on each environment's port: no request fails on either, both end on the new
    release, and the whole command makes one ssh handshake."""
    monkeypatch.setenv("ORCH_DOCKER_HOST_PROD", remote_engine.forwarding_url)
    undo = routed_network(remote_engine, f"{app.name}-prod", {"orchestrator.role": "app-network"})
    try:
        old = commit(app, "old")
        app.deploy(old)
        assert_serves(remote_client, app, "staging", old)
        assert_serves(remote_client, app, "prod", old)
        assert app.engine.container(f"{app.name}-prod-proxy") is None

        new = commit(app, "new")
        before = handshakes(remote_engine)
        prod_loop = client_loop(f"http://127.0.0.1:{app.port('prod')}/version")
        with staging_loop(app) as staging, prod_loop as prod:
            done = app.cli("deploy", "--app", app.name, "--sha", new, as_json=True).ok()
        assert done["state"] == "deploy", done
        assert handshakes(remote_engine) - before == 1, remote_engine.sshd_log.read_text()[-3000:]
        assert staging.failed == [], staging.summary()
        assert prod.failed == [], prod.summary()
        assert staging.bodies == prod.bodies == {old, new}, (staging.bodies, prod.bodies)
        assert_serves(remote_client, app, "staging", new)
        assert_serves(remote_client, app, "prod", new)
        transitions = app.show(done["run_id"])["transitions"]
        assert_staging_through_ssh(remote_engine, transitions[-2]["steps"])
        drain = step(transitions[-1]["steps"], "prod_drain")["changes"]
        staging_drain = step(transitions[-2]["steps"], "staging_drain")["changes"]
        assert drain["admin_socket"] != staging_drain["admin_socket"], (drain, staging_drain)
        assert drain["left"] == 0 and drain["servers"], drain
    finally:
        sweep_zero_downtime(remote_client, app.name)
        undo()


def test_a_runner_killed_mid_staging_hand_over_on_the_remote_engine_is_settled_by_recover(
    app: BusyboxApp,
    remote_engine: RemoteEngine,
    remote_client: docker.DockerClient,  # noqa: F811
    store: Store,
) -> None:
    """SIGKILL with the new staging release in the alias beside the old one (two serving): `recover`, a
    new process with its own ssh connection, settles staging on the new release through that
    connection (recorded; the edge aborted, its staging check never ran), staging answers throughout,
    no lock is left, and the edge advanced again goes through without a failed request."""
    from faults_support import Orchestrator

    orch = Orchestrator(app.workspace.path)
    old = commit(app, "old")
    app.deploy(old)
    new = commit(app, "new")
    run_id = orch.start_run(app.name, new)
    with staging_loop(app) as loop:
        proc = orch.advance(run_id, "deploy-staging", crash_at="after:staging_connect")
        assert proc.returncode == -9, proc.describe()
        reports = orch.recover(app.name)
    assert reports, proc.describe()
    assert loop.failed == [], loop.summary()
    release = store.latest_release(app.name, "staging")
    assert release is not None and release.revision == new, release
    assert_serves(remote_client, app, "staging", new)
    # Kept, but the edge is not finished: the staging check it owed never ran (recovery.edge_finished).
    assert orch.show(run_id)["transitions"][-1]["outcome"] == "aborted", orch.show(run_id)
    assert orch.locks() == []
    with staging_loop(app) as again:
        assert orch.advance(run_id, "deploy-staging").ok()["state"] == "deploy-staging"
    assert again.failed == [], again.summary()
    assert_serves(remote_client, app, "staging", new)


@pytest.mark.parametrize(
    ("variant", "why"),
    [
        pytest.param({"health": False}, "404", id="unhealthy"),
        pytest.param({"version": "f" * 40}, "f" * 40, id="wrong_version"),
    ],
)
def test_a_failing_release_never_takes_remote_staging_traffic(
    app: BusyboxApp,
    remote_client: docker.DockerClient,  # noqa: F811
    variant: dict[str, Any],
    why: str,
) -> None:
    """Hazard: a release that fails its checks on the remote host answering staging's clients (checked
    through the proxy's port instead of its own, forwarded one), or the old release replaced before the
    new one passed. The old staging container keeps serving untouched, the loop sees only it, and the
    candidate is discarded from the remote engine."""
    old = commit(app, "old")
    app.deploy(old)
    before = assert_serves(remote_client, app, "staging", old)
    run_id = app.start(commit(app, "bad", **variant))
    with staging_loop(app) as loop:
        result = app.advance(run_id, "deploy-staging")
    assert result.exit_code == 1, result.describe()
    assert loop.failed == [], loop.summary()
    assert loop.bodies == {old}, "the failing release answered a client"
    after = assert_serves(remote_client, app, "staging", old)
    assert after.id == before.id, "the old release's container was replaced, not kept serving"
    steps = app.show(run_id)["transitions"][-1]["steps"]
    names = [s["name"] for s in steps]
    assert "staging_start" in names and "staging_discard" in names, names
    assert not {"staging_connect", "staging_retire", "staging_stop"} & set(names), names
    failed = next(s for s in steps if s["status"] == "failed")
    assert why in str(failed), failed
    start = step(steps, "staging_start")["changes"]
    assert start["port"] != app.port("staging") and start["via"].startswith("ssh "), start
