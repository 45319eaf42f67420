"""Zero-downtime promotion and rollback on the direct container runtime (issue 14), on the real engine.

The hazard: the plain runtime stops prod's container and then starts the new one, so a client hitting
prod during a promotion or a rollback gets refused connections, and a release that fails its checks
has already taken prod down. With ``zero_downtime = true`` a kept haproxy container owns prod's port;
the new release starts beside the old one, is checked on a port of its own, and takes traffic before
the old one leaves. A client loop (every 20 ms, as the issue asks) counts every failed request.

Without the feature (the same tests with ``zero_downtime`` left out, tried by hand) the promotion and
rollback loops see refused connections and the failing release takes prod down before it is restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import docker.errors
import pytest
from client_loop import SLOW_CGI, SLOW_S, client_loop, slow_client_loop
from faults_support import Orchestrator

from orchestrator.proxy import forget_admin_dirs

if TYPE_CHECKING:
    import docker
    from conftest import BusyboxApp

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker

PORT_INSIDE = 8080
OTHER_SHA = "f" * 40  # what the wrong_version variant serves (conftest.OTHER_SHA)


def prod_loop(app: BusyboxApp, path: str = "/version", **options: Any) -> Any:
    """The client loop on ``path`` of prod's port (what a user of prod sees)."""
    return client_loop(f"http://127.0.0.1:{app.port('prod')}{path}", **options)


def slow_loop(app: BusyboxApp) -> Any:
    return slow_client_loop(f"http://127.0.0.1:{app.port('prod')}/cgi-bin/slow")


def zero_downtime(app: BusyboxApp, haproxy_image: str) -> None:
    """The app's config with the proxy in front (the fixture's haproxy image, no Docker Hub here)."""
    config = app.workspace.config_path.read_text(encoding="utf-8")
    app.workspace.write_config(
        config + f'container_port = {PORT_INSIDE}\nzero_downtime = true\nproxy_image = "{haproxy_image}"\n'
    )


def commit(app: BusyboxApp, message: str, **variant: Any) -> str:
    """A commit of the busybox app that listens on all interfaces of its container (it sits on a Docker
    network behind the proxy, not on the host's loopback)."""
    app.commit(message, **variant)
    serve = (app.repo.path / "rootfs" / "serve.sh").read_text(encoding="utf-8")
    listen = 'exec $bb httpd -f -p "127.0.0.1:$PORT" -h /www'
    assert listen in serve
    # PID 1 ignores SIGTERM unless it handles it: like a real app, stop when asked (docker stop).
    # It exits at once, whatever it is answering: what drains the old release is the proxy.
    graceful = (
        '$bb chmod +x /www/cgi-bin/slow\ntrap "exit 0" TERM\n$bb httpd -f -p "0.0.0.0:$PORT" -h /www &\nwait'
    )
    return str(
        app.repo.commit(
            f"{message}: listen on 0.0.0.0, stop on SIGTERM, a slow endpoint",
            {"rootfs/serve.sh": serve.replace(listen, graceful), "rootfs/www/cgi-bin/slow": SLOW_CGI},
        )
    )


def backends(client: docker.DockerClient, app: BusyboxApp, env: str) -> list[Any]:
    """Every container of ``env`` the runtime started, running or not (read from the engine)."""
    labels = [f"orchestrator.app={app.name}", f"orchestrator.environment={env}", "orchestrator.role=backend"]
    return list(client.containers.list(all=True, filters={"label": labels}))


def serving(client: docker.DockerClient, app: BusyboxApp, env: str) -> list[Any]:
    """The running containers holding ``env``'s alias on its network: what the proxy sends requests to."""
    found = []
    for container in backends(client, app, env):
        networks = container.attrs["NetworkSettings"]["Networks"]
        aliases = (networks.get(f"{app.name}-{env}") or {}).get("Aliases") or []
        if container.status == "running" and f"{app.name}-{env}-app" in aliases:
            found.append(container)
    return found


def revision_of(client: docker.DockerClient, container: Any) -> str | None:
    return client.images.get(container.attrs["Image"]).labels.get("org.opencontainers.image.revision")


def assert_serves(client: docker.DockerClient, app: BusyboxApp, env: str, sha: str) -> Any:
    """``env`` answers ``sha`` through its proxy from exactly one container, and no other is left."""
    found = serving(client, app, env)
    assert len(found) == 1, [c.name for c in found]
    assert revision_of(client, found[0]) == sha
    assert [c.id for c in backends(client, app, env)] == [found[0].id], "a container was left beside it"
    probe = app.get(env, "/version")
    assert (probe.status, probe.body.strip()) == (200, sha), probe
    return found[0]


