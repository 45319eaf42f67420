"""Apps that declare `container_port` run in their own network namespace, published on loopback only.

The hazard: an app that cannot use host networking must still be reachable where the health check
looks (127.0.0.1:<environment port>) and nowhere else, and must be told the port it listens on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from orchestrator.verify import REVISION_LABEL

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker

# Inside its own namespace the app must bind all of that namespace's interfaces for Docker to publish it.
_SERVE_PUBLISHED = """\
bb=/bin/busybox
echo "$APP_REVISION" > /www/version
exec $bb httpd -f -p "0.0.0.0:$PORT" -h /www
"""


def test_container_port_is_published_on_loopback_and_verified(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    app.commit("release")
    sha = app.repo.commit("publish", {"rootfs/serve.sh": _SERVE_PUBLISHED})
    config = app.workspace.config_path.read_text(encoding="utf-8")
    app.workspace.write_config(config + "container_port = 8080\n")

    app.deploy(sha)

    for env in ("staging", "prod"):
        probe = app.get(env, "/version")
        assert probe.status == 200 and probe.body.strip() == sha, (env, probe)
        container = app.engine._client.containers.get(f"{app.name}-{env}")
        assert container.attrs["HostConfig"]["NetworkMode"] != "host"
        bindings = container.attrs["HostConfig"]["PortBindings"]
        assert bindings == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(app.port(env))}]}
        env_vars = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
        assert env_vars["PORT"] == "8080" and env_vars["ORCH_ENVIRONMENT"] == env
    prod = app.running("prod")
    assert prod is not None and prod.revision == sha
    assert app.engine.image(prod.image_id).label(REVISION_LABEL) == sha
