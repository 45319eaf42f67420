"""Swarm on a manager reached over ``tcp://`` with mutual TLS (issue 14).

The suite's engine is the swarm manager and cannot be restarted with ``-H tcp://``, so the manager is
reached through a TLS front (remote_support.tls_front): Debian's haproxy on a free loopback port that
completes TLS only for a client certificate the session's CA signed, and forwards each connection to
the engine's unix socket. Prod's ``docker_host`` is that front's ``tcp://127.0.0.1:<port>`` with the
client certificates in ``[apps.X.prod]``; staging runs on the same engine reached directly (another
engine as far as the orchestrator knows: the image reaches prod through the registry, by digest). The
front counts the sessions that passed TLS and logs the handshakes it refused, so a test can tell that
the prod edge really went through it. What does not depend on how the manager is reached (no request
lost during a promotion, a broken health check rolled back) is tested on the local manager
(test_swarm.py) and over ssh (test_remote_swarm.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import pytest
from test_remote_swarm import (
    assert_no_old_task_and_published_as_configured,
    assert_prod_runs_what_staging_verified,
    manager_behind,
)
from test_swarm import SwarmApp, assert_converged_on, configured_swarm_app, prod_release

from orchestrator import views
from orchestrator.docker_engine import DockerEngine

if TYPE_CHECKING:
    from conftest import BusyboxApp, LocalRegistry
    from remote_support import TlsFront

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def manager_over_tls(engine: DockerEngine) -> Iterator[TlsFront]:
    """The suite's engine, a swarm manager, behind its TLS front (stopped after the module)."""
    from remote_support import tls_front

    yield from manager_behind(engine, tls_front, "orch-tls-", "TLS front")


def prod_over(app: SwarmApp, url: str, tls: tuple[Path, Path, Path] | None) -> None:
    """Prod's engine in orchestrator.toml (``[apps.X.prod]``), with its client certificates if given."""
    config = app.app.workspace.config_path
    table = f'\n[apps.{app.name}.prod]\ndocker_host = "{url}"\n'
    if tls is not None:
        ca, cert, key = tls
        table += f'tls_ca = "{ca}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
    config.write_text(config.read_text() + table, encoding="utf-8")


def client_files(front: TlsFront) -> tuple[Path, Path, Path]:
    return front.tls_dir / "ca.pem", front.tls_dir / "cert.pem", front.tls_dir / "key.pem"


@pytest.fixture
def tls_swarm(
    busybox_app: BusyboxApp,
    registry: LocalRegistry,
    haproxy_image: str,
    docker_client: docker.DockerClient,
    unique_name: Callable[[str], str],
    manager_over_tls: TlsFront,
) -> Iterator[SwarmApp]:
    """A swarm app (both environments on swarm) whose prod manager is reached over tcp:// with TLS."""
    for app in configured_swarm_app(busybox_app, registry, haproxy_image, docker_client, unique_name):
        prod_over(app, manager_over_tls.url, client_files(manager_over_tls))
        yield app


def engine_name(front: TlsFront) -> str:
    return f"127.0.0.1:{front.port}"


def test_a_promotion_over_tls_converges_on_the_verified_digest(
    tls_swarm: SwarmApp, manager_over_tls: TlsFront
) -> None:
    """Hazard: a tcp:// manager configured with client certificates that are not really used (a plain
    connection, or one of the edge's calls going to DOCKER_HOST instead), or swarm refused on it. Two
    releases promoted to the manager through the TLS front: after each, the service spec and both
    running tasks are on the digest staging verified, the release records the tcp engine, the proxy
    publishes on every interface of the manager's host, and the prod edge opened sessions through the
    front (each one a completed mutual-TLS handshake)."""
    app, front = tls_swarm, manager_over_tls
    for marker in ("one", "two"):
        run_id = app.app.start(app.commit(marker))
        app.app.advance(run_id, "deploy-staging").ok()
        before = front.sessions()
        assert app.app.advance(run_id, "deploy").ok()["state"] == "deploy"
        assert front.sessions() > before, "the prod edge did not go through the TLS front"
        assert_prod_runs_what_staging_verified(app, run_id, engine_name(front))
    assert_no_old_task_and_published_as_configured(app)


def test_rollback_over_tls_to_a_kept_release_and_status_shows_it(
    tls_swarm: SwarmApp, manager_over_tls: TlsFront
) -> None:
    """Hazard: rollback or status reading the tcp:// manager's environment from the local engine. After
    A, B, C, `rollback --to A` puts the service on A's digest (every task), and `status` names the tcp
    engine, the pinned digest and both tasks on it, read through the front."""
    app, front = tls_swarm, manager_over_tls
    rel_a, _, _ = [prod_release(app, app.app.deploy(app.commit(f"release {n}"))) for n in "ABC"]
    before = front.sessions()
    done = app.app.cli("rollback", app.name, "--env", "prod", "--to", rel_a["release_id"], as_json=True).ok()
    assert done["outcome"] == "rolled_back" and done["release"]["digest"] == rel_a["digest"], done
    assert front.sessions() > before
    assert_converged_on(app, "prod", rel_a)
    before = front.sessions()
    status = app.app.cli("status", app.name, as_json=True).ok()
    assert front.sessions() > before
    (prod,) = [e for e in status["environments"] if e["environment"] == "prod"]
    assert prod["ok"] and not prod["drift"], prod
    assert prod["engine"] == engine_name(front), prod
    assert prod["service"]["pinned"] == rel_a["digest"], prod
    assert len(prod["service"]["tasks"]) == 2 and all(rel_a["digest"] in t for t in prod["service"]["tasks"])


