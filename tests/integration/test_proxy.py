"""The proxy in front of an environment, on the real engine: backends come and go behind it while a
client keeps hitting its port, and the client never sees a failed request."""

from __future__ import annotations

import os
import stat
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from client_loop import client_loop

from orchestrator.docker_engine import DockerEngine
from orchestrator.proxy import ADMIN_LABEL, ADMIN_SOCKET, LISTEN, Proxy, ProxySpec, forget_admin_dirs

HTTPD = (
    "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n"
    'CMD ["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/www"]\n'
)


@pytest.fixture
def network(engine: DockerEngine, unique_name: Callable[[str], str]) -> Iterator[str]:
    name = unique_name("net")
    yield name
    engine.remove_network(name)


def wait_until(predicate: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def answers(url: str, body: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return answer.read().decode().strip() == body
        except Exception:
            return False

    return check


@pytest.fixture
def spec(
    network: str,  # first: set up before, torn down after, the proxy on it
    haproxy_image: str,
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
    free_port: Callable[[], int],
) -> Iterator[ProxySpec]:
    """A proxy on its own network and free port (removed after the test), for backends named by a
    unique alias on port 8000."""
    made = ProxySpec(
        name=unique_name("proxy"),
        network=network,
        backend=unique_name("backend"),
        backend_port=8000,
        port=free_port(),
        health_path="/health",
        image=haproxy_image,
        admin_socket=True,  # as the direct runtime's: the hand-over below asks haproxy's check
    )
    docker_cleanup(container=made.name)
    yield made
    forget_admin_dirs(made.name)


def test_backends_replaced_behind_the_proxy_cost_no_request(
    spec: ProxySpec,  # first: set up before, torn down after, the containers on its network
    engine: DockerEngine,
    busybox_image: Callable[..., object],
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
) -> None:
    old_image = busybox_image(dockerfile=HTTPD, files={"www/health": b"old\n"})
    new_image = busybox_image(dockerfile=HTTPD, files={"www/health": b"new\n"})
    network, alias, port = spec.network, spec.backend, spec.port
    proxy = Proxy(engine, spec)
    started = proxy.ensure()
    assert proxy.ensure().id == started.id, "an unchanged proxy is kept, not recreated"

    old, new = unique_name("old"), unique_name("new")
    for name in (old, new):
        docker_cleanup(container=name)
    run = {"host_network": False, "network": network, "aliases": [alias]}
    engine.run(old, old_image.id, **run)  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}/health"
    wait_until(answers(url, "old"))

    with client_loop(url, before_s=0.3, after_s=0, timeout_s=2) as loop:
        backend = engine.run(new, new_image.id, **run)  # type: ignore[attr-defined]
        # The hand-over the runtimes make: the old backend leaves once haproxy's own check has found
        # the new one up, not at its first answer (haproxy sends requests to a backend it has just
        # resolved before checking it; a first check that then fails takes it down).
        wait_until(lambda: "new" in loop.bodies and proxy.checked_up(backend.addresses[network]))
        engine.remove_container(old)
        time.sleep(1.5)
        # After the old backend left, only the new one answers.
        loop.bodies.clear()
        time.sleep(0.5)
    assert loop.failed == [], f"{len(loop.failed)} of {loop.ok + len(loop.failed)} requests failed"
    assert loop.bodies == {"new"}
    assert loop.ok > 50


def test_the_admin_socket_is_a_unix_socket_only_its_user_reaches(
    spec: ProxySpec, engine: DockerEngine
) -> None:
    """The runtime API can stop a backend from getting requests: no TCP port for it (the host's other
    users and the backends on the proxy's network would reach one), only a socket in a directory of
    the orchestrator's user, mode 0700, that the proxy removes with itself."""
    proxy = Proxy(engine, spec)
    started = proxy.ensure()
    admin = Path(started.labels[ADMIN_LABEL])
    assert stat.S_IMODE(admin.stat().st_mode) == 0o700 and admin.stat().st_uid == os.geteuid()
    wait_until(lambda: (admin / ADMIN_SOCKET).exists())
    sock = (admin / ADMIN_SOCKET).stat()
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600 and sock.st_uid == os.geteuid()
    assert list(started.ports) == [LISTEN], started.ports  # nothing published but the environment's port
    assert "Name: HAProxy" in proxy.admin("show info")
    assert proxy.remove() and not admin.exists()


def test_a_changed_configuration_recreates_the_proxy(spec: ProxySpec, engine: DockerEngine) -> None:
    first = Proxy(engine, spec).ensure()
    second = Proxy(engine, ProxySpec(**{**spec.__dict__, "health_path": "/ready"})).ensure()
    assert second.id != first.id
    assert engine.container(spec.name) is not None and engine.container(spec.name).running  # type: ignore[union-attr]


def test_admin_dirs_of_a_proxy_removed_outside_are_removed_when_it_is_made_again(
    spec: ProxySpec, engine: DockerEngine
) -> None:
    """A proxy removed by ``docker rm -f`` (not by Proxy.remove) leaves its admin directory behind;
    the next creation of that proxy removes it (and any other of its name), never another proxy's."""
    first = Path(Proxy(engine, spec).ensure().labels[ADMIN_LABEL])
    other = first.with_name(f"{spec.name}x-abcdefgh")  # a proxy whose name only begins like this one's
    other.mkdir(mode=0o700)
    try:
        engine.remove_container(spec.name)
        assert first.is_dir()
        second = Path(Proxy(engine, spec).ensure().labels[ADMIN_LABEL])
        assert second != first and second.is_dir() and not first.exists(), (first, second)
        assert other.is_dir()
    finally:
        other.rmdir()
