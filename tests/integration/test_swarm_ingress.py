"""``swarm_publish = "ingress"`` on the real single-node swarm: the service publishes the environment's
port through the routing mesh and no proxy runs; switching back to the proxy takes the port off the
mesh before the proxy takes it.

The mesh itself does not answer on these machines (a port published in ingress mode refuses
connections; checked), so a whole promotion through it cannot pass a health check here: the switch to
the mesh is driven through the swarm runtime (the engine's service, endpoint and proxy are read back
with the raw SDK), and the switch back is a whole deploy through the orchestrator, which must answer
through the proxy on the port the mesh held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import pytest
from test_swarm import SwarmApp, assert_converged_on, configured_swarm_app, ensure_swarm, prod_release

from orchestrator import views
from orchestrator.config import load_config
from orchestrator.docker_engine import DockerEngine
from orchestrator.engines import AppEngines
from orchestrator.runtimes import Published
from orchestrator.runtimes.swarm import SwarmRuntime
from orchestrator.steps import StepLog

if TYPE_CHECKING:
    from conftest import BusyboxApp, LocalRegistry

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker


@pytest.fixture
def prod_swarm_app(
    engine: DockerEngine,
    busybox_app: BusyboxApp,
    registry: LocalRegistry,
    haproxy_image: str,
    docker_client: docker.DockerClient,
    unique_name: Callable[[str], str],
) -> Iterator[SwarmApp]:
    """Prod on swarm behind its proxy, staging a plain container (quicker; staging is not under test)."""
    ensure_swarm(engine)
    for app in configured_swarm_app(busybox_app, registry, haproxy_image, docker_client, unique_name):
        app.configure(runtime='{ prod = "swarm" }')
        yield app


def publish(app: SwarmApp, mode: str) -> None:
    config = app.app.workspace.config_path
    text = "".join(
        line for line in config.read_text().splitlines(keepends=True) if "swarm_publish" not in line
    )
    config.write_text(text + f'swarm_publish = "{mode}"\n', encoding="utf-8")


def endpoint_ports(app: SwarmApp, env: str) -> list[dict[str, Any]]:
    attrs = app.client.api.inspect_service(app.service(env))
    return [
        {k: p.get(k) for k in ("PublishedPort", "TargetPort", "Protocol", "PublishMode")}
        for p in (attrs["Spec"].get("EndpointSpec") or {}).get("Ports") or ()
    ]


def proxy_exists(app: SwarmApp, env: str) -> bool:
    try:
        app.client.api.inspect_container(f"{app.name}-{env}-proxy")
    except docker.errors.NotFound:
        return False
    return True


def step_changes(log: StepLog, name: str) -> dict[str, Any]:
    (handle,) = [h for h in log.recorded if h.name == name]
    return dict(handle.changes)


def through_the_mesh(
    app: SwarmApp, engine: DockerEngine, release: dict[str, Any]
) -> tuple[SwarmRuntime, StepLog]:
    """Prod switched to ``swarm_publish = "ingress"`` on ``release`` by the swarm runtime itself (a whole
    promotion cannot pass its health check through the mesh here)."""
    publish(app, "ingress")
    config = load_config(app.app.workspace.config_path)
    app_config = config.app(app.name)
    assert app_config.publish_of("prod") == "ingress" and app_config.publish_of("staging") == "proxy"
    log = StepLog()
    runtime = SwarmRuntime(AppEngines.single(app_config, engine), app_config, config.settings, log, {})
    digest = release["digest"].split("@", 1)[1]
    runtime.start("prod", Published(release["image_id"], release["digest"], digest), run_id=None)
    return runtime, log


def test_ingress_publishes_through_the_mesh_without_a_proxy_and_switching_back_frees_the_port(
    prod_swarm_app: SwarmApp, engine: DockerEngine
) -> None:
    """Hazards: a proxy left holding the port the mesh is asked to publish (the update fails, or two
    owners answer by turns); a switch back whose proxy cannot bind the port the service still publishes
    on every node. One: deployed behind the proxy. Then the same release with swarm_publish = "ingress":
    the proxy is removed first and recorded so, the service publishes prod's port to the task port in
    ingress mode, converges and verifies, and `status` says the mesh publishes it. Two, a new commit,
    back to the proxy through the whole orchestrator: the port is off the mesh and the proxy answers
    on it with release two."""
    app = prod_swarm_app
    port = app.app.port("prod")
    first = prod_release(app, app.app.deploy(app.commit("one")))
    assert endpoint_ports(app, "prod") == [] and proxy_exists(app, "prod")

    runtime, log = through_the_mesh(app, engine, first)

    assert not proxy_exists(app, "prod"), "the proxy must give the port up to the mesh"
    assert step_changes(log, "prod_proxy") == {
        "publish": "ingress",
        "ports": {port: 8080},
        "proxy_removed": True,
    }
    assert endpoint_ports(app, "prod") == [
        {"PublishedPort": port, "TargetPort": 8080, "Protocol": "tcp", "PublishMode": "ingress"}
    ]
    verdicts = runtime.verify("prod", first["image_id"], first["revision"])
    assert all(v.ok for v in verdicts), [v.reason for v in verdicts]
    view = runtime.view("prod")
    assert view is not None and view.published == f"ingress :{port} -> 8080"
    status = app.app.cli("status", app.name, as_json=True).payload
    (prod,) = [e for e in status["environments"] if e["environment"] == "prod"]
    assert prod["service"]["published"] == f"ingress :{port} -> 8080", prod

    publish(app, "proxy")
    run_id = app.app.deploy(app.commit("two"))
    second = prod_release(app, run_id)
    assert endpoint_ports(app, "prod") == [], "the update must take the port off the mesh"
    assert proxy_exists(app, "prod")
    assert_converged_on(app, "prod", second)
    steps = {s["name"]: s for t in app.app.show(run_id)["transitions"] for s in t.get("steps", ())}
    assert steps["prod_proxy"]["changes"]["unpublished_from_mesh"] == port, steps["prod_proxy"]
    status = app.app.cli("status", app.name, as_json=True).ok()
    (prod,) = [e for e in status["environments"] if e["environment"] == "prod"]
    assert prod["service"]["published"] == f"proxy {app.name}-prod-proxy" and prod["ok"], prod


def test_a_runner_killed_between_leaving_the_mesh_and_the_proxy_is_recovered_behind_the_proxy(
    prod_swarm_app: SwarmApp, engine: DockerEngine, store: Store
) -> None:
    """Hazard: the switch back to the proxy cut in the middle (the update took the port off the mesh,
    the proxy was not made yet): prod answers nowhere and nothing records why. Prod on the mesh, then a
    promotion behind the proxy SIGKILLed right after its ``prod_update`` step; `recover` finds prod not
    answering, puts its latest recorded release back through the ordered switch (proxy first), and
    prod answers through the proxy with that release, no drift, no lock left."""
    from faults_support import Orchestrator

    app = prod_swarm_app
    first = prod_release(app, app.app.deploy(app.commit("one")))
    through_the_mesh(app, engine, first)
    assert endpoint_ports(app, "prod") and not proxy_exists(app, "prod")

    publish(app, "proxy")
    orch = Orchestrator(app.app.workspace.path)
    run_id = orch.start_run(app.name, app.commit("killed"))
    orch.advance(run_id, "deploy-staging").ok()
    proc = orch.advance(run_id, "deploy", crash_at="after:prod_update")
    assert proc.returncode == -9, proc.describe()
    assert endpoint_ports(app, "prod") == [] and not proxy_exists(app, "prod")

    orch.recover(app.name)
    latest = store.latest_release(app.name, "prod")
    assert latest is not None
    app.wait_settled("prod")
    assert proxy_exists(app, "prod") and endpoint_ports(app, "prod") == []
    assert_converged_on(app, "prod", views.release(latest))
    status = orch.status(app.name)
    assert status["drift"] is False and all(e["ok"] for e in status["environments"]), status
    assert orch.locks() == []
