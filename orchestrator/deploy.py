"""The promotion steps (build, recreate, health, verify, retag, restore), composed from the adapter.

This module decides *what* the engine should do for an app and an environment; docker_engine does it.
Gates call these steps and turn their outcomes into recorded verdicts.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from orchestrator import gitrepo, health, redact, verify
from orchestrator.compose import Compose, ComposeError, project_name
from orchestrator.config import AppConfig, Settings
from orchestrator.docker_engine import ContainerInfo, DockerEngine, DockerError, ImageInfo
from orchestrator.errors import BadInput, InfraUnavailable, StepTimeout
from orchestrator.machine import PROD, STAGING
from orchestrator.registry import Registry, RegistryError
from orchestrator.steps import StepLog

LOOPBACK = "127.0.0.1"


def staging_check_script() -> Path:
    """scripts/staging_check.py from a source checkout, else the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "scripts" / "staging_check.py", here / "_scripts" / "staging_check.py"):
        if candidate.is_file():
            return candidate
    raise RuntimeError("scripts/staging_check.py is missing from this installation of orchestrator")


def preflight(app: AppConfig) -> None:
    """A compose app must name services its compose file has: exit 2 before anything runs."""
    if app.is_compose:
        compose = Compose(app.compose_file, app.override_file, project=project_name(app.name))
        compose.check_services(app.service(STAGING), app.service(PROD))


def check_compose_committed(app: AppConfig, sha: str) -> None:
    """A compose file inside the app's repository must be the one committed at the run's sha: an
    uncommitted edit (an extra variable, a host mount) would otherwise reach prod with no trace. A compose
    file kept elsewhere is not the commit's to judge; its hash is recorded with every release instead."""
    if app.compose_file is None:
        return
    try:
        rel = app.compose_file.resolve().relative_to(app.source.resolve())
    except ValueError:
        return
    committed = gitrepo.file_at(app.source, sha, rel.as_posix())
    if committed is None:
        raise BadInput(
            f"compose file {rel} is not in commit {sha[:12]} of {app.source}: commit it, or keep it outside "
            "the app's repository"
        )
    if committed != app.compose_file.read_bytes():
        raise BadInput(
            f"compose file {app.compose_file} differs from its version in commit {sha[:12]}: commit the "
            "change (and start a run of that commit) or restore the file ('git checkout -- "
            f"{rel}'); nothing was deployed"
        )


def port_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


@dataclass(frozen=True)
class Build:
    image: ImageInfo
    tag: str
    duration_s: float


@dataclass(frozen=True)
class StagingCheck:
    ok: bool
    exit_code: int
    output: str
    command: tuple[str, ...]


@dataclass(frozen=True)
class Published:
    """Where an image can be found for an environment: ``ref`` is what runs pin (the registry digest
    reference when there is a registry, else the image id, which is immutable on this engine)."""

    image_id: str
    ref: str
    digest: str | None = None


@dataclass(frozen=True)
class Deployed:
    """The outcome of deploying an image to an environment: a verdict plus its evidence."""

    ok: bool
    reason: str
    details: dict[str, Any]
    published: Published | None = None
    override: str | None = None


class PreviousRelease(Protocol):
    id: int
    image_id: str
    digest: str | None
    revision: str


