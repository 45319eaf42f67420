"""Swarm on a remote manager (issue 14): prod is a swarm service on an engine reached over ssh.

A swarm cannot be made of a second dockerd on this machine (the suite's engine is the swarm manager,
and starting another engine in swarm mode here would fight it for the same node), so the manager IS the
suite's engine, reached over ssh: an sshd on a loopback port whose sessions get
``DOCKER_HOST=unix:///var/run/docker.sock`` (remote_support.ssh_to_engine), selected for prod with
ORCH_DOCKER_HOST_PROD=ssh://root@127.0.0.1:<port>. Everything the prod edge does to the manager goes
through that one ssh connection; staging runs on the same engine reached directly (another engine as far
as the orchestrator knows: the image reaches prod through the registry, by digest). Each app is a
2-replica service behind its proxy, which publishes prod's port on every interface of the manager's
host (health checks come from elsewhere), on a unique network, removed after.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import docker
import pytest
from test_swarm import SwarmApp, assert_converged_on, configured_swarm_app, ensure_swarm, prod_release

from orchestrator.docker_engine import DockerEngine

T = TypeVar("T")

if TYPE_CHECKING:
    from conftest import BusyboxApp, LocalRegistry
    from remote_support import SshEngine

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def manager_over_ssh(engine: DockerEngine) -> Iterator[SshEngine]:
    """The suite's engine, a swarm manager, behind its own key-only sshd (stopped after the module)."""
    from remote_support import ssh_to_engine

    yield from manager_behind(engine, ssh_to_engine, "orch-rsw-", "sshd")


def manager_behind(
    engine: DockerEngine, front: Callable[[Path], AbstractContextManager[T]], prefix: str, what: str
) -> Iterator[T]:
    """The suite's engine made a swarm manager and put behind ``front`` (remote_support: an sshd, a TLS
    front), started in a fresh directory under /tmp named ``prefix...`` and stopped when the module is
    done; a ``front`` that cannot start is ``what`` the skip (or CI's failure) names."""
    from conftest import _unavailable
    from remote_support import RemoteUnavailable

    ensure_swarm(engine)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        context = front(root)
        started = context.__enter__()
    except RemoteUnavailable as exc:
        _unavailable(f"no {what} to the engine: {exc}")
        raise
    try:
        yield started
    finally:
        context.__exit__(None, None, None)


@pytest.fixture
def remote_swarm(
    busybox_app: BusyboxApp,
    registry: LocalRegistry,
    haproxy_image: str,
    docker_client: docker.DockerClient,
    unique_name: Callable[[str], str],
    manager_over_ssh: SshEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SwarmApp]:
    """A swarm app (both environments on swarm) whose prod manager is reached over ssh."""
    monkeypatch.setenv("ORCH_DOCKER_HOST_PROD", manager_over_ssh.url)
    monkeypatch.setenv("PATH", f"{manager_over_ssh.ssh_bin}:{os.environ['PATH']}")
    yield from configured_swarm_app(busybox_app, registry, haproxy_image, docker_client, unique_name)


def engine_name(ssh: SshEngine) -> str:
    return f"root@127.0.0.1:{ssh.port}"


def handshakes(ssh: SshEngine) -> int:
    """ssh connections (each a full handshake) the sshd has accepted so far."""
    return ssh.sshd_log.read_text(errors="replace").count("Accepted publickey")


def published_on(app: SwarmApp, env: str) -> list[tuple[str, str]]:
    """(host address, host port) the environment's proxy publishes, read with the raw SDK."""
    attrs = app.client.api.inspect_container(f"{app.name}-{env}-proxy")
    bindings = attrs["HostConfig"]["PortBindings"] or {}
    return sorted((b["HostIp"], b["HostPort"]) for found in bindings.values() for b in found)


def verify_evidence(app: SwarmApp, run_id: int) -> list[dict[str, Any]]:
    """The per-task evidence of the last prod verification the run recorded."""
    payload = app.app.show(run_id)
    found = [
        c["details"]["tasks"]
        for t in payload["transitions"]
        for c in t.get("checks", [])
        if isinstance(c.get("details"), dict) and "tasks" in c["details"]
    ]
    assert found, payload["transitions"][-1]
    return found[-1]


