"""The build step and the image guard: the image an edge promotes is built from ``git archive`` of
the run's sha (never the working tree) and is, by id, the one tagged ``<app>:<sha>`` with that sha in
its revision label.

Two builders (builders.py chooses): BuildKit through the docker CLI, which builds what today's
Dockerfiles say and takes build secrets, and the legacy builder through the SDK, whose layer cache is
constrained to our own recorded images (CachePolicy). What the legacy builder cannot build is refused
before it starts, naming the feature; a base image whose registry does not answer is infrastructure
(exit 4), not a verdict on the commit.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import builders, gitrepo, parking, progress, verify
from orchestrator.builders import BuilderChoice, BuilderKind
from orchestrator.config import AppConfig, Settings
from orchestrator.errors import BadInput, DockerError, GateFailed, InfraUnavailable, StepTimeout
from orchestrator.logging import get_logger
from orchestrator.steps import StepLog
from orchestrator.verdict import Verdict

if TYPE_CHECKING:  # the SDK is imported by whoever connects an engine, not by the build's preflight
    from orchestrator.build_context import PendingBuild
    from orchestrator.docker_engine import DockerEngine, ImageInfo
    from orchestrator.steps.ahead import BuildAhead, ParkedAhead


@dataclass(frozen=True)
class Build:
    """The image the build step made from the run's sha, tagged ``<app>:<sha>``, with how long it took and
    which builder built it: what the edge's later gates guard and run."""

    image: ImageInfo
    tag: str
    duration_s: float
    builder: str = BuilderKind.LEGACY.value


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

    BuildKit needs none of this: its cache lives in BuildKit's own store, keyed by the content of each
    step's inputs, and ``docker commit`` never writes to it.
    """

    cache_from: tuple[str, ...]

    @property
    def nocache(self) -> bool:
        return not self.cache_from

    @classmethod
    def trusting(cls, recorded_images: Sequence[str]) -> CachePolicy:
        return cls(tuple(dict.fromkeys(i for i in recorded_images if i)))


def resolve_dockerfile(app: AppConfig, sha: str, in_commit: Callable[[str], bool] | None = None) -> str:
    """The Dockerfile's path in the commit (relative to the app's source): ``dockerfile`` read against the
    context as Docker does; failing that, against the repository root (what it meant before ``context``
    existed). A context or Dockerfile missing from the commit fails the build as not buildable.
    ``in_commit`` answers whether a path is in the commit (default: ask git; a build that has the
    commit's tree unpacked already looks there instead)."""
    if in_commit is None:
        in_commit = lambda path: gitrepo.path_in_commit(app.source, sha, path)  # noqa: E731
    context = posixpath.normpath(app.context)
    if context != "." and not in_commit(context):
        raise GateFailed(f"build context {context}/ is not in commit {sha[:12]} of {app.source}")
    in_context = posixpath.normpath(posixpath.join(context, app.dockerfile))
    if in_commit(in_context):
        return in_context
    from_root = posixpath.normpath(app.dockerfile)
    inside = from_root != ".." and not from_root.startswith("../")
    if from_root != in_context and inside and in_commit(from_root):
        return from_root
    looked = in_context if from_root == in_context else f"{in_context} (nor {from_root})"
    raise GateFailed(f"{looked} is not in commit {sha[:12]} of {app.source}")


def secret_values(app: AppConfig) -> list[str]:
    """The values of the app's build secrets as this process can read them now, for redaction only:
    they are never stored, logged or returned anywhere else."""
    values: list[str] = []
    for secret in app.secrets.values():
        if secret.env:
            values.append(os.environ.get(secret.env, ""))
        elif secret.file is not None:
            try:
                text = secret.file.read_text(errors="replace") if secret.file.stat().st_size < 65536 else ""
            except OSError:
                continue
            values += [text.strip(), *(line.strip() for line in text.splitlines() if len(line.strip()) >= 8)]
    return [v for v in values if v]


def _secrets(app: AppConfig) -> list[builders.Secret]:
    """The app's secrets as BuildKit flags; a source that is not there is the caller's to fix (exit 2)."""
    found: list[builders.Secret] = []
    for secret in app.secrets.values():
        where = f"[apps.{app.name}].secrets.{secret.id}"
        if secret.env:
            if secret.env not in os.environ:
                raise BadInput(
                    f"{where}: environment variable {secret.env} is not set in the orchestrator's "
                    "environment: export it (CI: from the secret store) and advance again"
                )
            found.append(builders.Secret(secret.id, env=secret.env))
        else:
            assert secret.file is not None
            if not secret.file.is_file() or not os.access(secret.file, os.R_OK):
                raise BadInput(f"{where}: {secret.file} is not a readable file")
            found.append(builders.Secret(secret.id, file=str(secret.file)))
    return found


def _refuse_on_legacy(
    app: AppConfig, settings: Settings, choice: BuilderChoice, dockerfile: str, text: str
) -> None:
    """What the legacy builder cannot do is said before it starts, naming the feature: the engine's own
    errors for these range from a usage line to "failed to parse platform"."""
    if app.secrets:
        ids = ", ".join(sorted(app.secrets))
        raise BadInput(
            f"[apps.{app.name}].secrets ({ids}) need BuildKit, and this build would use the {choice.why}: "
            + (
                "set ORCH_BUILDER=auto or buildkit"
                if settings.builder == BuilderKind.LEGACY
                else builders.INSTALL_BUILDKIT
            )
        )
    features = builders.buildkit_features(text)
    if not features:
        return
    what = f"{dockerfile} uses {', '.join(features)}, which only BuildKit builds"
    if settings.builder == BuilderKind.LEGACY:
        raise BadInput(f"{what}, but ORCH_BUILDER=legacy: set it to auto or buildkit")
    raise InfraUnavailable(f"{what}, and this machine has only the {choice.why}: {builders.INSTALL_BUILDKIT}")


def preflight(app: AppConfig, settings: Settings, sha: str, *, always_builds: bool = True) -> None:
    """Before an edge that builds starts (nothing recorded yet): what the build would refuse anyway.
    Build secrets the builder cannot take or whose source is missing are the config's or the caller's
    to fix (exit 2); a Dockerfile only BuildKit builds, on a machine with only the legacy builder, is
    the runner's (exit 4). Whether the engine itself runs BuildKit is known only once it is connected:
    the build step checks again.

    An edge that builds only sometimes (not ``always_builds``: the deploy edge rebuilds only when staging
    went stale) neither probes the docker CLIs nor reads the Dockerfile: tens of milliseconds of
    subprocesses before its first request to the engine, for what the staging edge already refused
    before this commit got there, and what the build step, if one runs, refuses as a failed gate."""
    if always_builds:
        _refuse_what_no_builder_here_builds(app, settings, sha)
    _secrets(app)


def _refuse_what_no_builder_here_builds(app: AppConfig, settings: Settings, sha: str) -> None:
    if settings.builder != BuilderKind.LEGACY and builders.find_buildkit_cli(settings.docker_cli) is not None:
        return  # BuildKit builds what the Dockerfile asks; the engine's side is checked once connected
    # Without a CLI: ``buildkit`` raises (exit 4, saying what to install); ``auto`` falls back.
    choice = builders.choose(settings.builder, settings.docker_cli, lambda: False)
    try:
        dockerfile = resolve_dockerfile(app, sha)
    except GateFailed:
        dockerfile = None  # the build gate fails on it, with the evidence
    text = b"" if dockerfile is None else gitrepo.file_at(app.source, sha, dockerfile) or b""
    _refuse_on_legacy(app, settings, choice, dockerfile or app.dockerfile, text.decode(errors="replace"))


def _explain_failure(
    engine: DockerEngine, choice: BuilderChoice, exc: DockerError, text: str, build_args: dict[str, str]
) -> None:
    """Raise the infrastructure error a failed build really was, if it was one (else return)."""
    said = f"{exc.message}\n{exc.log[-4000:]}"
    candidates = builders.base_images(text, build_args)
    if choice.kind is BuilderKind.LEGACY:
        candidates = [c for c in candidates if c != builders.directives(text).get("syntax")]
    found = builders.unreachable_base_image(said, candidates, lambda ref: engine.image(ref) is not None)
    if found is not None:
        raise builders.unreachable_error(*found, message=said)
    newer = builders.newer_frontend_features(text)
    if (
        choice.kind is BuilderKind.BUILDKIT
        and newer
        and "syntax" not in builders.directives(text)
        and ("Unknown flag" in said or "unknown instruction" in said)
    ):
        raise InfraUnavailable(
            f"the Docker engine's BuildKit cannot parse {', '.join(newer)}: its built-in Dockerfile "
            "frontend predates 1.4. Upgrade the engine to Docker 23.0 or later, or add "
            "'# syntax=docker/dockerfile:1.4' as the Dockerfile's first line (the engine then pulls that "
            "frontend from Docker Hub)"
        )


def build(
    engine: DockerEngine,
    app: AppConfig,
    settings: Settings,
    steps: StepLog,
    sha: str,
    redact: Callable[[str], str],
    recorded_images: Sequence[str] = (),
    ahead: BuildAhead | ParkedAhead | None = None,
) -> Build:
    """Build from the committed tree with GIT_SHA, tagged <app>:<sha>. ``recorded_images``: the image ids
    this orchestrator built and recorded for the app, the only ones whose layers the legacy builder's
    cache may reuse. ``ahead``: the same build, already sent (steps/ahead.py: by this process, or parked
    by `run start`); taken if it is the same request to the same engine, else cancelled and built here."""
    tag = build_tag(app, sha)
    log = get_logger()
    with steps.step("build") as step:
        dockerfile = resolve_dockerfile(app, sha)
        text = (gitrepo.file_at(app.source, sha, dockerfile) or b"").decode(errors="replace")
        choice = builders.choose(settings.builder, settings.docker_cli, engine.supports_buildkit)
        step.changed(
            builder=choice.kind.value, builder_why=choice.why, dockerfile=dockerfile, context=app.context
        )
        if choice.kind is BuilderKind.LEGACY:
            _refuse_on_legacy(app, settings, choice, dockerfile, text)
        secrets = _secrets(app)
        cache = CachePolicy.trusting(recorded_images)
        request = BuildRequest.of(app, sha, dockerfile, cache, choice)
        build_args = dict(request.build_args)
        t0 = time.perf_counter()
        log.info("build_started", tag=tag, builder=choice.why, dockerfile=dockerfile, context=app.context)
        taken = ahead.take(request, engine) if ahead is not None else None
        try:
            image: ImageInfo | None = None
            if taken is not None:
                assert ahead is not None
                step.changed(sent_ahead_s=round(time.monotonic() - taken.started, 3), sent_by=ahead.sent_by)
                image = _finish_ahead(engine, taken, tag, settings, redact)
                if image is None:
                    step.changed(ahead_lost=True)
                    log.warning("build_ahead_lost", reason="it was lost before it was named; building")
            if image is None:
                with gitrepo.extracted(app.source, sha) as tree:
                    context_dir = tree / app.context
                    if choice.cli is not None:
                        image = _buildkit(
                            engine,
                            choice,
                            context_dir,
                            tree / dockerfile,
                            tag,
                            build_args,
                            app,
                            secrets,
                            settings,
                            lambda line: _show_line(log, redact(line)),
                        )
                    else:
                        image = engine.build(
                            context_dir,
                            tag=tag,
                            dockerfile=str(tree / dockerfile),
                            buildargs=build_args,
                            target=app.target,
                            timeout_s=settings.build_timeout_s,
                            cache_from=cache.cache_from,
                            nocache=cache.nocache,
                            on_line=lambda line: progress.line("build", redact(line)),
                        )
            if choice.cli is None:
                step.changed(cache_from=len(cache.cache_from))
        except StepTimeout as exc:
            if "log_tail" in exc.details:
                exc.details["log_tail"] = redact(str(exc.details["log_tail"]))
            raise
        except DockerError as exc:
            _explain_failure(engine, choice, exc, text, build_args)
            raise
        assert image is not None  # built, or taken from the build ahead
        step.changed(image_id=image.id, tag=tag)
    return Build(image, tag, time.perf_counter() - t0, choice.kind.value)


@dataclass(frozen=True)
class BuildRequest:
    """What a builder is asked to build: a build sent ahead is taken only for the very same request."""

    sha: str
    context: str
    dockerfile: str  # the Dockerfile's path in the commit
    build_args: tuple[tuple[str, str], ...]
    target: str | None
    builder: BuilderKind
    cli: builders.BuildKitCli | None  # the docker CLI that runs a BuildKit build
    cache_from: tuple[str, ...]  # the legacy builder's cache policy (BuildKit keeps its own cache)

    @classmethod
    def of(
        cls, app: AppConfig, sha: str, dockerfile: str, cache: CachePolicy, choice: BuilderChoice
    ) -> BuildRequest:
        args = tuple({**app.build_args, "GIT_SHA": sha}.items())
        legacy = choice.kind is BuilderKind.LEGACY
        cache_from = cache.cache_from if legacy else ()
        return cls(sha, app.context, dockerfile, args, app.target, choice.kind, choice.cli, cache_from)

    @property
    def in_context(self) -> str | None:
        """The Dockerfile's path inside the context, or None when it lies outside it."""
        rel = posixpath.relpath(self.dockerfile, posixpath.normpath(self.context))
        return None if rel == ".." or rel.startswith("../") else rel


def _finish_ahead(
    engine: DockerEngine,
    taken: PendingBuild | builders.CliBuild | parking.ParkedEngineBuild | parking.ParkedCliBuild,
    tag: str,
    settings: Settings,
    redact: Callable[[str], str],
) -> ImageInfo | None:
    """The image of a build sent ahead, named ``tag`` now that the build step took it; its output
    shown and logged as the step's own build would (redacted). None when it was lost (its image pruned
    before it could be named, or the process holding a parked build gone): the step builds again."""
    log = get_logger()
    try:
        if isinstance(taken, builders.CliBuild | parking.ParkedCliBuild):
            taken.attach(lambda line: _show_line(log, redact(line)))
            image_id = taken.finish(settings.build_timeout_s)
        else:
            image_id = engine.finish_build(
                taken,
                tag=tag,
                timeout_s=settings.build_timeout_s,
                on_line=lambda line: progress.line("build", redact(line)),
            )
    except parking.ParkLost as exc:
        log.warning("build_ahead_lost", reason=str(exc))
        return None
    return _name(engine, image_id, tag)


def _name(engine: DockerEngine, image_id: str, tag: str) -> ImageInfo | None:
    """Tag a build sent ahead; None if its unnamed image went before it could be (``docker image
    prune`` meanwhile): the step then builds it again."""
    if engine.image(image_id) is None:
        return None
    repository, _, name = tag.rpartition(":")
    engine.tag(image_id, repository, name)
    return engine.image(image_id)


def _show_line(log: Any, line: str) -> None:
    """A line of BuildKit's progress: on a terminal, as progress; elsewhere a log line (CI reads how far
    a long build got from its log, tests/integration/test_build_builders.py)."""
    progress.line("build", line)
    if not progress.on_terminal():
        log.info("build_output", line=line)


def _buildkit(
    engine: DockerEngine,
    choice: BuilderChoice,
    context_dir: Path,
    dockerfile: Path,
    tag: str,
    build_args: dict[str, str],
    app: AppConfig,
    secrets: list[builders.Secret],
    settings: Settings,
    on_line: Callable[[str], None],
) -> ImageInfo:
    assert choice.cli is not None
    image_id = builders.buildkit_build(
        choice.cli,
        context_dir=context_dir,
        dockerfile=dockerfile,
        tag=tag,
        build_args=build_args,
        target=app.target,
        secrets=secrets,
        timeout_s=settings.build_timeout_s,
        on_line=on_line,
        engine_args=engine.cli_args,
    )
    image = engine.image(image_id)
    if image is None:
        raise DockerError(f"build of {tag} wrote image id {image_id}, but the engine has no such image")
    return image


def guard(engine: DockerEngine, app: AppConfig, steps: StepLog, image_id: str, sha: str) -> Verdict:
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
