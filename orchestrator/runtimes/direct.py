"""Direct containers, run by image id: one container per environment named ``<app>-<env>``, or, with
``zero_downtime``, containers per release behind a kept proxy (ProxiedRuntime)."""

from __future__ import annotations

import os
import time
from typing import Any

from orchestrator import http1, httpclient
from orchestrator.config import AppConfig, Settings
from orchestrator.docker_engine import STOPPED_STATUSES, ContainerInfo, DockerError
from orchestrator.engines import AppEngines
from orchestrator.machine import PROD
from orchestrator.proxy import BACKEND_HEADER, PROBE_HEADER, ROLE_LABEL, Proxy, ProxySpec
from orchestrator.runtimes import LOOPBACK, Published, RuntimeView, env_port
from orchestrator.steps import StepLog
from orchestrator.verdict import Verdict

APP_LABEL = "orchestrator.app"
ENV_LABEL = "orchestrator.environment"
RUN_LABEL = "orchestrator.run"
BACKEND_ROLE = "backend"
# How many answers through the proxy must come from a new container before the old one leaves: one
# proves haproxy resolved it and its health check passed (it sends nothing to a backend still down).
_TAKEOVER_ANSWERS = 1
_TAKEOVER_POLL_S = 0.02
# How long a retired container may take to finish what it is answering after SIGTERM (docker stop's
# own default) before it is killed.
RETIRE_GRACE_S = 10

# Where a remote environment's published port listens: the orchestrator health-checks it from another
# machine, which the host's loopback would never answer.
ALL_INTERFACES = "0.0.0.0"


def port_answers(port: int, address: str = LOOPBACK) -> bool:
    try:
        with http1.connect_tcp(address, port, 0.5):
            return True
    except OSError:
        return False


class _Containers:
    """What both container runtimes lack, unlike compose and swarm: no pin file (their tags are the
    publisher's), nothing to verify beyond the container the Deployer checks, no service to show."""

    def repin(self, env: str, ref: str) -> None:
        """Nothing to do: direct containers have no pin file."""

    def override_text(self) -> str | None:
        return None

    def verify(self, env: str, image_id: str, revision: str) -> list[Verdict]:
        return []

    def view(self, env: str) -> RuntimeView | None:
        return None