class Deployer:
    """Deploy steps for one app. ``pins`` holds each environment's current immutable reference (from the
    latest releases) so a compose override written for one environment keeps the other one's pin."""

    def __init__(
        self,
        engine: DockerEngine,
        app: AppConfig,
        settings: Settings,
        pins: dict[str, str] | None = None,
        steps: StepLog | None = None,
    ) -> None:
        self.engine = engine
        self.app = app
        self.settings = settings
        # Every action on an environment is a recorded step; without a transition nothing is recorded.
        self.steps = steps or StepLog()
        self.pins: dict[str, str] = dict(pins or {})
        self.compose = (
            Compose(
                app.compose_file,
                app.override_file,
                project=project_name(app.name),
                timeout_s=settings.compose_timeout_s,
            )
            if app.is_compose
            else None
        )
        self._pushed: dict[str, str] = {}
        # Where each registry tag this deployer moved pointed before, so a failed first deploy can undo it.
        self._registry_before: dict[str, str | None] = {}
        self._registry = Registry(app.registry) if app.registry else None

    @classmethod
    def from_releases(
        cls,
        engine: DockerEngine,
        app: AppConfig,
        settings: Settings,
        latest: Mapping[str, PreviousRelease | None],
        steps: StepLog | None = None,
    ) -> Deployer:
        """A deployer whose pins are what each environment's latest release runs."""
        pins = {env: r.digest or r.image_id for env, r in latest.items() if r is not None}
        return cls(engine, app, settings, pins, steps)

    # naming ---------------------------------------------------------------------------------------

    def container(self, env: str) -> str:
        if self.compose is not None:
            return f"{self.app.service(env)} (compose)"
        return f"{self.app.name}-{env}"

    def port(self, env: str) -> int:
        return self.app.staging_port if env == STAGING else self.app.prod_port

    def base_url(self, env: str) -> str:
        return f"http://{LOOPBACK}:{self.port(env)}"

    def build_tag(self, sha: str) -> str:
        return f"{self.app.name}:{sha}"

    # steps ----------------------------------------------------------------------------------------

    def build(self, sha: str) -> Build:
        """Build from the committed tree with GIT_SHA, tagged <app>:<sha>."""
        with self.steps.step("build") as step:
            if not gitrepo.path_in_commit(self.app.source, sha, self.app.dockerfile):
                raise DockerError(f"{self.app.dockerfile} is not in commit {sha[:12]} of {self.app.source}")
            t0 = time.perf_counter()
            with gitrepo.archive(self.app.source, sha) as context:
                try:
                    image = self.engine.build(
                        context,
                        tag=self.build_tag(sha),
                        dockerfile=self.app.dockerfile,
                        buildargs={**self.app.build_args, "GIT_SHA": sha},
                        timeout_s=self.settings.build_timeout_s,
                    )
                except StepTimeout as exc:
                    if "log_tail" in exc.details:
                        exc.details["log_tail"] = self.redact(str(exc.details["log_tail"]))
                    raise
            step.changed(image_id=image.id, tag=self.build_tag(sha))
        return Build(image, self.build_tag(sha), time.perf_counter() - t0)

    def publish(self, env: str, image_id: str, revision: str) -> Published:
        """Move the human-readable tags operators know (``<app>:<env>``, and ``:latest`` for prod) and,
        with a registry, push the image and move the same tag there; return the immutable pin."""
        with self.steps.step(f"{env}_tag", env) as step:
            tags = [env, "latest"] if env == PROD else [env]
            before = {}
            for tag in tags:
                found = self.engine.image(f"{self.app.name}:{tag}")
                before[f"{self.app.name}:{tag}"] = found.id if found else None
                self.engine.tag(image_id, self.app.name, tag)
            step.changed(image_id=image_id, tags_before=before)
        if self._registry is None:
            return Published(image_id, image_id)
        with self.steps.step(f"{env}_push", env) as step:
            published = self._push(env, image_id, revision)
            step.changed(image_id=image_id, digest=published.digest)
        return published

    def _push(self, env: str, image_id: str, revision: str) -> Published:
        assert self._registry is not None
        repo = self._registry.repository(self.app.name)
        digest = self._pushed.get(image_id)
        if digest is None:
            self.engine.tag(image_id, repo, revision)
            digest = self.engine.push(repo, revision, timeout_s=self.settings.push_timeout_s)
            self._pushed[image_id] = digest
        moving = "latest" if env == PROD else STAGING
        try:
            if env not in self._registry_before:
                self._registry_before[env] = self._registry.manifest_digest(self.app.name, moving)
            self._registry.retag(self.app.name, digest, moving)
        except RegistryError as exc:
            if exc.status is None:
                raise InfraUnavailable(exc.message) from None
            if not exc.needs_credentials:
                raise DockerError(exc.message) from None
            self.engine.tag(image_id, repo, moving)  # credentials live with the engine: push the tag
            self.engine.push(repo, moving, timeout_s=self.settings.push_timeout_s)
        return Published(image_id, f"{repo}@{digest}", f"{repo}@{digest}")

    def unpublish(self, env: str) -> list[str]:
        """Undo ``publish`` for an environment left with no release: no human-readable tag may keep
        naming an image that failed (compose services and people run ``:latest``). Returns what remains
        that could not be undone."""
        with self.steps.step(f"{env}_untag", env) as step:
            removed = [f"{self.app.name}:{tag}" for tag in ((env, "latest") if env == PROD else (env,))]
            for ref in removed:
                self.engine.remove_image(ref)
            step.changed(removed=removed)
        if self._registry is None or env not in self._registry_before:
            return []
        moving = "latest" if env == PROD else STAGING
        before = self._registry_before[env]
        if before is None:
            return [
                f"registry tag {self._registry.repository(self.app.name)}:{moving} still names the failed "
                "image (the registry API cannot delete a tag; nothing earlier to point it at)"
            ]
        try:
            self._registry.retag(self.app.name, before, moving)
        except RegistryError as exc:
            return [f"could not move {moving} back to {before[:19]}: {exc.message}"]
        return []

    def ensure_image(self, release: PreviousRelease) -> bool:
        """The release's image is here, or can be pulled by its digest (pruned here, kept in the registry)."""
        if self.engine.image(release.image_id) is not None:
            return True
        if not release.digest:
            return False
        try:
            return (
                self.engine.pull(release.digest, timeout_s=self.settings.pull_timeout_s).id
                == release.image_id
            )
        except DockerError:
            return False

    def recreate(self, env: str, published: Published, *, run_id: int | None) -> ContainerInfo:
        if self.compose is not None:
            return self._compose_up(env, published)
        return self._run_direct(env, published.image_id, run_id=run_id)

    def _compose_up(self, env: str, published: Published) -> ContainerInfo:
        assert self.compose is not None
        service = self.app.service(env)
        self.pins[env] = published.ref
        try:
            if self.app.pin_digests:
                with self.steps.step(f"{env}_pin", env) as step:
                    pins = {self.app.service(e): ref for e, ref in self.pins.items()}
                    self.compose.pin(pins)
                    step.changed(override_file=str(self.compose.override_file), pins=pins)
            with self.steps.step(f"{env}_up", env) as step:
                before = self.current(env)
                step.changed(container_before=before.id if before else None)
                self.compose.up(service, pinned=self.app.pin_digests)
                found = self.current(env)
                step.changed(
                    container_id=found.id if found else None, image_id=found.image_id if found else None
                )
        except ComposeError as exc:
            raise DockerError(exc.message) from None
        if found is None:
            raise DockerError(f"docker compose up -d {service} left no container for {service}")
        return found

    def override_text(self) -> str | None:
        if self.compose is None or not self.app.pin_digests or not self.compose.override_file.is_file():
            return None
        return self.compose.override_file.read_text(encoding="utf-8")

    def _run_direct(self, env: str, image_id: str, *, run_id: int | None) -> ContainerInfo:
        """Replace the environment's container with one running ``image_id`` (by id, never by tag, so a
        tag moved by someone else between build and run cannot change what starts)."""
        name = self.container(env)
        with self.steps.step(f"{env}_stop", env) as step:
            old = self.engine.container(name)
            if old is not None:
                step.changed(container_id=old.id, image_id=old.image_id, status=old.status)
            self.engine.remove_container(name)
        port = self.port(env)
        if port_answers(port):
            # Otherwise the health check would be answered by whatever holds the port while our
            # container dies on "address already in use", and a dead deploy would look green.
            raise DockerError(
                f"port {port} on {LOOPBACK} is already in use by something other than {name}: "
                f"stop it or give {self.app.name} another {env}_port"
            )
        with self.steps.step(f"{env}_start", env) as step:
            started = self._start(env, name, image_id, run_id=run_id)
            step.changed(container_id=started.id, image_id=started.image_id)
        return started

    def _start(self, env: str, name: str, image_id: str, *, run_id: int | None) -> ContainerInfo:
        port = self.port(env)
        publish = None
        container_port = port
        if self.app.container_port is not None:
            # Published mode: the app listens on its own port inside its network namespace.
            container_port = self.app.container_port
            publish = {container_port: (LOOPBACK, port)}
        return self.engine.run(
            name,
            image_id,
            environment={"PORT": str(container_port), "ORCH_ENVIRONMENT": env, **self.app.env},
            host_network=publish is None,
            publish=publish,
            labels={
                "orchestrator.app": self.app.name,
                "orchestrator.environment": env,
                "orchestrator.run": str(run_id or ""),
            },
            restart=env == PROD,
        )

    def current(self, env: str) -> ContainerInfo | None:
        """The container that serves ``env`` now, however it got there."""
        if self.compose is None:
            return self.engine.container(self.container(env))
        try:
            cid = self.compose.container_id(self.app.service(env), pinned=self.app.pin_digests)
        except ComposeError as exc:
            raise DockerError(exc.message) from None
        return self.engine.container(cid) if cid else None

    def wait_healthy(self, env: str, container_id: str | None = None) -> health.HealthReport:
        def alive() -> bool:
            found = self.engine.container(container_id) if container_id else self.current(env)
            return found is not None and found.status in ("running", "created", "restarting")

        return health.wait_healthy(
            self.base_url(env) + self.app.health_path,
            timeout=self.settings.health_timeout_s,
            interval=self.settings.health_interval_s,
            alive=alive,
        )

    def deploy(self, env: str, image_id: str, revision: str, *, run_id: int | None) -> Deployed:
        """Publish, (re)create and health-check ``env``; the verdict says whether *our* container is what
        answers, with the evidence either way."""
        try:
            published = self.publish(env, image_id, revision)
            container = self.recreate(env, published, run_id=run_id)
        except DockerError as exc:
            return Deployed(
                False, f"could not start {self.container(env)}: {exc.message}", {"image_id": image_id}
            )
        details: dict[str, Any] = {
            "image_id": image_id,
            "pinned_ref": published.ref,
            "digest": published.digest,
        }
        with self.steps.step(f"{env}_health", env) as step:
            failure = self._check_started(env, container, image_id, details, published)
            step.changed(healthy=failure is None, container_id=container.id)
            if failure is not None:
                step.fail(failure.reason)
                return failure
        details.update(container=container.name, container_id=container.id)
        return Deployed(
            True,
            f"{container.name} healthy on port {self.port(env)}",
            details,
            published,
            self.override_text(),
        )

    def _check_started(
        self, env: str, container: ContainerInfo, image_id: str, details: dict[str, Any], published: Published
    ) -> Deployed | None:
        """None when our container, running ``image_id``, is what answers the health check."""
        report = self.wait_healthy(env, container.id)
        details["health"] = report.details()
        if not report.healthy:
            return Deployed(False, report.reason, {**details, **self.container_evidence(env)}, published)
        now = self.engine.container(container.id)
        if now is None or not now.running:
            # The answer came from somewhere else; our container is not what is serving.
            return Deployed(
                False,
                f"{report.url} answered but {self.container(env)} is not running",
                {**details, **self.container_evidence(env)},
                published,
            )
        if now.image_id != image_id:
            # `docker compose up -d` against an unchanged tag succeeds and keeps the old container.
            return Deployed(
                False,
                f"post-deploy verification: {now.name} still runs image {now.image_id[:19]}, not "
                f"{image_id[:19]} (an unchanged tag made 'docker compose up -d' a no-op; pin digests)",
                {**details, "running_image_id": now.image_id, "container_id": now.id},
                published,
            )
        return None

    def redeploy(self, env: str, release: PreviousRelease, *, run_id: int | None) -> Deployed:
        """Put ``env`` back on a recorded release and verify what runs: the rollback path."""
        if not self.ensure_image(release):
            return Deployed(
                False,
                f"release {release.id} image {release.image_id[:19]} is gone (pruned"
                + (", and not pullable from the registry)" if release.digest else ")"),
                {"release_id": release.id, "image_id": release.image_id, "digest": release.digest},
            )
        deployed = self.deploy(env, release.image_id, release.revision, run_id=run_id)
        if not deployed.ok:
            return deployed
        check = self.verify_running(env, release.image_id, release.revision)
        details = {**deployed.details, **check.details, "release_id": release.id}
        if not check.ok:
            return Deployed(
                False,
                f"release {release.id} failed verification: {check.reason}",
                details,
                deployed.published,
            )
        return Deployed(
            True,
            f"release {release.id} ({release.revision[:12]}) running and verified",
            details,
            deployed.published,
            deployed.override,
        )

    def container_evidence(self, env: str) -> dict[str, Any]:
        found = self.current(env)
        if found is None:
            return {"container": None}
        return {
            "container": found.name,
            "container_id": found.id,
            "container_status": found.status,
            "exit_code": found.exit_code,
            "logs_tail": self.redact(self.engine.logs(found.id, tail=20))[-1500:],
        }

    def staging_check(self, sha: str) -> StagingCheck:
        cmd = [
            sys.executable,
            str(staging_check_script()),
            "--mode",
            "stub",
            "--base-url",
            self.base_url(STAGING),
            "--expected-revision",
            sha,
            "--health-path",
            self.app.health_path,
        ]
        if self.app.version_path:
            cmd += ["--version-path", self.app.version_path]
        limit = self.settings.staging_check_timeout_s
        with self.steps.step("staging_check", STAGING) as step:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
            except subprocess.TimeoutExpired:
                # A check that never answers says nothing about the commit: infrastructure, exit 4.
                raise StepTimeout(
                    f"staging check did not finish within {limit:g} s (ORCH_STAGING_CHECK_TIMEOUT_S)"
                ) from None
            output = (proc.stdout + proc.stderr).strip()
            step.changed(exit_code=proc.returncode)
            if proc.returncode != 0:
                step.fail(f"exit {proc.returncode}")
        return StagingCheck(proc.returncode == 0, proc.returncode, self.redact(output)[-2000:], tuple(cmd))

    def verify_image(self, image_id: str, sha: str) -> verify.Check:
        """Safety layer: the image tagged <app>:<sha> is the one just built and carries the full sha."""
        with self.steps.step("image_guard") as step:
            tagged = self.engine.image(self.build_tag(sha))
            check = verify.all_of(
                verify.same_image(image_id, tagged.id if tagged else None, self.build_tag(sha)),
                verify.revision_label(tagged.labels if tagged else None, sha),
            )
            step.changed(image_id=image_id, ok=check.ok)
            if not check.ok:
                step.fail(check.reason)
        return check

    def verify_running(self, env: str, image_id: str, sha: str) -> verify.Check:
        """What really runs, not what we asked for: the environment's container runs ``image_id``, that
        image carries the sha, and (for apps that serve it) the revision it reports is the sha."""
        with self.steps.step(f"{env}_verify", env) as step:
            check = self._verify_running(env, image_id, sha)
            step.changed(image_id=image_id, ok=check.ok)
            if not check.ok:
                step.fail(check.reason)
        return check

    def _verify_running(self, env: str, image_id: str, sha: str) -> verify.Check:
        found = self.current(env)
        if found is None or not found.running:
            status = found.status if found else "missing"
            return verify.Check(
                False, f"{self.container(env)} is {status}, not running", {"container_status": status}
            )
        running_image = self.engine.image(found.image_id)
        checks = [
            verify.Check(True, f"{found.name} running", {"container_id": found.id}),
            verify.same_image(image_id, found.image_id, f"{found.name}"),
            verify.revision_label(running_image.labels if running_image else None, sha),
        ]
        if self.app.version_path:
            probe = health.get(self.base_url(env) + self.app.version_path)
            served = probe.body.strip() if probe.ok else None
            checks.append(
                verify.Check(
                    served == sha,
                    f"{self.app.version_path} serves {served!r}"
                    + ("" if served == sha else f", expected {sha!r}"),
                    {"served_revision": served, "version_status": probe.status, "version_error": probe.error},
                )
            )
        return verify.all_of(*checks)

    def redact(self, text: str) -> str:
        """Evidence from the app (logs, check output) without the secrets we gave it."""
        return redact.redact(text, [*self.app.env.values(), *self.app.build_args.values()])

    def serves(self, env: str, image_id: str, revision: str) -> bool:
        """Whether ``env`` really serves ``image_id``: its container runs that image, is healthy, and
        verifies (label, and /version where served). Health comes first: a container the engine has
        just restarted answers /version only once the app is up, and judging it earlier would replace
        a good release."""
        found = self.current(env)
        if found is None or not found.running or found.image_id != image_id:
            return False
        if not self.wait_healthy(env, found.id).healthy:
            return False
        return self.verify_running(env, image_id, revision).ok

    def stop(self, env: str) -> bool:
        """Take ``env`` down (no release to fall back to); True when something was removed."""
        with self.steps.step(f"{env}_stop", env) as step:
            found = self.current(env)
            if found is not None:
                step.changed(container_id=found.id, image_id=found.image_id, status=found.status)
            if self.compose is None:
                return self.engine.remove_container(self.container(env))
            try:
                self.compose.remove(self.app.service(env), pinned=self.app.pin_digests)
            except ComposeError as exc:
                raise DockerError(exc.message) from None
            return found is not None
