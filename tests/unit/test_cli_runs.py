"""The run contract through the real CLI (click + service + store + git), without Docker.

Only the Docker-free built-in gates are registered (``docker_free_gates``); edges that need a
verdict from a later gate get a temporary test gate. What is checked every time: the exit code, what
the user reads, and what the database now says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.gates import Gate, Verdict
from orchestrator.machine import TO_PROD, TO_STAGING
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli, Workspace

pytestmark = pytest.mark.usefixtures("docker_free_gates")

RegisterGate = Callable[..., type[Gate]]


def start(cli: Cli, workspace: Workspace, sha: str | None = None, *extra: str) -> dict[str, Any]:
    payload = cli(
        "run", "start", "--app", "demo", "--sha", sha or workspace.repo.sha, *extra, as_json=True
    ).ok()
    assert isinstance(payload, dict)
    return payload


# --------------------------------------------------------------------------------------------------
# run start


def test_run_start_json(cli: Cli, workspace: Workspace, store: Store) -> None:
    payload = start(cli, workspace, None, "--actor", "ci: deploy #88")
    assert payload["app"] == "demo"
    assert payload["sha"] == workspace.repo.sha
    assert payload["state"] == "development"
    assert payload["actor"] == "ci: deploy #88"
    assert isinstance(payload["run_id"], int)
    persisted = store.get_run(payload["run_id"])
    assert (persisted.app, persisted.sha, persisted.state, persisted.actor) == (
        "demo",
        workspace.repo.sha,
        "development",
        "ci: deploy #88",
    )
    assert store.transitions(payload["run_id"]) == [], "starting a run is not a transition"


def test_run_start_human(cli: Cli, workspace: Workspace, store: Store) -> None:
    result = cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha)
    result.ok()
    (run,) = store.list_runs()
    assert result.stdout == f"run {run.id} started: demo @ {workspace.repo.sha} in development\n"


def test_run_start_normalises_the_sha(cli: Cli, workspace: Workspace) -> None:
    """git prints lowercase; an uppercase or padded sha must name the same run, not a lookalike."""
    payload = start(cli, workspace, f"  {workspace.repo.sha.upper()} ")
    assert payload["sha"] == workspace.repo.sha


def test_run_start_defaults_the_actor_to_the_os_user(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    assert start(cli, workspace)["actor"] == "alice"


def test_store_is_created_and_upgraded_on_first_use(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newcomer never has to remember 'db upgrade', nor create the default database's directory."""
    db_file = workspace.path / ".orchestrator" / "orchestrator.db"
    monkeypatch.delenv("ORCH_DATABASE_URL")
    start(cli, workspace)
    assert db_file.is_file()
    upgrade = cli("db", "upgrade", as_json=True).ok()
    assert upgrade["from_revision"] is not None
    assert upgrade["from_revision"] == upgrade["to_revision"], "run start left the schema behind head"


# --------------------------------------------------------------------------------------------------
# both edges


def test_full_run_through_both_edges(
    cli: Cli, workspace: Workspace, store: Store, register_gate: RegisterGate
) -> None:
    register_gate("prod_probe", TO_PROD, Verdict.passed("prod looks fine", port=8500))
    run_id = start(cli, workspace)["run_id"]

    staging = cli("advance", run_id, "--to", "deploy-staging", as_json=True).ok()
    assert (staging["from"], staging["to"], staging["state"], staging["outcome"]) == (
        "development",
        "deploy-staging",
        "deploy-staging",
        "succeeded",
    )
    assert staging["reason"] is None
    assert [(c["name"], c["status"]) for c in staging["checks"]] == [("commit_exists", "pass")]
    assert store.get_run(run_id).state == "deploy-staging"

    prod = cli("advance", run_id, "--to", "deploy", as_json=True).ok()
    assert (prod["from"], prod["to"], prod["state"], prod["outcome"]) == (
        "deploy-staging",
        "deploy",
        "deploy",
        "succeeded",
    )
    assert [(c["name"], c["status"], c["details"]) for c in prod["checks"]] == [
        ("prod_probe", "pass", {"port": 8500})
    ]
    assert store.get_run(run_id).state == "deploy"


