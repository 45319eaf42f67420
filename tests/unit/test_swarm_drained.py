"""A swarm whose manager runs no task of the service (its node drained, as on many production swarms):
the promotion, verification, `status`, rollback and recovery must judge the service from the manager's
task list and through the proxy, not from a task container that is not on the manager's engine.

Logic only (a fake engine serving the manager's view): this machine cannot host a second swarm node, so
tasks on other nodes exist here only as task data. The single-node path is the integration tests'.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.config import AppConfig, Settings
from orchestrator.deploy import Deployer
from orchestrator.docker_engine import ContainerInfo, ImageInfo, ServiceInfo, TaskInfo
from orchestrator.errors import DockerError
from orchestrator.releases import observe

NEW = "reg:5000/shop@sha256:" + "b" * 64
OLD = "reg:5000/shop@sha256:" + "a" * 64
IMAGE_ID = "sha256:" + "1" * 64
OLD_ID = "sha256:" + "0" * 64
SHA = "c" * 40
HERE = "node-a"  # the manager's own node: only its tasks have a container on the engine we talk to


def task(
    n: int,
    node: str,
    image: str = NEW,
    state: str = "running",
    desired: str = "running",
    revision: str | None = SHA,
) -> TaskInfo:
    labels = {"orchestrator.revision": revision} if revision else {}
    updated = f"2026-11-26T08:00:0{n}Z"
    return TaskInfo(f"t{n}" * 6, n, image, desired, state, f"c{n}", None, None, updated, node, labels)


class _FakeSwarm:
    def __init__(self, tasks: list[TaskInfo]) -> None:
        self.tasks_now = tasks
        # What the manager relays of a task's log (GET /tasks/{id}/logs); None: it cannot (node down).
        self.task_log: dict[str, str] = {}
        self.log_requests: list[tuple[str, int]] = []

    def task_logs(self, task_id: str, *, tail: int = 50) -> str:
        self.log_requests.append((task_id, tail))
        if task_id not in self.task_log:
            raise DockerError(f"logs of task {task_id[:12]}: nothing within 10 s (node down)")
        return self.task_log[task_id]

    def service(self, name: str) -> ServiceInfo:
        return ServiceInfo("s1", name, 7, NEW, 2, {}, "completed", None)

    def tasks(self, name: str) -> list[TaskInfo]:
        return list(self.tasks_now)

    def node_id(self) -> str:
        return HERE


class _FakeEngine:
    """The manager's engine: the swarm's task list, the image (pulled by its digest on the manager), and
    containers only for the tasks on its own node."""

    where = "unix:///var/run/docker.sock"

    def __init__(self, tasks: list[TaskInfo]) -> None:
        self.swarm = _FakeSwarm(tasks)
        self.stopped: list[str] = []

    def image(self, ref: str) -> ImageInfo | None:
        if ref in (IMAGE_ID, NEW):
            return ImageInfo(IMAGE_ID, (), {"org.opencontainers.image.revision": SHA}, repo_digests=(NEW,))
        if not ref:
            raise ValueError("Resource ID was not provided")  # what the SDK raises (NullResource)
        if ref in (OLD_ID, OLD):  # the release before, pulled here when it was promoted
            return ImageInfo(OLD_ID, (), {"org.opencontainers.image.revision": "d" * 40}, repo_digests=(OLD,))
        return None

    def container(self, cid: str) -> ContainerInfo | None:
        for t in self.swarm.tasks_now:
            if t.container_id == cid and t.node_id == HERE:
                status = "running" if t.state == "running" else "exited"
                return ContainerInfo(cid, f"shop-prod.{t.slot}.{t.id}", IMAGE_ID, status, dict(t.labels))
        return None

    def logs(self, name: str, *, tail: int = 50) -> str:
        return "local log line\n" if self.container(name) else ""

    def stop_container(self, name: str, *, timeout_s: int = 1) -> bool:
        self.stopped.append(name)
        return self.container(name) is not None


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy_port() -> Iterator[int]:
    """What the proxy on the manager would answer on the environment's port (the tasks' health)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def deployer(
    tasks: list[TaskInfo], port: int = 1, env: dict[str, str] | None = None
) -> tuple[Deployer, _FakeEngine]:
    app = AppConfig(
        name="shop",
        source=Path("."),
        registry="reg:5000",
        runtime={"staging": "swarm", "prod": "swarm"},
        prod_port=port,
        staging_port=port + 1 if port < 65535 else 2,
        env=env or {},
    )
    engine = _FakeEngine(tasks)
    settings = Settings("sqlite://", health_timeout_s=5.0, health_interval_s=0.01)
    return Deployer(engine, app, settings), engine  # type: ignore[arg-type]


ELSEWHERE = [task(1, "node-b"), task(2, "node-c")]


