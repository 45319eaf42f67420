"""Direct containers: one container per environment, named ``<app>-<env>``, run by image id."""

from __future__ import annotations

import socket

from orchestrator.config import AppConfig
from orchestrator.docker_engine import ContainerInfo, DockerEngine, DockerError
from orchestrator.machine import PROD
from orchestrator.runtimes import LOOPBACK, Published, RuntimeView, env_port
from orchestrator.steps import StepLog
from orchestrator.verdict import Verdict


def port_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


class DirectRuntime:
    def __init__(self, engine: DockerEngine, app: AppConfig, steps: StepLog) -> None:
        self.engine = engine
        self.app = app
        self.steps = steps

    def label(self, env: str) -> str:
        return f"{self.app.name}-{env}"

    def current(self, env: str) -> ContainerInfo | None:
        return self.engine.container(self.label(env))

    def start(self, env: str, published: Published, *, run_id: int | None) -> ContainerInfo:
        """Run by image id, never by tag, so a tag moved by someone else between build and run cannot
        change what starts."""
        name = self.label(env)
        with self.steps.step(f"{env}_stop", env) as step:
            old = self.engine.container(name)
            if old is not None:
                step.changed(container_id=old.id, image_id=old.image_id, status=old.status)
            self.engine.remove_container(name)
        port = env_port(self.app, env)
        if port_answers(port):
            # Otherwise the health check would be answered by whatever holds the port while our
            # container dies on "address already in use", and a dead deploy would look green.
            raise DockerError(
                f"port {port} on {LOOPBACK} is already in use by something other than {name}: "
                f"stop it or give {self.app.name} another {env}_port"
            )
        with self.steps.step(f"{env}_start", env) as step:
            started = self._run(env, name, published.image_id, run_id=run_id)
            step.changed(container_id=started.id, image_id=started.image_id)
        return started

    def _run(self, env: str, name: str, image_id: str, *, run_id: int | None) -> ContainerInfo:
        port = env_port(self.app, env)
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

    def stop(self, env: str) -> bool:
        with self.steps.step(f"{env}_stop", env) as step:
            found = self.current(env)
            if found is not None:
                step.changed(container_id=found.id, image_id=found.image_id, status=found.status)
            return self.engine.remove_container(self.label(env))

    def repin(self, env: str, ref: str) -> None:
        """Nothing to do: a direct container has no pin file; its tags are the publisher's."""

    def override_text(self) -> str | None:
        return None

    def verify(self, env: str, image_id: str, revision: str) -> list[Verdict]:
        return []

    def view(self, env: str) -> RuntimeView | None:
        return None