@pytest.fixture
def stranger(tmp_path: Path) -> Path:
    """Another CA, and a client certificate and key it signed (ca.pem, cert.pem, key.pem)."""
    from remote_support import _certificates

    _certificates(tmp_path / "other")
    return tmp_path / "other"


# What the prod edge presents, and what its message must say is wrong (None: only that it is refused).
REFUSALS = {
    "another CA's client certificate": "refused the client certificate",
    "another CA for the engine": "did not verify against tls_ca",
    "no certificate": None,
}


def test_a_refused_tls_connection_is_exit_4_naming_the_host_and_the_side_with_nothing_recorded(
    tls_swarm: SwarmApp, manager_over_tls: TlsFront, stranger: Path, store: Store
) -> None:
    """Hazard: a manager whose TLS handshake fails recorded as a failed gate (the commit blamed), a lock
    left behind, the edge carried on against another engine, or a message that cannot tell the two
    fixes apart (a client certificate the engine does not trust: have it signed by the engine's CA; an
    engine certificate tls_ca did not sign: point tls_ca at that CA). Release A is in prod; for B the
    prod edge presents, in turn, a client certificate of another CA, a tls_ca of another CA than the
    engine's, and (plain tcp:// to the loopback port) no certificate: each time the handshake fails, the
    CLI exits 4 naming the host and which side refused, nothing is recorded for the edge, no lock is
    held, prod still runs A."""
    app, front = tls_swarm, manager_over_tls
    good = prod_release(app, app.app.deploy(app.commit("A")))
    run_id = app.app.start(app.commit("B"))
    app.app.advance(run_id, "deploy-staging").ok()
    ca, cert, key = client_files(front)
    presented = {
        "another CA's client certificate": (ca, stranger / "cert.pem", stranger / "key.pem"),
        "another CA for the engine": (stranger / "ca.pem", cert, key),
        "no certificate": None,
    }
    for client, files in presented.items():
        app.configure()
        prod_over(app, front.url, files)
        before, refused = len(app.app.show(run_id)["transitions"]), front.handshake_failures()
        result = app.app.advance(run_id, "deploy")
        message = result.error(4, "infrastructure_unavailable")
        assert engine_name(front) in message and "unreachable" in message, (client, message)
        assert "PRIVATE KEY" not in message and str(key) not in message, (client, message)
        if REFUSALS[client] is not None:
            assert REFUSALS[client] in message, (client, message)
        shown = app.app.show(run_id)
        assert shown["state"] == "deploy-staging" and len(shown["transitions"]) == before, (client, shown)
        assert store.locks(app.name) == [], client
        assert front.handshake_failures() > refused, (client, front.log.read_text()[-2000:])
    assert_converged_on(app, "prod", good)


def test_a_stack_app_wholly_on_the_tls_manager_never_uses_this_machines_engine(
    busybox_image: Callable[..., Any],  # first: its image outlives the stack's services at teardown
    tls_swarm: SwarmApp,
    manager_over_tls: TlsFront,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hazard: the docker CLI calls of the app (the BuildKit build, `docker stack deploy`) run without
    the client certificates, or against this process's DOCKER_HOST: refused by the manager, or landing
    on the wrong engine. The whole app (build, staging, the prod stack) is on the manager through the
    TLS front, with the certificates for the app, and DOCKER_HOST points nowhere: the stack is deployed
    there anyway, its service on the release's digest, the stack's other service as its file says."""
    app, front = tls_swarm, manager_over_tls
    cache = busybox_image(revision=None, tag=f"{app.name}-cache:1")
    app.use_stack(cache.tags[0])
    ca, cert, key = client_files(front)
    config = app.app.workspace.config_path
    config.write_text(
        config.read_text()
        + f'docker_host = "{front.url}"\ntls_ca = "{ca}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    before = front.sessions()
    release = prod_release(app, app.app.deploy(app.commit("stack over tls")))
    assert release["engine"] == engine_name(front), release
    assert front.sessions() > before
    web = app.client.api.inspect_service(f"{app.name}_web")
    assert web["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == release["digest"]
    cache_spec = app.client.api.inspect_service(f"{app.name}_cache")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert cache_spec["Image"] == cache.tags[0]


def test_a_runner_killed_mid_update_over_tls_is_recovered_by_a_new_process(
    tls_swarm: SwarmApp, manager_over_tls: TlsFront, store: Store
) -> None:
    """Hazard: `recover` (a new process, its own TLS connection) reconciling with this machine's engine
    while the manager is the tcp:// one, or unable to connect with the certificates. The CLI is
    SIGKILLed right after it submitted the update; `recover` ends prod converged on its latest recorded
    release, with no drift, no lock, and the next promotion goes through."""
    from faults_support import Orchestrator

    app, front = tls_swarm, manager_over_tls
    orch = Orchestrator(app.app.workspace.path)
    app.app.deploy(app.commit("baseline"))
    run_id = orch.start_run(app.name, app.commit("killed"))
    orch.advance(run_id, "deploy-staging").ok()
    proc = orch.advance(run_id, "deploy", crash_at="after:prod_update")
    assert proc.returncode == -9, proc.describe()
    assert {lock["liveness"] for lock in orch.locks()} == {"dead"}
    before = front.sessions()
    reports = orch.recover(app.name)
    assert len(reports) == 1, reports
    assert front.sessions() > before
    latest = store.latest_release(app.name, "prod")
    assert latest is not None and latest.engine == engine_name(front), latest
    app.wait_settled("prod")
    assert_converged_on(app, "prod", views.release(latest))
    status = orch.status(app.name)
    assert status["drift"] is False and all(e["ok"] for e in status["environments"]), status
    assert orch.locks() == []
    assert_converged_on(app, "prod", prod_release(app, orch.deploy(app.name, app.commit("after the kill"))))