def test_with_no_task_on_the_managers_node_current_is_a_task_elsewhere_seen_by_the_manager() -> None:
    """Hazard: `current` looked for a task container on the manager's engine only, so a drained manager
    made the promotion fail after convergence ("none of its tasks runs on the node"), and status,
    rollback and recovery saw prod as gone."""
    d, _ = deployer(ELSEWHERE)
    found = d.current("prod")
    assert found is not None
    assert found.running
    # The newest running task, named as Docker names task containers; its image by the spec's digest.
    assert (found.id, found.name, found.image_id) == ("c2", f"shop-prod.2.{'t2' * 6}", IMAGE_ID)
    assert found.labels["orchestrator.revision"] == SHA


def test_a_task_on_the_managers_node_is_still_the_one_looked_at() -> None:
    d, _ = deployer([task(1, HERE), task(2, "node-b")])  # the remote one is newer
    found = d.current("prod")
    assert found is not None and found.id == "c1"


def test_no_running_task_anywhere_is_none() -> None:
    d, _ = deployer([task(1, "node-b", state="failed"), task(2, "node-c", state="starting")])
    assert d.current("prod") is None


@pytest.mark.parametrize(
    "tasks",
    [ELSEWHERE, [task(1, HERE), task(2, "node-b")]],
    ids=["every task elsewhere", "one here, one elsewhere"],
)
def test_verification_passes_from_the_managers_task_list(tasks: list[TaskInfo]) -> None:
    d, _ = deployer(tasks)
    check = d.verify_running("prod", IMAGE_ID, SHA)
    assert check.ok, check.reason
    how = {t["node"]: t["checked"] for t in check.details["tasks"]}  # type: ignore[union-attr]
    assert {n: h for n, h in how.items() if n != HERE} == {n: "task spec digest" for n in how if n != HERE}
    assert how.get(HERE, "container") == "container"


@pytest.mark.parametrize(
    ("tasks", "fragment"),
    [
        ([task(1, "node-b"), task(2, "node-c", image=OLD)], f"is image {OLD_ID}"),
        ([task(1, "node-b", image=OLD), task(2, "node-c")], f"runs {OLD}"),
        ([task(1, "node-b"), task(2, "node-c", revision="d" * 40)], "(node node-c) was started for revision"),
        ([task(1, "node-b"), task(2, "node-c", state="failed")], "only 1 of 2 tasks are running"),
        ([task(1, "node-b"), task(2, "node-c", state="starting")], "only 1 of 2 tasks are running"),
    ],
    ids=["newest on the old digest", "older on the old digest", "wrong revision", "failed", "not started"],
)
def test_a_remote_task_off_fails_verification_with_no_task_here(tasks: list[TaskInfo], fragment: str) -> None:
    d, _ = deployer(tasks)
    check = d.verify_running("prod", IMAGE_ID, SHA)
    assert not check.ok and fragment in check.reason, check.reason


def test_health_of_a_task_elsewhere_is_checked_through_the_proxy(proxy_port: int) -> None:
    """The health check goes to the environment's port (the proxy on the manager, which reaches every
    task over the overlay network), while the task it watches is followed in the manager's task list."""
    d, _ = deployer(ELSEWHERE, proxy_port)
    found = d.current("prod")
    assert found is not None
    report = d.wait_healthy("prod", found)
    assert report.healthy, report.reason
    assert report.url == f"http://127.0.0.1:{proxy_port}/health"


def test_a_task_elsewhere_that_fails_while_health_is_awaited_ends_the_wait() -> None:
    """Hazard: watching a remote task's container on the manager's engine (where it is not) would call
    it removed at once; not watching it at all would wait out the whole health timeout."""
    d, engine = deployer(ELSEWHERE, port=1)  # nothing answers on port 1
    found = d.current("prod")
    assert found is not None
    engine.swarm.tasks_now = [ELSEWHERE[0], task(2, "node-c", state="failed", desired="shutdown")]
    report = d.wait_healthy("prod", found)
    assert not report.healthy
    assert report.container_failure == "exited"


def test_serves_judges_a_service_with_no_task_here(proxy_port: int) -> None:
    """What rollback (`runs_current`), `recover` and the repair of a stopped environment ask."""
    d, _ = deployer(ELSEWHERE, proxy_port)
    assert d.serves("prod", IMAGE_ID, SHA)
    assert not d.serves("prod", "sha256:" + "9" * 64, SHA)


