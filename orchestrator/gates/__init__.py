"""Gates: small named checks that guard an edge and return a recorded verdict.

The idea is Prefect's orchestration rules: a gate declares the edge it guards, does one thing, and
reports. It never moves the run; the service decides from the verdicts. Gates register themselves per
edge with an explicit ``order`` so later capabilities add gates without touching the machine.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrator.config import AppConfig, Settings
from orchestrator.errors import InfraUnavailable
from orchestrator.logging import get_logger
from orchestrator.machine import Edge
from orchestrator.steps import StepLog
from orchestrator.verdict import GateResult, GateStatus, Verdict, first_line

__all__ = [
    "GateResult",
    "GateStatus",
    "Verdict",
    "first_line",
]  # defined in verdict.py, the gates' vocabulary

if TYPE_CHECKING:
    from orchestrator.deploy import Deployer
    from orchestrator.engines import AppEngines
    from orchestrator.steps.build import Build
    from orchestrator.store.records import ReleaseRecord


# The compensation that puts prod back after a failed promotion (gates/image.py), and the key of its
# details that says what it did, so that `advance` can tell the operator in plain words.
ROLLBACK_PROD = "rollback_prod"
PROD_OUTCOME = "prod_outcome"


class ProdAction(StrEnum):
    UNTOUCHED = "untouched"  # the edge never changed prod
    RESTORED = "restored"  # back on the previous release, verified
    STOPPED = "stopped"  # no release to go back to (or its image is gone): prod taken down
    NOT_RESTORED = "not_restored"  # the restore itself failed: prod may be down or broken
    UNKNOWN = "unknown"  # the restore crashed before it could say


@dataclass(frozen=True)
class ProdOutcome:
    """What a failed edge did about prod: the first thing an operator asks after "why"."""

    action: ProdAction
    release_id: int | None = None
    summary: str = ProdAction.UNTOUCHED.value


def prod_outcome(checks: Sequence[GateResult]) -> ProdOutcome:
    """Read from an edge's results: prod was touched only if its restore was registered and ran."""
    undo = next((c for c in checks if c.name == ROLLBACK_PROD), None)
    if undo is None:
        return ProdOutcome(ProdAction.UNTOUCHED)
    said = undo.details.get(PROD_OUTCOME)
    if isinstance(said, Mapping):
        return ProdOutcome(ProdAction(said["action"]), said.get("release_id"), str(said["summary"]))
    return ProdOutcome(
        ProdAction.UNKNOWN,
        None,
        f"unknown: the restore ended {undo.status.value} ({first_line(undo.reason)}); "
        "check 'orchestrator status'",
    )


@dataclass(frozen=True)
class ReleaseIntent:
    """A gate's statement that an environment now runs this image; the service persists it."""

    environment: str
    image_id: str
    revision: str
    kind: str = "deploy"
    reason: str | None = None
    digest: str | None = None
    # The compose override this release applied, kept as a rollback anchor file.
    override: str | None = None

    @classmethod
    def rollback(
        cls, environment: str, to: ReleaseRecord, *, reason: str, override: str | None
    ) -> ReleaseIntent:
        """``environment`` runs recorded release ``to`` again."""
        return cls(
            environment,
            to.image_id,
            to.revision,
            kind="rollback",
            reason=reason,
            digest=to.digest,
            override=override,
        )


@dataclass(frozen=True)
class Compensation:
    """Undo for a side effect a gate already made (prod swapped), run only if the edge fails later."""

    name: str
    undo: Callable[[], Verdict]


