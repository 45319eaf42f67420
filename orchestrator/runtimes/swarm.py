"""Docker Swarm services: each swarm environment is a service ``<app>-<env>`` pinned by registry digest,
updated start-first with a monitor window and failure action rollback, behind a proxy that publishes
the environment's port (orchestrator/proxy.py says why a proxy and not the routing mesh).

Swarm converges on its own, after we have gone: an update we submit keeps going if we die, and Swarm
may roll it back by itself. So nothing here trusts the call that submitted a spec; ``judge`` reads what
Swarm reports (the update status, then every task) until the service has converged on the pinned
digest or has visibly failed, and verification reads every running task again. Environments that are
not on swarm (``runtime = { prod = "swarm" }``) run as direct containers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from orchestrator.compose import project_name
from orchestrator.config import AppConfig, EngineTarget, Settings
from orchestrator.docker_engine import (
    ContainerInfo,
    DockerError,
    ServiceInfo,
    ServiceSpec,
    TaskInfo,
)
from orchestrator.engines import AppEngines
from orchestrator.errors import InfraUnavailable
from orchestrator.machine import PROD
from orchestrator.proxy import Proxy, ProxySpec
from orchestrator.runtimes import LOOPBACK, Elsewhere, LogTail, Published, RuntimeView, env_port
from orchestrator.runtimes.direct import ALL_INTERFACES, DirectRuntime
from orchestrator.stack import Stack, StackError, StackPin
from orchestrator.steps import StepLog
from orchestrator.verdict import Verdict
from orchestrator.verify import REVISION_LABEL

APP_LABEL = "orchestrator.app"
ENV_LABEL = "orchestrator.environment"
RUN_LABEL = "orchestrator.run"
# On every task's container: the revision it was started for, read back per task by verification.
TASK_REVISION_LABEL = "orchestrator.revision"
_POLL_S = 0.2
_ROLLING_BACK = ("rollback_started",)
# How many failed tasks of a service that has never completed an update (its first deploy) mean the
# new tasks crash-loop rather than start slowly: Swarm would retry them forever.
_CRASH_LOOP_FAILURES = 2
_TASK_FAILED = ("failed", "rejected")
# A task's state as the status of a container (a task on another node has no container we can inspect):
# one that ended reads as exited, so the health check's watch ends at once (health.container_failure).
_TASK_STATUS = {
    "running": "running",
    "complete": "exited",
    "shutdown": "exited",
    "failed": "exited",
    "rejected": "exited",
    "orphaned": "exited",
    "remove": "removing",
}


def not_a_manager(target: EngineTarget) -> InfraUnavailable:
    """Exit 4, before anything is recorded: swarm services need a manager. On another host, a swarm
    advertised on loopback could never take a second node: the message asks for the host's address."""
    if target.is_local:
        return InfraUnavailable(
            "the Docker engine is not a swarm manager, so it cannot run swarm services: run "
            "'docker swarm init --advertise-addr 127.0.0.1' (a single-node swarm), or point DOCKER_HOST "
            "at a manager of your swarm"
        )
    return InfraUnavailable(
        f"the Docker engine at {target.host} is not a swarm manager, so it cannot run swarm services: run "
        "'docker swarm init --advertise-addr <its address on the nodes' network>' there, or point "
        "docker_host at a manager of your swarm"
    )


@dataclass(frozen=True)
class Progress:
    """Where an update stands: converged on the pinned image, still going, or failed (and why)."""

    converged: bool = False
    failed: str | None = None
    waiting_for: str = ""
    errors: tuple[str, ...] = field(default_factory=tuple)