def test_evidence_of_a_task_elsewhere_keeps_the_hint_when_the_manager_cannot_relay_its_log() -> None:
    """The manager's engine has no log of a container on another node: the evidence says where it runs
    instead of "wrote nothing to its log", and a failed staging task there is not 'stopped' here."""
    from orchestrator.runtimes import Published

    d, engine = deployer(ELSEWHERE)
    found = d.current("staging")
    assert found is not None
    failed = d._failed("staging", found, "unhealthy", {}, Published(IMAGE_ID, NEW, NEW))
    assert failed.details["container"] == f"shop-staging.2.{'t2' * 6}"
    assert failed.details["node"] == "node-c"
    assert "wrote nothing" not in failed.reason
    assert "docker service logs shop-staging" in failed.reason
    # The manager was asked for the task's log; it could not relay it (node down): the hint stays.
    assert engine.swarm.log_requests == [("t2" * 6, 20)]
    assert "node down" in failed.details["logs_error"]
    assert "logs_tail" not in failed.details
    assert engine.stopped == []


def test_the_log_of_a_failed_task_elsewhere_is_relayed_by_the_manager_and_redacted() -> None:
    """Hazard: a task that fails on another node was reported with a hint to go and read its log, not
    the log: the cause was not in the first thing an operator reads, as it is for a local container."""
    from orchestrator.runtimes import Published

    d, engine = deployer(ELSEWHERE, env={"API_TOKEN": "s3cr3t-value"})
    engine.swarm.task_log["t2" * 6] = "booting\nusing token s3cr3t-value\npanic: cannot bind :8080\n"
    found = d.current("staging")
    assert found is not None
    failed = d._failed("staging", found, "unhealthy", {}, Published(IMAGE_ID, NEW, NEW))
    assert not failed.ok
    assert engine.swarm.log_requests == [("t2" * 6, 20)]  # the same tail as a local container's
    assert f"last 3 log lines of shop-staging.2.{'t2' * 6} (on node node-c)" in failed.reason
    assert failed.reason.endswith("panic: cannot bind :8080"), failed.reason
    assert "s3cr3t-value" not in failed.reason and "s3cr3t-value" not in failed.details["logs_tail"]
    assert failed.details["node"] == "node-c" and "logs_error" not in failed.details
    assert engine.stopped == []  # not on this engine: nothing to stop here


def test_status_shows_a_service_with_no_task_here(proxy_port: int) -> None:
    d, _ = deployer(ELSEWHERE, proxy_port)
    seen = observe(d, "prod")
    assert seen.container == f"shop-prod.2.{'t2' * 6}"
    assert (seen.status, seen.image_id, seen.revision, seen.healthy) == ("running", IMAGE_ID, SHA, True)


GONE = "reg:5000/shop@sha256:" + "e" * 64  # a digest the manager's engine does not hold (pruned there)


def test_a_task_elsewhere_on_an_image_the_manager_lacks_fails_verification_and_shows_in_status() -> None:
    """Hazard: no image id to look up (the manager holds no image of that digest) must read as unknown,
    not reach the engine as an empty image name (the SDK raises NullResource: a traceback)."""
    tasks = [task(1, "node-b", image=GONE), task(2, "node-c", image=GONE)]
    d, _ = deployer(tasks)
    check = d.verify_running("prod", IMAGE_ID, SHA)
    assert not check.ok
    seen = observe(d, "prod")
    assert (seen.container, seen.image_id, seen.revision) == (f"shop-prod.2.{'t2' * 6}", "", None)
    assert seen.image_ref == GONE


@pytest.mark.parametrize("recorded", [GONE, NEW], ids=["the-release-digest", "another-digest"])
def test_status_of_a_task_on_an_image_the_manager_lacks_says_what_its_digest_tells(recorded: str) -> None:
    """Hazard: status said "runs image none" and "no revision label" for a task on another node whose
    image the manager's engine does not hold. Its digest still says whether it runs the release: the
    drift says that, and that only the label cannot be read there (and how to make it readable)."""
    from datetime import UTC, datetime

    from orchestrator.releases import compute_drift
    from orchestrator.store.repository import ReleaseRecord

    d, _ = deployer([task(1, "node-b", image=GONE), task(2, "node-c", image=GONE)])
    release = ReleaseRecord(7, "shop", "prod", IMAGE_ID, recorded, SHA, 3, "deploy", None, datetime.now(UTC))
    diffs = compute_drift(release, observe(d, "prod"), app="shop", env="prod")
    assert not any("image none" in x or "revision label:" in x for x in diffs), diffs
    diff = diffs[0]  # the task's; the fake service's spec pins another digest (service_drift's line)
    if recorded == GONE:
        assert f"runs release 7's digest sha256:{'e' * 12}" in diff and f"'docker pull {GONE}'" in diff
    else:
        assert f"runs {GONE}, not release 7's {NEW}" in diff


