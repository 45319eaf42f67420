"""Compose services: each environment is a service of the app's compose file, run through an override
file that pins it to an immutable reference (see orchestrator.compose for why never by tag)."""

from __future__ import annotations

from orchestrator import gitrepo
from orchestrator.compose import Compose, ComposeError, project_name
from orchestrator.config import AppConfig, Settings
from orchestrator.docker_engine import ContainerInfo, DockerEngine, DockerError
from orchestrator.errors import BadInput
from orchestrator.machine import PROD, STAGING
from orchestrator.runtimes import Published
from orchestrator.steps import StepLog


def check_services(app: AppConfig) -> None:
    """The app's staging and prod services exist in its compose file: exit 2 before anything runs."""
    assert app.compose_file is not None
    compose = Compose(app.compose_file, app.override_file, project=project_name(app.name))
    compose.check_services(app.service(STAGING), app.service(PROD))


def check_committed(app: AppConfig, sha: str) -> None:
    """A compose file inside the app's repository must be the one committed at the run's sha: an
    uncommitted edit (an extra variable, a host mount) would otherwise reach prod with no trace. A compose
    file kept elsewhere is not the commit's to judge; its hash is recorded with every release instead."""
    assert app.compose_file is not None
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


class ComposeRuntime:
    """``pins`` holds each environment's current immutable reference (from the latest releases), so an
    override written for one environment keeps the other one's pin."""

    def __init__(
        self,
        engine: DockerEngine,
        app: AppConfig,
        settings: Settings,
        steps: StepLog,
        pins: dict[str, str],
    ) -> None:
        assert app.compose_file is not None
        self.engine = engine
        self.app = app
        self.steps = steps
        self.pins = dict(pins)
        self.compose = Compose(
            app.compose_file,
            app.override_file,
            project=project_name(app.name),
            timeout_s=settings.compose_timeout_s,
        )

    def label(self, env: str) -> str:
        return f"{self.app.service(env)} (compose)"

    def current(self, env: str) -> ContainerInfo | None:
        try:
            cid = self.compose.container_id(self.app.service(env), pinned=self.app.pin_digests)
        except ComposeError as exc:
            raise DockerError(exc.message) from None
        return self.engine.container(cid) if cid else None

    def start(self, env: str, published: Published, *, run_id: int | None) -> ContainerInfo:
        service = self.app.service(env)
        self.pins[env] = published.ref
        try:
            self._write_pins(env)
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

    def _write_pins(self, env: str) -> None:
        if not self.app.pin_digests:
            return
        with self.steps.step(f"{env}_pin", env) as step:
            pins = {self.app.service(e): ref for e, ref in self.pins.items()}
            self.compose.pin(pins)
            step.changed(override_file=str(self.compose.override_file), pins=pins)

    def stop(self, env: str) -> bool:
        with self.steps.step(f"{env}_stop", env) as step:
            found = self.current(env)
            if found is not None:
                step.changed(container_id=found.id, image_id=found.image_id, status=found.status)
            try:
                self.compose.remove(self.app.service(env), pinned=self.app.pin_digests)
            except ComposeError as exc:
                raise DockerError(exc.message) from None
            return found is not None

    def repin(self, env: str, ref: str) -> None:
        self.pins[env] = ref
        try:
            self._write_pins(env)
        except ComposeError as exc:
            raise DockerError(exc.message) from None

    def override_text(self) -> str | None:
        if not self.app.pin_digests or not self.compose.override_file.is_file():
            return None
        return self.compose.override_file.read_text(encoding="utf-8")