def task_errors(tasks: Sequence[TaskInfo], ref: str) -> tuple[str, ...]:
    """Why tasks of the new image ended, oldest first, each once (a crash loop repeats itself)."""
    seen: list[str] = []
    for task in sorted(tasks, key=lambda t: t.updated_at or ""):
        if task.image != ref or task.state not in ("failed", "rejected", "shutdown", "orphaned"):
            continue
        if task.state == "shutdown" and not task.error:
            continue  # an ordinary replacement
        why = f"task {task.id[:12]} {task.state}: {task.error or task.message or 'no reason given'}"
        if why.split(": ", 1)[1] not in (s.split(": ", 1)[1] for s in seen):
            seen.append(why)
    return tuple(seen)


def judge(service: ServiceInfo | None, tasks: Sequence[TaskInfo], ref: str, replicas: int) -> Progress:
    """Pure: has ``service`` converged on ``ref``? Converged means the spec still names ``ref`` (Swarm
    did not roll it back), ``replicas`` tasks run it, and no running task runs anything else. Failed
    means Swarm put the spec back (its rollback after a new task failed) or, on a service that never
    completed an update, its new tasks keep failing.

    Swarm's update state alone proves nothing: the status of an earlier update (a rollback last week,
    a "completed") is still reported after a new spec is submitted, until Swarm's updater picks the new
    one up, and a spec identical to the running one starts no update at all. What cannot be stale is
    the spec itself (it names ``ref`` from the moment the update is accepted) and the tasks."""
    if service is None:
        return Progress(failed="the service is gone (removed while it was being updated?)")
    errors = task_errors(tasks, ref)
    state = service.update_state
    if service.image != ref:
        if state in _ROLLING_BACK:
            return Progress(waiting_for="Swarm's rollback to finish", errors=errors)
        how = (
            f"Swarm rolled the update back ({state.replace('_', ' ')})"
            if state and state.startswith("rollback")
            else f"the spec was changed by someone else (update state {state})"
        )
        return Progress(failed=f"{how}: the service is on {service.image} again", errors=errors)
    running = [t for t in tasks if t.running]
    on_ref = [t for t in running if t.image == ref]
    # Any task still running another image, including an old one Swarm told to shut down: Swarm takes
    # it out of the service's DNS at once but keeps its container up about two seconds more (its gossip
    # delay, for requests in flight) plus the stop grace period, and the proxy may still send it a
    # request until its DNS answer expires. Until it has stopped, an answer may come from the old digest.
    others = [t for t in tasks if t.state == "running" and t.image != ref]
    if state == "updating":
        return Progress(waiting_for=f"the update ({len(on_ref)} of {replicas} tasks on it)", errors=errors)
    if len(on_ref) >= replicas and not others and len(running) == len(on_ref):
        return Progress(converged=True, errors=errors)
    failures = sum(1 for t in tasks if t.image == ref and t.state in _TASK_FAILED)
    if state is None and failures >= _CRASH_LOOP_FAILURES * replicas:
        return Progress(failed=f"its tasks keep failing ({failures} tasks of it failed)", errors=errors)
    left = f"; {len(others)} still on another image" if others else ""
    return Progress(waiting_for=f"{len(on_ref)} of {replicas} tasks running {ref}{left}", errors=errors)


def describe(progress: Progress) -> str:
    return "; ".join([progress.failed or progress.waiting_for, *progress.errors[-3:]])


