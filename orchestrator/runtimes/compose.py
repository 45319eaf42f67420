"""Compose services: each environment is a service of the app's compose file, run through an override
file that pins it to an immutable reference (see orchestrator.compose for why never by tag)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from orchestrator.compose import Compose, ComposeError, project_name
from orchestrator.config import AppConfig, Settings
from orchestrator.docker_engine import ContainerInfo, DockerEngine, DockerError
from orchestrator.logging import get_logger
from orchestrator.machine import PROD, STAGING
from orchestrator.runtimes import Published, RuntimeView
from orchestrator.steps import StepLog
from orchestrator.verdict import Verdict


@contextmanager
def _engine_refused() -> Iterator[None]:
    """A failed `docker compose` command is, to the deploy, the engine refusing: the one place a
    ComposeError becomes the DockerError the gates and recovery handle."""
    try:
        yield
    except ComposeError as exc:
        raise DockerError(exc.message) from None


def check_services(app: AppConfig) -> None:
    """The app's staging and prod services exist in its compose file: exit 2 before anything runs."""
    assert app.compose_file is not None
    compose = Compose(app.compose_file, app.override_file, project=project_name(app.name))
    compose.check_services(app.service(STAGING), app.service(PROD))


def env_project(app: AppConfig, env: str) -> str:
    """The compose project an environment runs in: the app's project for prod, and for staging its own
    ``<project>-staging`` unless ``staging_project = "prod"``. A name that happens to be another app's
    project is refused by Compose's ownership check, never shared."""
    base = project_name(app.name)
    return base if env == PROD or app.staging_project == "prod" else f"{base}-staging"


class ComposeRuntime:
    """``pins`` holds each environment's current immutable reference (from the latest releases), so an
    override written for one environment keeps the other one's pin.

    Staging in its own project (the default) gets its own copies of the services it depends on, named
    volumes included: a staging release that migrates or wipes its database cannot touch prod's. Staging
    deployed before that ran in prod's project; it is found there until the next staging deploy moves it
    (see ``_legacy_staging``)."""

    def __init__(
        self,
        engine: DockerEngine,
        app: AppConfig,
        settings: Settings,
        steps: StepLog,
        pins: dict[str, str],
    ) -> None:
        assert app.compose_file is not None and app.override_file is not None
        self.engine = engine
        self.app = app
        self.steps = steps
        self.pins = dict(pins)
        self._projects = {
            env: Compose(
                app.compose_file,
                app.override_file,
                project=env_project(app, env),
                timeout_s=settings.compose_timeout_s,
                # Only prod's project can predate named projects (see Compose); staging's own is new.
                adopt=env_project(app, env) == env_project(app, PROD),
            )
            for env in (STAGING, PROD)
        }

    def compose(self, env: str) -> Compose:
        return self._projects[env]

    @property
    def _own_staging(self) -> bool:
        return env_project(self.app, STAGING) != env_project(self.app, PROD)

    def label(self, env: str) -> str:
        return f"{self.app.service(env)} (compose)"

    def _container_id(self, env: str, compose: Compose) -> str | None:
        with _engine_refused():
            return compose.container_id(self.app.service(env), pinned=self.app.pin_digests)

    def _legacy_staging(self) -> str | None:
        """Staging's container still in prod's project (deployed before staging had its own)."""
        if not self._own_staging:
            return None
        return self._container_id(STAGING, self.compose(PROD))

    def current(self, env: str) -> ContainerInfo | None:
        cid = self._container_id(env, self.compose(env))
        if cid is None and env == STAGING:
            cid = self._legacy_staging()
        return self.engine.container(cid) if cid else None

    def start(self, env: str, published: Published, *, run_id: int | None) -> ContainerInfo:
        service = self.app.service(env)
        compose = self.compose(env)
        self.pins[env] = published.ref
        with _engine_refused():
            self._write_pins(env)
            if env == STAGING:
                self._move_legacy_staging()
            with self.steps.step(f"{env}_up", env) as step:
                before = self.current(env)
                step.changed(container_before=before.id if before else None, project=compose.project)
                compose.up(service, pinned=self.app.pin_digests)
                found = self.current(env)
                step.changed(
                    container_id=found.id if found else None, image_id=found.image_id if found else None
                )
        if found is None:
            raise DockerError(f"docker compose up -d {service} left no container for {service}")
        return found

    def _move_legacy_staging(self) -> None:
        """Staging is disposable: its old container in prod's project is removed (it would hold
        staging's port) before staging starts in its own project. Prod's services are left as they are."""
        legacy = self._legacy_staging()
        if legacy is None:
            return
        prod = self.compose(PROD)
        with self.steps.step("staging_move", STAGING) as step:
            step.changed(container_id=legacy, project_before=prod.project_in_use())
            prod.remove(self.app.service(STAGING), pinned=self.app.pin_digests)
        get_logger().warning(
            "staging_moved_to_own_project",
            service=self.app.service(STAGING),
            project_before=prod.project_in_use(),
            project=env_project(self.app, STAGING),
            why="staging shared prod's project (its networks, volumes, databases); set staging_project "
            '= "prod" to keep sharing on purpose',
        )

    def _write_pins(self, env: str) -> None:
        if not self.app.pin_digests:
            return
        with self.steps.step(f"{env}_pin", env) as step:
            pins = {self.app.service(e): ref for e, ref in self.pins.items()}
            self.compose(env).pin(pins)
            step.changed(override_file=str(self.app.override_file), pins=pins)

    def stop(self, env: str) -> bool:
        with self.steps.step(f"{env}_stop", env) as step:
            found = self.current(env)
            if found is not None:
                step.changed(container_id=found.id, image_id=found.image_id, status=found.status)
            with _engine_refused():
                self.compose(env).remove(self.app.service(env), pinned=self.app.pin_digests)
                if env == STAGING and self._legacy_staging() is not None:
                    self.compose(PROD).remove(self.app.service(STAGING), pinned=self.app.pin_digests)
            return found is not None

    def repin(self, env: str, ref: str) -> None:
        self.pins[env] = ref
        with _engine_refused():
            self._write_pins(env)

    def override_text(self) -> str | None:
        assert self.app.override_file is not None
        if not self.app.pin_digests or not self.app.override_file.is_file():
            return None
        return self.app.override_file.read_text(encoding="utf-8")

    def verify(self, env: str, image_id: str, revision: str) -> list[Verdict]:
        return []

    def view(self, env: str) -> RuntimeView | None:
        return None
