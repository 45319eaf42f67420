"""Fixtures for tests against the real Docker engine.

There is no registry here: every image is built FROM scratch around the static busybox binary, from a
build context assembled in memory. Everything a test creates is removed in a finalizer, pass or fail.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import docker
import docker.errors
import pytest

from orchestrator.docker_engine import DockerEngine, DockerError, ImageInfo
from orchestrator.errors import InfraUnavailable
from orchestrator.health import Probe
from orchestrator.health import get as http_get

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


# --------------------------------------------------------------------------------------------------
# busybox apps deployed through the real CLI (test_promotion*.py, test_killswitch.py)

APP_LABEL = "orchestrator.tests.app"  # on every layer after the shared busybox one: the sweep key
OTHER_SHA = "f" * 40  # a well-formed revision no commit of a test repository has


@dataclass(frozen=True)
class AppVariant:
    """One commit of a busybox app: how its Dockerfile stamps the revision and how it behaves.

    ``label``: value of the revision LABEL (None: no LABEL at all); ``arg_after_label``: the classic
    mistake of declaring ``ARG GIT_SHA`` after the LABEL that uses it; ``version``: what /version serves
    (``revision``, or a fixed wrong sha); ``prod``: what changes when ORCH_ENVIRONMENT=prod (``same``,
    ``wrong_version``, ``no_health``); ``health``: whether /health exists at all; ``extra``: further
    Dockerfile instructions; ``marker``: index.html text, so every commit changes the tree.
    """

    label: str | None = "$GIT_SHA"
    arg_after_label: bool = False
    version: str = "revision"
    prod: str = "same"
    health: bool = True
    extra: str = ""
    marker: str = ""


_SERVE = """\
# Written by the test suite: busybox httpd on 127.0.0.1:$PORT serving /www.
bb=/bin/busybox
version="{version}"
if [ "$ORCH_ENVIRONMENT" = prod ]; then
{prod}
fi
{health}
echo "$version" > /www/version
exec $bb httpd -f -p "127.0.0.1:$PORT" -h /www
"""

_PROD_BEHAVIOUR = {
    "same": "  :",
    "wrong_version": f'  version="{OTHER_SHA}"',
    "no_health": "  $bb rm -f /www/health",
}


def render_app(app: str, variant: AppVariant) -> dict[str, str]:
    """The text files of one commit (busybox itself is committed once, when the repository is made)."""
    stamp = "" if variant.label is None else f"LABEL {REVISION_LABEL}={variant.label}\n"
    arg = "ARG GIT_SHA\nENV APP_REVISION=$GIT_SHA\n"
    dockerfile = (
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        f"LABEL {TEST_LABEL}=1 {APP_LABEL}={app}\n"
        "COPY rootfs /\n"
        + (stamp + arg if variant.arg_after_label else arg + stamp)
        + variant.extra
        + 'CMD ["/bin/busybox", "sh", "/serve.sh"]\n'
    )
    version = "$APP_REVISION" if variant.version == "revision" else variant.version
    serve = _SERVE.format(
        version=version,
        prod=_PROD_BEHAVIOUR[variant.prod],
        health="" if variant.health else "$bb rm -f /www/health",
    )
    return {
        "Dockerfile": dockerfile,
        "rootfs/serve.sh": serve,
        "rootfs/www/health": "ok\n",
        "rootfs/www/index.html": f"{app} {variant.marker}\n",
    }


@dataclass(frozen=True)
class Deployed:
    """What an environment really runs, read from the engine (not from the orchestrator's records)."""

    container_id: str
    image_id: str
    revision: str | None
    status: str


@dataclass
class BusyboxApp:
    """An app under test: unique name (so ``<app>-staging``/``<app>-prod`` and ``<app>:*`` never collide),
    its own git repository, free loopback ports, and the workspace's orchestrator.toml pointing at it."""

    name: str
    repo: Any  # tests/conftest.py GitRepo
    staging_port: int
    prod_port: int
    workspace: Any  # tests/conftest.py Workspace
    cli: Callable[..., Any]
    engine: DockerEngine
    port_factory: Callable[[], int] = field(repr=False)
    wrong_revision: ClassVar[str] = OTHER_SHA  # what the broken variants serve instead of their revision
    health_timeout_s: float = 10.0
    other_apps: dict[str, tuple[int, int]] = field(default_factory=dict)

    def configure(self, *, health_timeout_s: float | None = None, other_apps: int = 0) -> None:
        """Rewrite orchestrator.toml; ``other_apps`` adds never-deployed apps with their own ports."""
        if health_timeout_s is not None:
            self.health_timeout_s = health_timeout_s
        while len(self.other_apps) < other_apps:
            self.other_apps[f"{self.name}-other{len(self.other_apps)}"] = (
                self.port_factory(),
                self.port_factory(),
            )
        tables = [
            f'[apps.{name}]\nsource = "{self.repo.path.as_posix()}"\n'
            'health_path = "/health"\nversion_path = "/version"\n'
            f"staging_port = {staging}\nprod_port = {prod}\n"
            for name, (staging, prod) in {
                self.name: (self.staging_port, self.prod_port),
                **self.other_apps,
            }.items()
        ]
        self.workspace.write_config(
            f"[orchestrator]\nhealth_timeout_s = {self.health_timeout_s}\n\n" + "\n".join(tables)
        )

    def commit(self, message: str = "change", **variant: Any) -> str:
        """Commit one variant of the app (see AppVariant); returns the sha."""
        variant.setdefault("marker", message)
        return self.repo.commit(message, render_app(self.name, AppVariant(**variant)))

    def start(self, sha: str) -> int:
        return int(self.cli("run", "start", "--app", self.name, "--sha", sha, as_json=True).ok()["run_id"])

    def advance(self, run_id: int, to: str, *, as_json: bool = True) -> Any:
        return self.cli("advance", run_id, "--to", to, as_json=as_json)

    def deploy(self, sha: str) -> int:
        """Both edges for ``sha``, asserting success: a known-good release to fail against."""
        run_id = self.start(sha)
        for to in ("deploy-staging", "deploy"):
            result = self.advance(run_id, to).ok()
            assert result["state"] == to, result
        return run_id

    def show(self, run_id: int) -> dict[str, Any]:
        return self.cli("runs", "show", run_id, as_json=True).ok()

    @staticmethod
    def verdicts(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``[(gate, status), ...]`` of an advance result or a recorded transition."""
        return [(c["name"], c["status"]) for c in payload["checks"]]

    def running(self, env: str) -> Deployed | None:
        found = self.engine.container(f"{self.name}-{env}")
        if found is None:
            return None
        image = self.engine.image(found.image_id)
        return Deployed(
            found.id, found.image_id, image.label(REVISION_LABEL) if image else None, found.status
        )

    def tagged(self, tag: str) -> str | None:
        """The image id ``<app>:<tag>`` points at, if any."""
        image = self.engine.image(f"{self.name}:{tag}")
        return image.id if image else None

    def tags_of(self, image_id: str) -> set[str]:
        image = self.engine.image(image_id)
        return set(image.tags) if image else set()

    def port(self, env: str) -> int:
        return self.staging_port if env == "staging" else self.prod_port

    def get(self, env: str, path: str) -> Probe:
        return http_get(f"http://127.0.0.1:{self.port(env)}{path}")


def _distinct_ports(free_port: Callable[[], int], taken: set[int]) -> Callable[[], int]:
    def pick() -> int:
        while (port := free_port()) in taken:
            pass
        taken.add(port)
        return port

    return pick


@pytest.fixture(scope="session")
def docker_client(engine: DockerEngine) -> Iterator[docker.DockerClient]:
    """The raw SDK, for test bookkeeping the adapter deliberately does not offer (sweeping by label)."""
    client = docker.from_env(timeout=60)
    yield client
    client.close()


def sweep_app(client: docker.DockerClient, app: str) -> list[str]:
    """Remove everything the orchestrator made for ``app``: its containers, every ``<app>:*`` tag and
    every layer carrying the app's label (a failed build leaves its finished steps behind). Returns
    what could not be removed."""
    errors: list[str] = []
    containers = {c.id: c for c in client.containers.list(all=True, filters={"name": f"^/{app}-"})}
    containers.update(
        {c.id: c for c in client.containers.list(all=True, filters={"label": f"orchestrator.app={app}"})}
    )
    for container in containers.values():
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            errors.append(f"container {container.name}: {exc}")
    # Children before parents; a parent still shared with another child is retried on the next pass.
    for _ in range(5):
        images = {i.id: i for i in client.images.list(name=app)}
        images.update(
            {i.id: i for i in client.images.list(all=True, filters={"label": f"{APP_LABEL}={app}"})}
        )
        if not images:
            return errors
        for image_id in images:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.images.remove(image_id, force=True, noprune=False)
    leftover = client.images.list(all=True, filters={"label": f"{APP_LABEL}={app}"})
    return errors + [f"image {i.id} ({', '.join(i.tags) or 'untagged'})" for i in leftover]


@pytest.fixture
def busybox_app(
    workspace: Any,
    cli: Callable[..., Any],
    engine: DockerEngine,
    docker_client: docker.DockerClient,
    git_repo: Callable[..., Any],
    free_port: Callable[[], int],
) -> Iterator[BusyboxApp]:
    """A fresh busybox app wired into the workspace: a repository holding only a README, with busybox in
    its working tree for the first ``commit`` to add; nothing built or deployed yet. Everything the app
    leaves on the engine is swept afterwards, pass or fail."""
    if not BUSYBOX.is_file():
        _unavailable(f"{BUSYBOX} is missing (apt-get install -y busybox-static)")
    name = f"orch-test-app-{uuid.uuid4().hex[:8]}"
    repo = git_repo(name, files={"README.md": f"{name}\n"})
    shutil.copyfile(BUSYBOX, repo.path / "busybox")
    (repo.path / "busybox").chmod(0o755)
    ports = _distinct_ports(free_port, set())
    app = BusyboxApp(name, repo, ports(), ports(), workspace, cli, engine, ports)
    app.configure()
    try:
        yield app
    finally:
        errors = sweep_app(docker_client, name)
        for other in app.other_apps:
            errors += sweep_app(docker_client, other)
        if errors:
            pytest.fail("cleanup failed: " + "; ".join(errors))
