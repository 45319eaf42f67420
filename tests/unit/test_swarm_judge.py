"""When a swarm update has converged, is still going, or failed: judged from what Swarm reports, on
constructed services and tasks (the engine's side is tests/integration/test_swarm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import AppConfig, Settings
from orchestrator.docker_engine import ContainerInfo, ImageInfo, ServiceInfo, TaskInfo
from orchestrator.engines import AppEngines
from orchestrator.runtimes.swarm import SwarmRuntime, judge, task_errors
from orchestrator.steps import StepLog
from orchestrator.verdict import Verdict
from orchestrator.verify import all_of

NEW = "reg:5000/shop@sha256:" + "b" * 64
OLD = "reg:5000/shop@sha256:" + "a" * 64
SPEC_CHANGED = "2026-11-25T10:00:00.5Z"
BEFORE, AFTER = "2026-11-25T09:00:00Z", "2026-11-25T10:00:01.123456789Z"


def service(image: str = NEW, state: str | None = "completed", started: str | None = AFTER) -> ServiceInfo:
    return ServiceInfo(
        id="s1",
        name="shop-prod",
        version=7,
        image=image,
        replicas=2,
        labels={},
        update_state=state,
        update_message="update completed" if state else None,
        updated_at=SPEC_CHANGED,
        update_started_at=started if state else None,
    )


def task(
    n: int,
    image: str = NEW,
    state: str = "running",
    desired: str = "running",
    err: str | None = None,
    node: str = "node-a",
    revision: str | None = None,
):  # type: ignore[no-untyped-def]
    labels = {"orchestrator.revision": revision} if revision else {}
    return TaskInfo(
        f"t{n}" * 6, n, image, desired, state, f"c{n}", err, None, f"2026-11-25T10:00:0{n}Z", node, labels
    )


def test_converged_when_every_replica_runs_the_pinned_digest() -> None:
    tasks = [task(1), task(2), task(3, OLD, "shutdown", "shutdown")]
    assert judge(service(), tasks, NEW, 2).converged


@pytest.mark.parametrize("desired", ["running", "shutdown"])
def test_a_task_still_running_the_old_digest_is_not_converged(desired: str) -> None:
    # Told to shut down or not: until its container stops, the proxy may still get an answer from it.
    tasks = [task(1), task(2), task(3, OLD, "running", desired)]
    progress = judge(service(), tasks, NEW, 2)
    assert not progress.converged and progress.failed is None
    assert "1 still on another image" in progress.waiting_for


def test_an_update_in_progress_waits() -> None:
    progress = judge(service(state="updating"), [task(1), task(2, OLD)], NEW, 2)
    assert not progress.converged and progress.failed is None


def test_swarm_rolled_back_is_a_failure_naming_the_task_errors() -> None:
    tasks = [
        task(1, OLD),
        task(2, OLD),
        task(3, NEW, "failed", "shutdown", "task: non-zero exit (1): unhealthy"),
    ]
    progress = judge(service(OLD, "rollback_completed"), tasks, NEW, 2)
    assert (
        progress.failed is not None and "rolled the update back" in progress.failed and OLD in progress.failed
    )
    assert progress.errors == (f"task {'t3' * 6} failed: task: non-zero exit (1): unhealthy",)


def test_while_swarm_rolls_back_we_wait_for_it_to_finish() -> None:
    progress = judge(service(OLD, "rollback_started"), [task(1, OLD)], NEW, 2)
    assert progress.failed is None and "rollback" in progress.waiting_for


def test_a_stale_status_of_an_earlier_update_is_ignored() -> None:
    # A spec identical to what runs starts no update: the old "rollback_completed" must not fail it.
    stale = service(NEW, "rollback_completed", started=BEFORE)
    assert judge(stale, [task(1), task(2)], NEW, 2).converged
    # ...and while the new spec's update has not started yet, the tasks say it is not done.
    assert not judge(stale, [task(1, OLD), task(2, OLD)], NEW, 2).converged
    assert judge(stale, [task(1, OLD), task(2, OLD)], NEW, 2).failed is None


def test_a_first_deploy_that_crash_loops_fails_instead_of_waiting_forever() -> None:
    # A crash loop repeats the same error: counted per failed task, named once.
    unhealthy = "task: non-zero exit (137): dockerexec: unhealthy container"
    crashed = [task(n, NEW, "failed", "shutdown", unhealthy) for n in range(1, 5)]
    progress = judge(service(state=None), crashed, NEW, 2)
    assert progress.failed is not None and "4 tasks of it failed" in progress.failed
    assert len(progress.errors) == 1
    assert judge(service(state=None), crashed[:3], NEW, 2).failed is None  # not yet: slow starts happen


def test_a_removed_service_fails() -> None:
    assert judge(None, [], NEW, 2).failed is not None


def test_ordinary_replacements_are_not_errors_and_repeats_are_named_once() -> None:
    tasks = [
        task(1, NEW, "shutdown", "shutdown"),
        task(2, NEW, "failed", "shutdown", "unhealthy"),
        task(3, NEW, "failed", "shutdown", "unhealthy"),
        task(4, OLD, "failed", "shutdown", "other image"),
    ]
    assert task_errors(tasks, NEW) == (f"task {'t2' * 6} failed: unhealthy",)


# --- verification of every task (SwarmRuntime.verify), on a fake engine: the logic, not Docker's ------

IMAGE_ID = "sha256:" + "1" * 64
SHA = "c" * 40


class _FakeSwarm:
    def __init__(self, svc: ServiceInfo, tasks: list[TaskInfo]) -> None:
        self._service, self._tasks = svc, tasks

    def service(self, name: str) -> ServiceInfo:
        return self._service

    def tasks(self, name: str) -> list[TaskInfo]:
        return self._tasks

    def node_id(self) -> str:
        return "node-a"  # the engine we talk to; tasks on any other node have no container here


class _FakeEngine:
    def __init__(
        self, svc: ServiceInfo, tasks: list[TaskInfo], containers: dict[str, tuple[str, str]]
    ) -> None:
        self.swarm = _FakeSwarm(svc, tasks)
        self._containers = containers

    def image(self, ref: str) -> ImageInfo:
        return ImageInfo(IMAGE_ID, (), {}, repo_digests=(NEW,))

    def container(self, cid: str) -> ContainerInfo | None:
        if cid not in self._containers:
            return None
        image_id, revision = self._containers[cid]
        return ContainerInfo(cid, cid, image_id, "running", {"orchestrator.revision": revision})


def verify(svc: ServiceInfo, tasks: list[TaskInfo], containers: dict[str, tuple[str, str]]) -> Verdict:
    app = AppConfig(name="shop", source=Path("."), registry="reg:5000", runtime={"prod": "swarm"})
    engines = AppEngines.single(app, _FakeEngine(svc, tasks, containers))  # type: ignore[arg-type]
    runtime = SwarmRuntime(engines, app, Settings("sqlite://"), StepLog(), {})
    return all_of(*runtime.verify("prod", IMAGE_ID, SHA))


GOOD = {"c1": (IMAGE_ID, SHA), "c2": (IMAGE_ID, SHA)}


def test_every_task_on_the_digest_image_and_revision_verifies() -> None:
    assert verify(service(), [task(1), task(2)], GOOD).ok


@pytest.mark.parametrize(
    ("svc", "tasks", "containers", "fragment"),
    [
        (service(OLD), [task(1), task(2)], GOOD, f"pinned to {OLD}"),
        (service(), [task(1), task(2), task(3, OLD)], GOOD, f"runs {OLD}"),
        (
            service(),
            [task(1), task(2), task(3, OLD, "running", "shutdown")],
            GOOD,
            f"still runs {OLD} (shutdown)",
        ),
        (service(), [task(1), task(2)], {**GOOD, "c2": (IMAGE_ID, "d" * 40)}, "was started for revision"),
        (service(), [task(1), task(2)], {**GOOD, "c2": ("sha256:" + "9" * 64, SHA)}, "container runs image"),
        (service(), [task(1)], GOOD, "only 1 of 2 tasks are running"),
    ],
)
def test_one_task_off_is_a_failed_verification(
    svc: ServiceInfo, tasks: list[TaskInfo], containers: dict[str, tuple[str, str]], fragment: str
) -> None:
    found = verify(svc, tasks, containers)
    assert not found.ok and fragment in found.reason, found.reason


# --- many nodes: a task elsewhere is checked by its spec's digest, one here at its container ---------


def test_tasks_on_other_nodes_are_verified_by_their_spec_digest_and_say_so() -> None:
    """Hazard: verification that reads every task's container on the manager's engine, so a service
    with a task on another node (no container here) can never verify. The task on node-b passes by the
    digest and revision label in its spec; the one here by its container; the evidence says which."""
    tasks = [task(1), task(2, node="node-b", revision=SHA)]
    found = verify(service(), tasks, {"c1": (IMAGE_ID, SHA)})
    assert found.ok, found.reason
    assert found.details["tasks"] == [
        {"task": ("t1" * 6)[:12], "node": "node-a", "checked": "container", "ok": True},
        {"task": ("t2" * 6)[:12], "node": "node-b", "checked": "task spec digest", "ok": True},
    ]


@pytest.mark.parametrize(
    ("tasks", "fragment"),
    [
        ([task(1), task(2, node="node-b", revision="d" * 40)], "(node node-b) was started for revision"),
        ([task(1), task(2, node="node-b")], "was started for revision None"),
    ],
)
def test_a_task_on_another_node_started_for_another_revision_fails(
    tasks: list[TaskInfo], fragment: str
) -> None:
    found = verify(service(), tasks, {"c1": (IMAGE_ID, SHA)})
    assert not found.ok and fragment in found.reason, found.reason


def test_the_stop_grace_period_is_the_drain_time() -> None:
    """Hazard: the fixed 1 s grace period, which cut requests still in flight when a task was stopped."""
    from orchestrator.runtimes import Published
    from orchestrator.stack import StackPin, render_override

    app = AppConfig(name="shop", source=Path("."), registry="reg:5000", runtime={"prod": "swarm"})
    engines = AppEngines.single(app, _FakeEngine(service(), [], {}))  # type: ignore[arg-type]
    published = Published(IMAGE_ID, NEW, "sha256:" + "b" * 64)
    runtime = SwarmRuntime(engines, app, Settings("sqlite://", drain_s=7.0), StepLog(), {})
    spec = runtime._spec("prod", published, 3, SHA)
    assert spec.stop_grace_s == 7.0
    pin = StackPin("web", NEW, "orch-shop", 1, {}, {}, stop_grace_s=spec.stop_grace_s)
    assert "    stop_grace_period: 7000ms\n" in render_override(pin)


@pytest.mark.parametrize(("drain_s", "grace_s"), [(0.5, 1.0), (7.2, 8.0), (0.0, 0.0)])
def test_a_fraction_of_a_second_of_drain_time_rounds_the_grace_period_up(
    drain_s: float, grace_s: float
) -> None:
    """Hazard: the engine stops a task after its grace period's whole seconds, so drain_s = 0.5 gave a
    task no time at all after SIGTERM."""
    from orchestrator.runtimes import Published

    app = AppConfig(name="shop", source=Path("."), registry="reg:5000", runtime={"prod": "swarm"})
    engines = AppEngines.single(app, _FakeEngine(service(), [], {}))  # type: ignore[arg-type]
    runtime = SwarmRuntime(engines, app, Settings("sqlite://", drain_s=drain_s), StepLog(), {})
    spec = runtime._spec("prod", Published(IMAGE_ID, NEW, "sha256:" + "b" * 64), 3, SHA)
    assert spec.stop_grace_s == grace_s