@pytest.fixture
def app(
    busybox_app: BusyboxApp, haproxy_image: str, docker_client: docker.DockerClient
) -> Iterator[BusyboxApp]:
    zero_downtime(busybox_app, haproxy_image)
    yield busybox_app
    # The networks are the app's too (the fixture's sweep, later, removes containers and images only).
    mine = {"name": f"^/{busybox_app.name}-"}
    for container in docker_client.containers.list(all=True, filters=mine, sparse=True):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    forget_admin_dirs(f"{busybox_app.name}-")
    for env in ("staging", "prod"):
        for suffix in ("", "-new"):
            for network in docker_client.networks.list(names=[f"{busybox_app.name}-{env}{suffix}"]):
                if network.name == f"{busybox_app.name}-{env}{suffix}":
                    network.remove()


def test_promotion_and_rollback_cost_no_request(app: BusyboxApp, docker_client: docker.DockerClient) -> None:
    old = commit(app, "old")
    app.deploy(old)
    first = assert_serves(docker_client, app, "prod", old)

    new = commit(app, "new")
    run_id = app.start(new)
    app.advance(run_id, "deploy-staging").ok()
    with prod_loop(app) as promotion:
        result = app.advance(run_id, "deploy").ok()
    assert result["state"] == "deploy", result
    assert promotion.failed == [], promotion.summary()
    assert promotion.bodies == {old, new}, "the loop saw the old release, then the new one"
    second = assert_serves(docker_client, app, "prod", new)
    assert second.id != first.id

    with prod_loop(app) as rollback:
        back = app.cli("rollback", app.name, "--env", "prod", as_json=True).ok()
    assert back["to_release"]["revision"] == old, back
    assert rollback.failed == [], rollback.summary()
    assert rollback.bodies == {new, old}
    assert_serves(docker_client, app, "prod", old)
    status = app.cli("status", app.name, as_json=True).ok()
    prod = next(e for e in status["environments"] if e["environment"] == "prod")
    assert (prod["drift"], prod["healthy"]) == (False, True), prod
    # Housekeeping removes what no kept release needs, never the container serving prod.
    serving_before = assert_serves(docker_client, app, "prod", old)
    app.cli("prune", app.name, as_json=True).ok()
    assert assert_serves(docker_client, app, "prod", old).id == serving_before.id


def drains(app: BusyboxApp, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s["changes"] for s in steps if s["name"] == "prod_drain"]


def test_a_request_in_flight_finishes_on_the_release_that_began_it(
    app: BusyboxApp, docker_client: docker.DockerClient
) -> None:
    """The old release is stopped while it answers slow requests (begun before the swap): the proxy
    stops sending it new ones and waits for those to end before it is stopped, so each completes, from
    the release that began it; the fast loop beside them sees no failure either. Without the drain the
    release exits mid-answer and the client gets a cut response (IncompleteRead)."""
    old = commit(app, "old")
    app.deploy(old)
    new = commit(app, "new")
    run_id = app.start(new)
    app.advance(run_id, "deploy-staging").ok()

    with prod_loop(app) as fast, slow_loop(app) as slow:
        app.advance(run_id, "deploy").ok()
    assert slow.failed == [], slow.summary()
    assert fast.failed == [], fast.summary()
    assert f"{old}\n{old}" in slow.bodies, slow.bodies
    drained = drains(app, app.show(run_id)["transitions"][-1]["steps"])
    assert len(drained) == 1, drained
    assert drained[0]["in_flight"] >= 1 and drained[0]["left"] == 0, drained
    assert_serves(docker_client, app, "prod", new)

    with prod_loop(app) as fast, slow_loop(app) as slow:
        app.cli("rollback", app.name, "--env", "prod", as_json=True).ok()
    assert slow.failed == [], slow.summary()
    assert fast.failed == [], fast.summary()
    assert f"{new}\n{new}" in slow.bodies, slow.bodies
    assert_serves(docker_client, app, "prod", old)


def test_the_drain_is_bounded_by_drain_s_and_says_what_it_left(app: BusyboxApp) -> None:
    """A release answering requests longer than ``drain_s`` is stopped when ``drain_s`` runs out (a
    promotion never waits on a hung request), and the step says how many requests it left in flight."""
    config = app.workspace.config_path.read_text(encoding="utf-8")
    app.workspace.write_config(config.replace("[orchestrator]\n", "[orchestrator]\ndrain_s = 0.2\n", 1))
    app.deploy(commit(app, "old"))
    run_id = app.start(commit(app, "new"))
    app.advance(run_id, "deploy-staging").ok()

    with slow_loop(app) as slow:
        app.advance(run_id, "deploy").ok()
    (drained,) = drains(app, app.show(run_id)["transitions"][-1]["steps"])
    assert drained["drain_s"] == 0.2 and drained["waited_s"] < SLOW_S, drained
    assert drained["left"] >= 1, drained
    assert any("cut short" in failure for failure in slow.failed), slow.summary()


