"""Housekeeping: `orchestrator prune` removes what no kept release of an app needs any more.

Every promotion builds an image (`<app>:<sha>`, and `<registry>/<app>:<sha>` with a registry), and a host
deploying many times a day fills its disk with images nothing will ever run again. What may go is decided
here from three sources, never guessed from the engine alone:

- the store: the newest ``keep_releases`` releases per environment are *kept*; their images (by id, or
  by registry digest) and their override anchors stay, so `rollback` to any of them keeps working;
- the engine: an image any container uses (running or not, whichever app or person started it) stays,
  and the engine refuses the removal itself if one appears meanwhile; a running container is never
  removed;
- unfinished transitions: an image a run in flight built or touched stays (normally the app's lock
  already stops prune; this covers a run whose lock an operator forced away while it goes on).

Images are the app's by name (`<app>:*`, `<registry>/<app>:*`, the repositories its releases were pushed
to) or by the orchestrator's ``orchestrator.app`` label, never because they are dangling: other apps'
images and everything else on the engine are never touched. Only the app's own references are removed
(never ``docker rmi -f``), so an image someone also tagged under another name loses our tag and stays.

``decide`` is the pure decision (unit-tested without Docker); ``prune`` gathers its inputs, holds the
app's environments while it works (a run starting meanwhile would build an image the decision never saw),
does the removal through the adapter and records everything removed as one ``pruned`` event.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from orchestrator import views
from orchestrator.config import AppConfig, Config, EngineTarget
from orchestrator.docker_engine import STOPPED_STATUSES
from orchestrator.engines import AppEngines
from orchestrator.errors import Conflict
from orchestrator.holder import Holder
from orchestrator.lifecycle import Heartbeat
from orchestrator.logging import get_logger
from orchestrator.machine import ENVIRONMENTS
from orchestrator.registry import Registry
from orchestrator.store.repository import (
    OPERATOR_LOCK,
    LockHeld,
    LockRecord,
    Store,
    TransitionRecord,
)

if TYPE_CHECKING:
    from orchestrator.docker_engine import DockerEngine, ImageInfo, ListedContainer

APP_LABEL = "orchestrator.app"  # what the direct runtime stamps on the containers it runs
ENV_LABEL = "orchestrator.environment"
# Tags the environments and compose files name (`image: app:latest`); status compares them with the
# releases. They normally sit on the kept releases' images anyway; an image still carrying one stays.
MOVING_TAGS = frozenset({"staging", "prod", "latest"})
_ANCHOR = re.compile(r"^(?P<env>[a-z]+)-release-(?P<id>[0-9]+)\.yml$")


class KeptRelease(Protocol):
    id: int
    image_id: str
    digest: str | None


def repository_of(ref: str) -> str:
    """``host:5000/shop:abc`` -> ``host:5000/shop``; ``shop@sha256:...`` -> ``shop`` (a registry's
    port is not a tag: the tag is after the last ':' only when no '/' follows it)."""
    if "@" in ref:
        return ref.split("@", 1)[0]
    head, sep, tail = ref.rpartition(":")
    return head if sep and "/" not in tail else ref


# the decision ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRemoval:
    """``refs`` are the app's own tags and digests on the image; removing them deletes the image only
    when it carries no other name (``deletes``), and only then are its bytes reclaimed."""

    image_id: str
    refs: tuple[str, ...]
    size: int
    deletes: bool


@dataclass(frozen=True)
class ContainerRemoval:
    """A stopped container the app's runtime left that may go: neither the newest stopped one of its
    environment nor the environment's own ``<app>-<env>`` (``_containers_to_remove``)."""

    id: str
    name: str
    environment: str
    status: str
    image_id: str
    created: float


@dataclass(frozen=True)
class AnchorRemoval:
    """A compose override kept as a rollback anchor (``<env>-release-<id>.yml``) of a release older than the
    ones its environment keeps: no rollback can need it any more."""

    path: Path
    environment: str
    release_id: int


