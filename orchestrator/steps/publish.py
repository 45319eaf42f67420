"""The tag and push steps: move the tags operators know to an image and, with a registry, push it and
move the registry's tag, remembering where every tag pointed before so a failed first deploy can
undo it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator import progress
from orchestrator.config import AppConfig, Settings
from orchestrator.engines import AppEngines
from orchestrator.errors import DockerError, InfraUnavailable
from orchestrator.machine import PROD, STAGING
from orchestrator.registry import Registry, RegistryError
from orchestrator.runtimes import Published
from orchestrator.steps import StepLog

if TYPE_CHECKING:
    from orchestrator.docker_engine import DockerEngine


def local_tags(env: str) -> tuple[str, ...]:
    """``<app>:<env>``, and ``:latest`` for prod (compose services and people run ``:latest``)."""
    return (env, "latest") if env == PROD else (env,)


def registry_tag(env: str) -> str:
    return "latest" if env == PROD else STAGING


class Publisher:
    """Tags and pushes an image for an environment. An environment on another engine than the build's
    gets the image through the registry by digest: pushed from the build engine, pulled on the
    environment's engine as ``repo@sha256:...``, and accepted only if the pulled image is the very image
    id that was built and checked (never ``docker save | load``, never a rebuild there)."""

    def __init__(self, engines: AppEngines, app: AppConfig, settings: Settings, steps: StepLog) -> None:
        self.engines = engines
        self.app = app
        self.settings = settings
        self.steps = steps
        self.registry = Registry(app.registry) if app.registry else None
        self._pushed: dict[str, str] = {}
        # Where each registry tag this publisher moved pointed before, so a failed first deploy can
        # undo it.
        self._registry_before: dict[str, str | None] = {}

    def publish(self, env: str, image_id: str, revision: str) -> Published:
        """Return the immutable pin: the registry digest reference, or the image id without one."""
        if self.registry is not None and not self.engines.shares_build_engine(env):
            with self.steps.step(f"{env}_push", env) as step:
                published = self._push(self.registry, env, image_id, revision)
                step.changed(image_id=image_id, digest=published.digest)
            self._arrive(env, published)
            self._tag(env, image_id)
            return published
        self._tag(env, image_id)
        if self.registry is None:
            return Published(image_id, image_id)
        with self.steps.step(f"{env}_push", env) as step:
            published = self._push(self.registry, env, image_id, revision)
            step.changed(image_id=image_id, digest=published.digest)
        return published

    def _tag(self, env: str, image_id: str) -> None:
        engine = self.engines.of(env)
        with self.steps.step(f"{env}_tag", env) as step:
            before = {}
            for tag in local_tags(env):
                found = engine.image(f"{self.app.name}:{tag}")
                before[f"{self.app.name}:{tag}"] = found.id if found else None
                engine.tag(image_id, self.app.name, tag)
            step.changed(image_id=image_id, tags_before=before, engine=engine.where)

    def _arrive(self, env: str, published: Published) -> None:
        """Get the pushed image onto ``env``'s engine by its digest and prove it is the built image: a
        registry (or a proxy) answering that digest with other content must not get to run."""
        engine = self.engines.of(env)
        assert published.digest is not None, "a pushed image has a digest"
        with self.steps.step(f"{env}_pull", env) as step:
            pulled = engine.image(published.image_id) is None
            if pulled:
                found = engine.pull(published.digest, timeout_s=self.settings.pull_timeout_s)
                if found.id != published.image_id:
                    raise DockerError(
                        f"pulled {published.digest} on {engine.where} and got image {found.id[:19]}, not "
                        f"the image that was built and checked ({published.image_id[:19]}): not running it"
                    )
            step.changed(
                image_id=published.image_id, digest=published.digest, pulled=pulled, engine=engine.where
            )

    def _source(self, env: str, image_id: str) -> DockerEngine:
        """The engine to push ``image_id`` from: the build engine, or (a rollback to an image pruned
        there) the environment's own engine, which ``ensure_image`` has just pulled it onto."""
        build = self.engines.build
        if self.engines.shares_build_engine(env) or build.image(image_id) is not None:
            return build
        return self.engines.of(env)

    def _push(self, registry: Registry, env: str, image_id: str, revision: str) -> Published:
        repo = registry.repository(self.app.name)
        digest = self._pushed.get(image_id)
        source = self._source(env, image_id)
        if digest is None:
            source.tag(image_id, repo, revision)
            try:
                digest = source.push(
                    repo, revision, timeout_s=self.settings.push_timeout_s, on_status=_push_status
                )
            finally:
                progress.clear()
            self._pushed[image_id] = digest
        moving = registry_tag(env)
        try:
            if env not in self._registry_before:
                self._registry_before[env] = registry.manifest_digest(self.app.name, moving)
            registry.retag(self.app.name, digest, moving)
        except RegistryError as exc:
            if exc.status is None:
                raise InfraUnavailable(exc.message) from None
            if not exc.needs_credentials:
                raise DockerError(exc.message) from None
            source.tag(image_id, repo, moving)  # credentials live with the engine: push the tag
            source.push(repo, moving, timeout_s=self.settings.push_timeout_s, on_status=_push_status)
        return Published(image_id, f"{repo}@{digest}", f"{repo}@{digest}")

    def unpublish(self, env: str) -> list[str]:
        """Undo ``publish`` for an environment left with no release: no human-readable tag may keep
        naming an image that failed. Returns what remains that could not be undone."""
        with self.steps.step(f"{env}_untag", env) as step:
            removed = [f"{self.app.name}:{tag}" for tag in local_tags(env)]
            engine = self.engines.of(env)
            for ref in removed:
                engine.remove_image(ref)
            step.changed(removed=removed)
        if self.registry is None or env not in self._registry_before:
            return []
        moving = registry_tag(env)
        before = self._registry_before[env]
        if before is None:
            return [
                f"registry tag {self.registry.repository(self.app.name)}:{moving} still names the failed "
                "image (the registry API cannot delete a tag; nothing earlier to point it at)"
            ]
        try:
            self.registry.retag(self.app.name, before, moving)
        except RegistryError as exc:
            return [f"could not move {moving} back to {before[:19]}: {exc.message}"]
        return []


def _push_status(text: str) -> None:
    progress.status("push", text)
