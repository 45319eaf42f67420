"""The build step and the image guard: the image an edge promotes is built from ``git archive`` of
the run's sha (never the working tree) and is, by id, the one tagged ``<app>:<sha>`` with that sha in
its revision label."""

from __future__ import annotations

import time
from collections.abc import Callable
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


def build(
    engine: DockerEngine,
    app: AppConfig,
    settings: Settings,
    steps: StepLog,
    sha: str,
    redact: Callable[[str], str],
) -> Build:
    """Build from the committed tree with GIT_SHA, tagged <app>:<sha>."""
    tag = build_tag(app, sha)
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
                )
            except StepTimeout as exc:
                if "log_tail" in exc.details:
                    exc.details["log_tail"] = redact(str(exc.details["log_tail"]))
                raise
        step.changed(image_id=image.id, tag=tag)
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
