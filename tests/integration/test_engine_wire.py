"""A local engine without the docker SDK (docker_wire.EngineApi), on the real engine.

The SDK (with requests and urllib3) cost every process that talks to Docker about 55 ms of start-up,
paid three times per commit by the three-call CI path (issue 12). A local engine's deploy path (inspect,
tag, create, start, stop, remove, list) now goes over the unix socket with the standard library, and
the SDK is loaded only by what needs it. What must hold: the same answers as before (the rest of the
suite runs every local deploy through this path), the engine's refusals still said as DockerError, and
a promotion to prod that really imports no SDK.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.docker_engine import DockerEngine
from orchestrator.docker_wire import EngineApi
from orchestrator.errors import DockerError

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import BusyboxApp

pytestmark = pytest.mark.docker

# Runs in a fresh interpreter: what a process that only uses these calls imports.
_PROBE = """
import json, sys
from orchestrator.docker_engine import DockerEngine
name, image = sys.argv[1], sys.argv[2]
engine = DockerEngine.connect(timeout=30)
seen = {"api": type(engine._api).__name__, "missing_image": engine.image("orch-no-such-image:x") is None,
        "missing_container": engine.container(name) is None}
started = engine.run(name, image, labels={"orchestrator.tests": "1"}, environment={"A": "b c"})
seen["running"] = engine.container(name).running
seen["env"] = "A=b c" in engine._api.inspect_container(name)["Config"]["Env"]
seen["listed"] = any(c.info.id == started.id for c in engine.containers({"orchestrator.tests": "1"}))
seen["stopped"] = engine.stop_container(name, timeout_s=1)
seen["removed"] = engine.remove_container(name) and engine.container(name) is None
seen["sdk_loaded"] = "docker" in sys.modules
engine.close()
print(json.dumps(seen))
"""


def test_a_local_engine_answers_the_deploy_calls_without_loading_the_sdk(
    busybox_image: Callable[..., Any], unique_name: Callable[[str], str], docker_cleanup: Callable[..., None]
) -> None:
    image = busybox_image()
    name = unique_name("wire")
    docker_cleanup(container=name)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, name, image.id], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout) == {
        "api": "EngineApi",
        "missing_image": True,
        "missing_container": True,
        "running": True,
        "env": True,
        "listed": True,
        "stopped": True,
        "removed": True,
        "sdk_loaded": False,
    }


def test_the_engines_refusals_are_docker_errors_with_its_message(
    engine: DockerEngine,
    busybox_image: Callable[..., Any],
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
) -> None:
    assert isinstance(engine._api, EngineApi)
    with pytest.raises(DockerError, match="is not on this engine"):
        engine.run(unique_name("noimage"), "sha256:" + "0" * 64)
    image = busybox_image()
    # A network the engine lacks is named as such, not taken for a missing image, and the container
    # made for it is not left behind, created and never started, under its name.
    lost = unique_name("nonet")
    docker_cleanup(container=lost)
    with pytest.raises(DockerError, match=r"(?i)network .*not found") as raised:
        engine.run(lost, image.id, host_network=False, network=unique_name("no-such-network"))
    assert "image" not in str(raised.value)
    assert engine.container(lost) is None
    name = unique_name("refused")
    docker_cleanup(container=name)
    engine.run(name, image.id, labels={"orchestrator.tests": "1"})
    # A running container is not removed without force: the engine says why (409), and it stays.
    with pytest.raises(DockerError, match=r"(?i)running container"):
        engine.remove_stopped_container(name)
    found = engine.container(name)
    assert found is not None and found.running
    # A second container of the same name: the engine's conflict, in its own words.
    with pytest.raises(DockerError, match=r"(?i)already in use"):
        engine.run(name, image.id)


def test_a_promotion_to_prod_in_its_own_process_imports_no_docker_sdk(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`advance --to deploy` as CI runs it (its own process, the console script's entry): promoted,
    verified, and the SDK never imported; nor what only other paths need (issue 12: each is milliseconds
    of a process CI starts for every commit): urllib.request (registry, webhooks), OpenSSL's hashes
    (hashlib: parks, proxies, forwards), http.client (with email and ssl: http1.py speaks to the engine
    and the apps) and tarfile (a build's context). Not ctypes: psycopg loads libpq with it on
    PostgreSQL."""
    monkeypatch.setenv("ORCH_BUILDER", "legacy")
    app = busybox_app
    app.configure()
    run_id = app.start(app.commit("promote without the sdk"))
    app.advance(run_id, "deploy-staging").ok()
    probe = (
        "import atexit, sys\n"
        "def report():\n"
        "    print('SDK=' + str('docker' in sys.modules), file=sys.stderr)\n"
        "    unneeded = ('urllib.request', '_hashlib', 'http.client', 'tarfile')\n"
        "    print('LOADED=' + ','.join(m for m in unneeded if m in sys.modules), file=sys.stderr)\n"
        "atexit.register(report)\n"
        "from orchestrator.entry import main\n"
        f"sys.argv = ['orchestrator', 'advance', '{run_id}', '--to', 'deploy', '--json']\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=app.workspace.path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert json.loads(proc.stdout)["state"] == "deploy"
    assert "SDK=False" in proc.stderr, proc.stderr[-3000:]
    assert "LOADED=\n" in proc.stderr, proc.stderr[-3000:]
    staged = app.running("prod")
    assert staged is not None and staged.status == "running"


def test_the_api_version_is_negotiated_by_a_ping_and_buildkit_support_asks_nothing_more() -> None:
    """Each CLI process connects once: ``/version`` costs the engine 7-8 ms, a ping 0.6 ms (issue 12).
    What the ping's headers say must be what ``/version`` says, and the builder choice must not ask
    the engine again."""
    engine = DockerEngine.connect(timeout=30)
    try:
        api = engine._api
        assert isinstance(api, EngineApi)
        full = api.version()
        assert api.api_version == full["ApiVersion"] and api.os_type == full["Os"]
        asked: list[str] = []
        exchange = api._exchange

        def counted(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            asked.append(f"{method} {path}")
            return exchange(method, path, *args, **kwargs)

        api._exchange = counted  # type: ignore[method-assign]
        assert engine.supports_buildkit() is (full["Os"] == "linux")
        assert asked == [], asked
    finally:
        engine.close()
