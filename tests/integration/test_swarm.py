"""The swarm backend on a real single-node swarm with the suite's loopback registry: each environment
is a 2-replica service pinned by registry digest behind its haproxy proxy. A good promotion converges
on the new digest; a broken health check leaves the previous digest with the reason recorded; rollback
goes to any kept release by digest; SIGKILL mid-update, then `recover`, ends on a recorded release.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import pytest
from client_loop import INTERVAL_S, SLOW_CGI, SLOW_S, client_loop, slow_answer_complete, slow_client_loop

from orchestrator import views
from orchestrator.docker_engine import DockerEngine
from orchestrator.health import get as http_get
from orchestrator.proxy import forget_admin_dirs

if TYPE_CHECKING:
    from conftest import BusyboxApp, LocalRegistry

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker

REVISION_LABEL = "org.opencontainers.image.revision"

# The app listens on 0.0.0.0:$PORT inside its task (the proxy reaches it over the overlay network).
SERVE = """\
bb=/bin/busybox
echo "$APP_REVISION" > /www/version
echo "serving revision $APP_REVISION"
$bb chmod +x /www/cgi-bin/slow /www/cgi-bin/long
if [ "$ORCH_ENVIRONMENT" = prod ]; then
  {broken}
fi
{serve}
"""
# busybox httpd as PID 1 ignores SIGTERM (Docker kills it after the stop grace period); an app that exits
# at once when asked to stop instead leaves a task no time to finish what it is answering.
SERVE_FOREVER = 'exec $bb httpd -f -p "0.0.0.0:$PORT" -h /www'
EXIT_ON_SIGTERM = 'trap "exit 0" TERM\n$bb httpd -f -p "0.0.0.0:$PORT" -h /www &\nwait'
# A request longer than what Swarm's own delay gives a task it replaces (it leaves DNS ~2 s before its
# SIGTERM), shorter than the default drain time (ORCH_DRAIN_S, 5 s) that the stop grace period adds.
LONG_S = 5
LONG_CGI = SLOW_CGI.replace(f"sleep {SLOW_S}", f"sleep {LONG_S}")
# The drain time a test app is configured with, unless its test is about draining: it is each task's
# stop grace period, which these apps (busybox httpd as PID 1, deaf to SIGTERM) sit out whole, so with
# the default (5 s) each update waits 4 s more for its old tasks to stop. Not less: the engine counts a
# task's grace period in whole seconds (a fraction is dropped), and 0 kills it right after SIGTERM.
QUICK_DRAIN_S = 1
HEALTHCHECK = (
    'HEALTHCHECK --interval=1s --timeout=1s --retries=2 CMD ["/bin/busybox", "wget", '
    '"-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"]\n'
)


def render(
    app: str, marker: str, *, healthcheck: bool, broken: bool, exits_on_sigterm: bool = False
) -> dict[str, str]:
    return {
        "Dockerfile": (
            "FROM scratch\nCOPY busybox /bin/busybox\n"
            f"LABEL orchestrator.tests=1 orchestrator.tests.app={app}\n"
            "COPY rootfs /\nARG GIT_SHA\nENV APP_REVISION=$GIT_SHA\n"
            f"LABEL {REVISION_LABEL}=$GIT_SHA\n"
            + (HEALTHCHECK if healthcheck else "")
            + 'CMD ["/bin/busybox", "sh", "/serve.sh"]\n'
        ),
        "rootfs/serve.sh": SERVE.format(
            broken="$bb rm -f /www/health" if broken else ":",
            serve=EXIT_ON_SIGTERM if exits_on_sigterm else SERVE_FOREVER,
        ),
        "rootfs/www/health": "ok\n",
        "rootfs/www/index.html": f"{app} {marker}\n",
        "rootfs/www/cgi-bin/slow": SLOW_CGI,
        "rootfs/www/cgi-bin/long": LONG_CGI,
    }


@pytest.fixture(scope="session")
def swarm_mode(engine: DockerEngine) -> None:
    ensure_swarm(engine)


def ensure_swarm(engine: DockerEngine) -> None:
    """CI starts from a fresh engine: make it a single-node swarm if it is not one (never leave it)."""
    if engine.swarm.manager():
        return
    proc = subprocess.run(
        ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"docker swarm init failed: {proc.stderr}"
    assert engine.swarm.manager()


@dataclass
class SwarmApp:
    app: BusyboxApp
    registry: LocalRegistry
    network: str
    proxy_image: str
    client: docker.DockerClient

    @property
    def name(self) -> str:
        return self.app.name

    def service(self, env: str) -> str:
        return f"{self.name}-{env}"

    def configure(
        self,
        *,
        runtime: str = '"swarm"',
        health_timeout_s: float = 15,
        drain_s: float | None = QUICK_DRAIN_S,
    ) -> None:
        """``drain_s`` None: the default drain time (for a test about it)."""
        self.app.workspace.write_config(
            "[orchestrator]\n"
            f"health_timeout_s = {health_timeout_s}\n"
            + ("" if drain_s is None else f"drain_s = {drain_s}\n")
            + "swarm_timeout_s = 120\n\n"
            f"[apps.{self.name}]\n"
            f"proxy_image = {json.dumps(self.proxy_image)}\n"
            f"source = {json.dumps(Path(self.app.repo.path).as_posix())}\n"
            'health_path = "/health"\nversion_path = "/version"\n'
            f"staging_port = {self.app.staging_port}\nprod_port = {self.app.prod_port}\n"
            f"registry = {json.dumps(self.registry.address)}\n"
            f"runtime = {runtime}\nreplicas = 2\nupdate_monitor_s = 1\n"
            f"swarm_network = {json.dumps(self.network)}\n"
        )

    def commit(self, marker: str, *, healthcheck: bool = True, broken: bool = False, **variant: bool) -> str:
        return self.app.repo.commit(
            marker, render(self.name, marker, healthcheck=healthcheck, broken=broken, **variant)
        )

    def spec_image(self, env: str) -> str:
        attrs = self.client.api.inspect_service(self.service(env))
        return str(attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])

    def running_tasks(self, env: str, *, draining: bool = False) -> list[dict[str, Any]]:
        """The tasks the engine reports running that Swarm wants running (``draining``: those it told
        to shut down instead, still stopping), read with the raw SDK (not the code under test)."""
        tasks = self.client.api.tasks(filters={"service": self.service(env)})
        return [
            t
            for t in tasks
            if t["Status"]["State"] == "running" and (t["DesiredState"] == "running") != draining
        ]

    def task_images(self, env: str) -> list[tuple[str, str]]:
        """(task spec image, container image id) of each running task."""
        found = []
        for task in self.running_tasks(env):
            cid = task["Status"]["ContainerStatus"]["ContainerID"]
            found.append(
                (task["Spec"]["ContainerSpec"]["Image"], self.client.api.inspect_container(cid)["Image"])
            )
        return sorted(found)

    def wait_settled(self, env: str, timeout: float = 120) -> None:
        """Until Swarm is not updating or rolling back the service (it goes on without us)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = (self.client.api.inspect_service(self.service(env)).get("UpdateStatus") or {}).get(
                "State"
            )
            if state not in ("updating", "rollback_started"):
                return
            time.sleep(0.2)
        pytest.fail(f"{self.service(env)} still {state} after {timeout}s")

    def use_stack(self, cache_image: str, *, drain_s: float | None = QUICK_DRAIN_S) -> tuple[Path, str]:
        """Commit a stack file (the app's `web`, and a `cache` the orchestrator must leave as written)
        and point the config at it, prod on swarm; returns the file and its text."""
        repo = self.registry.repository(self.name)
        stack_text = (
            'version: "3.8"\n'
            "services:\n"
            "  web:\n"
            f"    image: {json.dumps(repo + ':latest')}\n"
            "    environment:\n"
            '      PORT: "8080"\n'
            "      ORCH_ENVIRONMENT: prod\n"
            "    stop_grace_period: 1s\n"
            "    deploy:\n"
            "      replicas: 2\n"
            "  cache:\n"
            f"    image: {json.dumps(cache_image)}\n"
            '    command: ["/bin/busybox", "sleep", "3600"]\n'
            "    stop_grace_period: 1s\n"
        )
        self.app.repo.commit("stack file", {"stack.yml": stack_text})
        stack_file = Path(self.app.repo.path) / "stack.yml"
        self.configure(runtime='{ prod = "swarm" }', drain_s=drain_s)
        config = self.app.workspace.config_path
        config.write_text(
            config.read_text() + f"container_port = 8080\nstack_file = {json.dumps(stack_file.as_posix())}\n"
            'stack_service = "web"\n',
            encoding="utf-8",
        )
        return stack_file, stack_text

    def teardown(self) -> list[str]:
        errors: list[str] = []
        # The app's services: <app>-<env>, and a stack's <app>_<service> / <app>-staging_<service>.
        for service in self.client.api.services(filters={"name": self.name}):
            if service["Spec"]["Name"].startswith(self.name):
                with contextlib.suppress(docker.errors.NotFound):
                    self.client.api.remove_service(service["ID"])
        # Task containers go away asynchronously; the network (and an image a task runs) can only go
        # once they have: the app's own, and those of a stack's other services (not labelled as ours).
        deadline = time.monotonic() + 60
        owners = [
            [f"orchestrator.app={self.name}", "com.docker.swarm.task.id"],
            *([f"com.docker.stack.namespace={ns}"] for ns in (self.name, f"{self.name}-staging")),
        ]
        while time.monotonic() < deadline:
            left = [
                c
                for labels in owners
                for c in self.client.api.containers(all=True, filters={"label": labels})
            ]
            if not left:
                break
            # Swarm stops a removed service's tasks with its 10 s grace period, which the test apps
            # (a shell as PID 1, deaf to SIGTERM) sit out whole: they go at once instead.
            for container in left:
                with contextlib.suppress(docker.errors.APIError):
                    self.client.api.remove_container(container["Id"], force=True)
            time.sleep(0.2)
        for env in ("staging", "prod"):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(f"{self.name}-{env}-proxy", force=True)
            forget_admin_dirs(f"{self.name}-{env}-proxy")
        stack_networks = [
            n["Name"]
            for n in self.client.api.networks(filters={"label": "com.docker.stack.namespace"})
            if n["Name"].startswith(f"{self.name}_") or n["Name"].startswith(f"{self.name}-staging_")
        ]
        for network in stack_networks:
            with contextlib.suppress(docker.errors.APIError):
                self.client.api.remove_network(network)
        while time.monotonic() < deadline:
            try:
                self.client.api.remove_network(self.network)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as exc:
                if time.monotonic() >= deadline - 1:
                    errors.append(f"network {self.network}: {exc}")
                    break
                time.sleep(0.5)
        return errors