@dataclass(frozen=True)
class Kept:
    """An image of the app that stays, and every reason it does."""

    image_id: str
    refs: tuple[str, ...]
    why: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """What ``decide`` says may go (images, stopped containers, anchors), what stays and why, and the
    releases kept per environment: a dry run shows it, ``prune`` carries it out."""

    app: str
    keep_releases: int
    kept_releases: Mapping[str, tuple[int, ...]]
    images: tuple[ImageRemoval, ...] = ()
    containers: tuple[ContainerRemoval, ...] = ()
    anchors: tuple[AnchorRemoval, ...] = ()
    kept: tuple[Kept, ...] = ()

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.images if i.deletes)

    @property
    def empty(self) -> bool:
        return not (self.images or self.containers or self.anchors)


def decide(
    app: str,
    *,
    repositories: Iterable[str],
    keep_releases: int,
    kept_releases: Mapping[str, Sequence[KeptRelease]],
    images: Sequence[ImageInfo],
    containers: Sequence[ListedContainer],
    anchors: Sequence[Path] = (),
    in_flight: Mapping[str, str] | None = None,
) -> Plan:
    """What may go, as a function of the kept releases (newest ``keep_releases`` per environment, newest
    first), every image and container on the engine, the app's anchor files and the image ids of
    unfinished transitions (id -> which transition)."""
    repos = frozenset(repositories)
    removed_containers = _containers_to_remove(app, containers)
    going = {c.id for c in removed_containers}

    protect: dict[str, list[str]] = {}
    protected_digests: dict[str, list[str]] = {}
    for env, releases in kept_releases.items():
        for release in releases:
            why = f"release {release.id} ({env})"
            protect.setdefault(release.image_id, []).append(why)
            if release.digest:
                protected_digests.setdefault(release.digest, []).append(why)
    for listed in containers:
        if listed.info.id not in going and listed.info.image_id:
            state = "running" if listed.info.running else listed.info.status
            protect.setdefault(listed.info.image_id, []).append(f"container {listed.info.name} ({state})")
    for image_id, what in (in_flight or {}).items():
        protect.setdefault(image_id, []).append(f"{what} in flight")

    removals: list[ImageRemoval] = []
    kept: list[Kept] = []
    for image in images:
        refs = tuple(r for r in (*image.tags, *image.repo_digests) if repository_of(r) in repos)
        if not refs and image.labels.get(APP_LABEL) != app:
            continue  # not this app's: never touched
        why = list(protect.get(image.id, ()))
        why += [w for digest in image.repo_digests for w in protected_digests.get(digest, ())]
        why += [
            f"tag {t}" for t in image.tags if repository_of(t) in repos and t.rsplit(":", 1)[1] in MOVING_TAGS
        ]
        if why:
            kept.append(Kept(image.id, refs, tuple(dict.fromkeys(why))))
            continue
        foreign = [r for r in (*image.tags, *image.repo_digests) if repository_of(r) not in repos]
        if not refs and foreign:
            continue  # labelled ours but named only by others: removing it would take their name away
        # Removing every one of our names deletes the image only when no other name is left on it; an
        # untagged image of ours (labelled, never named) goes by its id.
        removals.append(ImageRemoval(image.id, refs or (image.id,), image.size, deletes=not foreign))

    return Plan(
        app,
        keep_releases,
        {env: tuple(r.id for r in releases) for env, releases in kept_releases.items()},
        tuple(sorted(removals, key=lambda r: r.refs)),
        removed_containers,
        _anchors_to_remove(anchors, kept_releases),
        tuple(kept),
    )


def _containers_to_remove(app: str, containers: Sequence[ListedContainer]) -> tuple[ContainerRemoval, ...]:
    """Stopped containers the app's runtime left (labelled ``orchestrator.app``), except the newest
    stopped one per environment (the latest failure, kept for `docker logs`) and the environment's
    own container ``<app>-<env>`` (status and recovery look for it by name). Compose services' containers
    belong to compose and are left to it."""
    stopped: dict[str, list[ListedContainer]] = {}
    for listed in containers:
        info = listed.info
        # Only containers that cannot be serving anything: never running, restarting or paused ones.
        if info.labels.get(APP_LABEL) != app or info.status not in STOPPED_STATUSES:
            continue
        stopped.setdefault(info.labels.get(ENV_LABEL, ""), []).append(listed)
    going: list[ContainerRemoval] = []
    for env, found in stopped.items():
        found.sort(key=lambda c: c.created, reverse=True)
        for listed in found[1:]:
            info = listed.info
            if info.name == f"{app}-{env}":
                continue
            going.append(
                ContainerRemoval(info.id, info.name, env, info.status, info.image_id, listed.created)
            )
    return tuple(sorted(going, key=lambda c: (c.environment, c.created)))


