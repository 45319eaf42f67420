"""The build step and the image guard: the image an edge promotes is built from ``git archive`` of
the run's sha (never the working tree) and is, by id, the one tagged ``<app>:<sha>`` with that sha in
its revision label."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator import gitrepo, verify
from orchestrator.config import AppConfig, Settings
from orchestrator.docker_engine import DockerEngine, DockerError, ImageInfo
from orchestrator.errors import StepTimeout
from orchestrator.steps import StepLog


@dataclass(frozen=True)
class Build:
    image: ImageInfo
    tag: str
    duration_s: float


def build_tag(app: AppConfig, sha: str) -> str:
    return f"{app.name}:{sha}"


@dataclass(frozen=True)
class CachePolicy:
    """Which cached steps the legacy builder may reuse.

    Why not its default: the legacy builder takes, for each step, the newest local image whose parent is
    the current step's image and whose recorded container config matches the step. ``docker commit`` of
    a container run from one of the app's intermediate layers makes exactly such an image, with any file
    added, and the next build ships it: the revision label, the image-id guard and the staging check then
    all vouch for a tree no commit contains (issue 10, tests/integration/test_build_cache.py).

    With ``cache_from`` the engine accepts a local cached step only if it is an ancestor of one of the
    listed images (moby image/cache: ``ImageCache.GetCache``), otherwise it rebuilds the step or restores
    it from those images' own layers. Listing only images this orchestrator built and recorded as
    releases of the app (the service passes them in; a step never queries the store) keeps the cache
    for honest rebuilds, the freshness check's above all, while nothing another hand committed can
    enter. With no recorded image yet there is nothing to trust: build without the cache.
    """

    cache_from: tuple[str, ...]

    @property
    def nocache(self) -> bool:
        return not self.cache_from

    @classmethod
    def trusting(cls, recorded_images: Sequence[str]) -> CachePolicy:
        return cls(tuple(dict.fromkeys(i for i in recorded_images if i)))


def build(
    engine: DockerEngine,
    app: AppConfig,
    settings: Settings,
    steps: StepLog,
    sha: str,
    redact: Callable[[str], str],
    recorded_images: Sequence[str] = (),
) -> Build:
    """Build from the committed tree with GIT_SHA, tagged <app>:<sha>. ``recorded_images``: the image ids
    this orchestrator built and recorded for the app, the only ones whose layers the cache may reuse."""
    tag = build_tag(app, sha)
    cache = CachePolicy.trusting(recorded_images)
    with steps.step("build") as step:
        if not gitrepo.path_in_commit(app.source, sha, app.dockerfile):
            raise DockerError(f"{app.dockerfile} is not in commit {sha[:12]} of {app.source}")
        t0 = time.perf_counter()
        with gitrepo.archive(app.source, sha) as context:
            try:
                image = engine.build(
                    context,
                    tag=tag,
                    dockerfile=app.dockerfile,
                    buildargs={**app.build_args, "GIT_SHA": sha},
                    timeout_s=settings.build_timeout_s,
                    cache_from=cache.cache_from,
                    nocache=cache.nocache,
                )
            except StepTimeout as exc:
                if "log_tail" in exc.details:
                    exc.details["log_tail"] = redact(str(exc.details["log_tail"]))
                raise
        step.changed(image_id=image.id, tag=tag, cache_from=len(cache.cache_from))
    return Build(image, tag, time.perf_counter() - t0)


def guard(engine: DockerEngine, app: AppConfig, steps: StepLog, image_id: str, sha: str) -> verify.Check:
    """Safety layer: the image tagged <app>:<sha> is the one just built and carries the full sha."""
    tag = build_tag(app, sha)
    with steps.step("image_guard") as step:
        tagged = engine.image(tag)
        check = verify.all_of(
            verify.same_image(image_id, tagged.id if tagged else None, tag),
            verify.revision_label(tagged.labels if tagged else None, sha),
        )
        step.changed(image_id=image_id, ok=check.ok)
        if not check.ok:
            step.fail(check.reason)
    return check