@pytest.fixture
def swarm_app(
    swarm_mode: None,
    busybox_app: BusyboxApp,
    registry: LocalRegistry,
    haproxy_image: str,
    docker_client: docker.DockerClient,
    unique_name: Callable[[str], str],
) -> Iterator[SwarmApp]:
    yield from configured_swarm_app(busybox_app, registry, haproxy_image, docker_client, unique_name)


def configured_swarm_app(
    busybox_app: BusyboxApp,
    registry: LocalRegistry,
    haproxy_image: str,
    docker_client: docker.DockerClient,
    unique_name: Callable[[str], str],
) -> Iterator[SwarmApp]:
    """A configured SwarmApp for a fixture to yield; torn down (its registry tags too) afterwards."""
    from conftest import remove_registry_tags

    app = SwarmApp(busybox_app, registry, unique_name("net"), haproxy_image, docker_client)
    app.configure()
    try:
        yield app
    finally:
        errors = app.teardown() + remove_registry_tags(docker_client, registry, app.name)
        if errors:
            pytest.fail("cleanup failed: " + "; ".join(errors))


def prod_release(app: SwarmApp, run_id: int) -> dict[str, Any]:
    (release,) = [r for r in app.app.show(run_id)["releases"] if r["environment"] == "prod"]
    return release