def test_a_digest_the_manager_lacks_is_named_with_its_task_node_and_what_to_do() -> None:
    """Hazard: the verdict said "is image none": not which task, on which node, runs what, nor that the
    manager's engine is what lacks the image, nor what to do. Still a failure: the manager cannot tie
    that digest to the release's image (the manager knows the release's image by another digest)."""
    tasks = [task(1, "node-b", image=GONE), task(2, "node-c", image=GONE)]
    d, _ = deployer(tasks)
    check = d.verify_running("prod", IMAGE_ID, SHA)
    assert not check.ok
    assert "image none" not in check.reason
    assert check.reason.startswith(f"shop-prod.2.{'t2' * 6}: task {'t2' * 6} on node node-c runs {GONE}, ")
    assert f"not a digest of the expected image {IMAGE_ID[:19]}" in check.reason
    assert f"(unix:///var/run/docker.sock) knows it as {NEW}" in check.reason
    assert f"'docker pull {GONE}'" in check.reason and "roll back" in check.reason
    details = check.details
    assert (details["task_image"], details["node"], details["found_image_id"]) == (GONE, "node-c", None)


PRUNED_ID = "sha256:" + "9" * 64  # a release whose image the manager's engine no longer holds at all
PRUNED = "reg:5000/shop@sha256:" + "8" * 64


def test_a_release_image_pruned_from_the_manager_asks_to_pull_it_there_and_stays_unverified() -> None:
    """A drained manager runs no task of the service, so `docker image prune -a` there removes the image
    every task runs elsewhere: the verdict says the manager holds neither, and to pull it there."""
    d, _ = deployer([task(1, "node-b", image=PRUNED), task(2, "node-c", image=PRUNED)])
    check = d.verify_running("prod", PRUNED_ID, SHA)
    assert not check.ok
    assert check.reason.startswith(f"shop-prod.2.{'t2' * 6}: task {'t2' * 6} on node node-c runs {PRUNED}; ")
    assert f"holds no image by that digest, nor the expected image {PRUNED_ID[:19]} (pruned there?)" in (
        check.reason
    )
    assert f"pull it on the manager ('docker pull {PRUNED}') and run this again" in check.reason
    assert not d.serves("prod", PRUNED_ID, SHA)


def test_a_promotion_that_converged_on_a_digest_the_manager_lacks_names_it(proxy_port: int) -> None:
    """The check right after the health check said "still runs image , not ... (an unchanged tag made
    'docker compose up -d' a no-op)": a compose hint for a swarm task elsewhere."""
    from orchestrator.runtimes import Published

    d, _ = deployer([task(1, "node-b", image=GONE), task(2, "node-c", image=GONE)], proxy_port)
    started = d.current("prod")
    assert started is not None
    details: dict[str, object] = {}
    failure = d._check_started("prod", started, IMAGE_ID, details, Published(IMAGE_ID, NEW, NEW))
    assert failure is not None and not failure.ok
    assert "compose" not in failure.reason
    assert failure.reason.startswith(f"post-deploy verification: shop-prod.2.{'t2' * 6}: task "), (
        failure.reason
    )
    assert f"on node node-c runs {GONE}" in failure.reason
    assert failure.details["task_image"] == GONE


def test_status_names_the_node_of_each_task_elsewhere() -> None:
    d, _ = deployer([task(1, HERE), task(2, "node-b")])
    view = d.runtime.view("prod")
    assert view is not None
    assert view.tasks == (f"shop-prod.1 running {NEW}", f"shop-prod.2 running {NEW} on node node-b")


def test_a_promotion_that_converged_with_no_task_here_goes_on_to_its_health_check(
    proxy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure the issue reports: "converged but none of its tasks runs on the node of the engine".
    Submitting and converging are the integration tests' (faked here: the proxy, the update, the wait);
    what follows them is the logic under test: start hands back the task elsewhere, and the deploy's
    health step passes through the proxy while it watches that task in the manager's task list."""
    from orchestrator.runtimes import Published
    from orchestrator.runtimes.swarm import Progress

    d, engine = deployer(ELSEWHERE, proxy_port)
    runtime = d.runtime
    engine.swarm.manager = lambda: True  # type: ignore[attr-defined]

    class _Proxy:
        def ensure(self) -> ContainerInfo:
            return ContainerInfo("p1", "shop-prod-proxy", "sha256:" + "f" * 64, "running")

    monkeypatch.setattr(runtime, "proxy", lambda env: _Proxy())
    monkeypatch.setattr(runtime, "_submit", lambda env, spec, before: None)
    monkeypatch.setattr(runtime, "converge", lambda env, ref: Progress(converged=True))
    started = runtime.start("prod", Published(IMAGE_ID, NEW, "sha256:" + "b" * 64), run_id=3)  # type: ignore[attr-defined]
    assert started.id == "c2"
    details: dict[str, object] = {}
    failure = d._check_started("prod", started, IMAGE_ID, details, Published(IMAGE_ID, NEW, NEW))
    assert failure is None, failure.reason
    assert details["health"]["url"] == f"http://127.0.0.1:{proxy_port}/health"  # type: ignore[index]
