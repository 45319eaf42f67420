"""Prod on another Docker engine, reached over SSH (issue 14): two real engines on this machine.

Staging runs on the suite's engine, prod on a second dockerd behind a key-only sshd (remote_support.py),
selected with ORCH_DOCKER_HOST_PROD=ssh://root@127.0.0.1:<port>. The second engine starts empty: the
image can only get there through the registry, by digest, and must be the very image staging checked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import BusyboxApp, LocalRegistry
    from remote_support import RemoteEngine

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker


def sweep_remote(remote: RemoteEngine, app: str) -> None:
    """Remove what a test left of ``app`` on the second engine (its containers and images)."""
    engine = remote.engine
    for env in ("staging", "prod"):
        engine.remove_container(f"{app}-{env}")
    for image in engine.images():
        refs = (*image.tags, *image.repo_digests)
        if image.labels.get("orchestrator.tests.app") == app or any(app in ref for ref in refs):
            engine.remove_image(image.id, force=True)


@pytest.fixture
def remote_app(
    registry_app: BusyboxApp,
    remote_engine: RemoteEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[BusyboxApp]:
    """``registry_app`` with prod on the second engine; whatever the test left there is removed after."""
    monkeypatch.setenv("ORCH_DOCKER_HOST_PROD", remote_engine.url)
    monkeypatch.setenv("PATH", f"{remote_engine.ssh_bin}:{os.environ['PATH']}")
    yield registry_app
    sweep_remote(remote_engine, registry_app.name)


def prod_release(app: BusyboxApp, run_id: int) -> dict[str, Any]:
    releases = [r for r in app.show(run_id)["releases"] if r["environment"] == "prod"]
    return releases[-1]


def staging_release(app: BusyboxApp, run_id: int) -> dict[str, Any]:
    return [r for r in app.show(run_id)["releases"] if r["environment"] == "staging"][-1]


def remote_prod(app: BusyboxApp, remote: RemoteEngine) -> tuple[str, str, tuple[str, ...]] | None:
    """(container image id, its revision label, the image's repo digests) of prod on the second engine,
    read straight from its socket."""
    found = remote.engine.container(f"{app.name}-prod")
    if found is None or not found.running:
        return None
    image = remote.engine.image(found.image_id)
    assert image is not None
    return found.image_id, str(image.label("org.opencontainers.image.revision")), image.repo_digests


def test_prod_on_the_remote_engine_runs_the_digest_staging_verified(
    remote_app: BusyboxApp, remote_engine: RemoteEngine, registry: LocalRegistry
) -> None:
    """Hazard: a remote prod that runs something else than what staging checked (a rebuild there, a tag
    that moved), or a "remote" deploy that in fact ran on the local engine. Staging runs on the first
    engine, prod on the second, which never had the image: prod's container there runs the image id
    staging verified, pulled by the registry digest the release records, and answers /version with the
    sha on the remote host's address; nothing of prod runs on the first engine. `status` reads prod
    from its own engine and names it."""
    app = remote_app
    sha = app.commit("remote release")
    run_id = app.deploy(sha)
    staged, released = staging_release(app, run_id), prod_release(app, run_id)
    assert released["image_id"] == staged["image_id"]
    # Each release records the engine it ran on.
    assert (staged["engine"], released["engine"]) == ("local", f"root@127.0.0.1:{remote_engine.port}")
    assert released["digest"] == f"{registry.repository(app.name)}@{registry.digest(app.name, sha)}"

    seen = remote_prod(app, remote_engine)
    assert seen is not None, "prod is not running on the second engine"
    image_id, revision, digests = seen
    assert image_id == staged["image_id"] and revision == sha
    assert released["digest"] in digests  # it got there by that digest
    assert app.engine.container(f"{app.name}-prod") is None  # not on the first engine
    assert app.running("staging") is not None and app.running("staging").image_id == image_id  # type: ignore[union-attr]
    assert app.get("prod", "/version").body.strip() == sha

    prod_edge = app.show(run_id)["transitions"][-1]
    steps = [s["name"] for s in prod_edge["steps"]]
    assert (
        steps.index("prod_push")
        < steps.index("prod_pull")
        < steps.index("prod_tag")
        < steps.index("prod_start")
    )
    (pull,) = [s for s in prod_edge["steps"] if s["name"] == "prod_pull"]
    assert (
        pull["changes"]["pulled"] is True
        and pull["changes"]["engine"] == f"root@127.0.0.1:{remote_engine.port}"
    )
    assert "build" not in [s["name"] for s in prod_edge["steps"]]  # built once, on staging's edge

    status = app.cli("status", app.name, as_json=True).ok()
    envs = {e["environment"]: e for e in status["environments"]}
    assert envs["prod"]["engine"] == f"root@127.0.0.1:{remote_engine.port}"
    assert envs["prod"]["ok"] and envs["prod"]["image_id"] == image_id, envs["prod"]
    assert envs["staging"]["engine"] == "local" and envs["staging"]["ok"]


def test_rollback_and_drift_against_the_remote_engine(
    remote_app: BusyboxApp, remote_engine: RemoteEngine, store: Store
) -> None:
    """Hazard: rollback or status acting on the local engine while prod lives elsewhere. After A and B,
    `rollback` puts the second engine's prod back on A (verified there) and records it; a container
    removed by hand on the second engine is drift that `status` reports (exit 5)."""
    app = remote_app
    sha_a, sha_b = app.commit("A"), app.commit("B")
    rel_a = prod_release(app, app.deploy(sha_a))
    app.deploy(sha_b)
    assert remote_prod(app, remote_engine)[1] == sha_b  # type: ignore[index]

    payload = app.cli("rollback", app.name, "--env", "prod", as_json=True).ok()
    assert payload["outcome"] == "rolled_back", payload
    seen = remote_prod(app, remote_engine)
    assert seen is not None and seen[0] == rel_a["image_id"] and seen[1] == sha_a
    assert app.get("prod", "/version").body.strip() == sha_a
    assert store.latest_release(app.name, "prod").image_id == rel_a["image_id"]  # type: ignore[union-attr]
    assert app.cli("status", app.name, as_json=True).ok()["ok"]

    remote_engine.engine.remove_container(f"{app.name}-prod")
    drift = app.cli("status", app.name, as_json=True)
    assert drift.exit_code == 5, drift.describe()
    prod = {e["environment"]: e for e in drift.payload["environments"]}["prod"]
    assert prod["cause"] == "container_gone", prod


def test_a_failing_prod_on_the_remote_engine_is_rolled_back_there(
    remote_app: BusyboxApp, remote_engine: RemoteEngine
) -> None:
    """Hazard: a failed remote promotion that leaves the remote prod down, or restores it on the wrong
    engine. B's prod loses its health path: promote_prod fails and the compensation puts the second
    engine's prod back on A, verified."""
    app = remote_app
    sha_a = app.commit("good")
    rel_a = prod_release(app, app.deploy(sha_a))
    sha_b = app.commit("broken prod", prod="no_health")
    app.configure(health_timeout_s=3)
    run_id = app.start(sha_b)
    app.advance(run_id, "deploy-staging").ok()
    failed = app.advance(run_id, "deploy")
    assert failed.exit_code == 1, failed.describe()
    verdicts = dict(app.verdicts(failed.payload))
    assert verdicts["promote_prod"] == "fail" and verdicts["rollback_prod"] == "pass", verdicts
    seen = remote_prod(app, remote_engine)
    assert seen is not None and seen[0] == rel_a["image_id"] and seen[1] == sha_a
    assert app.get("prod", "/version").body.strip() == sha_a


def test_an_unreachable_remote_engine_is_exit_4_naming_the_host_with_nothing_recorded(
    registry_app: BusyboxApp, free_port: Any, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    """Hazard: a host that is down recorded as a failed gate (the commit blamed), a lock left behind, or
    a message leaking key material. Staging (local) deploys; the prod edge is refused before anything
    is written: exit 4 naming the host, no transition for it, no lock, the run still in deploy-staging."""
    app = registry_app
    port = free_port()
    monkeypatch.setenv("ORCH_DOCKER_HOST_PROD", f"ssh://deploy@127.0.0.1:{port}")
    sha = app.commit("unreachable")
    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()
    before = len(app.show(run_id)["transitions"])
    result = app.advance(run_id, "deploy")
    message = result.error(4, "infrastructure_unavailable")
    assert f"deploy@127.0.0.1:{port}" in message and "unreachable" in message, message
    assert "PRIVATE KEY" not in message and "id_" not in message
    shown = app.show(run_id)
    assert shown["state"] == "deploy-staging"
    assert len(shown["transitions"]) == before  # nothing recorded as a gate failure
    assert store.locks(app.name) == []


def test_environments_on_different_engines_without_a_registry_are_exit_2_before_anything_runs(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    """Hazard: a remote prod that would need the image copied by hand (or rebuilt there). Without a
    registry, `deploy` refuses before a run exists: exit 2 saying to set ``registry``."""
    app = busybox_app
    monkeypatch.setenv("ORCH_DOCKER_HOST_PROD", "ssh://deploy@127.0.0.1:1")
    sha = app.commit("no registry")
    result = app.cli("deploy", "--app", app.name, "--sha", sha, as_json=True)
    message = result.error(2, "bad_input")
    assert "registry" in message and f"[apps.{app.name}].registry" in message, message
    assert store.list_runs(app=app.name, state=None, limit=10) == []


def test_an_app_wholly_on_the_remote_engine_builds_and_runs_there(
    busybox_app: BusyboxApp, remote_engine: RemoteEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hazard: a build that lands on this machine's engine while the app's environments live elsewhere
    (BuildKit builds run through the docker CLI, which must be pointed at the same engine). With
    ``docker_host`` for the whole app, no registry is needed: the image is built on the second engine,
    staging and prod run it there, and this machine's engine never sees it."""
    app = busybox_app
    monkeypatch.setenv("ORCH_DOCKER_HOST_STAGING", remote_engine.url)
    monkeypatch.setenv("ORCH_DOCKER_HOST_PROD", remote_engine.url)
    monkeypatch.setenv("PATH", f"{remote_engine.ssh_bin}:{os.environ['PATH']}")
    try:
        sha = app.commit("built remotely")
        run_id = app.deploy(sha)
        staged = staging_release(app, run_id)
        build = next(s for s in app.show(run_id)["transitions"][0]["steps"] if s["name"] == "build")
        staging = remote_engine.engine.container(f"{app.name}-staging")
        assert staging is not None and staging.image_id == staged["image_id"]
        seen = remote_prod(app, remote_engine)
        assert seen is not None and seen[0] == staged["image_id"] and seen[1] == sha
        assert app.engine.image(staged["image_id"]) is None, f"built here, not on the remote ({build})"
        assert app.engine.container(f"{app.name}-staging") is None
        assert app.get("staging", "/version").body.strip() == sha
    finally:
        sweep_remote(remote_engine, app.name)


def test_a_runner_killed_mid_swap_on_the_remote_engine_is_recovered_there(
    remote_app: BusyboxApp, remote_engine: RemoteEngine
) -> None:
    """Hazard: recovery that reconciles with the local engine while prod lives elsewhere (finding no
    prod container here, it would "restore" the wrong engine or give up). The CLI, as a separate
    process, is SIGKILLed right after it removed the remote prod's container; `recover` puts the second
    engine's prod back on the previous release, verified, and closes the transition as aborted."""
    from faults_support import Orchestrator

    app = remote_app
    rel_a = prod_release(app, app.deploy(app.commit("A")))
    orch = Orchestrator(app.workspace.path)
    run_id = orch.start_run(app.name, app.commit("B"))
    orch.advance(run_id, "deploy-staging").ok()
    dirs = ssh_dirs()
    died = orch.advance(run_id, "deploy", crash_at="after:prod_stop")
    assert died.returncode == -9, died.describe()
    assert remote_prod(app, remote_engine) is None  # the kill left the remote prod without a container
    # Its ssh processes died with it (they get SIGTERM when it dies); only its directory is left.
    for _ in range(100):
        if not ssh_leftovers(dirs)[0]:
            break
        time.sleep(0.05)
    procs, left = ssh_leftovers(dirs)
    assert procs == [] and len(left) == 1, (procs, left)

    recovered = orch.run("recover", app.name, "--json")
    assert ssh_leftovers(dirs) == ([], [])  # the next connection swept the dead process's directory
    reports = recovered.ok()["recovered"]
    assert len(reports) == 1 and reports[0]["outcome"] == "aborted", reports
    seen = remote_prod(app, remote_engine)
    assert seen is not None and seen[0] == rel_a["image_id"], (seen, reports)
    assert app.get("prod", "/version").body.strip() == rel_a["revision"]
    assert app.engine.container(f"{app.name}-prod") is None  # restored there, not here
    # The SDK's ssh transport must not leave tracebacks on the operator's terminal at exit.
    assert "Traceback" not in recovered.stderr, recovered.stderr


def test_prod_on_a_tcp_engine_with_client_certificates(
    registry_app: BusyboxApp, remote_engine: RemoteEngine
) -> None:
    """Hazard: tcp:// engines configured with TLS files that are not really used (a plain connection, or
    the BuildKit/CLI path ignoring them). The second engine also listens on tcp://127.0.0.1 with
    --tlsverify; prod configured there in orchestrator.toml (``[apps.X.prod]`` with docker_host, tls_ca,
    tls_cert, tls_key) runs the image staging verified, and `status` reads it over TLS."""
    app = registry_app
    tls = remote_engine.tls_dir
    config = app.workspace.config_path
    config.write_text(
        config.read_text()
        + f'\n[apps.{app.name}.prod]\ndocker_host = "{remote_engine.tls_url}"\n'
        + f'tls_ca = "{tls / "ca.pem"}"\ntls_cert = "{tls / "cert.pem"}"\ntls_key = "{tls / "key.pem"}"\n'
    )
    try:
        sha = app.commit("over tls")
        run_id = app.deploy(sha)
        staged = staging_release(app, run_id)
        seen = remote_prod(app, remote_engine)
        assert seen is not None and seen[0] == staged["image_id"] and seen[1] == sha
        assert app.engine.container(f"{app.name}-prod") is None
        status = app.cli("status", app.name, as_json=True).ok()
        prod = {e["environment"]: e for e in status["environments"]}["prod"]
        assert prod["engine"] == remote_engine.tls_url.removeprefix("tcp://") and prod["ok"], prod
    finally:
        sweep_remote(remote_engine, app.name)


def test_prune_after_deploy_cleans_the_remote_engine_too(
    remote_app: BusyboxApp, remote_engine: RemoteEngine, monkeypatch: pytest.MonkeyPatch, store: Store
) -> None:
    """Hazard: housekeeping that only looks at this machine's engine, so the remote host fills its disk
    with every image ever promoted there. With one release kept per environment, after A, B and C the
    second engine keeps C's image only; A's and B's (pulled there by digest) are pruned."""
    monkeypatch.setenv("ORCH_KEEP_RELEASES", "1")
    app = remote_app
    images = [prod_release(app, app.deploy(app.commit(name)))["image_id"] for name in "ABC"]
    assert len(set(images)) == 3
    on_remote = {image.id for image in remote_engine.engine.images()}
    assert images[2] in on_remote
    assert images[0] not in on_remote and images[1] not in on_remote, on_remote
    events = [e for e in store.events(app=app.name) if e.kind in ("pruned", "prune_failed")]
    assert events and all(e.kind == "pruned" for e in events), events


def ssh_leftovers(before: set[str]) -> tuple[list[str], list[str]]:
    """ssh processes whose argv names a private connection directory (orchestrator/ssh.py), and those
    directories, that were not there ``before`` (a snapshot of ``ssh_dirs()``)."""
    procs = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        named = {match.rstrip("/") for match in re.findall(r"/\S*?orch-ssh-[^/\s]+", cmdline)}
        if named - before and "ControlPath=" in cmdline:
            procs.append(cmdline)
    return procs, sorted(ssh_dirs() - before)


def ssh_dirs() -> set[str]:
    return {str(p) for p in Path(tempfile.gettempdir()).glob("orch-ssh-*")}


def handshakes(remote: RemoteEngine) -> int:
    """ssh connections (each a full handshake) the second engine's sshd has accepted so far."""
    return remote.sshd_log.read_text(errors="replace").count("Accepted publickey")


def test_a_promotion_to_the_remote_engine_makes_one_ssh_connection(
    remote_app: BusyboxApp, remote_engine: RemoteEngine
) -> None:
    """Hazard: one ssh handshake per engine request (the SDK's own transport), which made a remote
    promotion ~9x slower than a local one. The prod edge, push, pull, tag, start, verification and all,
    makes exactly one ssh connection to the host; when it ends no ssh process and no file is left."""
    app = remote_app
    before_dirs = ssh_dirs()
    run_id = app.start(app.commit("one connection"))
    app.advance(run_id, "deploy-staging").ok()
    before = handshakes(remote_engine)
    assert app.advance(run_id, "deploy").ok()["state"] == "deploy"
    assert handshakes(remote_engine) - before == 1, remote_engine.sshd_log.read_text()[-3000:]
    assert prod_release(app, run_id)["engine"] == f"root@127.0.0.1:{remote_engine.port}"
    assert ssh_leftovers(before_dirs) == ([], [])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word: a blackholed host, as far as a
    client can tell (no RST, no banner)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


def test_a_blackholed_ssh_host_is_exit_4_within_the_connect_timeout(
    registry_app: BusyboxApp, silent_port: int, store: Store
) -> None:
    """Hazard: a prod host whose packets go nowhere hangs the deploy (and the terminal, or the CI job)
    forever. With ORCH_ENGINE_CONNECT_TIMEOUT_S=2 the prod edge, run as the real CLI, ends with exit 4
    naming the host and the limit; nothing is recorded, no lock is held, nothing is left behind. (A
    hang fails the test at the subprocess limit.)"""
    from faults_support import Orchestrator

    app = registry_app
    orch = Orchestrator(app.workspace.path)
    env = {
        "ORCH_DOCKER_HOST_PROD": f"ssh://deploy@127.0.0.1:{silent_port}",
        "ORCH_ENGINE_CONNECT_TIMEOUT_S": "2",
    }
    run_id = app.start(app.commit("blackholed"))
    app.advance(run_id, "deploy-staging").ok()
    before, dirs = len(app.show(run_id)["transitions"]), ssh_dirs()
    running = orch.start("advance", run_id, "--to", "deploy", "--json", env=env)
    try:
        result = running.wait(timeout=60)
    finally:
        running.stop()
    payload = json.loads(result.stdout)
    assert result.returncode == 4 and payload["error"] == "infrastructure_unavailable", result.describe()
    message = payload["message"]
    assert f"deploy@127.0.0.1:{silent_port}" in message, message
    assert "timed out" in message or "within 2 s" in message, message
    assert len(app.show(run_id)["transitions"]) == before and store.locks(app.name) == []
    assert ssh_leftovers(dirs) == ([], [])


def test_sigterm_while_connecting_ends_ssh_and_leaves_nothing(
    registry_app: BusyboxApp, silent_port: int
) -> None:
    """Hazard: a CLI stopped outside an edge (SIGTERM from a cancelled CI job during `status`) leaving
    its ssh master running and its directory in /tmp. `status` waits on a host that never answers;
    SIGTERM ends it with 143, its ssh processes ended and its directory removed."""
    from faults_support import Orchestrator

    app = registry_app
    app.deploy(app.commit("deployed"))
    orch = Orchestrator(app.workspace.path)
    env = {
        "ORCH_DOCKER_HOST_PROD": f"ssh://deploy@127.0.0.1:{silent_port}",
        "ORCH_ENGINE_CONNECT_TIMEOUT_S": "120",
    }
    dirs = ssh_dirs()
    running = orch.start("status", app.name, "--json", env=env)
    try:
        for _ in range(600):  # the connection's directory appears once the master is being started
            mine = [d for d in ssh_dirs() - dirs if f"orch-ssh-{running.popen.pid}-" in d]
            if mine and list(Path(mine[0]).glob("master.log")):
                break
            assert running.popen.poll() is None, running.output()
            time.sleep(0.05)
        else:
            raise AssertionError(f"status never started connecting:\n{running.output()}")
        running.popen.send_signal(signal.SIGTERM)
        result = running.wait(timeout=30)
    finally:
        running.stop()
    assert result.returncode == 143, result.describe()
    assert ssh_leftovers(dirs) == ([], [])


def test_status_reports_every_environment_and_exits_4_when_one_host_is_down(
    remote_app: BusyboxApp, remote_engine: RemoteEngine, free_port: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hazard: one remote host down hiding the state of every other environment (status failing as a
    whole). Prod on the second engine, then its host goes away (prod pointed at a dead port): status
    still shows staging (local, healthy), shows prod as unreachable with the host and ssh's reason,
    in text and --json, and exits 4 after the report."""
    app = remote_app
    app.deploy(app.commit("seen"))
    dead = f"root@127.0.0.1:{free_port()}"
    monkeypatch.setenv("ORCH_DOCKER_HOST_PROD", f"ssh://{dead}")
    result = app.cli("status", app.name, as_json=True)
    assert result.exit_code == 4, result.describe()
    envs = {e["environment"]: e for e in result.payload["environments"]}
    assert envs["staging"]["ok"] and envs["staging"]["reachable"] and envs["staging"]["healthy"]
    prod = envs["prod"]
    assert not prod["ok"] and not prod["reachable"] and prod["cause"] == "unreachable", prod
    assert prod["engine"] == dead and dead in prod["unreachable"], prod
    assert "Connection refused" in prod["unreachable"], prod
    assert result.payload["ok"] is False

    text = app.cli("status", app.name)
    assert text.exit_code == 4, text.describe()
    lines = text.stdout.splitlines()
    assert any(app.name in line and "staging" in line and "healthy" in line for line in lines), text.stdout
    assert any("prod" in line and "UNREACHABLE" in line and dead in line for line in lines), text.stdout
    assert any("problem: unreachable:" in line and "Connection refused" in line for line in lines), (
        text.stdout
    )


def test_sigterm_mid_promotion_undoes_it_and_ends_the_ssh_connection(
    remote_app: BusyboxApp, remote_engine: RemoteEngine
) -> None:
    """Hazard: a cancelled CI job (SIGTERM) during a remote promotion leaving ssh processes or files
    behind while the edge undoes its work. SIGTERM right after the pull on the second engine: the CLI
    exits 143, the remote prod still runs A, and no ssh process or directory of it is left."""
    from faults_support import Orchestrator

    app = remote_app
    rel_a = prod_release(app, app.deploy(app.commit("A")))
    orch = Orchestrator(app.workspace.path)
    run_id = orch.start_run(app.name, app.commit("B"))
    orch.advance(run_id, "deploy-staging").ok()
    dirs = ssh_dirs()
    stopped = orch.advance(run_id, "deploy", crash_at="after:prod_pull", crash_signal="TERM")
    assert stopped.returncode == 143, stopped.describe()
    seen = remote_prod(app, remote_engine)
    assert seen is not None and seen[0] == rel_a["image_id"], seen
    assert ssh_leftovers(dirs) == ([], [])
    assert "Traceback" not in stopped.stderr, stopped.stderr