def test_a_promotion_over_ssh_converges_on_the_verified_digest(
    remote_swarm: SwarmApp, manager_over_ssh: SshEngine
) -> None:
    """Hazard: swarm refused on a remote manager, or run there with its port published on the remote
    host's loopback (no health check from another machine could reach it), or verified by containers
    the engine we talk to does not have. Two releases promoted to the manager over ssh: after each, the
    service spec and both running tasks are on the digest staging verified, prod's proxy publishes on
    every interface of the manager's host (staging's, local, on loopback only), the release records the
    ssh engine, and verification says how each task was checked (here: at its container, the node being
    the manager's own)."""
    app = remote_swarm
    for marker in ("one", "two"):
        run_id = app.app.deploy(app.commit(marker))
        assert_prod_runs_what_staging_verified(app, run_id, engine_name(manager_over_ssh))
    assert_no_old_task_and_published_as_configured(app)


def assert_prod_runs_what_staging_verified(app: SwarmApp, run_id: int, engine: str) -> None:
    """``run_id``'s prod release is recorded on ``engine`` (staging on this machine's), is the image
    staging verified, pinned by its registry digest; the service converged on it and both running tasks
    were checked."""
    release = prod_release(app, run_id)
    assert release["engine"] == engine, release
    staged = [r for r in app.app.show(run_id)["releases"] if r["environment"] == "staging"][-1]
    assert staged["engine"] == "local", staged
    assert (release["image_id"], release["revision"]) == (staged["image_id"], staged["revision"])
    assert release["digest"].startswith(f"{app.registry.repository(app.name)}@sha256:")
    assert_converged_on(app, "prod", release)
    tasks = verify_evidence(app, run_id)
    assert len(tasks) == 2 and all(t["checked"] == "container" and t["ok"] for t in tasks), tasks


def assert_no_old_task_and_published_as_configured(app: SwarmApp) -> None:
    """No prod task left draining; prod's proxy published on every interface of the manager's host,
    staging's on loopback."""
    assert app.running_tasks("prod", draining=True) == []
    assert [host for host, _ in published_on(app, "prod")] == ["0.0.0.0"]
    assert [host for host, _ in published_on(app, "staging")] == ["127.0.0.1"]


def test_a_broken_health_check_over_ssh_leaves_the_previous_digest_and_says_why(
    remote_swarm: SwarmApp,
) -> None:
    """Hazard: a failed promotion on a remote manager left half done, or put back on the local engine
    instead of the remote one. Release B's prod tasks never become healthy (its HEALTHCHECK fails in
    prod only): Swarm rolls the update back, the service ends on A's digest with both tasks, A answers,
    and the history names the failed converge step, then the restore's verification."""
    app = remote_swarm
    good = prod_release(app, app.app.deploy(app.commit("good")))
    run_id = app.app.start(app.commit("broken", broken=True))
    app.app.advance(run_id, "deploy-staging").ok()
    result = app.app.advance(run_id, "deploy")
    assert result.exit_code == 1, result.describe()
    app.wait_settled("prod")
    assert_converged_on(app, "prod", good)
    (gate,) = [c for c in result.payload["checks"] if c["status"] == "fail"]
    assert "did not converge" in gate["reason"] and "unhealthy container" in gate["reason"], gate
    assert result.payload["failure"]["prod"]["action"] == "restored", result.payload["failure"]
    steps = [
        (s["name"], s["status"]) for t in app.app.show(run_id)["transitions"] for s in t.get("steps", [])
    ]
    assert ("prod_converge", "failed") in steps, steps
    assert steps.index(("prod_converge", "failed")) < steps.index(("restore_prod_verify", "done")), steps


def test_rollback_over_ssh_to_a_kept_release_and_status_shows_it(
    remote_swarm: SwarmApp, manager_over_ssh: SshEngine
) -> None:
    """Hazard: a rollback that only knows Swarm's one step back, or a `status` that reads the remote
    environment from the local engine. After A, B, C on the manager over ssh, `rollback --to A` puts the
    service on A's digest (every task), and `status` names the ssh engine, the pinned digest and both
    tasks on it."""
    app = remote_swarm
    rel_a, _, _ = [prod_release(app, app.app.deploy(app.commit(f"release {n}"))) for n in "ABC"]
    done = app.app.cli("rollback", app.name, "--env", "prod", "--to", rel_a["release_id"], as_json=True).ok()
    assert done["outcome"] == "rolled_back" and done["release"]["digest"] == rel_a["digest"], done
    assert_converged_on(app, "prod", rel_a)
    status = app.app.cli("status", app.name, as_json=True).ok()
    (prod,) = [e for e in status["environments"] if e["environment"] == "prod"]
    assert prod["ok"] and not prod["drift"], prod
    assert prod["engine"] == engine_name(manager_over_ssh), prod
    assert prod["service"]["pinned"] == rel_a["digest"], prod
    assert len(prod["service"]["tasks"]) == 2 and all(rel_a["digest"] in t for t in prod["service"]["tasks"])


