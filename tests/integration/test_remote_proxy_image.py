"""The proxy image reaches a remote engine by itself (issue 14): ``engine.run`` never pulls, so a proxy
started on an engine that had never held ``proxy_image`` failed ("image ... is not on this engine"), and
the suite copied the image over by hand (remote_support.copy_image). Now the proxy pulls its image
where it runs when that engine lacks it. On the suite's second engine (remote_support.py), from the
loopback registry (no Docker Hub here; users pull the official haproxy image the same way)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.docker_engine import DockerEngine
from orchestrator.errors import DockerError
from orchestrator.proxy import Proxy, ProxySpec

if TYPE_CHECKING:
    from conftest import LocalRegistry

pytestmark = pytest.mark.docker


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def proxy_image_in_registry(
    engine: DockerEngine,
    haproxy_image: str,
    registry: LocalRegistry,
    unique_name: Callable[[str], str],
) -> Iterator[str]:
    """The suite's haproxy image pushed to the loopback registry under a name of this test's own: a
    reference the second engine has never held."""
    name = unique_name("proxyimg")
    repository = registry.repository(name)
    image = engine.image(haproxy_image)
    assert image is not None
    engine.tag(image.id, repository, "test")
    try:
        engine.push(repository, "test", timeout_s=120)
        yield f"{repository}:test"
    finally:
        with contextlib.suppress(Exception):
            engine.remove_image(f"{repository}:test")


def test_a_proxy_on_an_engine_without_its_image_pulls_it_there(
    remote_engine: Any, proxy_image_in_registry: str, unique_name: Callable[[str], str]
) -> None:
    other: DockerEngine = remote_engine.engine
    ref = proxy_image_in_registry
    assert other.image(ref) is None, "the second engine already holds the image: the test would prove nothing"
    spec = ProxySpec(
        name=unique_name("proxy"),
        network=unique_name("net"),
        backend=unique_name("backend"),
        backend_port=8000,
        port=_free_port(),
        health_path="/health",
        image=ref,
    )
    proxy = Proxy(other, spec, pull_timeout_s=120)
    try:
        started = proxy.ensure()
        pulled = other.image(ref)
        assert pulled is not None and started.image_id == pulled.id
        assert started.running, started
        assert proxy.ensure().id == started.id, "an unchanged proxy is kept, not recreated"
    finally:
        proxy.remove()
        with contextlib.suppress(Exception):
            other.remove_network(spec.network)
        with contextlib.suppress(Exception):
            other.remove_image(ref)


def test_a_proxy_image_that_cannot_be_pulled_says_so_and_what_to_do(
    remote_engine: Any, registry: LocalRegistry, unique_name: Callable[[str], str]
) -> None:
    other: DockerEngine = remote_engine.engine
    ref = f"{registry.repository(unique_name('nosuchproxy'))}:test"
    spec = ProxySpec(
        name=unique_name("proxy"),
        network=unique_name("net"),
        backend=unique_name("backend"),
        backend_port=8000,
        port=_free_port(),
        health_path="/health",
        image=ref,
    )
    proxy = Proxy(other, spec, pull_timeout_s=120)
    try:
        with pytest.raises(DockerError) as raised:
            proxy.ensure()
        message = str(raised.value)
        assert f"the proxy image {ref} is not on the engine" in message, message
        assert "pull it on that host, or set proxy_image" in message, message
        assert other.container(spec.name) is None
    finally:
        proxy.remove()
        with contextlib.suppress(Exception):
            other.remove_network(spec.network)
