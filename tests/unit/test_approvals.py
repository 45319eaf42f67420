"""Approvals: the pure rules (which decision is possible when), then the contract through the real CLI
(exit codes, what is recorded), then `advance --wait` while a person decides in another thread."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.approvals import Decision, Standing, decidable_edge, standing
from orchestrator.config import load_config
from orchestrator.errors import AwaitingApproval, BadInput, Conflict, Rejected
from orchestrator.holder import Holder
from orchestrator.machine import TO_PROD, TO_STAGING, State
from orchestrator.service import RunService
from orchestrator.store.records import ApprovalRecord
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli, Workspace

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
PROD_ONLY = frozenset({"prod"})


def decision(kind: str, env: str = "prod", actor: str = "alice", reason: str | None = None) -> ApprovalRecord:
    return ApprovalRecord(1, 7, env, kind, actor, reason, NOW)


# --------------------------------------------------------------------------------------------------
# the rules


def test_standing_of_the_prod_edge() -> None:
    assert standing(frozenset(), TO_PROD, []) == Standing.NOT_REQUIRED
    assert standing(PROD_ONLY, TO_STAGING, []) == Standing.NOT_REQUIRED
    assert standing(PROD_ONLY, TO_PROD, []) == Standing.AWAITING
    assert standing(PROD_ONLY, TO_PROD, [decision("approved", env="staging")]) == Standing.AWAITING
    assert standing(PROD_ONLY, TO_PROD, [decision("approved")]) == Standing.APPROVED
    # A rejection after an approval wins: someone stopped it before it ran.
    assert standing(PROD_ONLY, TO_PROD, [decision("approved"), decision("rejected")]) == Standing.REJECTED


@given(
    required=st.sets(st.sampled_from(["staging", "prod"])).map(frozenset),
    decisions=st.lists(
        st.tuples(st.sampled_from(["staging", "prod"]), st.sampled_from(["approved", "rejected"])), max_size=4
    ),
)
def test_standing_properties(required: frozenset[str], decisions: list[tuple[str, str]]) -> None:
    """Only the decisions about the edge's own environment count; a rejection always wins; an edge
    that requires approval is never let through without an approval."""
    records = [decision(kind, env=env) for env, kind in decisions]
    for edge, env in ((TO_STAGING, "staging"), (TO_PROD, "prod")):
        got = standing(required, edge, records)
        mine = {kind for e, kind in decisions if e == env}
        if env not in required:
            assert got == Standing.NOT_REQUIRED
        elif "rejected" in mine:
            assert got == Standing.REJECTED
        elif "approved" in mine:
            assert got == Standing.APPROVED
        else:
            assert got == Standing.AWAITING


def decide_rule(state: State, decisions: list[ApprovalRecord] | None = None, **kw: Any) -> Any:
    return decidable_edge(
        7,
        "shop",
        state,
        kw.get("required", PROD_ONLY),
        decisions or [],
        kw.get("decision", Decision.APPROVED),
    )


def test_a_run_in_deploy_staging_may_be_approved_or_rejected() -> None:
    assert decide_rule(State.DEPLOY_STAGING) == TO_PROD
    assert decide_rule(State.DEPLOY_STAGING, decision=Decision.REJECTED) == TO_PROD
    # Changing one's mind towards stopping is allowed; approving twice is not.
    assert decide_rule(State.DEPLOY_STAGING, [decision("approved")], decision=Decision.REJECTED) == TO_PROD
    with pytest.raises(Conflict, match="already approved for prod by alice"):
        decide_rule(State.DEPLOY_STAGING, [decision("approved")])


@pytest.mark.parametrize(
    ("state", "required", "message"),
    [
        (State.DEVELOPMENT, PROD_ONLY, "its next edge \\(to deploy-staging\\) needs no approval"),
        (State.DEPLOY, PROD_ONLY, "already reached deploy"),
        (State.SUPERSEDED, PROD_ONLY, "superseded by a newer run of shop"),
        (State.REJECTED, PROD_ONLY, "was rejected"),
        (State.DEPLOY_STAGING, frozenset(), "shop does not require approval"),
    ],
)
def test_runs_not_awaiting_approval_are_refused(state: State, required: frozenset[str], message: str) -> None:
    for kind in Decision:
        with pytest.raises(Conflict, match=message):
            decide_rule(state, required=required, decision=kind)


def test_staging_approval_applies_to_the_staging_edge() -> None:
    both = frozenset({"staging", "prod"})
    assert decide_rule(State.DEVELOPMENT, required=both) == TO_STAGING
    assert decide_rule(State.DEPLOY_STAGING, [decision("approved", env="staging")], required=both) == TO_PROD


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", {"prod"}), ("false", set()), ('["staging", "prod"]', {"staging", "prod"}), ("[]", set())],
)
def test_require_approval_config(workspace: Workspace, raw: str, expected: set[str]) -> None:
    add_to_demo(workspace, f"require_approval = {raw}")
    assert load_config(workspace.config_path).app("demo").require_approval == expected


@pytest.mark.parametrize("raw", ['"yes"', '["production"]', "1", "[true]"])
def test_require_approval_config_refuses_what_it_cannot_read(workspace: Workspace, raw: str) -> None:
    """A misspelt environment read as "no approval" would let prod deploy unapproved."""
    add_to_demo(workspace, f"require_approval = {raw}")
    with pytest.raises(BadInput, match="require_approval"):
        load_config(workspace.config_path)


# --------------------------------------------------------------------------------------------------
# through the CLI


def add_to_demo(workspace: Workspace, line: str) -> None:
    """The config's last table is [apps.demo]: append a key to it."""
    text = workspace.config_path.read_text(encoding="utf-8")
    workspace.write_config(text.rstrip("\n") + f"\n{line}\n")


