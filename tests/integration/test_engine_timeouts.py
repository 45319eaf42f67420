"""Step timeouts (ORCH_BUILD/PUSH/PULL_TIMEOUT_S) against the real engine.

A build stuck on a silent ``RUN`` or a registry that accepts a connection and never answers must not hold
an environment's lock forever: past its limit the step is StepTimeout (exit 4, nothing decided about
the commit), in about its limit and not after the engine's own, much longer, timeouts. For a build the
orchestrator also closes the stream, and the engine then cancels the build: its container is killed and
removed and no image is tagged.
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import docker.errors
import pytest

from orchestrator.docker_engine import DockerEngine, ImageInfo
from orchestrator.errors import InfraUnavailable, StepTimeout

if TYPE_CHECKING:
    from conftest import LocalRegistry

pytestmark = pytest.mark.docker

BUSYBOX = Path("/usr/bin/busybox")
LAYER_LABEL = "orchestrator.tests.timeout"
# Generous: each limit below is 1-2 s; this only catches "waited for the engine's own timeout instead".
RETURNS_WITHIN_S = 8.0
NO_DIGEST = "sha256:" + "0" * 64

BuildImage = Callable[..., ImageInfo]


def own_revision() -> str:
    """A revision no other test stamps, so the image is this test's alone (the engine is shared with
    parallel runs, and an image a running container uses cannot be removed)."""
    return (uuid.uuid4().hex * 2)[:40]


def dockerfile(label: str, run: str) -> str:
    """The label comes first so that every layer (and the RUN step's container) carries it."""
    return (
        "FROM scratch\n"
        f"LABEL orchestrator.tests=1 {LAYER_LABEL}={label}\n"
        "COPY busybox /bin/busybox\n"
        f"RUN {run}\n"
    )


def context(text: str) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(text.encode())
        tar.addfile(info, io.BytesIO(text.encode()))
        tar.add(str(BUSYBOX), arcname="busybox")
    buf.seek(0)
    return buf


@pytest.fixture
def layer_label(unique_name: Callable[[str], str], docker_client: docker.DockerClient) -> Iterator[str]:
    """A value for LAYER_LABEL unique to the test. A cancelled build leaves its finished steps behind as
    untagged layers; they (and any step container) are found by the label and removed afterwards."""
    if not BUSYBOX.is_file():
        pytest.skip(f"{BUSYBOX} is missing (apt-get install -y busybox-static)")
    value = unique_name("timeout")
    yield value
    selector = {"label": f"{LAYER_LABEL}={value}"}
    errors: list[str] = []
    for container in docker_client.containers.list(all=True, filters=selector, sparse=True):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
    for _ in range(5):  # children before parents: a parent goes on a later pass
        errors = []
        for image in docker_client.images.list(all=True, filters=selector):
            try:
                docker_client.images.remove(image.id, force=True, noprune=False)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                errors.append(f"{image.id[:19]}: {exc.explanation or exc}")
        if not errors:
            break
    if errors:
        pytest.fail("cleanup failed: " + "; ".join(errors))


def step_containers(docker_client: docker.DockerClient, label: str) -> list[str]:
    """Sparse: the engine removes a cancelled build's step containers while this polls, and a full
    listing inspects each container it found (a 404 for one removed in between)."""
    selector = {"label": f"{LAYER_LABEL}={label}"}
    return [c.id for c in docker_client.containers.list(all=True, filters=selector, sparse=True)]


def wait_until_gone(docker_client: docker.DockerClient, label: str, within_s: float = 5.0) -> list[str]:
    """The build's step containers still there after ``within_s`` (the engine removes them on cancel)."""
    deadline = time.monotonic() + within_s
    while (left := step_containers(docker_client, label)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def build_past_its_limit(
    engine: DockerEngine, docker_cleanup: Callable[..., None], tag: str, text: str, timeout_s: float
) -> tuple[StepTimeout, float]:
    docker_cleanup(image=tag)
    started = time.monotonic()
    with pytest.raises(StepTimeout) as excinfo:
        engine.build(context(text), tag=tag, timeout_s=timeout_s)
    return excinfo.value, time.monotonic() - started


# --------------------------------------------------------------------------------------------------
# build


def test_a_silent_build_past_its_limit_is_a_step_timeout_and_is_cancelled(
    engine: DockerEngine,
    docker_client: docker.DockerClient,
    docker_cleanup: Callable[..., None],
    layer_label: str,
) -> None:
    """`RUN sleep` prints nothing: the limit must hold without a single chunk to look at the clock on."""
    tag = f"{layer_label}:test"
    text = dockerfile(layer_label, '["/bin/busybox", "sleep", "30"]')
    exc, elapsed = build_past_its_limit(engine, docker_cleanup, tag, text, timeout_s=2)

    assert elapsed < RETURNS_WITHIN_S
    assert exc.exit_code == 4 and isinstance(exc, InfraUnavailable)
    assert exc.message == f"build of {tag} did not finish within 2 s (ORCH_BUILD_TIMEOUT_S)"
    assert exc.details["timeout_s"] == 2 and exc.details["setting"] == "ORCH_BUILD_TIMEOUT_S"
    tail = exc.details["log_tail"]
    assert "sleep" in tail, "the log tail says which step was running"
    running = re.search(r"Running in ([0-9a-f]{12})", tail)
    assert running, tail

    assert wait_until_gone(docker_client, layer_label) == [], "the engine did not cancel the build"
    assert engine.container(running.group(1)) is None
    assert engine.image(tag) is None, "a cancelled build must not tag an image"


def test_a_chatty_build_past_its_limit_is_a_step_timeout(
    engine: DockerEngine,
    docker_client: docker.DockerClient,
    docker_cleanup: Callable[..., None],
    layer_label: str,
) -> None:
    """Output every 0.2 s never lets a read time out: the total is checked between chunks."""
    tag = f"{layer_label}:test"
    text = dockerfile(
        layer_label,
        '["/bin/busybox", "sh", "-c", "while :; do echo tick; /bin/busybox sleep 0.2; done"]',
    )
    exc, elapsed = build_past_its_limit(engine, docker_cleanup, tag, text, timeout_s=2)

    assert elapsed < RETURNS_WITHIN_S
    assert exc.message == f"build of {tag} did not finish within 2 s (ORCH_BUILD_TIMEOUT_S)"
    assert "tick" in exc.details["log_tail"], "the build was running (and talking) when it was ended"
    assert wait_until_gone(docker_client, layer_label) == [], "the engine did not cancel the build"
    assert engine.image(tag) is None


def test_a_build_within_its_limit_succeeds(
    engine: DockerEngine, docker_cleanup: Callable[..., None], layer_label: str
) -> None:
    tag = f"{layer_label}:test"
    docker_cleanup(image=tag)
    text = dockerfile(layer_label, '["/bin/busybox", "true"]')
    image = engine.build(context(text), tag=tag, labels={"orchestrator.run": "7"}, timeout_s=60)
    assert tag in image.tags and image.label("orchestrator.run") == "7"


# --------------------------------------------------------------------------------------------------
# pull and push: a registry that takes the request and never answers


class SilentRegistry:
    """127.0.0.1:<port> speaking just enough of the registry API to be used (plain HTTP, ``GET /v2/``
    answered 200), then holding every other request open without a byte of answer: the hang of an
    overloaded registry or a half-dead proxy. Loopback registries are insecure to the engine, so a TLS
    attempt is closed at once and the engine falls back to HTTP."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so that the accept loop sees close() promptly
        self._closed = threading.Event()
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.held: list[str] = []  # request lines left unanswered
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed: the test is over
                return
            conn.settimeout(None)
            self._sockets.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            if conn.recv(1, socket.MSG_PEEK) == b"\x16":  # a TLS ClientHello
                conn.close()
                return
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            if line.startswith("GET /v2/ "):
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Docker-Distribution-Api-Version: registry/2.0\r\n"
                    b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
                )
                conn.close()
                return
            self.held.append(line)
            while conn.recv(4096):  # never answer; return when either side closes
                pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for conn in self._sockets:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def silent_registry() -> Iterator[SilentRegistry]:
    registry = SilentRegistry()
    yield registry
    # Also what frees the engine: it does not abort its request to a registry when its own client
    # goes away (the pull or push goes on waiting for an answer), only when the registry hangs up.
    registry.close()


def test_a_pull_from_a_registry_that_never_answers_is_a_step_timeout(
    engine: DockerEngine, silent_registry: SilentRegistry, unique_name: Callable[[str], str]
) -> None:
    """The engine sends no response header until the registry answers, so the limit must also cover
    the wait for the first byte."""
    reference = f"{silent_registry.address}/{unique_name('pull')}@{NO_DIGEST}"
    started = time.monotonic()
    with pytest.raises(StepTimeout) as excinfo:
        engine.pull(reference, timeout_s=1)
    assert time.monotonic() - started < RETURNS_WITHIN_S
    assert excinfo.value.message == f"pull of {reference} did not finish within 1 s (ORCH_PULL_TIMEOUT_S)"
    assert excinfo.value.exit_code == 4
    assert any("/manifests/" in line for line in silent_registry.held), "the engine reached the registry"
    assert engine.image(reference) is None


def test_a_push_to_a_registry_that_never_answers_is_a_step_timeout(
    engine: DockerEngine,
    busybox_image: BuildImage,
    docker_cleanup: Callable[..., None],
    silent_registry: SilentRegistry,
    unique_name: Callable[[str], str],
) -> None:
    image = busybox_image(own_revision())
    repository = f"{silent_registry.address}/{unique_name('push')}"
    docker_cleanup(image=f"{repository}:t")
    engine.tag(image.id, repository, "t")
    started = time.monotonic()
    with pytest.raises(StepTimeout) as excinfo:
        engine.push(repository, "t", timeout_s=1)
    assert time.monotonic() - started < RETURNS_WITHIN_S
    assert excinfo.value.message == f"push of {repository}:t did not finish within 1 s (ORCH_PUSH_TIMEOUT_S)"
    assert silent_registry.held, "the engine reached the registry"


def test_a_push_and_pull_within_their_limits_succeed(
    engine: DockerEngine,
    busybox_image: BuildImage,
    docker_cleanup: Callable[..., None],
    registry: LocalRegistry,
    unique_name: Callable[[str], str],
) -> None:
    """The limits must not change an ordinary round trip through a real registry: the digest the push
    reports is what a pull by digest brings back, as the same image."""
    image = busybox_image(own_revision())
    repository = registry.repository(unique_name("roundtrip"))
    docker_cleanup(image=f"{repository}:t")
    engine.tag(image.id, repository, "t")
    digest = engine.push(repository, "t", timeout_s=60)
    assert digest.startswith("sha256:") and registry.digest(repository.split("/", 1)[1], "t") == digest
    engine.remove_image(f"{repository}:t")
    reference = f"{repository}@{digest}"
    docker_cleanup(image=reference)
    pulled = engine.pull(reference, timeout_s=60)
    assert pulled.id == image.id and reference in pulled.repo_digests


def test_a_read_timeout_before_the_step_limit_stays_infrastructure_unavailable(
    busybox_image: BuildImage,
    docker_cleanup: Callable[..., None],
    silent_registry: SilentRegistry,
    unique_name: Callable[[str], str],
) -> None:
    """A client whose own timeout (1 s) is shorter than the step's (30 s): the engine went quiet for
    longer than the client waits, which says nothing about the step being too slow. Same exit code,
    but not blamed on ORCH_PUSH_TIMEOUT_S."""
    image = busybox_image(own_revision())
    repository = f"{silent_registry.address}/{unique_name('push')}"
    docker_cleanup(image=f"{repository}:t")
    impatient = DockerEngine.connect(timeout=1)
    try:
        impatient.tag(image.id, repository, "t")
        started = time.monotonic()
        with pytest.raises(InfraUnavailable) as excinfo:
            impatient.push(repository, "t", timeout_s=30)
        assert time.monotonic() - started < RETURNS_WITHIN_S
    finally:
        impatient.close()
    assert not isinstance(excinfo.value, StepTimeout)
    assert excinfo.value.message.startswith(f"Docker engine stopped answering during push of {repository}:t")