def assert_converged_on(app: SwarmApp, env: str, release: dict[str, Any]) -> None:
    """The service spec and every running task are on the release's digest and image, and the app
    answers through the proxy with the release's revision."""
    assert app.spec_image(env) == release["digest"]
    assert app.task_images(env) == [(release["digest"], release["image_id"])] * 2
    version = http_get(f"http://127.0.0.1:{app.app.port(env)}/version")
    assert version.ok and version.body.strip() == release["revision"], version


def test_a_good_promotion_converges_on_the_new_digest(swarm_app: SwarmApp) -> None:
    """Hazard: a service updated by tag (each node resolving it at its own time), or a promotion
    declared done while some task still runs the old digest. Two releases: after each, the spec and
    both running tasks are on that release's registry digest, and nothing runs the old one."""
    app = swarm_app
    first = prod_release(app, app.app.deploy(app.commit("one")))
    assert first["digest"].startswith(f"{app.registry.repository(app.name)}@sha256:")
    assert_converged_on(app, "prod", first)
    second = prod_release(app, app.app.deploy(app.commit("two")))
    assert second["digest"] != first["digest"]
    assert_converged_on(app, "prod", second)
    # Converged means the old tasks have stopped, not only been told to.
    assert app.running_tasks("prod", draining=True) == []
    status = app.app.cli("status", app.name, as_json=True).ok()
    (prod,) = [e for e in status["environments"] if e["environment"] == "prod"]
    assert prod["ok"] and not prod["drift"], prod


