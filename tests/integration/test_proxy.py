"""The proxy in front of an environment, on the real engine: backends come and go behind it while a
client keeps hitting its port, and the client never sees a failed request."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from orchestrator.docker_engine import DockerEngine
from orchestrator.proxy import Proxy, ProxySpec

HTTPD = (
    "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n"
    'CMD ["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/www"]\n'
)


@dataclass
class Loop:
    """A client hitting ``url`` every 20 ms on a thread: how many requests failed, what answered."""

    url: str
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    bodies: set[str] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=2) as answer:
                    self.bodies.add(answer.read().decode().strip())
                    self.ok += 1
            except Exception as exc:
                self.failed.append(repr(exc))
            time.sleep(0.02)


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


def test_backends_replaced_behind_the_proxy_cost_no_request(
    network: str,  # first: set up before, torn down after, the containers on it
    engine: DockerEngine,
    haproxy_image: str,
    busybox_image: Callable[..., object],
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
    free_port: Callable[[], int],
) -> None:
    old_image = busybox_image(dockerfile=HTTPD, files={"www/health": b"old\n"})
    new_image = busybox_image(dockerfile=HTTPD, files={"www/health": b"new\n"})
    alias = unique_name("backend")
    port = free_port()
    spec = ProxySpec(
        name=unique_name("proxy"),
        network=network,
        backend=alias,
        backend_port=8000,
        port=port,
        health_path="/health",
        image=haproxy_image,
    )
    docker_cleanup(container=spec.name)
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

    loop = Loop(url)
    client = threading.Thread(target=loop.run, daemon=True)
    client.start()
    try:
        time.sleep(0.3)
        engine.run(new, new_image.id, **run)  # type: ignore[attr-defined]
        wait_until(lambda: "new" in loop.bodies)
        engine.remove_container(old)
        time.sleep(1.5)
        # After the old backend left, only the new one answers.
        loop.bodies.clear()
        time.sleep(0.5)
    finally:
        loop.stop.set()
        client.join(timeout=5)
    assert loop.failed == [], f"{len(loop.failed)} of {loop.ok + len(loop.failed)} requests failed"
    assert loop.bodies == {"new"}
    assert loop.ok > 50


def test_a_changed_configuration_recreates_the_proxy(
    network: str,
    engine: DockerEngine,
    haproxy_image: str,
    unique_name: Callable[[str], str],
    docker_cleanup: Callable[..., None],
    free_port: Callable[[], int],
) -> None:
    spec = ProxySpec(
        name=unique_name("proxy"),
        network=network,
        backend=unique_name("backend"),
        backend_port=8000,
        port=free_port(),
        health_path="/health",
        image=haproxy_image,
    )
    docker_cleanup(container=spec.name)
    first = Proxy(engine, spec).ensure()
    second = Proxy(engine, ProxySpec(**{**spec.__dict__, "health_path": "/ready"})).ensure()
    assert second.id != first.id
    assert engine.container(spec.name) is not None and engine.container(spec.name).running  # type: ignore[union-attr]
