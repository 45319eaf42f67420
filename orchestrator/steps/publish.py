"""The tag and push steps: move the tags operators know to an image and, with a registry, push it and
move the registry's tag, remembering where every tag pointed before so a failed first deploy can
undo it."""

from __future__ import annotations

from orchestrator import progress
from orchestrator.config import AppConfig, Settings
from orchestrator.docker_engine import DockerEngine, DockerError
from orchestrator.errors import InfraUnavailable
from orchestrator.machine import PROD, STAGING
from orchestrator.registry import Registry, RegistryError
from orchestrator.runtimes import Published
from orchestrator.steps import StepLog


def local_tags(env: str) -> tuple[str, ...]:
    """``<app>:<env>``, and ``:latest`` for prod (compose services and people run ``:latest``)."""
    return (env, "latest") if env == PROD else (env,)


def registry_tag(env: str) -> str:
    return "latest" if env == PROD else STAGING


class Publisher:
    def __init__(self, engine: DockerEngine, app: AppConfig, settings: Settings, steps: StepLog) -> None:
        self.engine = engine
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
        with self.steps.step(f"{env}_tag", env) as step:
            before = {}
            for tag in local_tags(env):
                found = self.engine.image(f"{self.app.name}:{tag}")
                before[f"{self.app.name}:{tag}"] = found.id if found else None
                self.engine.tag(image_id, self.app.name, tag)
            step.changed(image_id=image_id, tags_before=before)
        if self.registry is None:
            return Published(image_id, image_id)
        with self.steps.step(f"{env}_push", env) as step:
            published = self._push(self.registry, env, image_id, revision)
            step.changed(image_id=image_id, digest=published.digest)
        return published

    def _push(self, registry: Registry, env: str, image_id: str, revision: str) -> Published:
        repo = registry.repository(self.app.name)
        digest = self._pushed.get(image_id)
        if digest is None:
            self.engine.tag(image_id, repo, revision)
            try:
                digest = self.engine.push(
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
            self.engine.tag(image_id, repo, moving)  # credentials live with the engine: push the tag
            self.engine.push(repo, moving, timeout_s=self.settings.push_timeout_s, on_status=_push_status)
        return Published(image_id, f"{repo}@{digest}", f"{repo}@{digest}")

    def unpublish(self, env: str) -> list[str]:
        """Undo ``publish`` for an environment left with no release: no human-readable tag may keep
        naming an image that failed. Returns what remains that could not be undone."""
        with self.steps.step(f"{env}_untag", env) as step:
            removed = [f"{self.app.name}:{tag}" for tag in local_tags(env)]
            for ref in removed:
                self.engine.remove_image(ref)
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