@pytest.mark.parametrize("healthcheck", [True, False], ids=["docker-healthcheck", "http-health"])
def test_a_broken_health_check_leaves_the_previous_digest_and_says_why(
    swarm_app: SwarmApp, healthcheck: bool
) -> None:
    """Hazard: a release whose prod tasks never become healthy left serving (or half the tasks on it),
    with nothing recorded. Release B loses /health in prod only (so staging passes). With the image's
    own HEALTHCHECK, Swarm rolls the update back by itself; without one, Swarm completes it and our
    health check through the proxy fails, so the orchestrator puts the service back. Either way the
    service ends on A's digest with both tasks, A answers, and the recorded gate says why."""
    app = swarm_app
    # Without a HEALTHCHECK, B's health check waits out the whole timeout: a healthy release answers
    # within a second of converging (every task running, behind the proxy), so 5 s is ample for A.
    app.configure(health_timeout_s=5)
    good = prod_release(app, app.app.deploy(app.commit("good", healthcheck=healthcheck)))
    run_id = app.app.start(app.commit("broken", healthcheck=healthcheck, broken=True))
    app.app.advance(run_id, "deploy-staging").ok()
    result = app.app.advance(run_id, "deploy")
    assert result.exit_code == 1, result.describe()
    payload = result.payload
    app.wait_settled("prod")
    assert_converged_on(app, "prod", good)
    (gate,) = [c for c in payload["checks"] if c["status"] == "fail"]
    if healthcheck:
        assert "did not converge" in gate["reason"] and "rolled" in gate["reason"], gate
        assert "unhealthy container" in gate["reason"], gate
    else:
        assert "/health" in gate["reason"], gate
    assert payload["failure"]["prod"]["action"] == "restored", payload["failure"]
    # The history keeps the reason on the failed step, then the restore's own steps.
    shown = app.app.show(run_id)
    steps = [(s["name"], s["status"]) for t in shown["transitions"] for s in t.get("steps", [])]
    failed_step = ("prod_converge" if healthcheck else "prod_health", "failed")
    assert failed_step in steps, steps
    assert steps.index(failed_step) < steps.index(("restore_prod_verify", "done")), steps


def test_rollback_to_an_older_kept_release_by_digest_and_status_shows_drift(swarm_app: SwarmApp) -> None:
    """Hazard: a rollback limited to Swarm's one step back (`docker service rollback` only knows the
    previous spec), or by tag. After A, B, C, `rollback --to A` puts the service on A's digest, verified
    on every task, and records it. Then someone pins B by hand: `status` names the service's digest and
    tasks, and exits 5 for drift although every task container is healthy."""
    app = swarm_app
    releases = [prod_release(app, app.app.deploy(app.commit(f"release {n}"))) for n in "ABC"]
    rel_a, rel_b, _ = releases
    done = app.app.cli("rollback", app.name, "--env", "prod", "--to", rel_a["release_id"], as_json=True).ok()
    assert done["outcome"] == "rolled_back" and done["release"]["digest"] == rel_a["digest"], done
    assert_converged_on(app, "prod", rel_a)

    status = app.app.cli("status", app.name, as_json=True).ok()
    (prod,) = [e for e in status["environments"] if e["environment"] == "prod"]
    assert prod["ok"] and prod["service"]["pinned"] == rel_a["digest"], prod
    assert len(prod["service"]["tasks"]) == 2 and all(rel_a["digest"] in t for t in prod["service"]["tasks"])
    human = app.app.cli("status", app.name)
    human.ok()
    text = human.stdout
    assert f"swarm {app.service('prod')}: pinned {rel_a['digest']}" in text, text

    subprocess.run(
        ["docker", "service", "update", "--quiet", "--image", rel_b["digest"], app.service("prod")],
        check=True,
        capture_output=True,
        timeout=180,
    )
    app.wait_settled("prod")
    drifted = app.app.cli("status", app.name, as_json=True)
    assert drifted.exit_code == 5, drifted.describe()
    (prod,) = [e for e in drifted.payload["environments"] if e["environment"] == "prod"]
    assert prod["cause"] in ("another_image", "service_drift"), prod
    assert any(f"is pinned to {rel_b['digest']}" in d for d in prod["differences"]), prod


