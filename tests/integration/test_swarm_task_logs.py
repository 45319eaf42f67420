"""A swarm task's log read through the manager's tasks endpoint (``GET /tasks/{id}/logs``), on the real
single-node swarm. The call is the same whichever node runs the task (the manager asks that node's agent),
so a task here proves the request, its parameters and the decoding of the multiplexed stream; the
deployer's use of it for a task on another node is test_swarm_drained_live.py's."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest
from test_swarm import ensure_swarm

from orchestrator.docker_engine import DockerEngine
from orchestrator.errors import DockerError

pytestmark = pytest.mark.docker


@pytest.fixture
def failed_task(
    engine: DockerEngine,
    docker_client: docker.DockerClient,
    busybox_image: Callable[..., Any],
    unique_name: Callable[[str], str],
) -> Iterator[Callable[[str], str]]:
    """Factory: a one-shot service (never restarted) whose only task runs ``script`` under busybox's
    shell and fails; returns the task's id once it has ended. The services are removed after."""
    ensure_swarm(engine)
    tag = busybox_image().tags[0]
    api = docker_client.api
    names: list[str] = []

    def make(script: str) -> str:
        name = unique_name("tasklogs")
        template = docker.types.TaskTemplate(
            docker.types.ContainerSpec(
                tag, ["/bin/busybox", "sh", "-c", script], labels={"orchestrator.tests": "1"}
            ),
            restart_policy=docker.types.RestartPolicy(condition="none"),
        )
        api.create_service(template, name=name)
        names.append(name)
        deadline = time.monotonic() + 60
        while True:
            tasks = api.tasks(filters={"service": name})
            ended = [t for t in tasks if t["Status"]["State"] in ("failed", "complete", "rejected")]
            if ended:
                break
            assert time.monotonic() < deadline, f"the task of {name} never ended: {tasks}"
            time.sleep(0.2)
        assert ended[0]["Status"]["State"] == "failed", ended[0]["Status"]
        return str(ended[0]["ID"])

    try:
        yield make
    finally:
        for name in names:
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_service(name)
        deadline = time.monotonic() + 60
        for name in names:
            while api.containers(all=True, filters={"label": f"com.docker.swarm.service.name={name}"}):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)


def test_a_failed_tasks_log_is_read_through_the_tasks_endpoint(
    engine: DockerEngine, failed_task: Callable[[str], str]
) -> None:
    marker = f"task-log-marker-{uuid.uuid4().hex}"
    task_id = failed_task(f"echo {marker} out; echo {marker} err >&2; exit 3")
    text = engine.swarm.task_logs(task_id, tail=20)
    # Both streams, demultiplexed: no frame headers left in the text.
    assert f"{marker} out" in text and f"{marker} err" in text, repr(text)
    assert "\x01\x00\x00\x00" not in text and "\x02\x00\x00\x00" not in text, repr(text)
    # The tail is honoured: the last line only.
    last = engine.swarm.task_logs(task_id, tail=1)
    assert len(last.splitlines()) == 1 and marker in last, repr(last)


def test_a_task_that_wrote_nothing_has_an_empty_log_at_once(
    engine: DockerEngine, failed_task: Callable[[str], str]
) -> None:
    """Not a wait for lines that never come (early `docker service logs` hung on an empty log)."""
    assert engine.swarm.task_logs(failed_task("exit 3"), tail=20) == ""


def test_an_unknown_task_is_a_refusal_not_a_crash(engine: DockerEngine) -> None:
    ensure_swarm(engine)
    with pytest.raises(DockerError, match="no such task"):
        engine.swarm.task_logs("0" * 25, tail=5)
