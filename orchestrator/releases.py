"""Operator actions on releases that belong to no run: `rollback` and `status` (with drift).

Both answer the question a deploy tool must never get wrong: what is actually running, and is it what
we recorded? Rollback redeploys a recorded release by its immutable reference and verifies it exactly
like a promotion; status compares what runs with the last recorded release and names every difference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator import health, verify
from orchestrator.config import Config
from orchestrator.deploy import Deployer
from orchestrator.docker_engine import DockerEngine
from orchestrator.errors import BadInput, Conflict, GateFailed, InfraUnavailable
from orchestrator.gates import ReleaseIntent
from orchestrator.holder import Holder
from orchestrator.lifecycle import Heartbeat
from orchestrator.logging import get_logger
from orchestrator.machine import ENVIRONMENTS, parse_environment
from orchestrator.notify import Notification, Notifier
from orchestrator.records import record_release
from orchestrator.runtimes import RuntimeView, preflight
from orchestrator.service import RunService, parse_actor
from orchestrator.store.repository import OPERATOR_LOCK, ReleaseRecord, Store
from orchestrator.verdict import TransitionOutcome

EngineFactory = Callable[[], DockerEngine]


def latest_releases(store: Store, app: str) -> dict[str, ReleaseRecord | None]:
    return {env: store.latest_release(app, env) for env in ENVIRONMENTS}


# rollback -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackResult:
    """What a finished `rollback` reports: the release the environment left, the one it went back to, the
    release recorded for that, and the redeploy's details."""

    app: str
    environment: str
    from_release: ReleaseRecord
    to_release: ReleaseRecord
    release: ReleaseRecord
    details: dict[str, Any]


ROLLBACK_KIND = "rollback"


@dataclass(frozen=True)
class RollbackHistory:
    """An environment's releases read as what ran when, for choosing where a plain rollback goes.

    A rollback release is a copy of an older release, recorded when it ran again; for "go back" what
    counts is the *position* of the release it copied, and which images someone rolled away from.
    ``position[i]`` is the index (oldest first) of the release record ``i`` runs again: its own for a
    deploy, the newest earlier record of the same image and revision for a rollback (what a plain
    rollback picks; a ``--to`` of an older duplicate of that image is read the same way, a difference
    the skipped images below make harmless). ``rolled_back_from`` holds the images a rollback left that
    no later deploy or rollback put back on purpose. A restore after a failed promotion (a rollback
    release of the image that was already recorded as running) leaves nothing.
    """

    oldest_first: tuple[ReleaseRecord, ...]
    position: tuple[int, ...]
    rolled_back_from: frozenset[str]

    @classmethod
    def read(cls, newest_first: list[ReleaseRecord]) -> RollbackHistory:
        records = tuple(reversed(newest_first))
        position: list[int] = []
        left: set[str] = set()
        for i, record in enumerate(records):
            left.discard(record.image_id)  # running it again (deploy or rollback) was a choice
            if record.kind != ROLLBACK_KIND or i == 0:
                position.append(i)
                continue
            before = records[i - 1]
            if before.image_id != record.image_id:
                left.add(before.image_id)
            copied = next(
                (
                    j
                    for j in range(i - 1, -1, -1)
                    if (records[j].image_id, records[j].revision) == (record.image_id, record.revision)
                ),
                None,
            )
            position.append(i if copied is None else position[copied])
        return cls(records, tuple(position), frozenset(left))

    def previous(self) -> tuple[ReleaseRecord | None, list[ReleaseRecord]]:
        """(where a plain rollback goes, the records skipped on the way as rolled back from): the newest
        release older than the one now running that runs another image and is not rolled back from."""
        current = self.oldest_first[-1]
        skipped: list[ReleaseRecord] = []
        for record in reversed(self.oldest_first[: self.position[-1]]):
            if record.image_id == current.image_id:
                continue
            if record.image_id in self.rolled_back_from:
                skipped.append(record)
                continue
            return record, skipped
        return None, skipped


def choose_target(
    history: list[ReleaseRecord],
    to: int | None,
    app: str,
    env: str,
    *,
    runs_current: Callable[[], bool] = lambda: True,
) -> ReleaseRecord:
    """The named release, or the newest one before the release now running that runs another image and
    was not itself rolled back from (see RollbackHistory): two rollbacks in a row go further back
    instead of flip-flopping between the last two releases. Naming the current release is allowed when
    the environment does not actually run it: that is a repair, not a no-op."""
    if not history:
        raise Conflict(f"{app} has no release in {env}: nothing to roll back to")
    current = history[0]
    if to is None:
        target, skipped = RollbackHistory.read(history).previous()
        if target is not None:
            return target
        note = (
            f" (release(s) {', '.join(str(r.id) for r in skipped)} ran image(s) that were rolled back "
            "from; name one with --to to return to it anyway)"
            if skipped
            else ""
        )
        raise Conflict(
            f"{app} {env} has no earlier release with a different image before release {current.id}"
            f"{note}: nothing to roll back to"
        )
    named = next((r for r in history if r.id == to), None)
    if named is None:
        raise BadInput(f"release {to} is not a release of {app} in {env}")
    if named.image_id == current.image_id and runs_current():
        raise Conflict(f"release {to} is the image {env} already runs (release {current.id}): nothing to do")
    return named