@pytest.mark.parametrize(
    "crash_at",
    ["after:prod_update", "after:prod_converge"],
    ids=["mid-update", "converged-unchecked"],
)
def test_sigkill_mid_update_then_recover_ends_on_a_recorded_release(
    swarm_app: SwarmApp, store: Store, crash_at: str
) -> None:
    """Hazard: the runner dies while Swarm is still replacing tasks (Swarm goes on without it, and may
    finish or roll back on its own), leaving prod on an unrecorded digest and its locks held by a dead
    process. `recover` reads the service's tasks: prod ends converged on the digest of its latest
    recorded release (the old one put back, or the new one verified and recorded), no drift, no lock,
    and the next promotion goes through."""
    from faults_support import Orchestrator

    app = swarm_app
    orch = Orchestrator(app.app.workspace.path)
    app.app.deploy(app.commit("baseline"))
    run_id = orch.start_run(app.name, app.commit("killed"))
    orch.advance(run_id, "deploy-staging").ok()
    proc = orch.advance(run_id, "deploy", crash_at=crash_at)
    assert proc.returncode == -9, proc.describe()
    left = orch.show(run_id)["transitions"][-1]
    assert left["outcome"] == "in_progress" and left["steps"][-1]["name"] == crash_at.split(":")[1], left
    assert {lock["liveness"] for lock in orch.locks()} == {"dead"}

    reports = orch.recover(app.name)
    assert [r["transition_id"] for r in reports] == [left["transition_id"]], reports
    latest = store.latest_release(app.name, "prod")
    assert latest is not None
    app.wait_settled("prod")
    assert_converged_on(app, "prod", views.release(latest))
    status = orch.status(app.name)
    assert status["drift"] is False and all(e["ok"] for e in status["environments"]), status
    assert orch.locks() == []

    nxt = prod_release(app, orch.deploy(app.name, app.commit("after the kill")))
    assert_converged_on(app, "prod", nxt)


def test_no_request_fails_during_a_promotion_and_a_rollback(swarm_app: SwarmApp) -> None:
    """Hazard: a start-first update that still drops requests (the port handed over between tasks, an
    old task killed with requests in flight, the proxy sending to a task that is gone). A client hits
    prod's /version through the proxy every 20 ms while B is promoted over A and while prod is rolled
    back to A: not one request fails, and both revisions were seen. Beside it, slow requests are kept in
    flight: each completes on the task that began it, though the app exits at once on SIGTERM (Swarm
    takes a task out of the service's DNS 2 s before it stops it; the proxy re-resolves every 200 ms)."""
    app = swarm_app
    app.configure(drain_s=None)  # in-flight requests while tasks stop: the default drain time
    first = prod_release(app, app.app.deploy(app.commit("A", exits_on_sigterm=True)))
    run_id = app.app.start(app.commit("B", exits_on_sigterm=True))
    app.app.advance(run_id, "deploy-staging").ok()
    base = f"http://127.0.0.1:{app.app.port('prod')}"
    for action in ("promotion", "rollback"):
        fast_loop = client_loop(f"{base}/version", before_s=0.5, timeout_s=2)
        with fast_loop as loop, slow_client_loop(f"{base}/cgi-bin/slow") as slow:
            if action == "promotion":
                app.app.advance(run_id, "deploy").ok()
            else:
                app.app.cli(
                    "rollback", app.name, "--env", "prod", "--to", first["release_id"], as_json=True
                ).ok()
        assert loop.failed == [], (action, loop.summary())
        assert loop.ok > 50, action
        assert len(loop.bodies) == 2, (action, loop.bodies)  # the old revision, then the new one
        assert slow.failed == [], (action, slow.summary())
        assert len(slow.bodies) == 2, (action, slow.bodies)