def test_runs_show_json_of_a_finished_run_lists_every_transition_with_its_gate_results(
    cli: Cli, workspace: Workspace, register_gate: RegisterGate
) -> None:
    register_gate("prod_probe", TO_PROD, Verdict.passed("prod looks fine"))
    run_id = start(cli, workspace, None, "--actor", "ci")["run_id"]
    first = cli("advance", run_id, "--to", "deploy-staging", "--actor", "alice", as_json=True).ok()
    second = cli("advance", run_id, "--to", "deploy", "--actor", "bob", as_json=True).ok()

    shown = cli("runs", "show", run_id, as_json=True).ok()
    assert (shown["run_id"], shown["app"], shown["sha"], shown["state"], shown["actor"]) == (
        run_id,
        "demo",
        workspace.repo.sha,
        "deploy",
        "ci",
    )
    t1, t2 = shown["transitions"]
    assert (t1["transition_id"], t1["from"], t1["to"], t1["outcome"], t1["result_state"], t1["actor"]) == (
        first["transition_id"],
        "development",
        "deploy-staging",
        "succeeded",
        "deploy-staging",
        "alice",
    )
    assert (t2["transition_id"], t2["from"], t2["to"], t2["outcome"], t2["result_state"], t2["actor"]) == (
        second["transition_id"],
        "deploy-staging",
        "deploy",
        "succeeded",
        "deploy",
        "bob",
    )
    for t in (t1, t2):
        assert t["reason"] is None
        assert t["started_at"] and t["finished_at"] and t["finished_at"] >= t["started_at"]
    (c1,) = t1["checks"]
    assert (c1["name"], c1["status"], c1["reason"]) == (
        "commit_exists",
        "pass",
        f"commit {workspace.repo.sha[:12]} exists",
    )
    assert c1["details"] == {"repository": str(workspace.repo.path), "subject": "initial commit"}
    assert c1["started_at"] and c1["duration_s"] >= 0
    assert [(c["name"], c["status"], c["reason"]) for c in t2["checks"]] == [
        ("prod_probe", "pass", "prod looks fine")
    ]


def test_runs_show_human(cli: Cli, workspace: Workspace) -> None:
    run_id = start(cli, workspace)["run_id"]
    cli("advance", run_id, "--to", "deploy-staging").ok()
    result = cli("runs", "show", run_id)
    result.ok()
    out = result.stdout
    assert f"run {run_id}: demo @ {workspace.repo.sha}  state=deploy-staging" in out
    assert "development -> deploy-staging  succeeded" in out
    assert "commit_exists" in out and "pass" in out


def test_advance_human_output(cli: Cli, workspace: Workspace) -> None:
    run_id = start(cli, workspace)["run_id"]
    result = cli("advance", run_id, "--to", "deploy-staging")
    result.ok()
    assert f"run {run_id}: development -> deploy-staging ok, now in deploy-staging" in result.stdout
    assert "commit_exists" in result.stdout


def test_gates_run_in_registration_order_and_stop_at_the_first_failure(
    cli: Cli, workspace: Workspace, store: Store, register_gate: RegisterGate
) -> None:
    """commit_exists (order 10) first; a gate after the failing one must not run (it could deploy)."""
    register_gate("early_check", TO_STAGING, Verdict.passed("ok"), order=15)
    register_gate("blocker", TO_STAGING, Verdict.failed("no"), order=20)
    never = register_gate("would_deploy", TO_STAGING, Verdict.passed("deployed"), order=30)
    run_id = start(cli, workspace)["run_id"]
    assert cli("advance", run_id, "--to", "deploy-staging").exit_code == 1
    (t,) = store.transitions(run_id)
    assert [(c.name, c.status) for c in t.checks] == [
        ("commit_exists", "pass"),
        ("early_check", "pass"),
        ("blocker", "fail"),
    ]
    assert never.calls == []  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# runs list


@pytest.fixture
def history(cli: Cli, workspace: Workspace) -> dict[str, list[int]]:
    """Five runs: demo x3 (one advanced to deploy-staging), other x2."""
    workspace.set_apps({"demo": workspace.repo.path, "other": workspace.repo.path})
    ids: dict[str, list[int]] = {"demo": [], "other": []}
    for app in ("demo", "other", "demo", "other", "demo"):
        payload = cli("run", "start", "--app", app, "--sha", workspace.repo.sha, as_json=True).ok()
        ids[app].append(payload["run_id"])
    cli("advance", ids["demo"][1], "--to", "deploy-staging").ok()
    return ids


def listed(cli: Cli, *args: str | int) -> list[dict[str, Any]]:
    return cli("runs", "list", *args, as_json=True).ok()["runs"]


def test_runs_list_newest_first(cli: Cli, history: dict[str, list[int]]) -> None:
    every = sorted(history["demo"] + history["other"], reverse=True)
    assert [r["run_id"] for r in listed(cli)] == every


def test_runs_list_by_app(cli: Cli, history: dict[str, list[int]]) -> None:
    runs = listed(cli, "--app", "other")
    assert [r["run_id"] for r in runs] == sorted(history["other"], reverse=True)
    assert {r["app"] for r in runs} == {"other"}
    assert listed(cli, "--app", "nobody") == []


