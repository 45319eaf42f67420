"""What a gate, a step or a verification found: one ``Verdict`` (a status, one line saying why, and
the evidence), so that a check's result becomes a gate's without being copied field by field.

Pure (no Docker, no database, no gates): the lowest layers (verify.py, deploy.py) return it, gates
return it, and the runner records it with its name and timing as a ``GateResult``: the one type for a
gate's result whether it was just found (the edge) or read back from the store (history, recovery).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class GateStatus(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"
    ERROR = "error"

    @property
    def blocks(self) -> bool:
        return self in (GateStatus.FAIL, GateStatus.ERROR)


@dataclass(frozen=True)
class Verdict:
    """The status, one line saying why (evidence such as a container's log may follow on further
    lines), and the evidence as data."""

    status: GateStatus
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.status.blocks

    @classmethod
    def passed(cls, reason: str, **details: Any) -> Verdict:
        return cls(GateStatus.PASS, reason, details)

    @classmethod
    def failed(cls, reason: str, **details: Any) -> Verdict:
        return cls(GateStatus.FAIL, reason, details)

    @classmethod
    def skipped(cls, reason: str, **details: Any) -> Verdict:
        return cls(GateStatus.SKIPPED, reason, details)

    @classmethod
    def check(cls, ok: bool, reason: str, details: Mapping[str, Any] | None = None) -> Verdict:
        """Pass or fail on a condition: how verifications state what they found."""
        return cls(GateStatus.PASS if ok else GateStatus.FAIL, reason, dict(details or {}))


@dataclass(frozen=True)
class GateResult:
    """A verdict with the name of what found it and when: what a transition records per gate (and per
    compensation, approval or recovery step that speaks as one), and what the store hands back."""

    name: str
    status: GateStatus
    reason: str
    details: Mapping[str, Any]
    duration_s: float
    started_at: datetime


class TransitionOutcome(StrEnum):
    """How an edge (a transition) ended, as recorded in its row and printed by `advance`."""

    IN_PROGRESS = "in_progress"  # claimed, gates running
    SUCCEEDED = "succeeded"  # every gate passed: the run moved
    FAILED = "failed"  # a gate rejected the commit: undone, the run went back to development
    ABORTED = "aborted"  # stopped without a verdict (engine gone, timeout, signal): undone, run stays
    INTERRUPTED = "interrupted"  # stopped and could not be undone: left with its locks for `recover`
    SUPERSEDED = "superseded"  # a newer run of the app overtook this one while it waited
    REJECTED = "rejected"  # a person refused the edge (`orchestrator reject`): the run ends


def first_line(text: str) -> str:
    """A reason's summary: evidence (a container's log) may follow it on further lines."""
    return text.partition("\n")[0]
