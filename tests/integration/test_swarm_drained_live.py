"""A real swarm service looked at as a drained manager would see it: what the manager's engine reports
(the service, its task list, the images it holds, the proxy answering on the environment's port) is
real; only the engine's own node id is replaced and the task containers are hidden, as on a manager
whose node runs no task of the service.

This machine cannot host a second swarm node (a second engine shares the host's network namespace and
runs without iptables; the routing mesh does not answer), so this is the nearest real check of the path
a drained manager takes: that the manager's real task data (container ids, spec digests, labels) and
its image store are enough to verify, health-check through the proxy and show the service. The logic
with tasks on several nodes, some off, is tests/unit/test_swarm_drained.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import docker
import pytest
from test_swarm import SwarmApp, configured_swarm_app, ensure_swarm, prod_release

from orchestrator.config import load_config
from orchestrator.deploy import Deployer
from orchestrator.docker_engine import ContainerInfo, DockerEngine
from orchestrator.releases import observe
from orchestrator.runtimes import Published

if TYPE_CHECKING:
    from conftest import BusyboxApp, LocalRegistry

pytestmark = pytest.mark.docker

ANOTHER_NODE = "drained-manager-node"


class _SwarmSeenFromADrainedManager:
    """The engine's swarm calls, with the engine's own node replaced: every task is then elsewhere."""

    def __init__(self, swarm: Any) -> None:
        self._swarm = swarm

    def node_id(self) -> str:
        return ANOTHER_NODE

    def __getattr__(self, name: str) -> Any:
        return getattr(self._swarm, name)


class _DrainedManager:
    """The real engine, but no swarm task's container is on it (they all run on other nodes)."""

    def __init__(self, engine: DockerEngine) -> None:
        self._engine = engine
        self.swarm = _SwarmSeenFromADrainedManager(engine.swarm)
        self.looked_up: list[str] = []

    def container(self, name: str) -> ContainerInfo | None:
        found = self._engine.container(name)
        if found is not None and "com.docker.swarm.task.id" in found.labels:
            self.looked_up.append(name)
            return None
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class _Release:
    """A recorded release, as `rollback` hands it to the deployer."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.id = int(row["release_id"])
        self.image_id = str(row["image_id"])
        self.digest = str(row["digest"])
        self.revision = str(row["revision"])


@pytest.fixture
def swarm_app(
    busybox_app: BusyboxApp,
    registry: LocalRegistry,
    haproxy_image: str,
    docker_client: docker.DockerClient,
    unique_name: Callable[[str], str],
    engine: DockerEngine,
) -> Iterator[SwarmApp]:
    ensure_swarm(engine)
    yield from configured_swarm_app(busybox_app, registry, haproxy_image, docker_client, unique_name)


def test_a_service_with_no_task_on_the_managers_node_verifies_and_shows_through_the_manager(
    swarm_app: SwarmApp, engine: DockerEngine
) -> None:
    app = swarm_app
    release = prod_release(app, app.app.deploy(app.commit("one")))
    second = prod_release(app, app.app.deploy(app.commit("two")))
    config = load_config(app.app.workspace.config_path)
    drained = _DrainedManager(engine)
    d = Deployer(drained, config.app(app.name), config.settings)  # type: ignore[arg-type]

    # A real update back to the first release (the rollback path: start, converge, health, verify),
    # with no task on the engine's node: it failed with "converged but none of its tasks runs on the
    # node of the engine" before.
    back = d.redeploy("prod", _Release(release), run_id=None)
    assert back.ok, back.reason
    assert app.spec_image("prod") == release["digest"] != second["digest"]
    assert back.details["health"]["healthy"]
    assert {t["checked"] for t in back.details["tasks"]} == {"task spec digest"}

    found = d.current("prod")
    assert found is not None and found.running
    assert found.name.startswith(f"{app.service('prod')}.")
    # The image by the task's digest, from the manager's image store: the release's own image.
    assert found.image_id == release["image_id"]
    # The container id the manager's task list reports is the task's real container (here it happens to
    # be on this engine, which is what lets the test compare).
    real = engine.container(found.id)
    assert real is not None and real.image_id == release["image_id"]

    check = d.verify_running("prod", release["image_id"], release["revision"])
    assert check.ok, check.reason
    assert {t["checked"] for t in check.details["tasks"]} == {"task spec digest"}
    assert len(check.details["tasks"]) == 2
    # Health and /version through the proxy on the manager, which reaches the tasks over the overlay.
    assert d.serves("prod", release["image_id"], release["revision"])
    # Looked at again (the health check's watch, the check after it): found in the manager's task list.
    assert d.inspect("prod", found.id) == found
    assert found.id in drained.looked_up, "the task containers were not hidden: the test would prove nothing"
    evidence = d.container_evidence("prod", found.id)
    node = engine.swarm.node_id()
    assert (evidence["container"], evidence["node"]) == (found.name, node)
    # The task's own log, relayed by the manager (GET /tasks/{id}/logs), not a hint to go and read it;
    # and it reaches the first thing an operator reads of a failure.
    assert f"serving revision {release['revision']}" in evidence["logs_tail"], evidence
    failed = d._failed("prod", found, "unhealthy", {}, Published(release["image_id"], release["digest"]))
    assert f"log lines of {found.name} (on node {node[:12]})" in failed.reason, failed.reason
    assert f"serving revision {release['revision']}" in failed.reason, failed.reason
    seen = observe(d, "prod")
    assert (seen.container, seen.image_id, seen.revision, seen.healthy) == (
        found.name,
        release["image_id"],
        release["revision"],
        True,
    )
    assert seen.runtime is not None and all(f"on node {node[:12]}" in t for t in seen.runtime.tasks)
    assert not d.serves("prod", "sha256:" + "0" * 64, release["revision"])