@pytest.fixture
def approval_ws(workspace: Workspace) -> Workspace:
    add_to_demo(workspace, "require_approval = true")
    return workspace


def staged_run(cli: Cli, workspace: Workspace) -> int:
    run_id = cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, as_json=True).ok()["run_id"]
    cli("advance", run_id, "--to", "deploy-staging", as_json=True).ok()
    return int(run_id)


@pytest.mark.usefixtures("docker_free_gates")
@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_prod_waits_for_approval_then_promotes_recording_who(
    cli: Cli, approval_ws: Workspace, store: Store, as_json: bool
) -> None:
    run_id = staged_run(cli, approval_ws)
    for _ in range(2):
        message = cli("advance", run_id, "--to", "deploy", as_json=as_json).error(3, "awaiting_approval")
        assert f"run {run_id} (demo @ {approval_ws.repo.sha[:12]}) is awaiting approval for prod" in message
        assert f"'orchestrator approve {run_id}'" in message
    assert store.get_run(run_id).state == "deploy-staging"
    assert [t.to_state for t in store.transitions(run_id)] == ["deploy-staging"], "waiting wrote no edge"
    requested = [e for e in store.events(run_id=run_id) if e.kind == "approval_requested"]
    assert len(requested) == 1, "the request is recorded once, not on every retry"

    approved = cli("approve", run_id, "--actor", "alice", "--reason", "release notes ok", as_json=True).ok()
    assert approved["approval"]["decision"] == "approved"
    assert approved["approval"]["actor"] == "alice"
    assert approved["approval"]["reason"] == "release notes ok"
    assert approved["approval"]["at"]
    assert (approved["from"], approved["to"], approved["state"]) == (
        "deploy-staging",
        "deploy",
        "deploy-staging",
    )

    prod = cli("advance", run_id, "--to", "deploy", as_json=True).ok()
    assert (prod["state"], prod["outcome"]) == ("deploy", "succeeded")
    (transition,) = [t for t in store.transitions(run_id) if t.to_state == "deploy"]
    first = transition.checks[0]
    assert (first.name, first.status, first.reason) == ("approval", "pass", "approved by alice")
    assert [e.kind for e in store.events(run_id=run_id)].count("approved") == 1


