"""Fixtures for tests against the real Docker engine.

There is no Docker Hub here: every image is built FROM scratch around the static busybox binary, from a
build context assembled in memory; the only registry is the suite's own (Debian's docker-registry on a
loopback port, see ``registry``). Everything a test creates is removed in a finalizer, pass or fail.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
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
            image = engine.build(context, tag=tag, buildargs=args, labels=labels)
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
    # Sparse: a full listing inspects each container it found, and one removed meanwhile is a 404.
    containers = {
        c.id: c
        for selector in ({"name": f"^/{app}-"}, {"label": f"orchestrator.app={app}"})
        for c in client.containers.list(all=True, filters=selector, sparse=True)
    }
    for container in containers.values():
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            errors.append(f"container {container.id[:12]}: {exc}")
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


# --------------------------------------------------------------------------------------------------
# a real registry, and busybox apps deployed through docker compose (issue 4: digest pinning,
# rollback anchors, status and drift)

STAGING_SERVICE = "web-staging"
PROD_SERVICE = "web-prod"
CACHE_SERVICE = "cache"  # stands for postgres/redis: a service the orchestrator must never pin or touch
DB_SERVICE = "db"  # a service both environments depend on, with a named volume
COMPOSE = ("docker", "compose")
_MANIFEST_TYPES = ", ".join(
    ("application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json")
)


def _free_loopback_port() -> int:
    """A loopback port nothing listens on, for session fixtures (``free_port`` is per test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LocalRegistry:
    """A Registry HTTP API v2 on 127.0.0.1:<port> (the engine speaks plain HTTP to loopback registries).

    The helpers talk to the registry directly, never through the orchestrator's client, so assertions
    about what a registry tag names are independent of the code under test."""

    address: str  # host:port, the form ORCH_REGISTRY and an app's ``registry`` take

    def repository(self, app: str) -> str:
        return f"{self.address}/{app}"

    def _request(self, method: str, app: str, ref: str) -> tuple[int, Any, bytes]:
        req = urllib.request.Request(
            f"http://{self.address}/v2/{app}/manifests/{ref}",
            method=method,
            headers={"Accept": _MANIFEST_TYPES},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def digest(self, app: str, ref: str) -> str | None:
        """The manifest digest ``<app>:<ref>`` names in the registry now; None if it is not there."""
        status, headers, body = self._request("HEAD", app, ref)
        if status == 404:
            return None
        assert status == 200, f"HEAD {app}:{ref} -> HTTP {status} {body[:200]!r}"
        return str(headers["Docker-Content-Digest"])

    def delete(self, app: str, digest: str) -> None:
        status, _, body = self._request("DELETE", app, digest)
        assert status == 202, f"DELETE {app}@{digest} -> HTTP {status} {body[:200]!r}"


def _wait_for_registry(proc: subprocess.Popen[bytes], address: str, log: Path) -> None:
    """Until GET /v2/ answers 200; a registry that exits (bad config, port taken) fails at once."""
    deadline = time.monotonic() + 30
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"docker-registry exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    pytest.fail(f"docker-registry on {address} did not answer GET /v2/ (last: {last}):\n{log.read_text()}")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """Debian's docker-registry serving 127.0.0.1:<free port> for the whole session: storage in a
    temporary directory, deletes enabled (a test removes a manifest to prove a rollback refuses an image
    nobody serves any more), no auth. Terminated at the end of the session."""
    binary = shutil.which("docker-registry")
    if binary is None:
        _unavailable("docker-registry is not installed (apt-get install -y docker-registry)")
        raise AssertionError("unreachable")
    root = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{_free_loopback_port()}"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {json.dumps(str(root / 'data'))}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}\n",
        encoding="utf-8",
    )
    log = root / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_registry(proc, address, log)
        yield LocalRegistry(address)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def remove_registry_tags(client: docker.DockerClient, registry: LocalRegistry, app: str) -> list[str]:
    """Untag every local ``<registry>/<app>:*`` (pushes and pulls leave them; ``sweep_app`` only knows
    ``<app>:*``). Returns what could not be removed."""
    repo = registry.repository(app)
    errors: list[str] = []
    for image in client.images.list(name=repo):
        for tag in image.tags:
            if not tag.startswith(f"{repo}:"):
                continue
            try:
                client.images.remove(tag, force=True, noprune=False)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                errors.append(f"tag {tag}: {exc}")
    return errors


@pytest.fixture
def registry_app(
    busybox_app: BusyboxApp,
    registry: LocalRegistry,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[BusyboxApp]:
    """``busybox_app`` deployed directly (no compose), pushing to the suite's registry via ORCH_REGISTRY.
    Its local ``<registry>/<app>:*`` tags are removed afterwards (before busybox_app's sweep)."""
    monkeypatch.setenv("ORCH_REGISTRY", registry.address)
    yield busybox_app
    errors = remove_registry_tags(docker_client, registry, busybox_app.name)
    if errors:
        pytest.fail("cleanup failed: " + "; ".join(errors))


@dataclass
class ComposeApp:
    """A busybox app whose environments are two services of a compose file (``web-staging`` and
    ``web-prod``, host networking on the app's ports), optionally next to ``cache``, a service the
    orchestrator must never pin. The compose file sits at the root of the app's repository, a directory
    named after the unique app, so every test has its own compose project."""

    app: BusyboxApp
    client: docker.DockerClient
    registry: LocalRegistry | None = None
    # For test modules (which cannot import conftest at run time).
    staging_service: ClassVar[str] = STAGING_SERVICE
    prod_service: ClassVar[str] = PROD_SERVICE
    cache_service: ClassVar[str] = CACHE_SERVICE
    db_service: ClassVar[str] = DB_SERVICE

    @property
    def name(self) -> str:
        return self.app.name

    @property
    def compose_file(self) -> Path:
        return Path(self.app.repo.path) / "docker-compose.yml"

    @property
    def override_file(self) -> Path:
        """Where the orchestrator writes its pins by default: beside the compose file."""
        return self.compose_file.parent / ".deploy" / "docker-compose.override.deploy.yml"

    @property
    def project(self) -> str:
        """Prod's compose project (the app's)."""
        return self.compose_file.parent.name

    @property
    def staging_project(self) -> str:
        """Staging's own compose project (the default, ``staging_project = "own"``)."""
        return f"{self.project}-staging"

    @property
    def image_repository(self) -> str:
        return self.registry.repository(self.name) if self.registry else self.name

    def write_compose(
        self,
        *,
        registry: LocalRegistry | None,
        cache_image: str | None = None,
        staging_pull_always: bool = False,
        db_image: str | None = None,
    ) -> bytes:
        """Write and commit the compose file; returns its bytes (the file must never be edited).

        The app services name plain tags, as people write them (``:staging``, ``:latest``). Committed,
        so that a dirty git tree after a deploy can only be the orchestrator's doing. ``db_image``: both
        app services depend on ``db``, which keeps its data in the named volume ``data`` (a database as
        far as compose projects are concerned)."""
        self.registry = registry
        repo = self.image_repository

        def web(service: str, env: str, tag: str, port: int, pull_always: bool) -> str:
            return (
                f"  {service}:\n"
                f"    image: {json.dumps(f'{repo}:{tag}')}\n"
                "    network_mode: host\n"
                "    environment:\n"
                f'      PORT: "{port}"\n'
                f"      ORCH_ENVIRONMENT: {env}\n"
                # busybox httpd as PID 1 ignores SIGTERM: do not wait the default 10 s for it.
                "    stop_grace_period: 1s\n"
                + ("    pull_policy: always\n" if pull_always else "")
                + ("    depends_on: [db]\n" if db_image else "")
            )

        text = (
            "# Written by the test suite: the app's two environments"
            + (" and a cache the orchestrator must leave alone.\n" if cache_image else ".\n")
            + "services:\n"
            + web(STAGING_SERVICE, "staging", "staging", self.app.staging_port, staging_pull_always)
            + web(PROD_SERVICE, "prod", "latest", self.app.prod_port, False)
        )
        if cache_image is not None:
            text += (
                f"  {CACHE_SERVICE}:\n"
                f"    image: {json.dumps(cache_image)}\n"
                "    network_mode: host\n"
                "    stop_grace_period: 1s\n"
            )
        if db_image is not None:
            text += (
                f"  {DB_SERVICE}:\n"
                f"    image: {json.dumps(db_image)}\n"
                '    command: ["/bin/busybox", "sleep", "3600"]\n'
                "    network_mode: none\n"
                "    stop_grace_period: 1s\n"
                "    volumes: [data:/data]\n"
                "volumes:\n  data: {}\n"
            )
        self.app.repo.commit("compose file", {"docker-compose.yml": text})
        return self.compose_file.read_bytes()

    def configure(
        self,
        *,
        pin_digests: bool | None = None,
        keep_releases: int | None = None,
        prod_service: str = PROD_SERVICE,
        staging_project: str | None = None,
    ) -> None:
        """Rewrite orchestrator.toml for the compose app (``None``: leave the key out, i.e. the default)."""
        lines = [
            "[orchestrator]",
            f"health_timeout_s = {self.app.health_timeout_s}",
            "",
            f"[apps.{self.name}]",
            f"source = {json.dumps(Path(self.app.repo.path).as_posix())}",
            'health_path = "/health"',
            'version_path = "/version"',
            f"staging_port = {self.app.staging_port}",
            f"prod_port = {self.app.prod_port}",
            f"compose_file = {json.dumps(self.compose_file.as_posix())}",
            f'staging_service = "{STAGING_SERVICE}"',
            f"prod_service = {json.dumps(prod_service)}",
        ]
        if self.registry is not None:
            lines.append(f'registry = "{self.registry.address}"')
        if pin_digests is not None:
            lines.append(f"pin_digests = {str(pin_digests).lower()}")
        if keep_releases is not None:
            lines.append(f"keep_releases = {keep_releases}")
        if staging_project is not None:
            lines.append(f"staging_project = {json.dumps(staging_project)}")
        self.app.workspace.write_config("\n".join(lines) + "\n")

    def compose(self, *args: str, overrides: Sequence[Path] = ()) -> str:
        """``docker compose -f <compose file> [-f <override>...] ARGS`` in the project directory, as an
        operator would type it; asserts success and returns stdout."""
        argv = [*COMPOSE, "-f", str(self.compose_file)]
        for extra in overrides:
            argv += ["-f", str(extra)]
        argv += args
        proc = subprocess.run(
            argv, capture_output=True, text=True, cwd=self.compose_file.parent, timeout=300, check=False
        )
        assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def images(self, *overrides: Path) -> dict[str, str]:
        """Each service's image as compose itself merges the compose file with ``overrides``."""
        config = json.loads(self.compose("config", "--format", "json", overrides=overrides))
        return {name: service["image"] for name, service in config["services"].items()}

    def override_pins(self) -> dict[str, str]:
        """The services the override file names, with their images, as compose reads that file alone."""
        argv = [*COMPOSE, "-p", self.project, "-f", str(self.override_file), "config", "--format", "json"]
        proc = subprocess.run(
            argv, capture_output=True, text=True, cwd=self.compose_file.parent, timeout=60, check=False
        )
        assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}"
        return {name: s["image"] for name, s in json.loads(proc.stdout)["services"].items()}

    def container(self, service: str, project: str | None = None) -> Deployed | None:
        """What the engine says runs for ``service`` of ``project`` (prod's by default), by compose's
        labels, not by asking the orchestrator or compose."""
        found = self.client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={project or self.project}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        if not found:
            return None
        assert len(found) == 1, f"{len(found)} containers for {service}: {[c.name for c in found]}"
        info = self.app.engine.container(found[0].id)
        assert info is not None
        image = self.app.engine.image(info.image_id)
        return Deployed(info.id, info.image_id, image.label(REVISION_LABEL) if image else None, info.status)

    def running(self, env: str) -> Deployed | None:
        if env == "staging":
            return self.container(STAGING_SERVICE, self.staging_project)
        return self.container(PROD_SERVICE)

    def anchors(self, env: str) -> list[Path]:
        """The rollback anchors kept for ``env``, oldest first."""
        return sorted((self.override_file.parent / "history").glob(f"{env}-release-*.yml"))

    def git_status(self) -> str:
        proc = subprocess.run(
            ["git", "-C", str(self.app.repo.path), "status", "--porcelain", "--untracked-files=all"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"},
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def teardown(self) -> list[str]:
        errors: list[str] = []
        if self.compose_file.is_file():
            for project in (self.project, self.staging_project):
                argv = [*COMPOSE, "-p", project, "-f", str(self.compose_file), "down", "-t", "0"]
                argv += ["--remove-orphans", "--volumes"]
                proc = subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    cwd=self.compose_file.parent,
                    timeout=300,
                    check=False,
                )
                if proc.returncode != 0:
                    errors.append(f"{' '.join(argv)}: {proc.stderr.strip()[-500:]}")
        if self.registry is not None:
            errors += remove_registry_tags(self.client, self.registry, self.name)
        return errors


@pytest.fixture
def compose_app(
    busybox_app: BusyboxApp,
    docker_client: docker.DockerClient,
    docker_cleanup: Callable[..., None],  # set up first so it is torn down last: images outlive containers
) -> Iterator[ComposeApp]:
    """``busybox_app`` as a compose app: call ``write_compose`` then ``configure`` first. Its compose
    project is taken down (``down -t 0``) and its ``<registry>/<app>:*`` tags removed afterwards, pass or
    fail, before busybox_app's sweep and before images from ``busybox_image`` (say, the cache's) go."""
    try:
        answers = subprocess.run([*COMPOSE, "version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        answers = False
    if not answers:
        _unavailable("Docker Compose v2 does not answer as 'docker compose' (run scripts/bootstrap.sh)")
    app = ComposeApp(busybox_app, docker_client)
    try:
        yield app
    finally:
        errors = app.teardown()
        if errors:
            pytest.fail("cleanup failed: " + "; ".join(errors))


# --- the proxy in front of an environment (orchestrator/proxy.py) --------------------------------------
HAPROXY = Path("/usr/sbin/haproxy")
HAPROXY_DOCKERFILE = 'FROM scratch\nCOPY . /\nENTRYPOINT ["/usr/sbin/haproxy"]\n'


def _shared_libraries(binary: Path) -> list[Path]:
    """What the dynamic loader maps for ``binary`` (ldd), the loader itself included."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return [Path(p) for p in re.findall(r"(/\S+)\s+\(0x", out)]


@pytest.fixture(scope="session")
def haproxy_image(engine: DockerEngine) -> Iterator[str]:
    """An haproxy image for the proxy tests, made of Debian's /usr/sbin/haproxy and the libraries it
    links (no Docker Hub here; users run the official ``haproxy`` image, whose entrypoint takes the
    same arguments). Built once per session, removed at the end."""
    if not HAPROXY.is_file():
        _unavailable(f"{HAPROXY} is missing (apt-get install -y haproxy)")
    files: dict[str, bytes | Path] = {str(HAPROXY).lstrip("/"): HAPROXY}
    for lib in _shared_libraries(HAPROXY):
        files[str(lib).lstrip("/")] = lib.resolve()
    tag = f"orch-test-haproxy-{uuid.uuid4().hex[:8]}:test"
    engine.build(build_context(HAPROXY_DOCKERFILE, files), tag=tag)
    yield tag
    # By tag, not id: another session on this engine builds the byte-identical image (same id) and may
    # still run containers of it; removing our tag leaves theirs alone.
    engine.remove_image(tag)


# --------------------------------------------------------------------------------------------------
# a second engine reached over ssh (issue 14: an environment on a remote engine)


@pytest.fixture(scope="session")
def remote_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A second dockerd behind a key-only sshd on a loopback port, for the whole session (see
    remote_support.py); both stopped and their directories removed at the end."""
    from remote_support import RemoteUnavailable, remote_engine

    # A short path: the engine's unix socket must fit in sun_path (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="orch-remote-", dir="/tmp"))
    try:
        context = remote_engine(root)
        remote = context.__enter__()
    except RemoteUnavailable as exc:
        _unavailable(f"no second engine: {exc}")
        raise
    try:
        yield remote
    finally:
        context.__exit__(None, None, None)