def rollback(
    config: Config,
    store: Store,
    engine_factory: EngineFactory,
    app_name: str,
    env: str,
    *,
    to: int | None = None,
    actor: str | None = None,
    reason: str | None = None,
    notifier: Notifier | None = None,
) -> RollbackResult:
    app = config.app(app_name)
    env = parse_environment(env)
    actor = parse_actor(actor)
    preflight(app)
    service = RunService(config, store, engine_factory, notifier)
    log = get_logger(app=app.name, environment=env, actor=actor)
    lease = config.settings.lock_lease_s
    holder = f"rollback by {actor}"
    me = Holder.me()
    with service.engine() as engine:
        # A runner that died mid-swap left this environment for recovery: reconcile it first, so the
        # rollback starts from what really runs (rollback stays allowed while the line is frozen).
        service.recover_environments(app.name, [env], actor, engine)
        history = store.releases(app.name, env, limit=10_000)
        latest = latest_releases(store, app.name)
        # Connected only past the checks that need no engine (nothing to roll back to: exit 3).
        deployer = functools.cache(
            lambda: Deployer.from_releases(engine.for_app(app), app, config.settings, latest)
        )
        target = choose_target(
            history,
            to,
            app.name,
            env,
            runs_current=lambda: deployer().serves(env, history[0].image_id, history[0].revision),
        )
        current = history[0]
        if not deployer().ensure_image(env, target):
            raise Conflict(
                f"release {target.id}'s image {target.image_id[:19]} is gone (pruned"
                + (", and the registry does not serve it)" if target.digest else ")")
                + ": nothing changed"
            )
        why = reason or f"rollback to release {target.id} by {actor}"
        store.acquire_locks(app.name, [env], holder=holder, kind=OPERATOR_LOCK, process=me, lease_s=lease)
        try:
            with Heartbeat(lambda: store.renew_locks(app.name, [env], me, lease), lease / 3, holder):
                log.info("rollback_started", from_release=current.id, to_release=target.id)
                done = deployer().redeploy(env, target, run_id=None)
                if not done.ok:
                    back = deployer().redeploy(env, current, run_id=None)
                    log.error("rollback_failed", reason=done.reason, restored=back.ok)
                    tail = (
                        f"{env} restored to release {current.id}"
                        if back.ok
                        else f"restoring release {current.id} failed too: {back.reason}"
                    )
                    raise GateFailed(
                        f"rollback of {app.name} {env} to release {target.id} failed: {done.reason}; {tail}",
                        details={"rollback": done.details, "restore": back.details},
                    )
                intent = ReleaseIntent.rollback(env, target, reason=why, override=done.override)
                release = record_release(store, app, intent, run_id=target.run_id, transition_id=None)
                # A rollback has no transition to carry its actor: the audit trail gets it from here.
                store.record_event(
                    "rollback",
                    actor,
                    why,
                    app=app.name,
                    environment=env,
                    run_id=target.run_id,
                    details={"release_id": release.id, "from_release": current.id, "to_release": target.id},
                )
                log.info("rollback_finished", release=release.id)
        finally:
            store.release_locks(app.name, [env], me)
    service.notifier.send(
        Notification(
            "rolled_back",
            app.name,
            env,
            target.run_id,
            target.revision,
            actor,
            reason=why,
            details={"from_release": current.id, "to_release": target.id, "release": release.id},
        )
    )
    return RollbackResult(app.name, env, current, target, release, done.details)


# status and drift ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What runs in an environment right now, as the engine and the app report it."""

    container: str | None = None
    container_id: str | None = None
    status: str | None = None
    image_id: str | None = None
    revision: str | None = None
    digests: tuple[str, ...] = ()
    tag_image_id: str | None = None  # where <app>:<env> points now
    healthy: bool | None = None
    health_detail: str | None = None
    # A swarm service: its pinned image and its tasks (None for a plain container or compose).
    runtime: RuntimeView | None = None
    # A swarm task on another node whose image this engine does not hold (so no image id, no label):
    # the reference its spec names (repo@sha256:...).
    image_ref: str | None = None


