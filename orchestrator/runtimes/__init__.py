"""How an environment runs: one interface over direct containers and compose services.

The promotion (deploy.py) decides what an environment should run and checks what answers; a runtime
knows only how to put an image in place for one environment, find what serves it now, and take it
down, recording each of those as steps. Adding a runtime (swarm services, a remote host) means adding
a module here, not another branch in every deploy step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from orchestrator.config import AppConfig, Settings
from orchestrator.engines import AppEngines
from orchestrator.errors import BadInput
from orchestrator.machine import STAGING
from orchestrator.steps import StepLog
from orchestrator.verdict import Verdict

if TYPE_CHECKING:  # preflight runs before an engine (and the docker SDK) is needed
    from orchestrator.docker_engine import ContainerInfo

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Published:
    """Where an image can be found for an environment: ``ref`` is what runs pin (the registry digest
    reference when there is a registry, else the image id, which is immutable on this engine)."""

    image_id: str
    ref: str
    digest: str | None = None


@dataclass(frozen=True)
class RuntimeView:
    """What a runtime that is more than one container says about an environment, for `status`: a swarm
    service's pinned image and its tasks (``task_images``: what the running ones run)."""

    kind: str
    name: str
    pinned: str | None = None
    replicas: int = 0
    update_state: str | None = None
    tasks: tuple[str, ...] = ()
    task_images: tuple[str, ...] = ()
    # How the environment's port reaches the tasks: "ingress :8500 -> 8080" (the routing mesh) or
    # "proxy <name>"; None before the service exists.
    published: str | None = None


def env_port(app: AppConfig, env: str) -> int:
    """The host port an environment answers on (health checks and the staging check go there)."""
    return app.staging_port if env == STAGING else app.prod_port


class Runtime(Protocol):
    """One way of running an app's environments. Every method that changes the engine records itself
    as a step in the transition's StepLog, so recovery can read how far it got."""

    def label(self, env: str) -> str:
        """What an operator would look for: the container name, or the compose service."""
        ...

    def current(self, env: str) -> ContainerInfo | None:
        """The container that serves ``env`` now, however it got there."""
        ...

    def start(self, env: str, published: Published, *, run_id: int | None) -> ContainerInfo:
        """Replace what serves ``env`` with ``published`` and return the new container (not yet
        health-checked); raises DockerError when the engine refuses."""
        ...

    def stop(self, env: str) -> bool:
        """Take ``env`` down; True when something was removed."""
        ...

    def repin(self, env: str, ref: str) -> None:
        """Make ``env``'s recorded pin ``ref`` again without touching what runs (recovery found the old
        release still serving after a crash between writing the new pin and starting it)."""
        ...

    def override_text(self) -> str | None:
        """The pin file the environments run with now, kept with each release for rollback."""
        ...

    def verify(self, env: str, image_id: str, revision: str) -> list[Verdict]:
        """Checks beyond the one container the deploy looked at (every task of a swarm service); empty
        where that container is all there is."""
        ...

    def view(self, env: str) -> RuntimeView | None:
        """What `status` shows beyond the container (a service and its tasks); None for a container."""
        ...


@runtime_checkable
class StagedRuntime(Runtime, Protocol):
    """A runtime whose ``start`` leaves what serves ``env`` alone (zero-downtime: a proxy owns the
    port). The deployer checks the new container where it alone answers (``probe_base``), and only then
    lets it take traffic (``hand_over``) or removes it (``discard``): the old release keeps serving
    until the new one has passed every check, and is never stopped for one that fails."""

    def probe_base(self, env: str, container: ContainerInfo) -> str:
        """``http://host:port`` where ``container`` and nothing else answers."""
        ...

    def hand_over(self, env: str, container: ContainerInfo) -> None:
        """Send ``env``'s traffic to ``container`` and retire every other container of ``env``, once the
        proxy is seen sending it requests; raises DockerError when that cannot be done (then nothing
        else was retired)."""
        ...

    def discard(self, env: str, container: ContainerInfo) -> None:
        """Remove a container that failed its checks (it never took traffic)."""
        ...

    def settle(self, env: str) -> None:
        """Leave exactly the serving container of ``env`` (recovery after a crash mid-hand-over: a
        candidate never handed over, or the old container still serving beside the new one)."""
        ...


@dataclass(frozen=True)
class Elsewhere:
    """A container that serves an environment from another host than the engine we talk to (a swarm
    task on another node), as that engine (the manager) sees it: ``container`` is built from the task,
    ``node`` is where it runs, ``logs`` says where its log can be read (not on this engine), ``task`` is
    the swarm task whose container it is (the manager reads that task's log: ``SpreadRuntime.log_of``),
    ``image`` the image reference its spec names (a digest; what verification names when the manager's
    engine does not hold that image, and ``container.image_id`` is then empty)."""

    container: ContainerInfo
    node: str
    logs: str
    task: str = ""
    image: str = ""