class SwarmRuntime:
    """``runtime = "swarm"`` environments as services; the others as direct containers."""

    def __init__(
        self,
        engines: AppEngines,
        app: AppConfig,
        settings: Settings,
        steps: StepLog,
        pins: dict[str, str],
    ) -> None:
        # Each swarm environment's service lives on that environment's engine (a manager).
        self.engines = engines
        self.app = app
        self.settings = settings
        self.steps = steps
        self.pins = dict(pins)
        self.direct = DirectRuntime(engines, app, steps)
        # The stack override written last (stack apps), kept with the release as its anchor.
        self._override: str | None = None

    # naming ---------------------------------------------------------------------------------------

    def on_swarm(self, env: str) -> bool:
        return self.app.runtime_of(env) == "swarm"

    def stack(self, env: str) -> Stack | None:
        """The stack ``env`` is deployed as (stack apps): the app's project name for prod, and its own
        ``<project>-staging`` for staging (its own copies of the stack's other services)."""
        if self.app.stack_file is None or self.app.override_file is None:
            return None
        base = project_name(self.app.name)
        override = self.app.override_file
        return Stack(
            self.app.stack_file,
            override.with_name(f"stack-{env}.override.deploy.yml"),
            base if env == PROD else f"{base}-{env}",
            timeout_s=self.settings.swarm_timeout_s,
            cli_args=self.engines.of(env).cli_args,
        )

    def service_name(self, env: str) -> str:
        stack = self.stack(env)
        if stack is not None:
            assert self.app.stack_service is not None
            return stack.service_name(self.app.stack_service)
        return f"{self.app.name}-{env}"

    def label(self, env: str) -> str:
        if not self.on_swarm(env):
            return self.direct.label(env)
        return f"service {self.service_name(env)}"

    def proxy_name(self, env: str) -> str:
        return f"{self.app.name}-{env}-proxy"

    def proxy(self, env: str) -> Proxy:
        spec = ProxySpec(
            name=self.proxy_name(env),
            network=self.app.network,
            backend=f"tasks.{self.service_name(env)}",
            backend_port=self.app.task_port,
            port=env_port(self.app, env),
            health_path=self.app.health_path,
            image=self.app.proxy_image,
            # Room for every task of a start-first update: the old ones and their replacements.
            slots=max(8, 2 * self.app.replicas + 2),
            # On a remote manager the port must answer from here, where health checks come from.
            address=LOOPBACK if self.app.engine(env).is_local else ALL_INTERFACES,
        )
        return Proxy(self.engines.of(env), spec, overlay=True, pull_timeout_s=self.settings.pull_timeout_s)

    # reading --------------------------------------------------------------------------------------

    def _tasks(self, env: str) -> list[TaskInfo]:
        return self.engines.of(env).swarm.tasks(self.service_name(env))

    def current(self, env: str) -> ContainerInfo | None:
        """A running task's container: the newest one on the engine we talk to (after an update, every
        running task runs the same image; verification checks them all, wherever they run) or, when no
        task runs on that engine's node (a drained manager), the newest task elsewhere as the manager
        sees it (``elsewhere``): the environment is served all the same, by the proxy on the manager."""
        if not self.on_swarm(env):
            return self.direct.current(env)
        engine = self.engines.of(env)
        here = engine.swarm.node_id()
        newest_first = sorted(
            (t for t in self._tasks(env) if t.running),
            key=lambda t: t.updated_at or "",
            reverse=True,
        )
        for task in newest_first:
            if task.container_id and (not here or task.node_id == here):
                found = engine.container(task.container_id)
                if found is not None:
                    return found
        remote = [t for t in newest_first if here and t.node_id != here]
        return self._seen_from_manager(env, remote[0]) if remote else None

    def elsewhere(self, env: str, container_id: str) -> Elsewhere | None:
        """The task of ``env`` whose container is ``container_id``, when it runs on another node than the
        engine we talk to, as the manager sees it now (its state, not its container's: that engine
        cannot inspect a container on another node). A task Swarm replaced is still in its task list,
        failed or shut down, so a watched task that dies is seen to die, not to vanish."""
        if not self.on_swarm(env):
            return None
        here = self.engines.of(env).swarm.node_id()
        if not here:
            return None
        for task in self._tasks(env):
            if task.node_id != here and container_id in (task.container_id, task.id):
                return Elsewhere(
                    self._seen_from_manager(env, task),
                    task.node_id,
                    f"on node {task.node_id[:12]}: read its log with "
                    f"'docker service logs {self.service_name(env)}' on a manager",
                    task.id,
                    task.image,
                )
        return None

    def log_of(self, env: str, found: Elsewhere, *, tail: int) -> LogTail:
        """Read through the manager (``GET /tasks/{id}/logs``), which asks the task's node for it: no
        connection to that node's engine. A node that is down or a manager that refuses leaves the
        evidence as it was (where to read the log), with the reason beside it."""
        if not found.task:
            return LogTail(None, "no task id")
        try:
            return LogTail(self.engines.of(env).swarm.task_logs(found.task, tail=tail))
        except (DockerError, InfraUnavailable) as exc:
            return LogTail(None, str(exc))

    def _seen_from_manager(self, env: str, task: TaskInfo) -> ContainerInfo:
        """A task on another node as a container: named as Docker names task containers, with the image
        id its spec's digest names on the manager's engine (content-addressed, see ``check_task``; empty
        when the manager no longer holds that image), the labels its spec puts on its container, and a
        status from the task's state (a task that ended reads as an exited container)."""
        # Only a digest is content: a tag would be whatever the manager's engine calls by that name.
        image = self.engines.of(env).image(task.image) if "@sha256:" in task.image else None
        status = _TASK_STATUS.get(task.state, "created")
        return ContainerInfo(
            id=task.container_id or task.id,
            name=f"{self.service_name(env)}.{task.slot}.{task.id}",
            image_id=image.id if image else "",
            status=status,
            labels=dict(task.labels),
            # No start time or restart count: Swarm never restarts a task in place; a task that dies is
            # replaced by another (another container), and this one reads as exited.
        )

    def view(self, env: str) -> RuntimeView | None:
        if not self.on_swarm(env):
            return None
        service = self.engines.of(env).swarm.service(self.service_name(env))
        if service is None:
            return RuntimeView(kind="swarm", name=self.service_name(env))
        tasks = [t for t in self._tasks(env) if t.desired_state == "running" or t.state == "running"]
        here = self.engines.of(env).swarm.node_id()
        return RuntimeView(
            kind="swarm",
            name=service.name,
            pinned=service.image,
            replicas=service.replicas,
            update_state=service.update_state,
            tasks=tuple(
                f"{self.service_name(env)}.{t.slot} {t.state} {t.image}"
                + (f" on node {t.node_id[:12]}" if here and t.node_id and t.node_id != here else "")
                + (f" ({t.error})" if t.error else "")
                for t in sorted(tasks, key=lambda t: (t.slot or 0, t.updated_at or ""))
            ),
            task_images=tuple(t.image for t in tasks if t.running),
            published=self._published(env, service),
        )

    def _published(self, env: str, service: ServiceInfo) -> str:
        """What publishes the port now, read from the service (not from the config: a switch that has
        not been deployed yet is not in force)."""
        port = env_port(self.app, env)
        if port in service.published_ports:
            return f"ingress :{port} -> {service.published_ports[port]}"
        return f"proxy {self.proxy_name(env)}"

    # changing -------------------------------------------------------------------------------------

    def _spec(self, env: str, published: Published, run_id: int | None, revision: str | None) -> ServiceSpec:
        labels = {APP_LABEL: self.app.name, ENV_LABEL: env}
        return ServiceSpec(
            name=self.service_name(env),
            image=published.ref,
            replicas=self.app.replicas,
            network=self.app.network,
            environment={"PORT": str(self.app.task_port), "ORCH_ENVIRONMENT": env, **self.app.env},
            # The run goes on the service only: a restore of the same release must be a no-op update.
            labels={**labels, RUN_LABEL: str(run_id or "")},
            container_labels={**labels, **({TASK_REVISION_LABEL: revision} if revision else {})},
            monitor_s=self.app.update_monitor_s,
            # Whole seconds, rounded up: a task's engine stops it with its grace period's whole seconds
            # (moby's swarm executor drops the fraction), so 0.5 s would be a kill right after SIGTERM.
            stop_grace_s=float(math.ceil(self.settings.drain_s)),
            ingress_ports=(
                {env_port(self.app, env): self.app.task_port} if self.app.publish_of(env) == "ingress" else {}
            ),
        )

    def start(self, env: str, published: Published, *, run_id: int | None) -> ContainerInfo:
        """Submit the pinned spec (create on the first deploy, update after) and wait until Swarm has
        converged on it; a rollback by Swarm (a new task failed its HEALTHCHECK or exited within the
        monitor window) or a crash loop raises DockerError with the tasks' own errors."""
        if not self.on_swarm(env):
            return self.direct.start(env, published, run_id=run_id)
        if published.digest is None:
            raise DockerError(
                f"{self.label(env)} is pinned by registry digest, and {published.image_id[:19]} was not "
                "pushed to a registry: set the app's registry"
            )
        if not self.engines.of(env).swarm.manager():
            raise not_a_manager(self.app.engine(env))
        name = self.service_name(env)
        revision = self._revision(env, published.image_id)
        spec = self._spec(env, published, run_id, revision)
        # The port has one owner at a time: the mesh (the service's spec) or the proxy. Switching to the
        # mesh removes the proxy before the update publishes the port; switching back, the update that
        # leaves the port out comes before the proxy takes it (both are one-off moves: the environment's
        # port does not answer between the two).
        through_mesh = bool(spec.ingress_ports)
        before = self.engines.of(env).swarm.service(name)
        port = env_port(self.app, env)
        proxy_after = not through_mesh and before is not None and port in before.published_ports
        if through_mesh:
            with self.steps.step(f"{env}_proxy", env) as step:
                step.changed(
                    publish="ingress", ports=dict(spec.ingress_ports), proxy_removed=self.proxy(env).remove()
                )
        elif not proxy_after:
            self._ensure_proxy(env)
        stack = self.stack(env)
        if stack is not None:
            self._deploy_stack(env, stack, spec, before)
        else:
            self._submit(env, spec, before)
        self.pins[env] = published.ref
        if proxy_after:
            self._ensure_proxy(env, unpublished=port)
        with self.steps.step(f"{env}_converge", env) as step:
            progress = self.converge(env, published.ref)
            step.changed(converged=progress.converged, errors=list(progress.errors))
            if not progress.converged:
                reason = f"{name} did not converge on {published.ref}: {describe(progress)}"
                step.fail(reason)
                raise DockerError(reason)
        found = self.current(env)
        if found is None:
            # Converged means running tasks; none left means they died in the moment since.
            raise DockerError(f"{name} converged on {published.ref} but no task of it is running any more")
        return found

    def _ensure_proxy(self, env: str, unpublished: int | None = None) -> None:
        """``unpublished``: the port the update just took off the service's mesh, recorded beside the
        proxy that takes it over."""
        with self.steps.step(f"{env}_proxy", env) as step:
            proxy = self.proxy(env).ensure()
            step.changed(publish="proxy", proxy=proxy.name, proxy_id=proxy.id, network=self.app.network)
            if unpublished is not None:
                step.changed(unpublished_from_mesh=unpublished)

    def _submit(self, env: str, spec: ServiceSpec, before: ServiceInfo | None) -> None:
        """Create the service on the first deploy (``before`` None), update its whole spec after."""
        with self.steps.step(f"{env}_update", env) as step:
            step.changed(
                service=spec.name,
                image=spec.image,
                image_before=before.image if before else None,
                version_before=before.version if before else None,
            )
            if before is None:
                self.engines.of(env).swarm.create_service(spec)
            else:
                warnings = self.engines.of(env).swarm.update_service(spec, version=before.version)
                if warnings:
                    step.changed(warnings=warnings)

    def _deploy_stack(self, env: str, stack: Stack, spec: ServiceSpec, before: ServiceInfo | None) -> None:
        """Pin the app's service in the stack's override, then `docker stack deploy` (recorded as the
        steps ``<env>_pin`` and ``<env>_update``, so recovery knows the environment was touched)."""
        assert self.app.stack_service is not None
        pin = StackPin(
            service=self.app.stack_service,
            image=spec.image,
            network=spec.network,
            monitor_s=spec.monitor_s,
            labels=spec.labels,
            container_labels=spec.container_labels,
            stop_grace_s=spec.stop_grace_s,
        )
        with self.steps.step(f"{env}_pin", env) as step:
            self._override = stack.pin(pin)
            step.changed(override_file=str(stack.override_file), pins={self.app.stack_service: spec.image})
        with self.steps.step(f"{env}_update", env) as step:
            step.changed(
                stack=stack.name,
                service=spec.name,
                image=spec.image,
                image_before=before.image if before else None,
            )
            try:
                stack.deploy()
            except StackError as exc:
                raise DockerError(exc.message) from None

    def _revision(self, env: str, image_id: str) -> str | None:
        image = self.engines.of(env).image(image_id)
        return image.label(REVISION_LABEL) if image else None

    def converge(self, env: str, ref: str) -> Progress:
        """Wait (up to ORCH_SWARM_TIMEOUT_S) until ``judge`` says converged or failed."""
        name = self.service_name(env)
        deadline = time.monotonic() + self.settings.swarm_timeout_s
        while True:
            service = self.engines.of(env).swarm.service(name)
            # A stack file decides its own replicas; a service we create has the app's.
            replicas = service.replicas if service is not None else self.app.replicas
            progress = judge(service, self._tasks(env), ref, replicas)
            if progress.converged or progress.failed:
                return progress
            if time.monotonic() >= deadline:
                return Progress(
                    failed=f"still waiting for {progress.waiting_for} after "
                    f"{self.settings.swarm_timeout_s:g} s (ORCH_SWARM_TIMEOUT_S)",
                    errors=progress.errors,
                )
            time.sleep(_POLL_S)

    @staticmethod
    def _tasks_verdict(
        running: Sequence[TaskInfo],
        stray: Sequence[TaskInfo],
        wrong: Sequence[str],
        replicas: int,
        image_id: str,
        revision: str,
        evidence: dict[str, object],
    ) -> Verdict:
        problems = [*wrong, *(f"task {t.id[:12]} still runs {t.image} ({t.desired_state})" for t in stray)]
        if len(running) < replicas:
            problems.append(f"only {len(running)} of {replicas} tasks are running")
        if problems:
            return Verdict.check(False, "; ".join(problems), evidence)
        return Verdict.check(
            True, f"{len(running)} of {replicas} tasks run {image_id[:19]} for {revision[:12]}", evidence
        )

    def stop(self, env: str) -> bool:
        if not self.on_swarm(env):
            return self.direct.stop(env)
        with self.steps.step(f"{env}_stop", env) as step:
            name = self.service_name(env)
            found = self.engines.of(env).swarm.service(name)
            if found is not None:
                step.changed(service=name, image=found.image)
            removed = self.engines.of(env).swarm.remove_service(name)
            step.changed(proxy_removed=self.proxy(env).remove())
        return removed

    def repin(self, env: str, ref: str) -> None:
        """Nothing to write: a service's spec is its pin, and it changes only by an update."""
        self.pins[env] = ref

    def override_text(self) -> str | None:
        return self._override

    def verify(self, env: str, image_id: str, revision: str) -> list[Verdict]:
        """Every running task, not one container: the service spec names ``image_id``'s digest, as many
        tasks as replicas run it, each started for ``revision``, and no task runs anything else (an old
        digest left behind by an update that did not finish, or an old task still stopping). How each
        task is checked depends on where it runs (``check_task``); the evidence says, per task."""
        if not self.on_swarm(env):
            return []
        name = self.service_name(env)
        engine = self.engines.of(env)
        service = engine.swarm.service(name)
        if service is None:
            return [Verdict.failed(f"service {name} does not exist")]
        image = engine.image(image_id)
        digests = frozenset(image.repo_digests) if image else frozenset()
        tasks = self._tasks(env)
        running = [t for t in tasks if t.running]
        # Old tasks told to stop but still running: they may still answer (see judge).
        stray = [t for t in tasks if t.state == "running" and not t.running and t.image not in digests]
        here = engine.swarm.node_id()
        checks = [
            check_task(
                task,
                here=here,
                digests=digests,
                image_id=image_id,
                revision=revision,
                inspect=engine.container,
            )
            for task in running
        ]
        wrong = [c.problem for c in checks if c.problem is not None]
        evidence = {
            "service": name,
            "service_image": service.image,
            "running_tasks": len(running),
            "task_images": sorted({t.image for t in running}),
            "tasks": [c.evidence() for c in checks],
        }
        return [
            Verdict.check(
                service.image in digests,
                f"service {name} is pinned to {service.image}"
                + ("" if service.image in digests else f", not a digest of {image_id[:19]}"),
                evidence,
            ),
            self._tasks_verdict(running, stray, wrong, service.replicas, image_id, revision, evidence),
        ]