def compute_drift(release: ReleaseRecord | None, seen: Observed, *, app: str, env: str) -> list[str]:
    """Every way the running environment differs from its last recorded release."""
    if release is None:
        if seen.container_id is None:
            return []
        return [f"{seen.container} runs but no release of {app} in {env} is recorded (started by hand?)"]
    if seen.container_id is None:
        return [f"the container is gone: release {release.id} expects image {release.image_id[:19]} running"]
    found: list[str] = []
    if seen.status != "running":
        found.append(f"{seen.container} is {seen.status}, not running")
    if not seen.image_id and seen.image_ref:
        found.append(_not_held(release, seen.container, seen.image_ref))
    elif seen.image_id != release.image_id:
        found.append(
            f"{seen.container} runs image {(seen.image_id or 'none')[:19]}, release {release.id} recorded "
            f"{release.image_id[:19]} (a container started by hand, or a tag moved under compose)"
        )
    label = verify.revision_label(
        {verify.REVISION_LABEL: seen.revision} if seen.revision else None, release.revision
    )
    if not label.ok and not (not seen.image_id and seen.image_ref):  # unreadable, said above
        found.append(f"revision label: {label.reason}")
    if seen.tag_image_id is not None and seen.tag_image_id != release.image_id:
        found.append(f"tag {app}:{env} points at {seen.tag_image_id[:19]}, not release {release.id}'s image")
    return found + service_drift(release, seen.runtime)


def _not_held(release: ReleaseRecord, container: str | None, ref: str) -> str:
    """Drift (or not) of a swarm task on another node that runs ``ref``, an image the manager's engine
    does not hold: its digest says whether it is the release's; what it cannot say is its label."""
    digest = ref.rpartition("@")[2]
    if release.digest and release.digest.rpartition("@")[2] == digest:
        return (
            f"{container} runs release {release.id}'s digest {digest[:19]}, but this engine does not hold "
            f"that image, so its revision label cannot be read here: 'docker pull {ref}' on the manager"
        )
    recorded = release.digest or release.image_id[:19]
    return (
        f"{container} runs {ref}, not release {release.id}'s {recorded}, and this engine does not hold "
        "that image (the service updated by hand, or Swarm rolled it back?)"
    )


def service_drift(release: ReleaseRecord, view: RuntimeView | None) -> list[str]:
    """A swarm service differs from its release when its spec pins another digest (someone ran
    `docker service update --image` by hand, or Swarm rolled back) or a running task runs another one
    (an update still going, or stuck). One task container looking right is not enough."""
    if view is None or view.kind != "swarm" or release.digest is None:
        return []
    if view.pinned is None:
        return [f"service {view.name} is gone: release {release.id} expects {release.digest}"]
    found: list[str] = []
    if view.pinned != release.digest:
        found.append(
            f"service {view.name} is pinned to {view.pinned}, release {release.id} recorded {release.digest}"
        )
    others = sorted({image for image in view.task_images if image != release.digest})
    if others:
        found.append(
            f"running tasks of {view.name} run {', '.join(others)}, not release {release.id}'s digest"
        )
    if len(view.task_images) < view.replicas:
        found.append(f"{len(view.task_images)} of {view.replicas} tasks of {view.name} are running")
    return found


# What is wrong with an environment, one word each, most basic first: each calls for a different fix
# (redeploy, find who ran what, read the app's logs), so status names the first that applies.
CAUSES: dict[str, str] = {
    "unreachable": "its Docker engine could not be reached",
    "container_gone": "container gone",
    "untracked": "a container runs without any recorded release",
    "not_running": "container not running",
    "another_image": "another image runs than the release recorded",
    "unhealthy": "unhealthy",
    "revision_label": "the running image's revision label differs from the release",
    "tag_moved": "the environment's tag points at another image",
    "service_drift": "the swarm service or its tasks are on another digest than the release",
    "drift": "drifted from the recorded release",
}


