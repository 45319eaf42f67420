"""Every exit code the CLI promises (README, "Exit codes"), with its message and what was persisted.

A CI pipeline branches on these codes: 1 rejected deploy, 2 typo, 3 busy/illegal, 4 broken runner.
A wrong code, or a side effect where the contract says "nothing changed", sends it down the wrong
branch. Error cases run in both output modes: with --json the error must be the one object on stdout.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.errors import InfraUnavailable
from orchestrator.gates import Gate, Verdict
from orchestrator.holder import Holder
from orchestrator.machine import TO_PROD
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli, Workspace

pytestmark = [
    pytest.mark.usefixtures("docker_free_gates"),
    pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"]),
]

RegisterGate = Callable[..., type[Gate]]
UNKNOWN_SHA = "deadbeef" * 5


def live(target: str) -> dict[str, Any]:
    """begin_transition's holder arguments for a live holder: this very process."""
    return {"target_environment": target, "holder": Holder.me(), "lease_s": 30.0}


def start(cli: Cli, workspace: Workspace, sha: str | None = None) -> int:
    payload = cli("run", "start", "--app", "demo", "--sha", sha or workspace.repo.sha, as_json=True).ok()
    return int(payload["run_id"])


def snapshot(store: Store, run_id: int) -> tuple[str, list[Any]]:
    """The run's state and its transitions: what "nothing was recorded as moved" compares."""
    return store.get_run(run_id).state, store.transitions(run_id)


# --------------------------------------------------------------------------------------------------
# exit 1: a gate failed, the run went back to development, the reason is on record


def test_unknown_sha_fails_commit_exists_and_persists_the_reason(
    cli: Cli, workspace: Workspace, store: Store, as_json: bool
) -> None:
    run_id = start(cli, workspace, UNKNOWN_SHA)
    result = cli("advance", run_id, "--to", "deploy-staging", as_json=as_json)
    assert result.exit_code == 1, result.describe()
    expected_reason = f"commit_exists: commit {UNKNOWN_SHA} is not in {workspace.repo.path}"
    if as_json:
        assert result.payload["outcome"] == "failed"
        assert result.payload["state"] == "development"
        assert result.payload["reason"].startswith(expected_reason)
        assert [(c["name"], c["status"]) for c in result.payload["checks"]] == [("commit_exists", "fail")]
    else:
        assert "FAILED, back in development" in result.stdout
        assert expected_reason in result.stdout

    assert store.get_run(run_id).state == "development"
    shown = cli("runs", "show", run_id, as_json=True).ok()
    (t,) = shown["transitions"]
    assert (t["from"], t["to"], t["outcome"], t["result_state"]) == (
        "development",
        "deploy-staging",
        "failed",
        "development",
    )
    assert t["reason"].startswith(expected_reason)
    assert "push it, or start a run with a sha from that repository" in t["reason"]
    (check,) = t["checks"]
    assert (check["name"], check["status"]) == ("commit_exists", "fail")
    assert check["details"] == {"repository": str(workspace.repo.path)}


def test_failing_gate_on_the_prod_edge_rolls_back_to_development(
    cli: Cli, workspace: Workspace, store: Store, register_gate: RegisterGate, as_json: bool
) -> None:
    register_gate(
        "smoke_test", TO_PROD, Verdict.failed("GET /checkout answered 500", status=500, url="/checkout")
    )
    run_id = start(cli, workspace)
    cli("advance", run_id, "--to", "deploy-staging").ok()

    result = cli("advance", run_id, "--to", "deploy", as_json=as_json)
    assert result.exit_code == 1, result.describe()
    reason = "smoke_test: GET /checkout answered 500"
    if as_json:
        assert (result.payload["outcome"], result.payload["state"], result.payload["reason"]) == (
            "failed",
            "development",
            reason,
        )
    else:
        assert (
            f"run {run_id}: deploy-staging -> deploy FAILED, back in development: {reason}" in result.stdout
        )

    assert store.get_run(run_id).state == "development"
    first, second = store.transitions(run_id)
    assert first.outcome == "succeeded"
    assert (second.from_state, second.to_state, second.outcome, second.result_state, second.reason) == (
        "deploy-staging",
        "deploy",
        "failed",
        "development",
        reason,
    )
    (check,) = second.checks
    assert (check.name, check.status, check.details) == (
        "smoke_test",
        "fail",
        {"status": 500, "url": "/checkout"},
    )
    # Back in development means the whole way again, and the locks of the failed edge are gone.
    cli("advance", run_id, "--to", "deploy-staging").ok()