def test_a_request_longer_than_swarms_dns_delay_finishes_during_a_promotion(swarm_app: SwarmApp) -> None:
    """Hazard: a stop grace period too short for the requests in flight. Swarm takes a replaced task out
    of DNS, sends it SIGTERM ~2 s later and kills it one grace period after that: with the fixed 1 s, a
    request still being answered 3 s after the task left DNS was cut, even from an app that finishes its
    requests before it exits (here the app keeps answering after SIGTERM: busybox httpd as PID 1 ignores
    it). With the grace period of the drain time (5 s), 5 s requests kept in flight back to back on three
    staggered threads across the promotion, so both old tasks are answering some when they are stopped,
    all complete, answered by the old release and then by the new one."""
    app = swarm_app
    app.configure(drain_s=None)  # the default drain time is what is under test
    app.app.deploy(app.commit("A"))
    run_id = app.app.start(app.commit("B"))
    app.app.advance(run_id, "deploy-staging").ok()
    url = f"http://127.0.0.1:{app.app.port('prod')}/cgi-bin/long"
    with client_loop(
        url,
        interval_s=INTERVAL_S,
        workers=3,
        stagger_s=LONG_S / 3,
        before_s=0,
        after_s=LONG_S + 1,  # until the new release has answered some
        timeout_s=LONG_S + 10,
        complete=slow_answer_complete,
    ) as slow:
        app.app.advance(run_id, "deploy").ok()
    assert slow.failed == [], slow.summary()
    assert len(slow.bodies) == 2, slow.bodies  # the old revision, then the new one


