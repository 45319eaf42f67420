"""The gate runner and registry, with small test gates handed to ``run_gates`` explicitly.

Hazards: a later gate running after an earlier one blocked (e.g. a deploy after a failed check), a
crashing gate waving an edge through, and infrastructure trouble being mistaken for a verdict.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog

from orchestrator import gates, views
from orchestrator.config import AppConfig, Settings
from orchestrator.errors import InfraUnavailable
from orchestrator.gates import (
    Gate,
    GateContext,
    GateResult,
    GateStatus,
    Verdict,
    gates_for,
    register,
    run_gates,
)
from orchestrator.gates.git import CommitExists
from orchestrator.machine import TO_PROD, TO_STAGING, Edge

if TYPE_CHECKING:
    from conftest import GitRepo

GateFactory = Callable[..., type[Gate]]
MakeRepo = Callable[..., "GitRepo"]


@pytest.fixture
def ctx(tmp_path: Path) -> GateContext:
    return GateContext(
        run_id=7,
        app=AppConfig(name="demo", source=tmp_path),
        sha="a" * 40,
        edge=TO_STAGING,
        settings=Settings(database_url="sqlite://"),
        log=structlog.get_logger("test"),
    )


class Recorder:
    def __init__(self) -> None:
        self.results: list[GateResult] = []

    def __call__(self, result: GateResult) -> None:
        self.results.append(result)


def test_all_passing_gates_run_in_order(gate_factory: GateFactory, ctx: GateContext) -> None:
    one = gate_factory("one", TO_STAGING, Verdict.passed("fine", evidence=1))
    two = gate_factory("two", TO_STAGING, Verdict.skipped("not applicable"))
    three = gate_factory("three", TO_STAGING, Verdict.passed("fine too"))
    record = Recorder()
    results = run_gates([one, two, three], ctx, record)
    assert [(r.name, r.status) for r in results] == [
        ("one", GateStatus.PASS),
        ("two", GateStatus.SKIPPED),
        ("three", GateStatus.PASS),
    ]
    assert record.results == results, "every result must be handed to record(), in order"
    assert results[0].details == {"evidence": 1}
    assert results[0].reason == "fine"
    assert all(r.duration_s >= 0 and r.started_at.tzinfo is not None for r in results)


def test_skipped_does_not_block() -> None:
    assert [s for s in GateStatus if s.blocks] == [GateStatus.FAIL, GateStatus.ERROR]


def test_first_failing_gate_stops_the_later_ones(gate_factory: GateFactory, ctx: GateContext) -> None:
    first = gate_factory("first", TO_STAGING, Verdict.passed("ok"))
    failing = gate_factory("failing", TO_STAGING, Verdict.failed("nope", why="because"))
    later = gate_factory("later", TO_STAGING, Verdict.passed("should never run"))
    record = Recorder()
    results = run_gates([first, failing, later], ctx, record)
    assert [r.name for r in results] == ["first", "failing"]
    assert results[-1].status is GateStatus.FAIL
    assert results[-1].details == {"why": "because"}
    assert later.calls == []  # type: ignore[attr-defined]
    assert [r.name for r in record.results] == ["first", "failing"]


def test_crashing_gate_becomes_error_and_blocks(gate_factory: GateFactory, ctx: GateContext) -> None:
    """A gate bug must block the edge, never wave it through."""
    crashing = gate_factory("crashing", TO_STAGING, KeyError("image_id"))
    later = gate_factory("later", TO_STAGING, Verdict.passed("should never run"))
    record = Recorder()
    results = run_gates([crashing, later], ctx, record)
    assert len(results) == 1
    result = results[0]
    assert result.status is GateStatus.ERROR and result.status.blocks
    assert result.reason == "KeyError: 'image_id'"
    assert result.details == {"exception": "KeyError"}
    assert later.calls == []  # type: ignore[attr-defined]
    assert record.results == results


def test_infra_unavailable_is_recorded_then_reraised(gate_factory: GateFactory, ctx: GateContext) -> None:
    """An unreachable dependency says nothing about the commit: the evidence is kept, but the caller
    gets the exception (abort, exit 4) instead of a verdict (roll back, exit 1)."""
    before = gate_factory("before", TO_STAGING, Verdict.passed("ok"))
    down = gate_factory(
        "down", TO_STAGING, InfraUnavailable("Docker engine is unreachable", details={"socket": "/x"})
    )
    later = gate_factory("later", TO_STAGING, Verdict.passed("should never run"))
    record = Recorder()
    with pytest.raises(InfraUnavailable, match="Docker engine is unreachable"):
        run_gates([before, down, later], ctx, record)
    assert [(r.name, r.status) for r in record.results] == [
        ("before", GateStatus.PASS),
        ("down", GateStatus.ERROR),
    ]
    assert record.results[1].reason == "Docker engine is unreachable"
    assert record.results[1].details == {"infrastructure": True, "socket": "/x"}
    assert later.calls == []  # type: ignore[attr-defined]


def test_gates_share_facts_through_the_context(gate_factory: GateFactory, ctx: GateContext) -> None:
    """The image one gate built is the one the next gate must promote."""

    def build(c: GateContext) -> Verdict:
        c.promote_image_id = "sha256:abc"
        return Verdict.passed("built")

    def promote(c: GateContext) -> Verdict:
        return Verdict.passed("promoted", image_id=c.promote_image_id)

    results = run_gates(
        [gate_factory("build", TO_STAGING, build), gate_factory("promote", TO_STAGING, promote)],
        ctx,
        Recorder(),
    )
    assert results[1].details == {"image_id": "sha256:abc"}


def test_no_gates_is_an_empty_pass(ctx: GateContext) -> None:
    record = Recorder()
    assert run_gates([], ctx, record) == []
    assert record.results == []


def test_gate_result_view_is_json_ready(gate_factory: GateFactory, ctx: GateContext) -> None:
    (result,) = run_gates([gate_factory("g", TO_STAGING, Verdict.failed("bad", n=2))], ctx, Recorder())
    assert views.gate_result(result) == {
        "name": "g",
        "status": "fail",
        "reason": "bad",
        "details": {"n": 2},
        "duration_s": pytest.approx(result.duration_s, abs=1e-6),
        # The same shape `runs show` prints for a recorded gate (one GateResult, verdict.py).
        "started_at": result.started_at.isoformat(),
    }
    json.dumps(views.gate_result(result))


# --------------------------------------------------------------------------------------------------
# registry (against a throw-away registry, so the global one is never touched)


@pytest.fixture
def empty_registry(monkeypatch: pytest.MonkeyPatch) -> dict[Edge, list[type[Gate]]]:
    fresh: dict[Edge, list[type[Gate]]] = {}
    monkeypatch.setattr(gates, "_REGISTRY", fresh)
    return fresh


def test_register_sorts_by_order_and_is_idempotent(
    gate_factory: GateFactory, empty_registry: dict[Edge, list[type[Gate]]]
) -> None:
    late = gate_factory("late", TO_PROD, Verdict.passed("x"), order=50)
    early = gate_factory("early", TO_PROD, Verdict.passed("x"), order=10)
    assert register(late) is late
    register(early)
    register(late)
    assert empty_registry == {TO_PROD: [early, late]}


def test_gate_names_are_unique_across_edges(
    gate_factory: GateFactory, empty_registry: dict[Edge, list[type[Gate]]]
) -> None:
    """A recorded result must point at exactly one piece of code."""
    register(gate_factory("same", TO_STAGING, Verdict.passed("x")))
    with pytest.raises(ValueError, match="gate name 'same' is already registered"):
        register(gate_factory("same", TO_PROD, Verdict.passed("x")))
    assert TO_PROD not in empty_registry


def test_builtin_gates() -> None:
    """commit_exists guards the staging edge and runs before anything else there."""
    staging = gates_for(TO_STAGING)
    assert staging[0] is CommitExists
    assert CommitExists.name == "commit_exists"
    assert gates_for(TO_STAGING) is not gates._REGISTRY[TO_STAGING], "callers must get a copy"


def test_register_gate_fixture_registers_for_the_test(register_gate: Callable[..., type[Gate]]) -> None:
    """Its removal afterwards is checked for every test by the autouse ``gate_registry_guard``."""
    gate = register_gate("fixture_probe", TO_PROD, Verdict.passed("x"))
    assert gate in gates_for(TO_PROD)


# --------------------------------------------------------------------------------------------------
# commit_exists against a real repository


def test_commit_exists_passes_for_head(git_repo: MakeRepo, ctx: GateContext) -> None:
    repo = git_repo()
    ctx.app = AppConfig(name="demo", source=repo.path)
    ctx.sha = repo.sha
    (result,) = run_gates([CommitExists], ctx, Recorder())
    assert result.status is GateStatus.PASS
    assert result.reason == f"commit {repo.sha[:12]} exists"
    assert result.details == {"repository": str(repo.path), "subject": "initial commit"}


def test_commit_exists_fails_for_an_unknown_sha(git_repo: MakeRepo, ctx: GateContext) -> None:
    repo = git_repo()
    ctx.app = AppConfig(name="demo", source=repo.path)
    ctx.sha = "0123456789abcdef" * 2 + "01234567"
    (result,) = run_gates([CommitExists], ctx, Recorder())
    assert result.status is GateStatus.FAIL
    assert f"commit {ctx.sha} is not in {repo.path}" in result.reason


def test_commit_exists_rejects_a_tree_sha(git_repo: MakeRepo, ctx: GateContext) -> None:
    """A tree or blob id is a real object but not something CI validated and we could build."""
    repo = git_repo()
    tree = subprocess.run(
        ["git", "-C", str(repo.path), "rev-parse", "HEAD^{tree}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ctx.app = AppConfig(name="demo", source=repo.path)
    ctx.sha = tree
    (result,) = run_gates([CommitExists], ctx, Recorder())
    assert result.status is GateStatus.FAIL


def test_commit_exists_on_a_missing_repository_is_infrastructure(tmp_path: Path, ctx: GateContext) -> None:
    ctx.app = AppConfig(name="demo", source=tmp_path / "gone")
    record = Recorder()
    with pytest.raises(InfraUnavailable) as excinfo:
        run_gates([CommitExists], ctx, record)
    assert excinfo.value.message == (
        f"app source {tmp_path / 'gone'} does not exist: check 'source' in orchestrator.toml"
    )
    assert record.results[0].status is GateStatus.ERROR


def test_commit_exists_on_a_directory_that_is_not_a_repository(tmp_path: Path, ctx: GateContext) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    ctx.app = AppConfig(name="demo", source=plain)
    with pytest.raises(InfraUnavailable, match="is not a readable git repository"):
        run_gates([CommitExists], ctx, Recorder())