def test_runs_list_by_state(cli: Cli, history: dict[str, list[int]]) -> None:
    assert [r["run_id"] for r in listed(cli, "--state", "deploy-staging")] == [history["demo"][1]]
    assert [r["run_id"] for r in listed(cli, "--app", "other", "--state", "deploy-staging")] == []
    dev = listed(cli, "--app", "demo", "--state", "development")
    assert [r["run_id"] for r in dev] == [history["demo"][2], history["demo"][0]]
    assert listed(cli, "--state", "deploy") == []


def test_runs_list_limit(cli: Cli, history: dict[str, list[int]]) -> None:
    every = sorted(history["demo"] + history["other"], reverse=True)
    assert [r["run_id"] for r in listed(cli, "--limit", 2)] == every[:2]
    assert [r["run_id"] for r in listed(cli, "--app", "demo", "--limit", 1)] == [history["demo"][2]]


def test_runs_list_human(cli: Cli, workspace: Workspace, history: dict[str, list[int]]) -> None:
    out = cli("runs", "list", "--state", "deploy-staging").stdout
    lines = out.splitlines()
    assert len(lines) == 1
    assert lines[0].split()[:4] == [
        str(history["demo"][1]),
        "demo",
        workspace.repo.sha[:12],
        "deploy-staging",
    ]
    assert cli("runs", "list", "--app", "nobody").stdout == "no runs\n"


def test_history_commands_work_without_a_config_file(cli: Cli, workspace: Workspace) -> None:
    """Operators inspect history from anywhere; only commands that need an app need the config."""
    run_id = start(cli, workspace)["run_id"]
    workspace.config_path.unlink()
    assert [r["run_id"] for r in listed(cli)] == [run_id]
    assert cli("runs", "show", run_id, as_json=True).ok()["run_id"] == run_id


def test_actor_longer_than_the_column_is_bad_input(cli: Cli, workspace: Workspace, store: Store) -> None:
    """PostgreSQL would reject a 201-character actor with a raw database error; say so up front."""
    message = cli(
        "run", "start", "--app", "demo", "--sha", workspace.repo.sha, "--actor", "x" * 201, as_json=True
    ).error(2, "bad_input")
    assert "--actor must be 1 to 200 characters" in message
    assert store.list_runs() == []


def test_every_advance_log_line_carries_run_app_sha_and_edge(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, register_gate: RegisterGate
) -> None:
    """Operators grep one run's story out of a shared CI log; a line without its run is lost evidence."""
    monkeypatch.setenv("ORCH_LOG_FORMAT", "json")
    register_gate("always_fails", TO_PROD, Verdict.failed("nope"))
    run_id = start(cli, workspace)["run_id"]
    for target, code in (("deploy-staging", 0), ("deploy", 1)):
        result = cli("advance", run_id, "--to", target)
        assert result.exit_code == code, result.describe()
        lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
        events = {line["event"] for line in lines}
        assert {"transition_started", "gate_finished", "transition_finished"} <= events, lines
        for line in lines:
            assert line["run_id"] == run_id and line["app"] == "demo", line
            assert line["sha"] == workspace.repo.sha and line["edge"].endswith(f"->{target}"), line


def test_infrastructure_lost_mid_edge_still_undoes_side_effects(
    cli: Cli, workspace: Workspace, store: Store, register_gate: RegisterGate
) -> None:
    """A registry or engine that stops answering after a gate changed something must not leave that change
    behind: the run stays where it was (exit 4), and the undo runs and is on record."""
    from orchestrator.errors import InfraUnavailable
    from orchestrator.gates import Compensation, GateContext

    undone: list[str] = []

    def touch_then_lose_infra(ctx: GateContext) -> Verdict:
        ctx.compensations.append(
            Compensation("undo_touch", lambda: (undone.append("x"), Verdict.passed("undone"))[1])
        )
        raise InfraUnavailable("registry 127.0.0.1:1 unreachable")

    register_gate("touches_then_fails", TO_STAGING, touch_then_lose_infra)
    run_id = start(cli, workspace)["run_id"]
    message = cli("advance", run_id, "--to", "deploy-staging", as_json=True).error(
        4, "infrastructure_unavailable"
    )
    assert message == "registry 127.0.0.1:1 unreachable; undo_touch: undone"
    assert undone == ["x"]
    (transition,) = store.transitions(run_id)
    assert transition.outcome == "aborted" and transition.result_state == "development"
    assert transition.reason == "registry 127.0.0.1:1 unreachable; undo_touch: undone"
    assert [(c.name, c.status) for c in transition.checks][-2:] == [
        ("touches_then_fails", "error"),
        ("undo_touch", "pass"),
    ]