# How a running task was checked (TaskCheck.how).
BY_CONTAINER = "container"
BY_DIGEST = "task spec digest"


@dataclass(frozen=True)
class TaskCheck:
    """One running task's verification: where it runs, how it was checked, and what was wrong (None:
    nothing)."""

    task: str
    node: str
    how: str
    problem: str | None

    def evidence(self) -> dict[str, object]:
        return {
            "task": self.task[:12],
            "node": self.node[:12],
            "checked": self.how,
            "ok": self.problem is None,
        }


def check_task(
    task: TaskInfo,
    *,
    here: str,
    digests: frozenset[str],
    image_id: str,
    revision: str,
    inspect: Callable[[str], ContainerInfo | None],
) -> TaskCheck:
    """Pure but for ``inspect`` (the engine we talk to): is ``task`` running the release?

    Every task: its spec (from the manager's task list, whichever node runs it) names one of the
    image's registry digests and carries the revision label. A task on the engine we talk to (its
    NodeID is that engine's own node, ``here``) is also checked at its container: the image id it runs
    and the revision label on it, as on a single node.

    A task on another node has no container here, and reaching that node's engine would mean an agent
    or a connection per node (which we do not build: we drive Docker's own). Its spec's digest is enough:
    ``repo@sha256:...`` is content-addressed, the node's engine pulls by it and checks what it got
    against it, so it can run nothing but the manifest that digest names, whose config digest is the
    image id (and the image's labels, the revision among them, are inside that config). That digest is
    the one pushed from the image staging verified (``digests`` are that image's own repo digests), so
    the check by digest is a check of the very content staging verified. What it cannot see is a node
    whose engine lies about what it runs; nothing short of that node's engine could."""
    local = not here or task.node_id == here
    how = BY_CONTAINER if local else BY_DIGEST
    name = task.id[:12]

    def found(problem: str | None) -> TaskCheck:
        return TaskCheck(task.id, task.node_id, how, problem)

    if task.image not in digests:
        return found(f"task {name} runs {task.image}")
    if not local:
        label = task.labels.get(TASK_REVISION_LABEL)
        if label != revision:
            return found(
                f"task {name} (node {task.node_id[:12]}) was started for revision {label!r}, not {revision!r}"
            )
        return found(None)
    container = inspect(task.container_id) if task.container_id else None
    if container is None:
        return found(f"task {name} has no container on this engine")
    if container.image_id != image_id:
        return found(f"task {name} container runs image {container.image_id[:19]}")
    if container.labels.get(TASK_REVISION_LABEL) != revision:
        return found(
            f"task {name} was started for revision "
            f"{container.labels.get(TASK_REVISION_LABEL)!r}, not {revision!r}"
        )
    return found(None)
