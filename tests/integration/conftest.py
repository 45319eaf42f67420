"""Fixtures for tests against the real Docker engine.

There is no registry here: every image is built FROM scratch around the static busybox binary, from a
build context assembled in memory. Everything a test creates is removed in a finalizer, pass or fail.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from orchestrator.docker_engine import DockerEngine, DockerError, ImageInfo
from orchestrator.errors import InfraUnavailable

BUSYBOX = Path("/usr/bin/busybox")
REVISION_LABEL = "org.opencontainers.image.revision"
_LAYER_ID = re.compile(r"^ ---> ([0-9a-f]{12})\s*$", re.MULTILINE)  # classic builder step results
TEST_LABEL = "orchestrator.tests"  # on everything the suite creates, so a crashed run can be swept

# A minimal app image: the static busybox and the revision stamp the orchestrator relies on.
BUSYBOX_DOCKERFILE = f"""\
FROM scratch
COPY busybox /bin/busybox
ARG GIT_SHA
LABEL {REVISION_LABEL}=$GIT_SHA
LABEL {TEST_LABEL}=1
ENTRYPOINT []
CMD ["/bin/busybox", "sh", "-c", "echo ready; exec /bin/busybox sleep 3600"]
"""


def _unavailable(reason: str) -> None:
    """Without an engine these tests prove nothing: fail under CI (a runner that silently skips the
    Docker suite ships untested deploy code), skip with the reason on a developer machine."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine() -> Iterator[DockerEngine]:
    """One connection to the real engine for the whole session (DOCKER_HOST or the default socket)."""
    try:
        connected = DockerEngine.connect(timeout=60)
    except InfraUnavailable as exc:
        _unavailable(f"no Docker engine answers: {exc.message}")
        raise  # unreachable: _unavailable always raises
    yield connected
    connected.close()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Factory: ``unique_name("staging")`` -> ``orch-test-staging-<8 hex>``: valid as a container name
    and an image repository, and never colliding with a parallel run or a leftover."""

    def make(prefix: str = "x") -> str:
        return f"orch-test-{prefix}-{uuid.uuid4().hex[:8]}"

    return make


def build_context(dockerfile: str, files: Mapping[str, bytes | Path]) -> io.BytesIO:
    """A tar build context in memory: exactly these files, nothing from the working directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entries: dict[str, bytes | Path] = {"Dockerfile": dockerfile.encode(), **files}
        for name, content in entries.items():
            if isinstance(content, Path):
                tar.add(str(content), arcname=name)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    buf.seek(0)
    return buf


BuildImage = Callable[..., ImageInfo]


@pytest.fixture
def docker_cleanup(engine: DockerEngine) -> Iterator[Callable[..., None]]:
    """``docker_cleanup(container="name")`` / ``docker_cleanup(image="ref")``: remove at teardown,
    containers first (an image in use by a container cannot be removed). ``best_effort=True`` images
    (intermediate layers a failed build left behind, possibly shared as cache) are removed only if
    nothing else uses them."""
    containers: list[str] = []
    images: list[tuple[str, bool]] = []

    def track(*, container: str | None = None, image: str | None = None, best_effort: bool = False) -> None:
        if container:
            containers.append(container)
        if image:
            images.append((image, best_effort))

    yield track
    errors: list[str] = []
    for name in reversed(containers):
        try:
            engine.remove_container(name)
        except Exception as exc:  # keep going: one stuck container must not leak the rest
            errors.append(f"container {name}: {exc}")
    for ref, best_effort in reversed(images):
        try:
            engine.remove_image(ref, force=not best_effort)
        except Exception as exc:
            if not best_effort:
                errors.append(f"image {ref}: {exc}")
    if errors:
        pytest.fail("cleanup failed: " + "; ".join(errors))


@pytest.fixture
def busybox_image(
    engine: DockerEngine, unique_name: Callable[[str], str], docker_cleanup: Callable[..., None]
) -> BuildImage:
    """Factory: build a FROM-scratch busybox image and remove it after the test.

    ``busybox_image(revision="<sha>", tag=None, dockerfile=BUSYBOX_DOCKERFILE, files={}, buildargs={})``
    returns the ImageInfo; ``revision`` is passed as the GIT_SHA build arg (None: not passed at all).
    """
    if not BUSYBOX.is_file():
        _unavailable(f"{BUSYBOX} is missing (apt-get install -y busybox-static)")

    def build(
        revision: str | None = "0" * 40,
        *,
        tag: str | None = None,
        dockerfile: str = BUSYBOX_DOCKERFILE,
        files: Mapping[str, bytes | Path] | None = None,
        buildargs: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ImageInfo:
        tag = tag or f"{unique_name('img')}:test"
        args = dict(buildargs or {})
        if revision is not None:
            args["GIT_SHA"] = revision
        context = build_context(dockerfile, {"busybox": BUSYBOX, **(files or {})})
        docker_cleanup(image=tag)
        try:
            image, _log = engine.build(context, tag=tag, buildargs=args, labels=labels)
        except DockerError as exc:
            # The steps that succeeded before the failing one stay behind as untagged layers.
            for layer in _LAYER_ID.findall(exc.log):
                docker_cleanup(image=layer, best_effort=True)
            raise
        docker_cleanup(image=image.id)
        return image

    return build


@pytest.fixture
def busybox_command() -> Callable[[str], Sequence[str]]:
    """``busybox_command("echo hi; sleep 1")`` -> argv running the script under busybox's shell (the
    image has no /bin/sh; applets are invoked through the busybox binary explicitly)."""

    def make(script: str) -> Sequence[str]:
        return ["/bin/busybox", "sh", "-c", script]

    return make