def _anchors_to_remove(
    anchors: Sequence[Path], kept_releases: Mapping[str, Sequence[KeptRelease]]
) -> tuple[AnchorRemoval, ...]:
    """Anchors (``<env>-release-<id>.yml``) of releases older than the oldest kept one of their
    environment. An anchor with a newer id than any release the store knows is left alone (a release
    being recorded right now, or another database's), as is every file that is not an anchor."""
    going: list[AnchorRemoval] = []
    for path in anchors:
        match = _ANCHOR.match(path.name)
        if match is None:
            continue
        env, release_id = match["env"], int(match["id"])
        kept = {r.id for r in kept_releases.get(env, ())}
        if kept and release_id not in kept and release_id < max(kept):
            going.append(AnchorRemoval(path, env, release_id))
    return tuple(sorted(going, key=lambda a: (a.environment, a.release_id)))


def in_flight_images(transitions: Iterable[TransitionRecord]) -> dict[str, str]:
    """Every image id an unfinished transition's steps recorded (built, tagged, started, replaced):
    recovery may still need any of them."""
    found: dict[str, str] = {}
    for t in transitions:
        what = f"transition {t.id} of run {t.run_id}"
        for step in t.steps:
            changes = step.changes or {}
            ids = [changes.get("image_id"), *(changes.get("tags_before") or {}).values()]
            for image_id in ids:
                if isinstance(image_id, str) and image_id:
                    found.setdefault(image_id, what)
    return found


def app_repositories(app: AppConfig, releases: Iterable[KeptRelease]) -> set[str]:
    """The names the app's images go by: ``<app>``, ``<registry>/<app>`` and every repository its
    releases were pushed to (the registry setting may have changed since)."""
    repos = {app.name}
    if app.registry:
        repos.add(Registry(app.registry).repository(app.name))
    repos.update(repository_of(r.digest) for r in releases if r.digest)
    return repos


def anchor_files(app: AppConfig) -> list[Path]:
    if app.override_file is None:
        return []
    history = app.override_file.parent / "history"
    return sorted(history.glob("*-release-*.yml")) if history.is_dir() else []


