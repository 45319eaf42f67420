"""`docker stack deploy` with an override that pins the app's one service, the stack twin of compose.py.

A stack file names images by tag, as people write them; deploying it as written would let every node
resolve the tag on its own, at its own time. So the orchestrator never edits the stack file: it writes
an override beside it (``.deploy/stack-<env>.override.deploy.yml``) naming only the app's service, by
registry digest, with the update settings a promotion relies on (start-first, the monitor window,
failure action rollback, a stop grace period of the drain time), the labels verification reads back,
and the app's overlay network (where the proxy reaches its tasks), and runs
``docker stack deploy -c <stack file> -c <override> <stack>``. Every other service (a database, a
cache) is deployed exactly as the stack file says.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from orchestrator.compose import write_atomically
from orchestrator.errors import BadInput, InfraUnavailable, StepTimeout

_HEADER = "# Written by orchestrator on every deploy: pins the app's service of the stack by digest."


class StackError(Exception):
    """`docker stack deploy` (or the docker CLI) refused; the runtime turns it into a DockerError."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class StackPin:
    """What the override says about the app's service."""

    service: str
    image: str
    network: str
    monitor_s: float
    labels: Mapping[str, str]
    container_labels: Mapping[str, str]
    # The drain time (Settings.drain_s): see ServiceSpec.stop_grace_s.
    stop_grace_s: float = 5.0


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def render_override(pin: StackPin) -> str:
    """YAML from JSON scalars (valid YAML, exact quoting without a YAML library). The service joins the
    stack's default network (where its stack neighbours are) and the app's overlay network (the proxy's),
    both merged into whatever the stack file gives it."""
    q = json.dumps
    update = (
        f"{{parallelism: 1, delay: 0s, order: start-first, failure_action: rollback, "
        f"monitor: {_duration(pin.monitor_s)}, max_failure_ratio: 0}}"
    )
    rollback = (
        f"{{parallelism: 1, delay: 0s, order: start-first, failure_action: pause, "
        f"monitor: {_duration(pin.monitor_s)}, max_failure_ratio: 0}}"
    )
    lines = [
        _HEADER,
        'version: "3.8"',
        "services:",
        f"  {q(pin.service)}:",
        f"    image: {q(pin.image)}",
        f"    stop_grace_period: {_duration(pin.stop_grace_s)}",
        "    networks:",
        "      default: {}",
        "      orchestrator: {}",
        "    labels:",
        *(f"      {q(k)}: {q(v)}" for k, v in sorted(pin.container_labels.items())),
        "    deploy:",
        "      labels:",
        *(f"        {q(k)}: {q(v)}" for k, v in sorted(pin.labels.items())),
        f"      update_config: {update}",
        f"      rollback_config: {rollback}",
        "networks:",
        "  orchestrator:",
        "    external: true",
        f"    name: {q(pin.network)}",
    ]
    return "\n".join(lines) + "\n"


def check_service(stack_file: Path, service: str) -> None:
    """The stack file names ``service`` (exit 2 otherwise). An override naming a service the stack file
    lacks would not fail: `docker stack deploy` would create a new service from the override alone, the
    app's image with none of its settings. Read without a YAML library: a key line ``  <service>:``
    indented under ``services:``."""
    try:
        text = stack_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read stack file {stack_file}: {exc.strerror}") from None
    key = re.compile(rf"""^\s+["']?{re.escape(service)}["']?\s*:""", re.MULTILINE)
    if "services:" not in text or not key.search(text):
        raise BadInput(
            f"stack file {stack_file} has no service {service!r} under services: fix stack_service (the "
            "app's service in the stack file)"
        )


def _docker() -> str:
    found = shutil.which("docker")
    if found is None:
        raise InfraUnavailable("the docker CLI is not installed: 'docker stack deploy' needs it")
    return found


class Stack:
    """One stack (``name``) deployed from ``stack_file`` plus the override at ``override_file``."""

    def __init__(
        self,
        stack_file: Path,
        override_file: Path,
        name: str,
        *,
        timeout_s: float = 600,
        cli_args: tuple[str, ...] = (),
    ) -> None:
        self.stack_file = stack_file
        self.override_file = override_file
        self.name = name
        self.timeout_s = timeout_s
        # The docker CLI's flags that reach the environment's engine (DockerEngine.cli_args): a remote
        # manager's shared ssh connection or its TLS files; none for this machine's engine.
        self.cli_args = cli_args

    def service_name(self, service: str) -> str:
        """What Swarm calls a stack's service."""
        return f"{self.name}_{service}"

    def pin(self, pin: StackPin) -> str:
        text = render_override(pin)
        write_atomically(self.override_file, text)
        return text

    def deploy(self) -> str:
        """``docker stack deploy`` returns once the specs are submitted; Swarm converges after (the
        runtime waits for that). ``--resolve-image never``: the app's image is a digest already, and the
        other services run as their stack file says."""
        argv = [
            _docker(),
            *self.cli_args,
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            str(self.stack_file),
            "-c",
            str(self.override_file),
            self.name,
        ]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout_s, cwd=self.stack_file.parent
            )
        except subprocess.TimeoutExpired:
            raise StepTimeout(
                f"{' '.join(argv)} did not finish within {self.timeout_s:g} s (ORCH_SWARM_TIMEOUT_S)"
            ) from None
        output = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise StackError(f"docker stack deploy {self.name} failed: {output[-500:]}")
        return output