def test_a_promotion_to_a_remote_manager_makes_one_ssh_connection(
    remote_swarm: SwarmApp, manager_over_ssh: SshEngine
) -> None:
    """Hazard: one ssh handshake per engine request while a promotion polls Swarm for convergence (the
    SDK's own transport: a handshake per request, hundreds of them for one update). The prod edge, the
    proxy, the update, the polling and the per-task verification, makes exactly one ssh connection."""
    app = remote_swarm
    app.app.deploy(app.commit("baseline"))
    run_id = app.app.start(app.commit("one connection"))
    app.app.advance(run_id, "deploy-staging").ok()
    before = handshakes(manager_over_ssh)
    assert app.app.advance(run_id, "deploy").ok()["state"] == "deploy"
    assert handshakes(manager_over_ssh) - before == 1, manager_over_ssh.sshd_log.read_text()[-3000:]
    assert_converged_on(app, "prod", prod_release(app, run_id))


def test_a_changed_publish_address_recreates_the_proxy_and_an_unchanged_one_keeps_it(
    engine: DockerEngine,
    docker_client: docker.DockerClient,
    haproxy_image: str,
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
    free_port: Callable[[], int],
) -> None:
    """Hazard: a proxy kept on the engine host's loopback after its environment became one that is
    health-checked from another machine (a remote manager's proxy publishes on every interface): the
    configuration text is the same, so only the publish address tells the two apart."""
    from orchestrator.proxy import Proxy, ProxySpec

    network = unique_name("net")
    spec = ProxySpec(
        name=unique_name("proxy"),
        network=network,
        backend=unique_name("backend"),
        backend_port=8000,
        port=free_port(),
        health_path="/health",
        image=haproxy_image,
    )
    docker_cleanup(container=spec.name)
    try:
        first = Proxy(engine, spec).ensure()
        wider = ProxySpec(**{**spec.__dict__, "address": "0.0.0.0"})
        second = Proxy(engine, wider).ensure()
        assert second.id != first.id
        bindings = docker_client.api.inspect_container(spec.name)["HostConfig"]["PortBindings"]
        assert [b["HostIp"] for found in bindings.values() for b in found] == ["0.0.0.0"], bindings
        assert Proxy(engine, wider).ensure().id == second.id
    finally:
        engine.remove_container(spec.name)
        engine.remove_network(network)


def test_a_stack_app_wholly_on_the_remote_manager_never_uses_this_machines_engine(
    busybox_image: Callable[..., Any],  # first: its image outlives the stack's services at teardown
    remote_swarm: SwarmApp,
    manager_over_ssh: SshEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hazard: `docker stack deploy` (a CLI call, not the SDK) run against this process's DOCKER_HOST
    while the app's manager is another host: the stack lands on the wrong engine. The whole app (build,
    staging, the prod stack) is on the manager over ssh, and DOCKER_HOST points nowhere: the stack is
    deployed there anyway, its service on the release's digest with the drain time as grace period, and
    the stack's other service as its stack file says."""
    app = remote_swarm
    cache = busybox_image(revision=None, tag=f"{app.name}-cache:1")
    app.use_stack(cache.tags[0], drain_s=None)  # the default drain time, as the grace period below
    config = app.app.workspace.config_path
    config.write_text(config.read_text() + f'docker_host = "{manager_over_ssh.url}"\n', encoding="utf-8")
    monkeypatch.delenv("ORCH_DOCKER_HOST_PROD")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    release = prod_release(app, app.app.deploy(app.commit("stack over ssh")))
    assert release["engine"] == engine_name(manager_over_ssh), release
    web = app.client.api.inspect_service(f"{app.name}_web")
    assert web["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == release["digest"]
    assert web["Spec"]["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] == 5_000_000_000
    cache_spec = app.client.api.inspect_service(f"{app.name}_cache")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert cache_spec["Image"] == cache.tags[0]
