"""``advance`` with the real gate set when the Docker engine does not answer (no engine needed)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from orchestrator.gates import gates_for
from orchestrator.machine import EDGES
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli, Workspace


@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_unreachable_engine_changes_nothing(
    cli: Cli, workspace: Workspace, store: Store, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    """An edge whose gates need Docker must connect before writing anything: with no engine there is
    no transition and no lock, not an edge abandoned half-way."""
    assert any(g.needs_docker for g in gates_for(EDGES[0])), "precondition: the staging edge needs Docker"
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    run_id = cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, as_json=True).ok()["run_id"]

    result = cli("advance", run_id, "--to", "deploy-staging", as_json=as_json)
    message = result.error(4, "infrastructure_unavailable")
    assert message.startswith("Docker engine is unreachable")
    assert "and try again" in message
    assert store.get_run(run_id).state == "development"
    assert store.transitions(run_id) == []