@dataclass
class GateContext:
    """Everything a gate may look at, and the facts gates of one edge hand each other in named fields
    (the image id one gate built is the one the next gate must promote): a reader sees who sets what,
    and a gate that reads a fact no earlier gate set fails on ``None`` it must handle, not a KeyError."""

    run_id: int
    app: AppConfig
    sha: str
    edge: Edge
    settings: Settings
    log: Any = field(default_factory=get_logger)
    # The app's engines (build, and each environment's), connected on first use; None: no Docker.
    engines: AppEngines | None = None
    # The latest release per environment before this transition started: what a rollback restores.
    previous_releases: Mapping[str, ReleaseRecord | None] = field(default_factory=dict)
    # Every release this run made so far: what the run's own edges put where.
    run_releases: Sequence[ReleaseRecord] = ()
    # Image ids this orchestrator built and recorded for the app (its releases): the only images whose
    # layers a build may reuse from the engine's cache (steps/build.py, CachePolicy).
    recorded_images: Sequence[str] = ()
    releases: list[ReleaseIntent] = field(default_factory=list)
    compensations: list[Compensation] = field(default_factory=list)
    # The transition's recorded steps (a StepLog that records nothing when there is no transition).
    steps: StepLog = field(default_factory=StepLog)
    # Persists a release the moment it is true (the service sets it); without it, releases are only
    # collected in ``releases``. Recording at once keeps the database agreeing with the engine even if
    # the process dies before the transition closes.
    on_release: Callable[[ReleaseIntent], None] | None = None
    # Handed from gate to gate within the edge:
    # what build_image built, for image_revision and deploy_staging to guard and run.
    build: Build | None = None
    # The image id check_staging_image_fresh proved is the commit, checked on staging: the one to promote.
    promote_image_id: str | None = None
    # What promote_prod put on prod, recorded as a release only once verify_prod has proved it.
    prod_release: ReleaseIntent | None = None
    # Why the edge failed (one line), for compensations that record it with what they restore.
    failure_reason: str | None = None
    _deployer: Deployer | None = None

    def add_release(self, intent: ReleaseIntent) -> None:
        if self.on_release is not None:
            self.on_release(intent)
        else:
            self.releases.append(intent)

    @property
    def deployer(self) -> Deployer:
        if self._deployer is None:
            if self.engines is None:
                raise RuntimeError("this gate needs Docker but the edge was started without an engine")
            from orchestrator.deploy import Deployer

            self._deployer = Deployer.from_releases(
                self.engines,
                self.app,
                self.settings,
                self.previous_releases,
                self.steps,
                [*(r.image_id for r in reversed(self.run_releases)), *self.recorded_images],
            )
        return self._deployer


class Gate(ABC):
    name: ClassVar[str]
    edge: ClassVar[Edge]
    order: ClassVar[int]
    needs_docker: ClassVar[bool] = False

    @abstractmethod
    def run(self, ctx: GateContext) -> Verdict: ...


_REGISTRY: dict[Edge, list[type[Gate]]] = {}


def register(gate: type[Gate]) -> type[Gate]:
    """Class decorator: add a gate to its edge. Names are unique across all edges so that a
    recorded result always points at exactly one piece of code."""
    for gates in _REGISTRY.values():
        for other in gates:
            if other.name == gate.name and other is not gate:
                raise ValueError(f"gate name {gate.name!r} is already registered by {other.__qualname__}")
    gates = _REGISTRY.setdefault(gate.edge, [])
    if gate not in gates:
        gates.append(gate)
        gates.sort(key=lambda g: g.order)
    return gate


def gates_for(edge: Edge) -> list[type[Gate]]:
    _load_builtin_gates()
    return list(_REGISTRY.get(edge, []))


def _run_one(
    name: str, fn: Callable[[], Verdict], ctx: GateContext
) -> tuple[GateResult, InfraUnavailable | None]:
    log = ctx.log.bind(gate=name)
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    infra_error: InfraUnavailable | None = None
    try:
        verdict = fn()
    except InfraUnavailable as exc:
        infra_error = exc
        verdict = Verdict(GateStatus.ERROR, exc.message, {"infrastructure": True, **exc.details})
    except Exception as exc:  # a gate bug must block the edge, never wave it through
        log.exception("gate_crashed")
        verdict = Verdict(GateStatus.ERROR, f"{type(exc).__name__}: {exc}", {"exception": type(exc).__name__})
    result = GateResult(
        name, verdict.status, verdict.reason, verdict.details, time.perf_counter() - t0, started_at
    )
    level = log.warning if result.status.blocks else log.info
    level(
        "gate_finished",
        status=result.status.value,
        reason=result.reason,
        duration_s=round(result.duration_s, 4),
    )
    return result, infra_error


def run_gates(
    gates: list[type[Gate]], ctx: GateContext, record: Callable[[GateResult], None]
) -> list[GateResult]:
    """Run gates in order until one blocks. Every result is handed to ``record`` as soon as it exists,
    so a crash mid-edge still leaves the evidence gathered so far.

    An unreachable dependency (InfraUnavailable) is recorded as ``error`` and re-raised: it says
    nothing about the commit, so the caller must not treat it as a verdict.
    """
    results: list[GateResult] = []
    for gate_cls in gates:
        result, infra_error = _run_one(gate_cls.name, lambda g=gate_cls: g().run(ctx), ctx)
        record(result)
        results.append(result)
        if infra_error is not None:
            raise infra_error
        if result.status.blocks:
            break
    return results


def run_compensations(ctx: GateContext, record: Callable[[GateResult], None]) -> list[GateResult]:
    """Undo side effects newest first. Every undo runs even if an earlier one failed: a half-restored
    prod is worse than one whose failed restore is on record."""
    results: list[GateResult] = []
    for comp in reversed(ctx.compensations):
        result, _ = _run_one(comp.name, comp.undo, ctx)
        record(result)
        results.append(result)
    return results


def _load_builtin_gates() -> None:
    # Imported lazily so that importing the registry never drags in Docker or git plumbing.
    from orchestrator.gates import git, image  # noqa: F401
