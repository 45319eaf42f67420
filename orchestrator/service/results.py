"""What `advance`, `deploy` and `recover` return: frozen values the CLI prints (human or --json) and
the dashboard reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.gates import GateResult, ProdOutcome, prod_outcome
from orchestrator.machine import State
from orchestrator.service.common import FAILED
from orchestrator.store.repository import RunRecord
from orchestrator.verdict import TransitionOutcome


@dataclass(frozen=True)
class FailureSummary:
    """Why a failed edge failed and what was done about prod, as `advance` prints it."""

    gate: str
    reason: str
    prod: ProdOutcome
    container: str | None = None
    exit_code: int | None = None


def edge_reason(parts: Sequence[tuple[str, str]]) -> str:
    """One transition reason from ``(gate, reason)`` pairs: the first line of each, joined, is the
    summary; the evidence some reasons carry on further lines (a container's log) follows it."""
    heads: list[str] = []
    evidence: list[str] = []
    for name, reason in parts:
        head, _, rest = reason.partition("\n")
        heads.append(f"{name}: {head}")
        if rest:
            evidence.append(rest)
    return "\n".join(["; ".join(heads), *evidence])


@dataclass(frozen=True)
class AdvanceResult:
    """One edge a run moved along: the transition recorded for it, the edge, the state the run landed in,
    the outcome and every check's result; ``failure`` says why a failed edge failed."""

    run_id: int
    transition_id: int
    from_state: State
    to_state: State
    state: State
    outcome: TransitionOutcome
    reason: str | None
    checks: tuple[GateResult, ...]

    @property
    def failure(self) -> FailureSummary | None:
        """The gate that blocked the edge, its reason, its container, and what became of prod."""
        blocking = next((c for c in self.checks if c.status.blocks), None)
        if self.outcome != FAILED or blocking is None:
            return None
        exit_code = blocking.details.get("exit_code")
        return FailureSummary(
            blocking.name,
            blocking.reason,
            prod_outcome(self.checks),
            blocking.details.get("container"),
            exit_code if isinstance(exit_code, int) else None,
        )


@dataclass(frozen=True)
class DeployResult:
    """`deploy`: the run it started and the result of each edge it ran (the staging edge, and the prod
    edge unless staging failed). Its outcome is the last edge's."""

    run: RunRecord
    edges: tuple[AdvanceResult, ...]

    @property
    def outcome(self) -> str:
        return self.edges[-1].outcome


@dataclass(frozen=True)
class RecoveryReport:
    """What `recover` found about one abandoned transition (or run-less lock) and what it did."""

    app: str
    transition_id: int | None
    run_id: int | None
    found: str
    outcome: str
    reason: str
    actions: dict[str, str] = field(default_factory=dict)