@dataclass(frozen=True)
class EnvStatus:
    """One environment as `status` sees it: its last recorded release, what was observed running, and every
    difference between them; ``cause`` names the first thing wrong, None when all is well."""

    app: str
    environment: str
    release: ReleaseRecord | None
    observed: Observed
    differences: list[str] = field(default_factory=list)
    # Which engine the environment runs on (``local`` or ``user@host:port``), as configured now.
    engine: str = "local"
    # Why its engine could not be asked (the connection error, naming the host); nothing was observed.
    unreachable: str | None = None

    @property
    def drift(self) -> bool:
        return bool(self.differences)

    @property
    def cause(self) -> str | None:
        """The first of CAUSES that applies, None when the environment runs its release, healthy (or
        has neither release nor container)."""
        o, release = self.observed, self.release
        if self.unreachable is not None:
            return "unreachable"
        if o.container_id is None:
            return "container_gone" if release is not None else None
        if release is None:
            return "untracked"
        if o.status != "running":
            return "not_running"
        if o.image_id != release.image_id:
            return "another_image"
        if o.healthy is False:
            return "unhealthy"
        if any(d.startswith("revision label:") for d in self.differences):
            return "revision_label"
        if o.tag_image_id is not None and o.tag_image_id != release.image_id:
            return "tag_moved"
        if o.runtime is not None and service_drift(release, o.runtime):
            return "service_drift"
        return "drift" if self.differences else None

    @property
    def ok(self) -> bool:
        return self.cause is None

    @property
    def problem(self) -> str | None:
        """The cause in words, for people."""
        cause = self.cause
        if cause is None:
            return None
        text = CAUSES.get(cause, "drifted from the recorded release")
        if cause == "unreachable":
            text = f"unreachable: {self.unreachable}"
        if cause == "unhealthy" and self.observed.health_detail:
            text += f": {self.observed.health_detail}"
        return text


def observe(deployer: Deployer, env: str) -> Observed:
    engine = deployer.engines.of(env)
    container = deployer.current(env)
    tag = engine.image(f"{deployer.app.name}:{env}")
    if container is None:
        return Observed(tag_image_id=tag.id if tag else None, runtime=deployer.runtime.view(env))
    # No image id: a swarm task on another node whose digest this engine does not hold.
    image = engine.image(container.image_id) if container.image_id else None
    elsewhere = deployer.elsewhere(env, container.id) if not container.image_id else None
    probe = health.get(deployer.base_url(env) + deployer.app.health_path, timeout=2.0)
    return Observed(
        container=container.name,
        container_id=container.id,
        status=container.status,
        image_id=container.image_id,
        revision=image.label(verify.REVISION_LABEL) if image else None,
        digests=image.repo_digests if image else (),
        tag_image_id=tag.id if tag else None,
        healthy=probe.ok,
        health_detail=f"HTTP {probe.status}" if probe.status is not None else probe.error,
        runtime=deployer.runtime.view(env),
        image_ref=(elsewhere.image or None) if elsewhere else None,
    )


def unfinished_notes(store: Store, app: str) -> dict[str, str]:
    """Per environment, a note about an edge that stopped half-way there and awaits recovery."""
    notes: dict[str, str] = {}
    for t in store.unfinished_transitions(app):
        how = "was interrupted" if t.outcome == TransitionOutcome.INTERRUPTED else "is unfinished"
        last = f" at step {t.steps[-1].name}" if t.steps else ""
        note = (
            f"transition {t.id} of run {t.run_id} ({t.from_state}->{t.to_state}) {how}{last}: "
            f"'orchestrator recover {app}' reconciles it"
        )
        for lock in store.locks(app):
            if lock.transition_id == t.id:
                notes.setdefault(lock.environment, note)
    return notes


def status(
    config: Config, store: Store, engine_factory: EngineFactory, app_name: str | None
) -> list[EnvStatus]:
    apps = [config.app(app_name)] if app_name else [config.apps[name] for name in sorted(config.apps)]
    if not apps:
        raise BadInput("no apps configured: add [apps.NAME] to orchestrator.toml")
    from orchestrator.service.common import LazyEngine

    engine = LazyEngine(engine_factory, settings=config.settings)
    try:
        found: list[EnvStatus] = []
        failures: list[InfraUnavailable] = []
        for app in apps:
            latest = latest_releases(store, app.name)
            deployer = Deployer.from_releases(engine.for_app(app), app, config.settings, latest)
            unfinished = unfinished_notes(store, app.name)
            for env, release in latest.items():
                host = app.engine(env).host
                try:
                    seen = observe(deployer, env)
                except InfraUnavailable as exc:
                    # One host down must not hide the environments that can be seen: reported here,
                    # the CLI exits 4 after printing them all.
                    failures.append(exc)
                    found.append(EnvStatus(app.name, env, release, Observed(), [], host, exc.message))
                    continue
                differences = compute_drift(release, seen, app=app.name, env=env)
                if differences and env in unfinished:
                    # The usual cause of drift right after a crash is the orchestrator itself, not a
                    # person: say so before guessing "started by hand".
                    differences.insert(0, unfinished[env])
                found.append(EnvStatus(app.name, env, release, seen, differences, host))
        if failures and len(failures) == len(found):
            raise failures[0]  # nothing could be seen: one error (exit 4) says it better than a report
        return found
    finally:
        engine.close()