def test_crashing_gate_blocks_and_is_recorded_as_error(
    cli: Cli, workspace: Workspace, store: Store, register_gate: RegisterGate, as_json: bool
) -> None:
    """A bug in a gate must never wave an edge through."""
    register_gate("buggy", TO_PROD, ZeroDivisionError("division by zero"))
    run_id = start(cli, workspace)
    cli("advance", run_id, "--to", "deploy-staging").ok()
    result = cli("advance", run_id, "--to", "deploy", as_json=as_json)
    assert result.exit_code == 1, result.describe()
    assert store.get_run(run_id).state == "development"
    t = store.transitions(run_id)[-1]
    assert (t.outcome, t.reason) == ("failed", "buggy: ZeroDivisionError: division by zero")
    assert [(c.name, c.status) for c in t.checks] == [("buggy", "error")]


# --------------------------------------------------------------------------------------------------
# exit 2: bad input, nothing written


@pytest.mark.parametrize("sha", ["abc123", "g" * 40, "a" * 39, "a" * 41, "", "HEAD"])
def test_run_start_with_a_malformed_sha(
    cli: Cli, workspace: Workspace, store: Store, sha: str, as_json: bool
) -> None:
    message = cli("run", "start", "--app", "demo", "--sha", sha, as_json=as_json).error(2, "bad_input")
    assert f"sha {sha!r} is not a full commit sha (40 hex characters)" in message
    assert "git rev-parse HEAD" in message
    assert store.list_runs() == []


def test_run_start_with_an_unknown_app(cli: Cli, workspace: Workspace, store: Store, as_json: bool) -> None:
    result = cli("run", "start", "--app", "shop", "--sha", workspace.repo.sha, as_json=as_json)
    message = result.error(2, "bad_input")
    assert f"unknown app 'shop' in {workspace.config_path} (known apps: demo)" == message
    assert store.list_runs() == []


@pytest.mark.parametrize(
    "args",
    [("advance", 999, "--to", "deploy-staging"), ("runs", "show", 999)],
    ids=["advance", "show"],
)
def test_unknown_run(cli: Cli, workspace: Workspace, args: tuple[Any, ...], as_json: bool) -> None:
    message = cli(*args, as_json=as_json).error(2, "bad_input")
    assert message == "unknown run 999: 'orchestrator runs list' shows the runs there are"


def test_advance_to_an_unknown_state(cli: Cli, workspace: Workspace, store: Store, as_json: bool) -> None:
    run_id = start(cli, workspace)
    message = cli("advance", run_id, "--to", "bogus", as_json=as_json).error(2, "bad_input")
    states = "development, deploy-staging, deploy, superseded, rejected"
    assert message == f"unknown state 'bogus' (states: {states})"
    assert snapshot(store, run_id) == ("development", [])


def test_advance_a_run_whose_app_left_the_config(
    cli: Cli, workspace: Workspace, store: Store, as_json: bool
) -> None:
    """The config changed under a started run: refuse before claiming anything."""
    run_id = start(cli, workspace)
    workspace.set_apps({"other": workspace.repo.path})
    message = cli("advance", run_id, "--to", "deploy-staging", as_json=as_json).error(2, "bad_input")
    assert message == f"unknown app 'demo' in {workspace.config_path} (known apps: other)"
    assert snapshot(store, run_id) == ("development", [])


def test_runs_list_with_an_unknown_state(cli: Cli, workspace: Workspace, as_json: bool) -> None:
    message = cli("runs", "list", "--state", "prod", as_json=as_json).error(2, "bad_input")
    assert message.startswith("unknown state 'prod'")


def test_malformed_config(cli: Cli, workspace: Workspace, store: Store, as_json: bool) -> None:
    workspace.write_config('[apps.demo\nsource = "x"\n')
    message = cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, as_json=as_json).error(
        2, "bad_input"
    )
    assert message.startswith(f"{workspace.config_path} is not valid TOML")
    assert store.list_runs() == []


