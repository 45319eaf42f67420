"""The promotion of an image to an environment: publish, start, health-check, verify, restore.

This module decides *what* should happen to an environment and judges what answers afterwards; the
steps (steps/: build, guard, tag and push, staging check) and the runtime (runtimes/: direct containers
or compose services) do the work, and docker_engine alone talks to Docker. Gates call the Deployer and
turn its outcomes into recorded verdicts.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from orchestrator import health, redact, verify
from orchestrator.config import AppConfig, Settings
from orchestrator.engines import AppEngines
from orchestrator.errors import DockerError
from orchestrator.machine import STAGING
from orchestrator.runtimes import (
    Elsewhere,
    Published,
    Runtime,
    SpreadRuntime,
    StagedRuntime,
    env_port,
    runtime_for,
)
from orchestrator.steps import StepLog
from orchestrator.steps.publish import Publisher
from orchestrator.verdict import Verdict

if TYPE_CHECKING:  # the engine arrives connected; importing the SDK is the connecting code's cost
    from orchestrator.docker_engine import ContainerInfo, DockerEngine

    # The build step (with the builders and the parks) loads where a build or guard runs: a
    # promotion to prod builds nothing (about 5-9 ms of every `advance --to deploy`, issue 12).
    from orchestrator.steps.build import Build

__all__ = ["Deployed", "Deployer", "Published"]

# The end of a failed container's log that goes into the gate's reason (and `runs show`).
_LOG_LINES = 20
_LOG_LINE_MAX = 300
_LOG_CHARS = 8000
# How long to wait for a restarted container's current run to end, to learn its exit code.
_SETTLE_S = 2.0


@dataclass(frozen=True)
class Deployed:
    """What deploying an image to an environment found (the one ``Verdict`` type every gate, step and
    verification speaks) and what it published on the way: the release gate records ``published`` and
    the compose ``override`` only once the verdict holds."""

    verdict: Verdict
    published: Published | None = None
    override: str | None = None

    @classmethod
    def passed(
        cls, reason: str, details: dict[str, Any], published: Published, override: str | None
    ) -> Deployed:
        return cls(Verdict.check(True, reason, details), published, override)

    @classmethod
    def failed(cls, reason: str, details: dict[str, Any], published: Published | None = None) -> Deployed:
        return cls(Verdict.check(False, reason, details), published)

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    @property
    def reason(self) -> str:
        return self.verdict.reason

    @property
    def details(self) -> Mapping[str, Any]:
        return self.verdict.details


class PreviousRelease(Protocol):
    id: int
    image_id: str
    digest: str | None
    revision: str


class Deployer:
    """Deploy steps for one app: composes the build and publish steps with the app's runtime. ``pins``
    holds each environment's current immutable reference (from the latest releases) so a compose
    override written for one environment keeps the other one's pin. ``engine`` is one engine for
    everything, or the app's engines (engines.py): each environment is then acted on, health-checked
    and verified on its own engine and host, and images are built on the build engine."""

    def __init__(
        self,
        engine: DockerEngine | AppEngines,
        app: AppConfig,
        settings: Settings,
        pins: dict[str, str] | None = None,
        steps: StepLog | None = None,
        recorded_images: Sequence[str] = (),
    ) -> None:
        self.engines = engine if isinstance(engine, AppEngines) else AppEngines.single(app, engine)
        # Image ids this orchestrator built and recorded for the app: the only layers a build may reuse.
        self.recorded_images = tuple(recorded_images)
        self.app = app
        self.settings = settings
        # Every action on an environment is a recorded step; without a transition nothing is recorded.
        self.steps = steps or StepLog()
        self.runtime: Runtime = runtime_for(self.engines, app, settings, self.steps, dict(pins or {}))
        # Zero-downtime runtimes start a release beside the serving one: checked alone, then handed over.
        self.staged: StagedRuntime | None = self.runtime if isinstance(self.runtime, StagedRuntime) else None
        # Runtimes that may serve an environment from other hosts (swarm tasks on other nodes).
        self.spread: SpreadRuntime | None = self.runtime if isinstance(self.runtime, SpreadRuntime) else None
        self.publisher = Publisher(self.engines, app, settings, self.steps)

    @property
    def engine(self) -> DockerEngine:
        """The build engine: where images are built and guarded (staging's unless ``build_host``)."""
        return self.engines.build

    @classmethod
    def from_releases(
        cls,
        engine: DockerEngine | AppEngines,
        app: AppConfig,
        settings: Settings,
        latest: Mapping[str, PreviousRelease | None],
        steps: StepLog | None = None,
        recorded_images: Sequence[str] = (),
    ) -> Deployer:
        """A deployer whose pins are what each environment's latest release runs."""
        pins = {env: r.digest or r.image_id for env, r in latest.items() if r is not None}
        return cls(engine, app, settings, pins, steps, recorded_images)

    # naming ---------------------------------------------------------------------------------------

    def container(self, env: str) -> str:
        return self.runtime.label(env)

    def port(self, env: str) -> int:
        return env_port(self.app, env)

    def address(self, env: str) -> str:
        """Where ``env``'s port answers: loopback here, the host of a remote engine (or health_host)."""
        return self.app.engine(env).address

    def base_url(self, env: str) -> str:
        return f"http://{self.address(env)}:{self.port(env)}"

    # steps ----------------------------------------------------------------------------------------

    def build(self, sha: str) -> Build:
        from orchestrator.steps import build as build_steps

        return build_steps.build(
            self.engine,
            self.app,
            self.settings,
            self.steps,
            sha,
            self.redact,
            self.recorded_images,
            ahead=self.engines.build_ahead,
        )

    def verify_image(self, image_id: str, sha: str) -> Verdict:
        from orchestrator.steps import build as build_steps

        return build_steps.guard(self.engine, self.app, self.steps, image_id, sha)

    def publish(self, env: str, image_id: str, revision: str) -> Published:
        return self.publisher.publish(env, image_id, revision)

    def unpublish(self, env: str) -> list[str]:
        return self.publisher.unpublish(env)

    def republish(self, env: str, image_id: str, revision: str, ref: str) -> None:
        """Point ``env``'s tags and pin back at a release that, recovery found, still runs there."""
        self.publisher.publish(env, image_id, revision)
        self.runtime.repin(env, ref)

    def ensure_image(self, env: str, release: PreviousRelease) -> bool:
        """The release's image is on ``env``'s engine, or can be pulled there by its digest (pruned
        there, kept in the registry) and is then the very image recorded (its id, fail closed)."""
        engine = self.engines.of(env)
        if engine.image(release.image_id) is not None:
            return True
        if not release.digest:
            return False
        try:
            return engine.pull(release.digest, timeout_s=self.settings.pull_timeout_s).id == release.image_id
        except DockerError:
            return False

    def current(self, env: str) -> ContainerInfo | None:
        return self.runtime.current(env)

    def inspect(self, env: str, container_id: str) -> ContainerInfo | None:
        """A container of ``env`` as it is now: on ``env``'s engine or, for a swarm task on another node
        (which that engine cannot inspect), as the manager sees the task."""
        found = self.engines.of(env).container(container_id)
        if found is None:
            elsewhere = self.elsewhere(env, container_id)
            return elsewhere.container if elsewhere else None
        return found

    def elsewhere(self, env: str, container_id: str) -> Elsewhere | None:
        """A container of ``env`` that is a swarm task on another node, as the manager sees it."""
        return self.spread.elsewhere(env, container_id) if self.spread else None

    def stop(self, env: str) -> bool:
        """Take ``env`` down (no release to fall back to); True when something was removed."""
        return self.runtime.stop(env)

    def override_text(self) -> str | None:
        return self.runtime.override_text()

    def probe_base(self, env: str, container: ContainerInfo) -> str:
        """Where ``container`` answers: its own port when a proxy owns the environment's (so a check
        sees the new release alone, never the old one beside it), else the environment's port."""
        return self.staged.probe_base(env, container) if self.staged else self.base_url(env)

    def settle(self, env: str) -> None:
        """After recovery kept what serves ``env``: no container beside it (zero-downtime runtimes)."""
        if self.staged:
            self.staged.settle(env)

    def wait_healthy(self, env: str, container: ContainerInfo) -> health.HealthReport:
        """Poll ``env``'s health path while watching ``container`` as it is now: an exit or a restart by
        the engine from here on ends the wait at once (see health.container_failure)."""
        return health.wait_healthy(
            self.probe_base(env, container) + self.app.health_path,
            timeout=self.settings.health_timeout_s,
            interval=self.settings.health_interval_s,
            watch=lambda: health.container_failure(container, self.inspect(env, container.id)),
        )

    def deploy(self, env: str, image_id: str, revision: str, *, run_id: int | None) -> Deployed:
        """Publish, (re)create and health-check ``env``; the verdict says whether *our* container is what
        answers, with the evidence either way."""
        try:
            published = self.publish(env, image_id, revision)
            container = self.runtime.start(env, published, run_id=run_id)
        except DockerError as exc:
            return Deployed.failed(
                f"could not start {self.container(env)}: {exc.message}", {"image_id": image_id}
            )
        details: dict[str, Any] = {
            "image_id": image_id,
            "pinned_ref": published.ref,
            "digest": published.digest,
        }
        try:
            with self.steps.step(f"{env}_health", env) as step:
                failure = self._check_started(env, container, image_id, details, published)
                step.changed(healthy=failure is None, container_id=container.id)
                if failure is not None:
                    step.fail(failure.reason)
            if failure is None and self.staged:
                failure = self._hand_over(env, container, image_id, revision, details, published)
        except DockerError as exc:
            if not self.staged:
                raise
            failure = Deployed.failed(f"{container.name}: {exc.message}", details, published)
        if failure is not None:
            if self.staged:
                # It never took traffic: the release serving before it keeps serving, untouched.
                self.staged.discard(env, container)
            return failure
        details.update(container=container.name, container_id=container.id)
        return Deployed.passed(
            f"{container.name} healthy on port {self.port(env)}",
            details,
            published,
            self.override_text(),
        )

    def _hand_over(
        self,
        env: str,
        container: ContainerInfo,
        image_id: str,
        revision: str,
        details: dict[str, Any],
        published: Published,
    ) -> Deployed | None:
        """Verify the new container where it alone answers, then let it take ``env``'s traffic; None
        when it serves, else why not (it never took traffic)."""
        assert self.staged is not None
        with self.steps.step(f"{env}_verify_new", env) as step:
            check = self._verify_container(
                env, container, image_id, revision, self.probe_base(env, container)
            )
            step.changed(image_id=image_id, ok=check.ok, container_id=container.id)
            if not check.ok:
                step.fail(check.reason)
        details.update(check.details)
        if not check.ok:
            return Deployed.failed(
                f"post-deploy verification of {container.name} before it took traffic: {check.reason}",
                details,
                published,
            )
        self.staged.hand_over(env, container)
        return None

    def _check_started(
        self, env: str, container: ContainerInfo, image_id: str, details: dict[str, Any], published: Published
    ) -> Deployed | None:
        """None when our container, running ``image_id``, is what answers the health check."""
        report = self.wait_healthy(env, container)
        details["health"] = report.details()
        if not report.healthy:
            return self._failed(env, container, self._unhealthy(env, container, report), details, published)
        now = self.inspect(env, container.id)
        if now is None or not now.running:
            # The answer came from somewhere else; our container is not what is serving.
            why = health.container_failure(container, now) or "is not running"
            return self._failed(
                env, container, f"{report.url} answered but {container.name} {why}", details, published
            )
        if now.image_id != image_id:
            not_held = self._not_held(env, now, image_id)
            if not_held is not None:
                return Deployed.failed(
                    f"post-deploy verification: {not_held.reason}", {**details, **not_held.details}, published
                )
            # `docker compose up -d` against an unchanged tag succeeds and keeps the old container.
            return Deployed.failed(
                f"post-deploy verification: {now.name} still runs image {now.image_id[:19]}, not "
                f"{image_id[:19]} (an unchanged tag made 'docker compose up -d' a no-op; pin digests)",
                {**details, "running_image_id": now.image_id, "container_id": now.id},
                published,
            )
        return None

    def _failed(
        self,
        env: str,
        container: ContainerInfo,
        headline: str,
        details: dict[str, Any],
        published: Published,
    ) -> Deployed:
        """The verdict on a container that started but failed: the headline, then the end of its log
        (redacted) in the reason itself, so the cause is in the first thing an operator reads. A failed
        staging container is then stopped, not removed: nothing half-broken keeps running or restarting
        as staging, and ``docker logs`` still has the whole story."""
        evidence = self.container_evidence(env, container.id)
        reason = headline + self._log_block(evidence)
        # Stopped on the engine we talk to; a task on another node is not there to stop.
        if env == STAGING and evidence.get("container_id") and "node" not in evidence:
            evidence["stopped"] = self._halt(env, str(evidence["container_id"]))
        return Deployed.failed(reason, {**details, **evidence}, published)

    def _unhealthy(self, env: str, container: ContainerInfo, report: health.HealthReport) -> str:
        """The first line of an unhealthy verdict: what the container did, or what answered."""
        where = f"({report.elapsed_s:.1f}s, {report.attempts} {'try' if report.attempts == 1 else 'tries'})"
        if report.container_failure is not None:
            settled = self._settled(env, container.id)
            failure = health.container_failure(container, settled) or report.container_failure
            return f"{container.name} {failure} before {report.url} answered {where}"
        now = self.inspect(env, container.id)
        if not report.answered and now is not None and now.running:
            last = report.last.error if report.last else "no answer"
            where = urllib.parse.urlsplit(report.url).netloc
            return (
                f"nothing answered on {where} for {report.elapsed_s:.1f}s while "
                f"{container.name} kept running ({report.attempts} tries, last: {last}): "
                + self._port_hint(env)
            )
        return report.reason

    def _port_hint(self, env: str) -> str:
        """What to change when nothing listens on the health port: almost always the app's port."""
        port = self.port(env)
        if self.app.is_compose:
            return (
                f"{self.app.service(env)} must listen on {self.address(env)}:{port} (the app's "
                f"{env}_port): give it that port as PORT in the compose file and make the app listen on "
                "it, or publish the port it listens on there"
            )
        if self.app.container_port is not None:
            return (
                f"the app must listen on the PORT it is given (PORT={self.app.container_port}) on "
                "0.0.0.0 inside its container, as container_port says; set container_port to the port "
                "it really listens on"
            )
        return (
            f"the app must listen on the PORT it is given (PORT={port}) on 127.0.0.1 or 0.0.0.0, or set "
            "container_port to the port it listens on"
        )

    def _settled(self, env: str, container_id: str) -> ContainerInfo | None:
        """The container once its current run has ended, if that happens within moments. The engine
        resets the exit code of a container it restarted to 0 while the new run lasts; a crash-looping
        one ends that run almost at once, and then its exit code is there to report."""
        deadline = time.monotonic() + _SETTLE_S
        found = self.inspect(env, container_id)
        while found is not None and found.running and time.monotonic() < deadline:
            time.sleep(0.05)
            found = self.inspect(env, container_id)
        return found

    def _halt(self, env: str, container_id: str) -> bool:
        with self.steps.step(f"{env}_halt", env) as step:
            stopped = self.engines.of(env).stop_container(container_id)
            step.changed(container_id=container_id, stopped=stopped)
        return stopped

    @staticmethod
    def _log_block(evidence: dict[str, Any]) -> str:
        name = evidence.get("container")
        if not name:
            return ""
        if "logs_tail" not in evidence and evidence.get("logs"):
            return f"\n--- {name} runs {evidence['logs']} ---"
        lines = [
            line if len(line) <= _LOG_LINE_MAX else line[:_LOG_LINE_MAX] + "..."
            for line in str(evidence.get("logs_tail") or "").splitlines()
        ]
        if not lines:
            return f"\n--- {name} wrote nothing to its log ---"
        where = f" (on node {str(evidence['node'])[:12]})" if evidence.get("node") else ""
        return f"\n--- last {len(lines)} log lines of {name}{where} ---\n" + "\n".join(lines)

    def redeploy(self, env: str, release: PreviousRelease, *, run_id: int | None) -> Deployed:
        """Put ``env`` back on a recorded release and verify what runs: the rollback path. Behind a
        proxy, a failed promotion never stopped the release serving before it: when that one still
        serves, verified, it is kept rather than replaced by another container of the same image."""
        if self.staged and self.serves(env, release.image_id, release.revision):
            self.settle(env)
            found = self.current(env)
            return Deployed.passed(
                f"release {release.id} ({release.revision[:12]}) still serving, verified",
                {
                    "release_id": release.id,
                    "image_id": release.image_id,
                    "container": found.name if found else None,
                    "container_id": found.id if found else None,
                    "kept": True,
                },
                Published(release.image_id, release.digest or release.image_id, release.digest),
                self.override_text(),
            )
        if not self.ensure_image(env, release):
            return Deployed.failed(
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
            return Deployed.failed(
                f"release {release.id} failed verification: {check.reason}",
                details,
                deployed.published,
            )
        return Deployed.passed(
            f"release {release.id} ({release.revision[:12]}) running and verified",
            details,
            deployed.published,
            deployed.override,
        )

    def container_evidence(self, env: str, container_id: str) -> dict[str, Any]:
        """What ``env``'s engine says of a container: status, exit code, restarts and the last 20 lines
        of its log, redacted. For a swarm task on another node, what the manager says of the task, and
        the same tail of its log as the manager relays it (with the same redaction)."""
        engine = self.engines.of(env)
        found = engine.container(container_id)
        if found is None:
            elsewhere = self.elsewhere(env, container_id)
            if elsewhere is None or self.spread is None:
                return {"container": None}
            # A swarm task on another node: its log is on that node's engine, relayed by the manager
            # when it can be; otherwise the evidence says where to read it.
            evidence: dict[str, Any] = {
                "container": elsewhere.container.name,
                "container_id": elsewhere.container.id,
                "container_status": elsewhere.container.status,
                "node": elsewhere.node,
                "logs": elsewhere.logs,
            }
            log = self.spread.log_of(env, elsewhere, tail=_LOG_LINES)
            if log.text is None:
                evidence["logs_error"] = log.error
            else:
                evidence["logs_tail"] = self.redact(log.text)[-_LOG_CHARS:]
            return evidence
        return {
            "container": found.name,
            "container_id": found.id,
            "container_status": found.status,
            "exit_code": found.exit_code,
            "restart_count": found.restart_count,
            "logs_tail": self.redact(engine.logs(found.id, tail=_LOG_LINES))[-_LOG_CHARS:],
        }

    def staging_check(self, sha: str) -> Verdict:
        """The stub staging check against staging, as a verdict: its exit code and its (redacted) output
        are the evidence, and a failure says the output's last line."""
        # Here, not at the top: a promotion to prod runs no staging check and need not load its module
        # (issue 12). The staging edge loads it ahead, in a thread.
        from orchestrator.steps.staging_check import run_staging_check

        check = run_staging_check(self.app, self.settings, self.steps, self.base_url(STAGING), sha)
        output = self.redact(check.output)[-2000:]
        evidence = {"staging_check_exit_code": check.exit_code, "staging_check_output": output}
        if check.ok:
            return Verdict.passed("stub staging check passed", **evidence)
        last = output.splitlines()[-1] if output else "no output"
        return Verdict.failed(f"staging check failed (exit {check.exit_code}): {last}", **evidence)

    def verify_running(self, env: str, image_id: str, sha: str) -> Verdict:
        """What really runs, not what we asked for: the environment's container runs ``image_id``, that
        image carries the sha, and (for apps that serve it) the revision it reports is the sha."""
        with self.steps.step(f"{env}_verify", env) as step:
            check = self._verify_running(env, image_id, sha)
            step.changed(image_id=image_id, ok=check.ok)
            if not check.ok:
                step.fail(check.reason)
        return check

    def _verify_running(self, env: str, image_id: str, sha: str) -> Verdict:
        found = self.current(env)
        if found is None or not found.running:
            status = found.status if found else "missing"
            return Verdict.failed(f"{self.container(env)} is {status}, not running", container_status=status)
        # Behind a proxy the container is asked on its own port: two may serve for a moment.
        checked = self._verify_container(env, found, image_id, sha, self.probe_base(env, found))
        # A swarm service is more than the one container looked at: every task is checked.
        return verify.all_of(checked, *self.runtime.verify(env, image_id, sha))

    def _verify_container(
        self, env: str, found: ContainerInfo, image_id: str, sha: str, base: str
    ) -> Verdict:
        """``found`` runs ``image_id``, stamped with ``sha``, and (where the app serves it) ``base``
        answers ``sha`` on the version path."""
        # No image id: a swarm task elsewhere whose digest the manager's engine does not hold.
        running_image = self.engines.of(env).image(found.image_id) if found.image_id else None
        checks = [
            Verdict.passed(f"{found.name} running", container_id=found.id),
            self._not_held(env, found, image_id)
            or verify.same_image(image_id, found.image_id, f"{found.name}"),
            verify.revision_label(running_image.labels if running_image else None, sha),
        ]
        if self.app.version_path:
            probe = health.get(base + self.app.version_path)
            served = probe.body.strip() if probe.ok else None
            checks.append(
                Verdict.check(
                    served == sha,
                    f"{self.app.version_path} serves {served!r}"
                    + ("" if served == sha else f", expected {sha!r}"),
                    {"served_revision": served, "version_status": probe.status, "version_error": probe.error},
                )
            )
        return verify.all_of(*checks)

    def _not_held(self, env: str, found: ContainerInfo, image_id: str) -> Verdict | None:
        """The failure that names what is missing when ``found`` is a swarm task on another node whose
        digest the manager's engine holds no image of (so it has no image id); None otherwise."""
        if found.image_id:
            return None
        elsewhere = self.elsewhere(env, found.id)
        if elsewhere is None or not elsewhere.image:
            return None
        engine = self.engines.of(env)
        expected = engine.image(image_id)
        return verify.image_not_held(
            found.name,
            task=elsewhere.task,
            node=elsewhere.node,
            ref=elsewhere.image,
            engine=engine.where,
            expected_id=image_id,
            expected_digests=expected.repo_digests if expected else None,
        )

    def redact(self, text: str) -> str:
        """Evidence from the app (logs, check output) without the secrets we gave it."""
        from orchestrator.steps import build as build_steps

        return redact.redact(
            text,
            [*self.app.env.values(), *self.app.build_args.values(), *build_steps.secret_values(self.app)],
        )

    def serves(self, env: str, image_id: str, revision: str) -> bool:
        """Whether ``env`` really serves ``image_id``: its container runs that image, is healthy, and
        verifies (label, and /version where served). Health comes first: a container the engine has
        just restarted answers /version only once the app is up, and judging it earlier would replace
        a good release."""
        found = self.current(env)
        if found is None or not found.running or found.image_id != image_id:
            return False
        if not self.wait_healthy(env, found).healthy:
            return False
        return self.verify_running(env, image_id, revision).ok