# the doing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    """Something the prune left in place because the engine (or the file system) refused to remove it, and
    the refusal: reported and recorded, not an error."""

    what: str
    reason: str


@dataclass(frozen=True)
class PruneResult:
    """What `prune` of one app reports: its plan and, unless it was a dry run, what was actually removed,
    the bytes reclaimed and what was skipped."""

    plan: Plan
    dry_run: bool
    images: tuple[ImageRemoval, ...] = ()
    containers: tuple[ContainerRemoval, ...] = ()
    anchors: tuple[AnchorRemoval, ...] = ()
    bytes_reclaimed: int = 0
    skipped: tuple[Skipped, ...] = ()


@dataclass
class PruneProgress:
    """What the prune has removed so far, over every engine: filled in as it goes, so that a prune cut short
    (an engine gone away) still records what is already gone."""

    images: list[ImageRemoval] = field(default_factory=list)
    containers: list[ContainerRemoval] = field(default_factory=list)
    anchors: list[AnchorRemoval] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    bytes_reclaimed: int = 0

    @property
    def anything(self) -> bool:
        return bool(self.images or self.containers or self.anchors)


class ImagesAhead:
    """An engine's image list, asked for in a thread of its own before the prune after a deploy needs it.

    Why: dockerd answers ``GET /images/json`` only after walking every image it holds, whatever the
    filter: 40-50 ms on the 20.10 engine of these machines with 270 images (more on a host that deploys
    all day), which every deploy paid in series after its verdict. advance.py starts the list once prod's
    tag step is done: by then the promotion has moved its tags and builds nothing more, so the list is
    the one the prune would read, and the engine answers it while prod's containers are swapped (a
    registry push may still add a tag of the registry's to the new image, which is kept anyway).

    A list read early can only be older than the prune's own: an image made in between is not in it (and
    is not removed), one removed in between fails its removal as it would have anyway. The containers, the
    releases, the locks and the runs in flight are still read by the prune itself."""

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self._found: list[ImageInfo] | None = None
        self._thread = threading.Thread(target=self._list, name="prune-images-ahead", daemon=True)
        self._thread.start()

    def _list(self) -> None:
        try:
            self._found = self.engine.images()
        except Exception:  # listed again by the prune, which reports the error
            self._found = None

    def images(self, engine: DockerEngine) -> list[ImageInfo]:
        """``engine``'s images: the list read ahead when it is that engine's and it came, else a new one."""
        if engine is self.engine:
            self._thread.join()
            if self._found is not None:
                return self._found
        return engine.images()


def plan_for(
    store: Store,
    engine: DockerEngine,
    app: AppConfig,
    *,
    anchors: bool = True,
    ahead: ImagesAhead | None = None,
) -> Plan:
    """Read the store and the engine and decide (nothing is changed). ``anchors``: include the app's
    anchor files (they live on this machine: planned once, with its first engine). ``ahead``: the
    engine's images as read ahead (ImagesAhead)."""
    history = {env: store.releases(app.name, env, limit=10_000) for env in ENVIRONMENTS}
    return decide(
        app.name,
        repositories=app_repositories(app, [r for releases in history.values() for r in releases]),
        keep_releases=app.keep_releases,
        kept_releases={env: releases[: app.keep_releases] for env, releases in history.items()},
        images=ahead.images(engine) if ahead is not None else engine.images(),
        containers=engine.containers(),
        anchors=anchor_files(app) if anchors else (),
        in_flight=in_flight_images(store.unfinished_transitions(app.name)),
    )


def _plans(
    store: Store,
    engine: Callable[[EngineTarget], DockerEngine],
    app: AppConfig,
    ahead: ImagesAhead | None = None,
) -> list[_OnEngine]:
    """One plan per engine the app uses (the build engine first): the same rules on each, since each
    holds its own copies of the app's images and its own stopped containers."""
    targets = AppEngines(app, engine).distinct()
    return [
        _OnEngine(engine(t), plan_for(store, engine(t), app, anchors=i == 0, ahead=ahead))
        for i, t in enumerate(targets)
    ]


@dataclass(frozen=True)
class _OnEngine:
    """One engine the app uses and the plan decided from what it holds: each engine keeps its own copies of
    the app's images and its own stopped containers, so each is pruned by its own plan."""

    engine: DockerEngine
    plan: Plan


def _merged(plans: Sequence[_OnEngine]) -> Plan:
    """What the operator reads: every engine's plan as one (one engine: that plan unchanged)."""
    first = plans[0].plan
    if len(plans) == 1:
        return first
    return replace(
        first,
        images=tuple(i for p in plans for i in p.plan.images),
        containers=tuple(c for p in plans for c in p.plan.containers),
        kept=tuple(k for p in plans for k in p.plan.kept),
    )