def test_a_stack_file_is_pinned_like_compose_only_the_app_service_by_digest(
    busybox_image: Callable[..., Any],  # first: its image outlives the stack's services at teardown
    swarm_app: SwarmApp,
) -> None:
    """Hazard: `docker stack deploy` of a stack file as written (its `image: repo:latest` resolved by
    each node at its own time), or an orchestrator that rewrites the user's stack file or pins services
    that are not the app's. Prod is the stack <app> deployed from the committed stack file plus an
    override naming only `web` by digest: web converges on each release's digest, `cache` keeps the
    image the stack file gives it, the stack file is untouched, and each release keeps its override."""
    app = swarm_app
    cache = busybox_image(revision=None, tag=f"{app.name}-cache:1")
    stack_file, stack_text = app.use_stack(cache.tags[0])
    releases = [prod_release(app, app.app.deploy(app.commit(f"stack {n}"))) for n in "AB"]
    web = f"{app.name}_web"
    for release in releases[-1:]:
        attrs = app.client.api.inspect_service(web)
        assert attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == release["digest"]
        assert attrs["Spec"]["UpdateConfig"]["Order"] == "start-first", attrs["Spec"]["UpdateConfig"]
        tasks = [
            t for t in app.client.api.tasks(filters={"service": web}) if t["Status"]["State"] == "running"
        ]
        assert sorted(t["Spec"]["ContainerSpec"]["Image"] for t in tasks) == [release["digest"]] * 2
        version = http_get(f"http://127.0.0.1:{app.app.port('prod')}/version")
        assert version.ok and version.body.strip() == release["revision"], version
    cache_spec = app.client.api.inspect_service(f"{app.name}_cache")["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert cache_spec["Image"] == cache.tags[0], "a service that is not the app's was pinned"
    assert stack_file.read_text() == stack_text
    override = (stack_file.parent / ".deploy" / "stack-prod.override.deploy.yml").read_text()
    assert releases[-1]["digest"] in override and "cache" not in override
    anchors = sorted((stack_file.parent / ".deploy" / "history").glob("prod-release-*.yml"))
    assert len(anchors) == 2 and releases[0]["digest"] in anchors[0].read_text()
    status = app.app.cli("status", app.name, as_json=True).ok()
    (prod,) = [e for e in status["environments"] if e["environment"] == "prod"]
    assert prod["ok"] and prod["service"]["name"] == web, prod


def test_an_uncommitted_stack_file_change_is_refused_before_prod_is_touched(
    busybox_image: Callable[..., Any],  # first: its image outlives the stack's services at teardown
    swarm_app: SwarmApp,
) -> None:
    """Hazard: the stack file read from the working tree, so an edit made after staging was checked (a
    host mount, another image for a neighbour service) reaches prod with no trace in the history. Like a
    compose file, a stack file inside the app's repository must be the run's committed one: edited
    between the edges, the prod edge is refused (exit 2, nothing recorded) and prod stays on A; restored,
    the same run promotes."""
    app = swarm_app
    cache = busybox_image(revision=None, tag=f"{app.name}-cache:1")
    stack_file, stack_text = app.use_stack(cache.tags[0])
    first = prod_release(app, app.app.deploy(app.commit("stack A")))
    run_b = app.app.start(app.commit("stack B"))
    app.app.advance(run_b, "deploy-staging").ok()
    transitions = len(app.app.show(run_b)["transitions"])

    stack_file.write_text(stack_text.replace("replicas: 2", "replicas: 3"), encoding="utf-8")
    message = app.app.advance(run_b, "deploy").error(2, "bad_input")
    assert message.startswith(f"stack file {stack_file} differs from its version in commit"), message
    assert len(app.app.show(run_b)["transitions"]) == transitions
    spec = app.client.api.inspect_service(f"{app.name}_web")["Spec"]
    assert spec["TaskTemplate"]["ContainerSpec"]["Image"] == first["digest"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 2

    stack_file.write_text(stack_text, encoding="utf-8")
    assert app.app.advance(run_b, "deploy").ok()["state"] == "deploy"


def test_a_first_prod_deploy_that_crash_loops_fails_fast_and_takes_the_service_down(
    swarm_app: SwarmApp,
) -> None:
    """Hazard: prod's first release never becomes healthy, and Swarm restarts its tasks forever (there is
    nothing to roll back to) while the promotion waits out its whole timeout, then leaves the broken
    service running. The failed tasks end the wait; with no earlier release the service and its proxy
    are removed, and the reason names the tasks' error. The next good release deploys normally."""
    app = swarm_app
    run_id = app.app.start(app.commit("broken first", broken=True))
    app.app.advance(run_id, "deploy-staging").ok()
    result = app.app.advance(run_id, "deploy")
    assert result.exit_code == 1, result.describe()
    (gate,) = [c for c in result.payload["checks"] if c["status"] == "fail"]
    assert "keep failing" in gate["reason"] and "unhealthy container" in gate["reason"], gate
    with pytest.raises(docker.errors.NotFound):
        app.client.api.inspect_service(app.service("prod"))
    with pytest.raises(docker.errors.NotFound):
        app.client.api.inspect_container(f"{app.name}-prod-proxy")
    good = prod_release(app, app.app.deploy(app.commit("good")))
    assert_converged_on(app, "prod", good)


def test_a_stack_app_killed_mid_update_is_recovered_to_a_recorded_release(
    busybox_image: Callable[..., Any],  # first: its image outlives the stack's services at teardown
    swarm_app: SwarmApp,
    store: Store,
) -> None:
    """Hazard: the runner dies right after `docker stack deploy` submitted the new pin (Swarm updating on
    its own). `recover` ends with the stack's web service converged on prod's latest recorded release,
    no drift, no lock."""
    from faults_support import Orchestrator

    app = swarm_app
    cache = busybox_image(revision=None, tag=f"{app.name}-cache:1")
    app.use_stack(cache.tags[0])
    orch = Orchestrator(app.app.workspace.path)
    app.app.deploy(app.commit("baseline"))
    run_id = orch.start_run(app.name, app.commit("killed"))
    orch.advance(run_id, "deploy-staging").ok()
    proc = orch.advance(run_id, "deploy", crash_at="after:prod_update")
    assert proc.returncode == -9, proc.describe()
    orch.recover(app.name)
    latest = store.latest_release(app.name, "prod")
    assert latest is not None and latest.digest is not None
    web = f"{app.name}_web"
    deadline = time.monotonic() + 120
    while (app.client.api.inspect_service(web).get("UpdateStatus") or {}).get("State") == "updating":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert (
        app.client.api.inspect_service(web)["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == latest.digest
    )
    running = [t for t in app.client.api.tasks(filters={"service": web}) if t["Status"]["State"] == "running"]
    assert sorted(t["Spec"]["ContainerSpec"]["Image"] for t in running) == [latest.digest] * 2
    status = orch.status(app.name)
    assert status["drift"] is False and all(e["ok"] for e in status["environments"]), status
    assert orch.locks() == []