@dataclass(frozen=True)
class LogTail:
    """A log read from another host: ``text`` (None when it could not be read) or ``error`` (why)."""

    text: str | None
    error: str | None = None


@runtime_checkable
class SpreadRuntime(Runtime, Protocol):
    """A runtime whose environment may be served from other hosts than the engine we talk to: what
    ``current`` returns may be a container elsewhere, which that engine cannot inspect; the deployer
    then looks at it again, and gathers its evidence, through ``elsewhere``."""

    def elsewhere(self, env: str, container_id: str) -> Elsewhere | None:
        """The container ``container_id`` of ``env`` when it runs elsewhere, as it is now; None when it
        is on the engine we talk to, or gone."""
        ...

    def log_of(self, env: str, found: Elsewhere, *, tail: int) -> LogTail:
        """The last ``tail`` lines of ``found``'s log as the manager relays them from its node, or why
        they could not be read (the node is down, the manager refused): never an error, since it is
        only evidence of a failure already decided."""
        ...


def check_file_committed(app: AppConfig, path: Path, sha: str, what: str) -> None:
    """A deploy file (compose or stack file) inside the app's repository must be the one committed at
    the run's sha (exit 2 otherwise): an uncommitted edit (an extra variable, a host mount, another
    replica count) would otherwise reach prod with no trace in the history. A file kept outside the
    repository is not the commit's to judge."""
    from orchestrator import gitrepo

    try:
        rel = path.resolve().relative_to(app.source.resolve())
    except ValueError:
        return
    committed = gitrepo.file_at(app.source, sha, rel.as_posix())
    if committed is None:
        raise BadInput(
            f"{what} {rel} is not in commit {sha[:12]} of {app.source}: commit it, or keep it outside "
            "the app's repository"
        )
    try:
        current = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror}") from None
    if committed != current:
        raise BadInput(
            f"{what} {path} differs from its version in commit {sha[:12]}: commit the "
            "change (and start a run of that commit) or restore the file ('git checkout -- "
            f"{rel}'); nothing was deployed"
        )


def preflight(app: AppConfig, sha: str | None = None) -> None:
    """What the runtime can refuse before anything runs (exit 2): a compose app's services exist in its
    compose file and, for a run's ``sha``, that file is the committed one; environments on another engine
    than the build's have a registry to get the image from; a stack app's service exists in its stack
    file and, for a run's ``sha``, that file is the committed one (like a compose file)."""
    from orchestrator.config import check_registry_transfer

    check_registry_transfer(app)
    if app.is_compose:
        from orchestrator.runtimes import compose

        compose.check_services(app)
        if sha is not None and app.compose_file is not None:
            check_file_committed(app, app.compose_file, sha, "compose file")
    if app.stack_file is not None and app.stack_service is not None:
        from orchestrator.stack import check_service

        check_service(app.stack_file, app.stack_service)
        if sha is not None:
            check_file_committed(app, app.stack_file, sha, "stack file")


def engine_preflight(engines: AppEngines, app: AppConfig, environments: Sequence[str]) -> None:
    """What the engines themselves must offer before an edge touches ``environments`` (exit 4 otherwise):
    a swarm environment's engine must be a swarm manager."""
    for env in environments:
        if app.runtime_of(env) == "swarm" and not engines.of(env).swarm.manager():
            from orchestrator.runtimes.swarm import not_a_manager

            raise not_a_manager(app.engine(env))


def runtime_for(
    engines: AppEngines,
    app: AppConfig,
    settings: Settings,
    steps: StepLog,
    pins: dict[str, str],
) -> Runtime:
    """The app's runtime, handed the app's engines: each environment is run on its own engine."""
    if app.is_compose:
        from orchestrator.runtimes.compose import ComposeRuntime

        # Compose apps run on this machine's engine only (config.py refuses docker_host for them).
        return ComposeRuntime(engines.build, app, settings, steps, pins)
    if app.swarm_environments:
        from orchestrator.runtimes.swarm import SwarmRuntime

        return SwarmRuntime(engines, app, settings, steps, pins)
    if app.zero_downtime:
        from orchestrator.runtimes.direct import ProxiedRuntime

        return ProxiedRuntime(engines, app, settings, steps)
    from orchestrator.runtimes.direct import DirectRuntime

    return DirectRuntime(engines, app, steps)