def prune(
    config: Config,
    store: Store,
    engine: Callable[[EngineTarget], DockerEngine],
    app_name: str,
    *,
    dry_run: bool = False,
    actor: str,
    holder: str | None = None,
    run_id: int | None = None,
    ahead: ImagesAhead | None = None,
) -> PruneResult:
    """Prune ``app_name`` (see the module docstring). A locked app is refused (Conflict, exit 3, naming
    the holder); otherwise its environments are held for the duration, so no run starts in between.
    ``engine`` connects to an engine target on first use (LazyEngine.get) and is not closed here; an
    app whose environments live on several engines is pruned on each. ``ahead``: an engine's images read
    ahead (ImagesAhead), used for that engine."""
    app = config.app(app_name)
    log = get_logger(app=app.name, actor=actor, dry_run=dry_run)
    if dry_run:
        held = store.locks(app.name)
        if held:
            raise _locked(app.name, held)
        plan = _merged(_plans(store, engine, app))
        log.info("prune_planned", **_counts(plan))
        return PruneResult(plan, dry_run=True)
    me = Holder.me()
    lease = config.settings.lock_lease_s
    try:
        store.acquire_locks(
            app.name,
            ENVIRONMENTS,
            holder=holder or f"prune by {actor}",
            kind=OPERATOR_LOCK,
            process=me,
            lease_s=lease,
        )
    except LockHeld as exc:
        raise _locked(app.name, exc.locks) from None
    done = PruneProgress()
    plan: Plan | None = None
    try:
        with Heartbeat(lambda: store.renew_locks(app.name, ENVIRONMENTS, me, lease), lease / 3, "prune"):
            plans = _plans(store, engine, app, ahead)
            plan = _merged(plans)
            for each in plans:
                _execute(each.plan, each.engine, done)
    finally:
        store.release_locks(app.name, ENVIRONMENTS, me)
        if done.anything or done.skipped:
            # Recorded even when the engine went away half-way: what is gone is gone.
            store.record_event(
                "pruned",
                actor,
                _summary(app.name, done),
                app=app.name,
                run_id=run_id,
                details={**views.pruned(done), "keep_releases": app.keep_releases},
            )
    assert plan is not None
    log.info("pruned", bytes_reclaimed=done.bytes_reclaimed, skipped=len(done.skipped), **_counts(plan))
    return PruneResult(
        plan,
        dry_run=False,
        images=tuple(done.images),
        containers=tuple(done.containers),
        anchors=tuple(done.anchors),
        bytes_reclaimed=done.bytes_reclaimed,
        skipped=tuple(done.skipped),
    )


def _execute(plan: Plan, engine: DockerEngine, done: PruneProgress) -> None:
    """Containers first (an image a removed container used becomes free), then images, then anchors.
    The engine refusing one item (someone started a container on the image meanwhile) skips that item,
    with its reason; an engine that stops answering ends the prune (InfraUnavailable, exit 4)."""
    from orchestrator.docker_engine import DockerError

    for c in plan.containers:
        try:
            if engine.remove_stopped_container(c.id):
                done.containers.append(c)
        except DockerError as exc:
            done.skipped.append(Skipped(f"container {c.name}", exc.message))
    for image in plan.images:
        untagged: list[str] = []
        refused: str | None = None
        for ref in image.refs:
            try:
                engine.remove_image(ref)
                untagged.append(ref)
            except DockerError as exc:
                refused = exc.message
                break
        if refused is not None:
            done.skipped.append(Skipped(f"image {image.image_id[:19]} ({', '.join(image.refs)})", refused))
        if not untagged:
            continue
        gone = engine.image(image.image_id) is None
        done.images.append(ImageRemoval(image.image_id, tuple(untagged), image.size, deletes=gone))
        if gone:
            done.bytes_reclaimed += image.size
    for anchor in plan.anchors:
        try:
            anchor.path.unlink()
            done.anchors.append(anchor)
        except FileNotFoundError:
            pass
        except OSError as exc:
            done.skipped.append(Skipped(f"anchor {anchor.path}", exc.strerror or str(exc)))


def _locked(app: str, locks: Sequence[LockRecord]) -> Conflict:
    """A run in flight may be building an image no decision has seen: nothing is pruned under a lock."""
    first = locks[0].describe() if locks else f"{app} was locked a moment ago"
    return Conflict(
        f"{first}: nothing pruned; prune {app} once that is finished ('orchestrator locks {app}')",
        details={"locks": [views.lock_record(lk) for lk in locks]},
    )


def _counts(plan: Plan) -> dict[str, int]:
    return {"images": len(plan.images), "containers": len(plan.containers), "anchors": len(plan.anchors)}


def _summary(app: str, done: PruneProgress) -> str:
    text = (
        f"pruned {app}: {len(done.images)} image(s), {len(done.containers)} container(s), "
        f"{len(done.anchors)} anchor(s); {done.bytes_reclaimed} bytes reclaimed"
    )
    return text + (f"; {len(done.skipped)} skipped" if done.skipped else "")