class DirectRuntime(_Containers):
    """Each environment's container lives on that environment's engine (``engines.of(env)``)."""

    def __init__(self, engines: AppEngines, app: AppConfig, steps: StepLog) -> None:
        self.engines = engines
        self.app = app
        self.steps = steps

    def label(self, env: str) -> str:
        return f"{self.app.name}-{env}"

    def current(self, env: str) -> ContainerInfo | None:
        return self.engines.of(env).container(self.label(env))

    def start(self, env: str, published: Published, *, run_id: int | None) -> ContainerInfo:
        """Run by image id, never by tag, so a tag moved by someone else between build and run cannot
        change what starts.

        On a local engine, the container it replaces is killed while the new one is created (under a
        name of its own: the old one still holds ``<app>-<env>``), and removed while the new one starts,
        renamed out of the way first: creating and removing are not on the way from one container to
        the next (about 40 ms of every promotion, issue 12). Through the SDK (a remote engine), where
        calls go one at a time, it is removed first, in one round trip. Killed, the old one has let go
        of the port before the new one starts, as when it was removed first. A process killed in
        between leaves a stopped container under another name (``-next-`` or ``-retired-``), which
        nothing looks up by name and prune removes."""
        name = self.label(env)
        engine = self.engines.of(env)
        with self.steps.step(f"{env}_stop", env) as step:
            old = engine.container(name)
            created = None
            if old is not None:
                step.changed(container_id=old.id, image_id=old.image_id, status=old.status)
                if engine.takes_concurrent_calls and (old.running or old.status in STOPPED_STATUSES):
                    created = self._replace(env, old, published.image_id, run_id)
                else:  # one call at a time (a remote engine), or restarting, paused: force-removed
                    engine.remove_container(old.id)
        try:
            self._refuse_a_taken_port(env)
        except BaseException:
            if old is not None and created is not None:
                engine.discard_created(created, name)
                engine.remove_container(old.id)
            raise
        with self.steps.step(f"{env}_start", env) as step:
            if old is None or created is None:
                started = self._run(env, name, published.image_id, run_id=run_id)
            else:
                new, retired = created, old.id
                try:
                    if not engine.rename_container(new, name):
                        raise DockerError(f"container {new[:12]}, made to become {name}, is gone")
                except BaseException:
                    engine.discard_created(new, name)
                    raise
                started = engine.together(
                    lambda: engine.remove_container(retired), lambda: engine.start_created(new, name)
                )
            step.changed(container_id=started.id, image_id=started.image_id)
        return started

    def _replace(self, env: str, old: ContainerInfo, image_id: str, run_id: int | None) -> str:
        """Kill ``old`` while its successor is created under a name of its own, then rename ``old``
        out of the way; returns the successor's id (a container made, not started)."""
        engine, name = self.engines.of(env), self.label(env)

        def kill() -> None:
            if not old.running:
                return
            try:
                engine.kill_container(old.id)
            except DockerError:  # it crashed into a restart meanwhile: force-removed, which ends that
                engine.remove_container(old.id)

        made: list[str] = []

        def create() -> str:
            # os.urandom, not secrets: that one imports hmac and with it _hashlib (test_engine_wire.py).
            made.append(self._create(env, f"{name}-next-{os.urandom(4).hex()}", image_id, run_id))
            return made[-1]

        try:
            created = engine.together(kill, create)
            engine.rename_container(old.id, f"{name}-retired-{old.id[:12]}")  # False: gone already
        except BaseException:
            for each in made:  # made while the kill failed, or before the rename did
                engine.discard_created(each, name)
            raise
        return created

    def _refuse_a_taken_port(self, env: str) -> None:
        port = env_port(self.app, env)
        address = self.app.engine(env).address
        if port_answers(port, address):
            # Otherwise the health check would be answered by whatever holds the port while our
            # container dies on "address already in use", and a dead deploy would look green.
            raise DockerError(
                f"port {port} on {address} is already in use by something other than {self.label(env)}: "
                f"stop it or give {self.app.name} another {env}_port"
            )

    def _create(self, env: str, name: str, image_id: str, run_id: int | None) -> str:
        return self.engines.of(env).create(name, image_id, **self._container_spec(env, run_id))

    def _run(self, env: str, name: str, image_id: str, *, run_id: int | None) -> ContainerInfo:
        return self.engines.of(env).run(name, image_id, **self._container_spec(env, run_id))

    def _container_spec(self, env: str, run_id: int | None) -> dict[str, Any]:
        port = env_port(self.app, env)
        publish = None
        container_port = port
        if self.app.container_port is not None:
            # Published mode: the app listens on its own port inside its network namespace.
            container_port = self.app.container_port
            bind = LOOPBACK if self.app.engine(env).is_local else ALL_INTERFACES
            publish = {container_port: (bind, port)}
        return {
            "environment": {"PORT": str(container_port), "ORCH_ENVIRONMENT": env, **self.app.env},
            "host_network": publish is None,
            "publish": publish,
            "labels": {APP_LABEL: self.app.name, ENV_LABEL: env, RUN_LABEL: str(run_id or "")},
            "restart": env == PROD,
        }

    def stop(self, env: str) -> bool:
        with self.steps.step(f"{env}_stop", env) as step:
            found = self.current(env)
            if found is not None:
                step.changed(container_id=found.id, image_id=found.image_id, status=found.status)
            return self.engines.of(env).remove_container(self.label(env))