@pytest.mark.usefixtures("docker_free_gates")
def test_approve_human_output_and_errors(cli: Cli, approval_ws: Workspace) -> None:
    run_id = staged_run(cli, approval_ws)
    out = cli("approve", run_id, "--actor", "alice")
    out.ok()
    assert out.stdout.startswith(
        f"run {run_id} (demo @ {approval_ws.repo.sha[:12]}) approved for prod by alice"
    )
    assert f"'orchestrator advance {run_id} --to deploy' promotes it" in out.stdout
    again = cli("approve", run_id, "--actor", "bob").error(3, "conflict")
    assert f"run {run_id} was already approved for prod by alice" in again
    assert "unknown run 999" in cli("approve", 999).error(2, "bad_input")


@pytest.mark.usefixtures("docker_free_gates")
def test_approving_a_run_not_awaiting_approval(
    cli: Cli, approval_ws: Workspace, workspace: Workspace
) -> None:
    run_id = cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, as_json=True).ok()["run_id"]
    message = cli("approve", run_id, as_json=True).error(3, "conflict")
    assert (
        "needs no approval" in message
        and f"'orchestrator advance {run_id} --to deploy-staging' first" in message
    )


@pytest.mark.usefixtures("docker_free_gates")
def test_approving_when_the_app_needs_no_approval(cli: Cli, workspace: Workspace) -> None:
    run_id = staged_run(cli, workspace)
    message = cli("approve", run_id).error(3, "conflict")
    assert "demo does not require approval" in message
    cli("advance", run_id, "--to", "deploy").ok()


@pytest.mark.usefixtures("docker_free_gates")
@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_a_rejected_run_ends_and_cannot_be_promoted(
    cli: Cli, approval_ws: Workspace, store: Store, as_json: bool
) -> None:
    run_id = staged_run(cli, approval_ws)
    cli("approve", run_id, "--actor", "alice").ok()
    rejected = cli("reject", run_id, "--reason", "freeze for the audit", "--actor", "bob", as_json=True).ok()
    assert rejected["state"] == "rejected"
    assert rejected["approval"]["decision"] == "rejected"
    run = store.get_run(run_id)
    assert run.state == "rejected"
    last = store.transitions(run_id)[-1]
    assert (last.from_state, last.to_state, last.outcome, last.result_state) == (
        "deploy-staging",
        "deploy",
        "rejected",
        "rejected",
    )
    assert last.reason == "rejected by bob: freeze for the audit"

    message = cli("advance", run_id, "--to", "deploy", as_json=as_json).error(1, "rejected")
    assert f"run {run_id} was rejected for prod by bob" in message
    assert "freeze for the audit" in message and "will not be promoted" in message
    assert store.get_run(run_id).state == "rejected"
    assert "was rejected for prod by bob" in cli("approve", run_id).error(3, "conflict")
    assert "was rejected" in cli("reject", run_id, "--reason", "again").error(3, "conflict")


@pytest.mark.usefixtures("docker_free_gates")
def test_reject_needs_a_reason(cli: Cli, approval_ws: Workspace, store: Store) -> None:
    run_id = staged_run(cli, approval_ws)
    cli("reject", run_id, as_json=True).error(2, "bad_input")  # click: --reason is required
    assert "needs --reason" in cli("reject", run_id, "--reason", "  ").error(2, "bad_input")
    assert store.get_run(run_id).state == "deploy-staging"


@pytest.mark.usefixtures("docker_free_gates")
def test_approving_a_superseded_run(cli: Cli, approval_ws: Workspace, store: Store) -> None:
    older = staged_run(cli, approval_ws)
    newer = staged_run(cli, approval_ws)
    # The newer run is approved and promoted; the older one is overtaken but not marked yet.
    cli("approve", newer).ok()
    cli("advance", newer, "--to", "deploy").ok()
    store.record_release(
        app="demo",
        environment="prod",
        image_id="sha256:" + "1" * 64,
        revision=approval_ws.repo.sha,
        run_id=newer,
        transition_id=None,
    )
    message = cli("approve", older).error(3, "conflict")
    assert (
        f"run {older} is superseded by newer run {newer}" in message and "approve that one instead" in message
    )
    # Once its advance marked it superseded, the refusal says so.
    cli("advance", older, "--to", "deploy").error(3, "conflict")
    assert store.get_run(older).state == "superseded"
    assert f"run {older} was superseded" in cli("approve", older).error(3, "conflict")