def test_bad_boolean_environment_value(
    cli: Cli, workspace: Workspace, store: Store, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    """A kill-switch set to a typo must stop the tool, not silently pick on or off."""
    run_id = start(cli, workspace)
    monkeypatch.setenv("ORCH_IMAGE_FRESHNESS_ENABLED", "maybe")
    message = cli("advance", run_id, "--to", "deploy-staging", as_json=as_json).error(2, "bad_input")
    assert "ORCH_IMAGE_FRESHNESS_ENABLED='maybe' is not a boolean: use true/false, 1/0 or yes/no" in message
    assert snapshot(store, run_id) == ("development", [])


def test_unknown_orch_variable(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    monkeypatch.setenv("ORCH_IMAGE_FRESHNES_ENABLED", "false")
    message = cli("runs", "list", as_json=as_json).error(2, "bad_input")
    assert "unknown variable(s) ORCH_IMAGE_FRESHNES_ENABLED" in message


def test_config_named_by_option_must_exist(cli: Cli, workspace: Workspace, as_json: bool) -> None:
    missing = workspace.path / "missing.toml"
    args = ("--config", str(missing), "run", "start", "--app", "demo", "--sha", workspace.repo.sha)
    message = cli(*args, as_json=as_json).error(2, "bad_input")
    assert message == f"config file {missing} does not exist"


@pytest.mark.parametrize(
    "args",
    [
        ("advance", "one", "--to", "deploy"),  # RUN_ID is not an integer
        ("runs", "list", "--limit", "0"),  # out of range
        ("run", "start", "--app", "demo"),  # --sha missing
    ],
    ids=["run-id-not-int", "limit-out-of-range", "missing-option"],
)
def test_usage_errors_are_exit_2_and_honour_json(
    cli: Cli, workspace: Workspace, args: tuple[str, ...], as_json: bool
) -> None:
    """README: 'With --json, stdout carries exactly one JSON object (errors too)'. A pipeline piping
    stdout to jq must get an object for a typo in the command line as well."""
    result = cli(*args, as_json=as_json)
    if as_json:
        assert result.error(2, "bad_input")
    else:  # click's own usage format is fine for people
        assert result.exit_code == 2, result.describe()
        assert result.stdout == ""
        assert "Error: " in result.stderr


# --------------------------------------------------------------------------------------------------
# exit 3: conflict, nothing recorded as moved


def test_illegal_move_skipping_staging(cli: Cli, workspace: Workspace, store: Store, as_json: bool) -> None:
    run_id = start(cli, workspace)
    message = cli("advance", run_id, "--to", "deploy", as_json=as_json).error(3, "conflict")
    assert message == "cannot move from development to deploy; allowed from development: deploy-staging"
    assert snapshot(store, run_id) == ("development", [])
    shown = cli("runs", "show", run_id, as_json=True).ok()
    assert (shown["state"], shown["transitions"]) == ("development", [])


def test_finished_run_cannot_move(cli: Cli, workspace: Workspace, store: Store, as_json: bool) -> None:
    run_id = start(cli, workspace)
    cli("advance", run_id, "--to", "deploy-staging").ok()
    cli("advance", run_id, "--to", "deploy").ok()
    before = snapshot(store, run_id)
    for target in ("deploy", "deploy-staging", "development"):
        message = cli("advance", run_id, "--to", target, as_json=as_json).error(3, "conflict")
        assert "allowed from deploy: none (the run is finished)" in message
    assert snapshot(store, run_id) == before


def test_environment_lock_held_by_another_run(
    cli: Cli, workspace: Workspace, store: Store, as_json: bool
) -> None:
    """Two runs must never build or swap the same environment at once; the second is told who holds it."""
    run_a = start(cli, workspace)
    run_b = start(cli, workspace)
    store.begin_transition(
        run_a, "development", "deploy-staging", "ci: pipeline 41", ("staging",), **live("staging")
    )
    before_b = snapshot(store, run_b)

    message = cli("advance", run_b, "--to", "deploy-staging", as_json=as_json).error(3, "conflict")
    assert f"demo staging is locked by run {run_a} (ci: pipeline 41) since " in message
    assert "wait for it to finish" in message
    assert snapshot(store, run_b) == before_b == ("development", [])
    (held,) = store.transitions(run_a)
    assert held.outcome == "in_progress", "the loser must not disturb the holder's transition"


def test_locks_are_per_app(cli: Cli, workspace: Workspace, store: Store, as_json: bool) -> None:
    workspace.set_apps({"demo": workspace.repo.path, "other": workspace.repo.path})
    run_a = start(cli, workspace)
    other = cli("run", "start", "--app", "other", "--sha", workspace.repo.sha, as_json=True).ok()["run_id"]
    store.begin_transition(run_a, "development", "deploy-staging", "ci", ("staging",), **live("staging"))
    cli("advance", other, "--to", "deploy-staging", as_json=as_json).ok()
    assert store.get_run(other).state == "deploy-staging"


def test_run_with_an_unfinished_transition_cannot_advance(
    cli: Cli, workspace: Workspace, store: Store, as_json: bool
) -> None:
    """An in_progress row means a runner is mid-edge (or crashed there): a second runner must not start
    the same edge on top of it."""
    run_id = start(cli, workspace)
    transition_id = store.begin_transition(
        run_id, "development", "deploy-staging", "runner-1", ("staging",), **live("staging")
    )
    message = cli("advance", run_id, "--to", "deploy-staging", as_json=as_json).error(3, "conflict")
    assert f"run {run_id} has an unfinished transition {transition_id}" in message
    assert "(development->deploy-staging, in_progress, started " in message
    state, transitions = snapshot(store, run_id)
    assert state == "development"
    assert [(t.id, t.outcome) for t in transitions] == [(transition_id, "in_progress")]


# --------------------------------------------------------------------------------------------------
# exit 4: infrastructure unavailable, nothing decided


def test_app_repository_gone(cli: Cli, workspace: Workspace, store: Store, as_json: bool) -> None:
    """A missing checkout says nothing about the commit: abort (exit 4), do not roll back (exit 1)."""
    run_id = start(cli, workspace)
    shutil.rmtree(workspace.repo.path)
    result = cli("advance", run_id, "--to", "deploy-staging", as_json=as_json)
    message = result.error(4, "infrastructure_unavailable")
    assert message == f"app source {workspace.repo.path} does not exist: check 'source' in orchestrator.toml"
    if as_json:
        assert result.payload["run_id"] == run_id
        assert result.payload["state"] == "development"

    state, (t,) = snapshot(store, run_id)
    assert state == "development"
    assert (t.outcome, t.result_state, t.reason) == ("aborted", "development", message)
    assert result.payload is None or result.payload["transition_id"] == t.id
    (check,) = t.checks
    assert (check.name, check.status, check.details) == ("commit_exists", "error", {"infrastructure": True})

    # The aborted edge released its lock, and no new run of an app without its repository is recorded.
    assert store.locks() == []
    refused = cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, as_json=as_json)
    assert "source" in refused.error(2, "bad_input") and len(store.list_runs()) == 1


def test_prod_edge_abort_keeps_the_run_in_deploy_staging(
    cli: Cli, workspace: Workspace, store: Store, register_gate: RegisterGate, as_json: bool
) -> None:
    """An abort leaves the run where it was, whichever edge: not development, not deploy."""
    register_gate("registry_push", TO_PROD, InfraUnavailable("registry.internal did not answer"))
    run_id = start(cli, workspace)
    cli("advance", run_id, "--to", "deploy-staging").ok()
    message = cli("advance", run_id, "--to", "deploy", as_json=as_json).error(4, "infrastructure_unavailable")
    assert message == "registry.internal did not answer"
    state, transitions = snapshot(store, run_id)
    assert state == "deploy-staging"
    assert (transitions[-1].outcome, transitions[-1].result_state) == ("aborted", "deploy-staging")


def test_database_unreachable(
    cli: Cli,
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    free_port: Callable[[], int],
    as_json: bool,
) -> None:
    port = free_port()
    monkeypatch.setenv("ORCH_DATABASE_URL", f"postgresql+psycopg://orch:hunter2-secret@127.0.0.1:{port}/orch")
    for args in (("run", "start", "--app", "demo", "--sha", workspace.repo.sha), ("runs", "list")):
        result = cli(*args, as_json=as_json)
        message = result.error(4, "infrastructure_unavailable")
        assert f"database postgresql+psycopg://orch:***@127.0.0.1:{port}/orch is unreachable" in message
        assert "check ORCH_DATABASE_URL and that the server is running" in message
        assert "hunter2-secret" not in result.stdout + result.stderr, "the password must never be printed"
