"""The promotion steps (build, recreate, health, verify, retag, restore), composed from the adapter.

This module decides *what* the engine should do for an app and an environment; docker_engine does it.
Gates call these steps and turn their outcomes into recorded verdicts.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator import gitrepo, health, verify
from orchestrator.config import AppConfig, Settings
from orchestrator.docker_engine import ContainerInfo, DockerEngine, DockerError, ImageInfo

STAGING = "staging"
PROD = "prod"
ENVIRONMENTS = (STAGING, PROD)
LOOPBACK = "127.0.0.1"


def staging_check_script() -> Path:
    """scripts/staging_check.py from a source checkout, else the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "scripts" / "staging_check.py", here / "_scripts" / "staging_check.py"):
        if candidate.is_file():
            return candidate
    raise RuntimeError("scripts/staging_check.py is missing from this installation of orchestrator")


def port_answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


@dataclass(frozen=True)
class Build:
    image: ImageInfo
    tag: str
    duration_s: float
    log_tail: str


@dataclass(frozen=True)
class StagingCheck:
    ok: bool
    exit_code: int
    output: str
    command: tuple[str, ...]


class Deployer:
    def __init__(self, engine: DockerEngine, app: AppConfig, settings: Settings) -> None:
        self.engine = engine
        self.app = app
        self.settings = settings

    # naming ---------------------------------------------------------------------------------------

    def container(self, env: str) -> str:
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
        if not gitrepo.path_in_commit(self.app.source, sha, self.app.dockerfile):
            raise DockerError(f"{self.app.dockerfile} is not in commit {sha[:12]} of {self.app.source}")
        t0 = time.perf_counter()
        with gitrepo.archive(self.app.source, sha) as context:
            image, log = self.engine.build(
                context,
                tag=self.build_tag(sha),
                dockerfile=self.app.dockerfile,
                buildargs={**self.app.build_args, "GIT_SHA": sha},
            )
        return Build(image, self.build_tag(sha), time.perf_counter() - t0, log[-2000:])

    def recreate(self, env: str, image_id: str, *, run_id: int | None) -> ContainerInfo:
        """Replace the environment's container with one running ``image_id`` (by id, never by tag, so a
        tag moved by someone else between build and run cannot change what starts)."""
        name = self.container(env)
        self.engine.remove_container(name)
        port = self.port(env)
        if port_answers(port):
            # Otherwise the health check would be answered by whatever holds the port while our
            # container dies on "address already in use", and a dead deploy would look green.
            raise DockerError(
                f"port {port} on {LOOPBACK} is already in use by something other than {name}: "
                f"stop it or give {self.app.name} another {env}_port"
            )
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

    def wait_healthy(self, env: str) -> health.HealthReport:
        name = self.container(env)

        def alive() -> bool:
            found = self.engine.container(name)
            return found is not None and found.status in ("running", "created", "restarting")

        return health.wait_healthy(
            self.base_url(env) + self.app.health_path,
            timeout=self.settings.health_timeout_s,
            interval=self.settings.health_interval_s,
            alive=alive,
        )

    def container_evidence(self, env: str) -> dict:
        found = self.engine.container(self.container(env))
        if found is None:
            return {"container": None}
        return {
            "container": found.name,
            "container_id": found.id,
            "container_status": found.status,
            "exit_code": found.exit_code,
            "logs_tail": self.engine.logs(found.name, tail=20)[-1500:],
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
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired as exc:
            return StagingCheck(
                False, -1, f"staging check timed out after 120 s: {exc.output or ''}", tuple(cmd)
            )
        output = (proc.stdout + proc.stderr).strip()
        return StagingCheck(proc.returncode == 0, proc.returncode, output[-2000:], tuple(cmd))

    def verify_image(self, image_id: str, sha: str) -> verify.Check:
        """Safety layer: the image tagged <app>:<sha> is the one just built and carries the full sha."""
        tagged = self.engine.image(self.build_tag(sha))
        return verify.all_of(
            verify.same_image(image_id, tagged.id if tagged else None, self.build_tag(sha)),
            verify.revision_label(tagged.labels if tagged else None, sha),
        )

    def verify_running(self, env: str, image_id: str, sha: str) -> verify.Check:
        """What really runs, not what we asked for: the environment's container runs ``image_id``, that
        image carries the sha, and (for apps that serve it) the revision it reports is the sha."""
        found = self.engine.container(self.container(env))
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

    def tag_for(self, env: str, image_id: str) -> str:
        self.engine.tag(image_id, self.app.name, env)
        return f"{self.app.name}:{env}"

    def stop(self, env: str) -> bool:
        return self.engine.remove_container(self.container(env))