class ProxiedRuntime(_Containers):
    """Zero-downtime direct containers: the environment's port belongs to a kept haproxy container
    (orchestrator/proxy.py), which sends requests to whichever containers hold the environment's
    network alias. A release runs as a container of its own, ``<app>-<env>-<image>-<token>``:

    1. ``start``: on a waiting network (``<app>-<env>-new``, no alias, the proxy is not on it),
       published on an ephemeral 127.0.0.1 port: health and verification see it and nothing else;
    2. ``hand_over``: it joins the serving network under the alias; once an answer through the proxy
       comes from its address, every other container of the environment is stopped (SIGTERM: it
       finishes what it answers and refuses the rest, which the proxy retries on the new one at once)
       and removed;
    3. a container that fails any check is ``discard``-ed; the one serving was never touched.

    What serves ``env`` is read from the engine, not remembered: the newest running container of the
    app and environment that holds the alias. Each action is a recorded step, so recovery after a
    crash finds the candidate never handed over, or two containers serving, and ``settle``-s it."""

    def __init__(self, engines: AppEngines, app: AppConfig, settings: Settings, steps: StepLog) -> None:
        if app.container_port is None:
            raise ValueError("zero_downtime needs container_port (config.py refuses it without)")
        self.engines = engines
        self.app = app
        self.settings = settings
        self.steps = steps
        self.container_port: int = app.container_port

    # naming ---------------------------------------------------------------------------------------

    def label(self, env: str) -> str:
        """The prefix of every container of ``env`` (``docker ps --filter name=<label>``)."""
        return f"{self.app.name}-{env}"

    def network(self, env: str) -> str:
        return f"{self.app.name}-{env}"

    def waiting_network(self, env: str) -> str:
        return f"{self.app.name}-{env}-new"

    def alias(self, env: str) -> str:
        return f"{self.app.name}-{env}-app"

    def proxy(self, env: str) -> Proxy:
        return Proxy(
            self.engines.of(env),
            ProxySpec(
                name=f"{self.app.name}-{env}-proxy",
                network=self.network(env),
                backend=self.alias(env),
                backend_port=self.container_port,
                port=env_port(self.app, env),
                health_path=self.app.health_path,
                image=self.app.proxy_image,
                admin_socket=True,
                # Where the plain runtime publishes it too: a remote environment's port is where its
                # clients and the orchestrator's status and staging checks reach it.
                address=LOOPBACK if self.app.engine(env).is_local else ALL_INTERFACES,
            ),
            pull_timeout_s=self.settings.pull_timeout_s,
        )

    # what runs ------------------------------------------------------------------------------------

    def backends(self, env: str) -> list[ContainerInfo]:
        """Every container of ``env`` this runtime started (running or not), newest first."""
        listed = self.engines.of(env).containers(
            labels={APP_LABEL: self.app.name, ENV_LABEL: env, ROLE_LABEL: BACKEND_ROLE}
        )
        found: list[tuple[float, ContainerInfo]] = []
        for row in listed:
            info = self.engines.of(env).container(row.info.id)
            if info is not None:
                found.append((row.created, info))
        found.sort(key=lambda pair: (pair[0], pair[1].started_at or ""), reverse=True)
        return [info for _, info in found]

    def serving(self, env: str) -> list[ContainerInfo]:
        """The running containers holding ``env``'s alias (the proxy's backends), newest first."""
        network, alias = self.network(env), self.alias(env)
        return [c for c in self.backends(env) if c.running and alias in c.aliases.get(network, ())]

    def current(self, env: str) -> ContainerInfo | None:
        """The newest serving container: after a crash mid-hand-over two may serve, and the newer one
        is what the interrupted deploy was putting there."""
        found = self.serving(env)
        return found[0] if found else None

    def probe_base(self, env: str, container: ContainerInfo) -> str:
        port = container.ports.get(self.container_port)
        if port is None:
            now = self.engines.of(env).container(container.id)
            port = now.ports.get(self.container_port) if now is not None else None
        if port is None:
            # Never fall back to the environment's port: that is the old release answering.
            raise DockerError(
                f"{container.name} has no published port for {self.container_port} (not running)"
            )
        # Published on the engine host's loopback only: on a remote host, reached through its ssh
        # connection (a forward), so an unchecked release is never on the host's public interfaces.
        return self.proxy(env).host.url(port)

    # the work -------------------------------------------------------------------------------------

    def start(self, env: str, published: Published, *, run_id: int | None) -> ContainerInfo:
        """Start the release beside what serves ``env`` (which keeps serving); not yet handed over."""
        self._ensure_proxy(env)
        name = f"{self.label(env)}-{published.image_id.removeprefix('sha256:')[:12]}-{os.urandom(2).hex()}"
        with self.steps.step(f"{env}_start", env) as step:
            self.engines.of(env).ensure_network(
                self.waiting_network(env), labels={ROLE_LABEL: "waiting-network"}
            )
            started = self.engines.of(env).run(
                name,
                published.image_id,
                environment={"PORT": str(self.container_port), "ORCH_ENVIRONMENT": env, **self.app.env},
                host_network=False,
                network=self.waiting_network(env),
                publish={self.container_port: (LOOPBACK, None)},
                labels={
                    APP_LABEL: self.app.name,
                    ENV_LABEL: env,
                    RUN_LABEL: str(run_id or ""),
                    ROLE_LABEL: BACKEND_ROLE,
                },
                restart=env == PROD,
            )
            step.changed(
                container_id=started.id,
                container=started.name,
                image_id=started.image_id,
                port=started.ports.get(self.container_port),
                checked_at=self.probe_base(env, started),
                via=self.proxy(env).host.via(),
            )
        return started

    def _ensure_proxy(self, env: str) -> None:
        """The proxy runs (kept as it is when its configuration is unchanged). A container of the plain
        runtime (``<app>-<env>``, from before zero_downtime was set) holds the port the proxy needs: it
        is removed first, the one hand-over that costs a moment of downtime."""
        proxy = self.proxy(env)
        found = self.engines.of(env).container(proxy.spec.name)
        if found is None or not found.running:
            legacy = self.engines.of(env).container(self.label(env))
            if legacy is not None and legacy.labels.get(ROLE_LABEL) != BACKEND_ROLE:
                with self.steps.step(f"{env}_stop", env) as step:
                    step.changed(container_id=legacy.id, image_id=legacy.image_id, status=legacy.status)
                    self.engines.of(env).remove_container(legacy.id)
        with self.steps.step(f"{env}_proxy", env) as step:
            running = proxy.ensure()
            step.changed(
                proxy=running.name, proxy_id=running.id, recreated=found is None or running.id != found.id
            )
            if proxy.host.remote:
                self._check_reach(env, proxy)

    def _check_reach(self, env: str, proxy: Proxy) -> None:
        """On a remote host, one request to the proxy through the forward before anything starts: a
        host whose sshd refuses forwarding fails here, saying so, rather than as a release that never
        passed its health check. Any answer (a 503 while no backend is up, a refused connection while
        haproxy starts) proves the forward; only the host's refusal fails."""
        url = proxy.host.url(env_port(self.app, env), self.app.health_path)
        if httpclient.probe(url, timeout=2.0, limit=0).status is None:
            time.sleep(0.1)  # the master logs a refusal as it closes the channel: read it after that
        if refused := proxy.host.refused():
            raise DockerError(f"{env} on {proxy.engine.where}: {refused}; nothing was started")

    def hand_over(self, env: str, container: ContainerInfo) -> None:
        with self.steps.step(f"{env}_connect", env) as step:
            self.engines.of(env).join_network(container.id, self.network(env), aliases=[self.alias(env)])
            step.changed(container_id=container.id, container=container.name, network=self.network(env))
        self._takeover(env, container)
        self._retire_others(env, container)

    def _takeover(self, env: str, container: ContainerInfo) -> None:
        """Wait until the proxy sends requests to ``container`` and its health check found it up: only
        then may the others leave. An answer alone is not enough: haproxy sends requests to a backend it
        has just resolved before checking it, and its first check, sent before the backend's network
        answered, may still fail after that answer and take it down (seen as a 503 under load once
        the old backend was gone)."""
        with self.steps.step(f"{env}_takeover", env) as step:
            proxy = self.proxy(env)
            # A slot drained for a release retired earlier may be the one DNS gives ``container``.
            if undrained := proxy.undrain():
                step.changed(undrained=undrained)
            now = self.engines.of(env).container(container.id)
            address = now.addresses.get(self.network(env)) if now is not None else None
            if address is None:
                raise DockerError(f"{container.name} has no address on {self.network(env)} (not running)")
            url = proxy.host.url(env_port(self.app, env), self.app.health_path)
            deadline = time.monotonic() + self.settings.health_timeout_s
            started, tries, answers, seen, checked = time.monotonic(), 0, 0, "", False
            while answers < _TAKEOVER_ANSWERS or not checked:
                if time.monotonic() > deadline:
                    raise DockerError(
                        f"the proxy {proxy.spec.name} did not take {container.name} ({address}) into "
                        f"service within {self.settings.health_timeout_s:g}s ({tries} tries, last "
                        f"answer by {seen or 'nothing'}): "
                        + (proxy.host.refused() or f"see 'docker logs {proxy.spec.name}'")
                    )
                tries += 1
                if answers < _TAKEOVER_ANSWERS:
                    answer = httpclient.probe(url, headers={PROBE_HEADER: "1"}, timeout=2.0, limit=0)
                    seen = answer.header(BACKEND_HEADER) or (answer.error or f"HTTP {answer.status}")
                    if answer.ok and answer.header(BACKEND_HEADER) == address:
                        answers += 1
                        continue
                elif proxy.checked_up(address):
                    checked = True
                    continue
                else:
                    seen = f"{address}, not yet up by the proxy's health check"
                time.sleep(_TAKEOVER_POLL_S)
            step.changed(
                container_id=container.id,
                address=address,
                tries=tries,
                waited_s=round(time.monotonic() - started, 3),
                checked_at=url,
                via=proxy.host.via(),
            )

    def _retire_others(self, env: str, keep: ContainerInfo) -> None:
        """Every container of ``env`` but ``keep`` is drained, then stopped (SIGTERM, then SIGKILL after
        the grace), then removed. Drained first: the proxy sends it no new request and the ones it is
        answering end, which a process that exits on SIGTERM would otherwise cut mid-answer (the proxy
        retries a request that got no answer, not one whose answer had begun). Stopped on the network:
        a leaving process refuses new connections, which the proxy retries on ``keep`` at once; taken
        off the network first, it would vanish mid-answer and leave the proxy waiting on a connection
        nobody answers (seen: a request hanging past the client's timeout)."""
        for other in self.backends(env):
            if other.id == keep.id:
                continue
            address = other.addresses.get(self.network(env))
            if other.running and address is not None:
                self._drain(env, other, address)
            with self.steps.step(f"{env}_retire", env) as step:
                step.changed(container_id=other.id, container=other.name, image_id=other.image_id)
                try:
                    self.engines.of(env).stop_container(other.id, timeout_s=RETIRE_GRACE_S)
                    self.engines.of(env).remove_container(other.id)
                except DockerError as exc:
                    # ``keep`` serves already: a leftover beside it is for settle (recover, the next
                    # deploy), not a reason to undo a hand-over that has happened.
                    step.fail(exc.message)

    def _drain(self, env: str, other: ContainerInfo, address: str) -> None:
        """Recorded as ``<env>_drain``: the requests in flight when it began, how many were left when the
        wait ended (more than 0: ``drain_s`` ran out) and how long it waited. A proxy that cannot be
        asked fails the step but not the hand-over: ``keep`` serves already, and stopping the old
        release undrained is what happened before draining existed."""
        with self.steps.step(f"{env}_drain", env) as step:
            step.changed(container_id=other.id, container=other.name, address=address)
            proxy = self.proxy(env)
            try:
                drained = proxy.drain(address, timeout_s=self.settings.drain_s)
            except DockerError as exc:
                step.fail(exc.message)
                return
            step.changed(
                via=proxy.host.via(),
                admin_socket=str(proxy.admin_socket()[1]),
                servers=list(drained.servers),
                in_flight=drained.in_flight,
                left=drained.left,
                waited_s=drained.waited_s,
                drain_s=self.settings.drain_s,
            )

    def discard(self, env: str, container: ContainerInfo) -> None:
        now = self.engines.of(env).container(container.id)
        # Handed over, it may be answering requests: drained first (its own step), then stopped politely.
        handed_over = now is not None and self.network(env) in now.aliases
        address = now.addresses.get(self.network(env)) if now is not None else None
        if handed_over and now is not None and now.running and address is not None:
            self._drain(env, now, address)
        with self.steps.step(f"{env}_discard", env) as step:
            step.changed(container_id=container.id, container=container.name, image_id=container.image_id)
            if handed_over:
                self.engines.of(env).stop_container(container.id, timeout_s=RETIRE_GRACE_S)
            self.engines.of(env).remove_container(container.id)

    def settle(self, env: str) -> None:
        keep = self.current(env)
        if keep is None:
            return  # nothing serves: keep every container for whoever redeploys to look at
        if any(c.id != keep.id for c in self.backends(env)):
            self._ensure_proxy(env)
            self._takeover(env, keep)
            self._retire_others(env, keep)

    def stop(self, env: str) -> bool:
        """Take ``env`` down: its containers and its proxy (the port stops answering)."""
        with self.steps.step(f"{env}_stop", env) as step:
            gone = [c for c in self.backends(env) if self.engines.of(env).remove_container(c.id)]
            proxy = self.proxy(env).remove()
            step.changed(container_ids=[c.id for c in gone], proxy_removed=proxy)
        return bool(gone) or proxy