@pytest.mark.usefixtures("docker_free_gates")
def test_rejecting_a_run_whose_promotion_is_under_way(cli: Cli, approval_ws: Workspace, store: Store) -> None:
    run_id = staged_run(cli, approval_ws)
    cli("approve", run_id).ok()
    store.begin_transition(
        run_id,
        "deploy-staging",
        "deploy",
        "ci",
        ["staging", "prod"],
        target_environment="prod",
        holder=Holder.me(),
        lease_s=60,
    )
    message = cli("reject", run_id, "--reason", "too late").error(3, "conflict")
    assert "right now" in message and "orchestrator rollback APP --env prod" in message
    assert store.get_run(run_id).state == "deploy-staging", "the compare-and-set was rolled back"
    assert not [a for a in store.approvals(run_id) if a.decision == "rejected"]


# --------------------------------------------------------------------------------------------------
# advance --wait while a person decides


def _advance_in_thread(service: RunService, run_id: int, wait_s: float) -> tuple[threading.Thread, dict]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = service.advance(run_id, "deploy", "ci", wait_s=wait_s)
        except Exception as exc:  # handed to the test thread
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def _wait_for_request(store: Store, run_id: int) -> None:
    """Until the waiting advance recorded that it waits (no sleep-and-hope)."""
    import time

    for _ in range(600):
        if any(e.kind == "approval_requested" for e in store.events(run_id=run_id)):
            return
        time.sleep(0.05)
    pytest.fail("the waiting advance never recorded its approval request")


@pytest.mark.usefixtures("docker_free_gates")
@pytest.mark.parametrize("decision_kind", ["approve", "reject"])
def test_advance_wait_follows_the_decision(
    cli: Cli, approval_ws: Workspace, store: Store, decision_kind: str
) -> None:
    run_id = staged_run(cli, approval_ws)
    service = RunService(load_config(approval_ws.config_path), store)
    thread, out = _advance_in_thread(service, run_id, wait_s=60)
    _wait_for_request(store, run_id)
    if decision_kind == "approve":
        cli("approve", run_id, "--actor", "alice").ok()
    else:
        cli("reject", run_id, "--actor", "bob", "--reason", "no").ok()
    thread.join(60)
    assert not thread.is_alive()
    if decision_kind == "approve":
        assert "error" not in out, out
        assert out["result"].outcome == "succeeded"
        assert store.get_run(run_id).state == "deploy"
    else:
        assert isinstance(out.get("error"), Rejected), out
        assert store.get_run(run_id).state == "rejected"


@pytest.mark.usefixtures("docker_free_gates")
def test_advance_wait_gives_up_saying_how_long_it_waited(
    approval_ws: Workspace, store: Store, cli: Cli
) -> None:
    run_id = staged_run(cli, approval_ws)
    service = RunService(load_config(approval_ws.config_path), store)
    with pytest.raises(AwaitingApproval, match=r"awaiting approval for prod \(waited \d+ s\)"):
        service.advance(run_id, "deploy", "ci", wait_s=0.3)
    assert store.get_run(run_id).state == "deploy-staging"


# --------------------------------------------------------------------------------------------------
# --quiet / --verbose (global options, so they apply to every command)


@pytest.mark.usefixtures("docker_free_gates")
def test_quiet_and_verbose(cli: Cli, workspace: Workspace) -> None:
    loud = cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha)
    assert "run_started" in loud.stderr
    quiet = cli("-q", "run", "start", "--app", "demo", "--sha", workspace.repo.sha)
    quiet.ok()
    assert "run_started" not in quiet.stderr and quiet.stdout.startswith("run ")
    verbose = cli("-v", "metrics", "demo")
    verbose.ok()
    assert "config:" in verbose.stderr and "database:" in verbose.stderr
    assert cli("-q", "-v", "metrics").exit_code == 2
