"""Which Docker engine does what for one app: where it builds and where each environment runs.

An environment may live on another host (``docker_host``, config.py EngineTarget). Everything that acts
on an environment asks for *that environment's* engine here, so the deploy steps, every runtime,
recovery, status, rollback and prune read alike whether there is one engine or several; the build and
the image guard use the build engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.config import AppConfig, EngineTarget

if TYPE_CHECKING:
    from orchestrator.docker_engine import DockerEngine
    from orchestrator.steps.ahead import BuildAhead, ParkedAhead


@dataclass(frozen=True)
class AppEngines:
    """``get`` connects (or returns the connection already made to) a target; connecting is lazy, so a
    staging edge never touches prod's host."""

    app: AppConfig
    get: Callable[[EngineTarget], DockerEngine]
    # The run's build, already sent to the build engine (steps/ahead.py), if it was.
    build_ahead: BuildAhead | ParkedAhead | None = None

    @classmethod
    def single(cls, app: AppConfig, engine: DockerEngine) -> AppEngines:
        """One engine for everything: what callers that hold a single engine (tests, tools) mean."""
        return cls(app, lambda _target: engine)

    def of(self, env: str) -> DockerEngine:
        return self.get(self.app.engine(env))

    @property
    def build(self) -> DockerEngine:
        return self.get(self.app.builds_on)

    def target(self, env: str) -> EngineTarget:
        return self.app.engine(env)

    def shares_build_engine(self, env: str) -> bool:
        """Whether ``env`` runs on the engine that builds: if not, images reach it through the registry."""
        return self.app.engine(env).key == self.app.builds_on.key

    def distinct(self) -> list[EngineTarget]:
        """Every engine the app uses, each once, the build engine first."""
        found: dict[str, EngineTarget] = {}
        for target in (self.app.builds_on, self.app.engine("staging"), self.app.engine("prod")):
            found.setdefault(target.key, target)
        return list(found.values())