@pytest.mark.parametrize(
    ("variant", "why"),
    [
        pytest.param({"prod": "no_health"}, "404", id="unhealthy"),
        # Only the new container serves OTHER_SHA: the verification asked it, not the old one beside it.
        pytest.param({"prod": "wrong_version"}, OTHER_SHA, id="wrong_version"),
    ],
)
def test_a_failing_release_never_takes_traffic(
    app: BusyboxApp, docker_client: docker.DockerClient, variant: dict[str, str], why: str
) -> None:
    old = commit(app, "old")
    app.deploy(old)
    before = assert_serves(docker_client, app, "prod", old)

    bad = commit(app, "bad", **variant)
    run_id = app.start(bad)
    app.advance(run_id, "deploy-staging").ok()
    with prod_loop(app) as loop:
        result = app.advance(run_id, "deploy")
    assert result.exit_code == 1, result.describe()
    assert loop.failed == [], loop.summary()
    assert loop.bodies == {old}, "the failing release answered a client"
    after = assert_serves(docker_client, app, "prod", old)
    assert after.id == before.id, "the old release's container was replaced, not kept serving"

    steps = app.show(run_id)["transitions"][-1]["steps"]
    names = [s["name"] for s in steps]
    assert "prod_start" in names and "prod_discard" in names, names
    assert not {"prod_connect", "prod_retire", "prod_stop"} & set(names), names
    failed = next(s for s in steps if s["status"] == "failed")
    assert why in str(failed), failed
    # Checked on the candidate's own port, never through prod's (where the old release answers).
    start = next(s for s in steps if s["name"] == "prod_start")
    assert start["changes"]["port"] != app.port("prod"), start


@pytest.mark.parametrize(
    ("crash_at", "serves_new"),
    [
        pytest.param("after:prod_start", False, id="candidate_never_handed_over"),
        pytest.param("after:prod_connect", True, id="two_containers_serving"),
        pytest.param("after:prod_takeover", True, id="proxy_sends_to_both"),
        pytest.param("after:prod_retire", True, id="old_retired_unrecorded"),
    ],
)
def test_sigkill_mid_hand_over_then_recover(
    app: BusyboxApp, store: Store, docker_client: docker.DockerClient, crash_at: str, serves_new: bool
) -> None:
    """A runner killed at each point of the hand-over: `recover` leaves prod on one verified container
    (the new one once it had been handed the traffic, else the old one) and nothing beside it."""
    killed_then_recovered(app, store, docker_client, crash_at, serves_new)


def killed_then_recovered(
    app: BusyboxApp, store: Store, docker_client: docker.DockerClient, crash_at: str, serves_new: bool
) -> None:
    """Deploy, then SIGKILL the promotion of a new commit at ``crash_at`` and ``recover``, under the
    client loop on prod's port (prod's engine read through ``docker_client``): no failed request, prod
    on the release expected, nothing beside it, the run's outcome and no lock left."""
    orch = Orchestrator(app.workspace.path)
    old = commit(app, "old")
    app.deploy(old)
    new = commit(app, "new")
    run_id = orch.start_run(app.name, new)
    orch.advance(run_id, "deploy-staging").ok()

    with prod_loop(app) as loop:
        proc = orch.advance(run_id, "deploy", crash_at=crash_at)
        assert proc.returncode == -9, proc.describe()
        if crash_at == "after:prod_start":
            assert len(backends(docker_client, app, "prod")) == 2
        reports = orch.recover(app.name)
    assert reports, proc.describe()
    assert loop.failed == [], loop.summary()

    expected = new if serves_new else old
    assert_serves(docker_client, app, "prod", expected)
    release = store.latest_release(app.name, "prod")
    assert release is not None and release.revision == expected
    run = orch.show(run_id)
    assert run["transitions"][-1]["outcome"] == ("succeeded" if serves_new else "aborted"), run
    assert orch.locks() == []


def test_sigterm_with_two_containers_serving_puts_the_old_release_back(
    app: BusyboxApp, store: Store, docker_client: docker.DockerClient
) -> None:
    """A cancelled runner (SIGTERM) undoes its own edge: caught with the new container already in the
    alias beside the old one, it restores the previous release the same start-before-stop way."""
    orch = Orchestrator(app.workspace.path)
    old = commit(app, "old")
    app.deploy(old)
    run_id = orch.start_run(app.name, commit(app, "new"))
    orch.advance(run_id, "deploy-staging").ok()

    with prod_loop(app) as loop:
        proc = orch.advance(run_id, "deploy", crash_at="after:prod_connect", crash_signal="TERM")
    assert proc.returncode != 0, proc.describe()
    assert loop.failed == [], loop.summary()
    assert_serves(docker_client, app, "prod", old)
    release = store.latest_release(app.name, "prod")
    assert release is not None and release.revision == old
    assert orch.show(run_id)["transitions"][-1]["outcome"] != "succeeded"
    assert orch.locks() == []
