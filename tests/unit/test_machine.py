"""The run state machine on its own: which moves exist and where a run lands after an edge."""

from __future__ import annotations

import pytest

from orchestrator.errors import BadInput, Conflict
from orchestrator.machine import EDGE_ENVIRONMENTS, EDGES, TO_PROD, TO_STAGING, RunMachine, State


def test_states_and_edges_form_one_straight_line() -> None:
    """A new edge (or a shortcut from development to deploy) must be a deliberate change to this test."""
    assert [s.value for s in State] == ["development", "deploy-staging", "deploy", "superseded", "rejected"]
    assert EDGES == (TO_STAGING, TO_PROD)
    assert (TO_STAGING.source, TO_STAGING.dest) == (State.DEVELOPMENT, State.DEPLOY_STAGING)
    assert (TO_PROD.source, TO_PROD.dest) == (State.DEPLOY_STAGING, State.DEPLOY)
    assert TO_STAGING.name == str(TO_STAGING) == "development->deploy-staging"
    assert TO_PROD.name == "deploy-staging->deploy"
    # superseded is where a run overtaken by a newer one ends: no edge leads out of it, or into it.
    assert all(State.SUPERSEDED not in (e.source, e.dest) for e in EDGES)
    # rejected is where a refused approval ends a run: terminal as well.
    assert all(State.REJECTED not in (e.source, e.dest) for e in EDGES)


@pytest.mark.parametrize("state", [State.DEVELOPMENT, State.DEPLOY_STAGING])
def test_a_run_waiting_at_an_edge_can_be_rejected_and_then_goes_nowhere(state: State) -> None:
    machine = RunMachine(state)
    assert machine.reject() == State.REJECTED
    assert machine.allowed_targets() == []
    assert machine.next_edge() is None
    for target in (State.DEPLOY_STAGING, State.DEPLOY, State.DEVELOPMENT):
        with pytest.raises(Conflict, match="none \\(the run is finished\\)"):
            machine.edge_to(target)
    with pytest.raises(Conflict):
        machine.fail()
    with pytest.raises(Conflict):
        machine.reject()


@pytest.mark.parametrize("state", [State.DEPLOY, State.SUPERSEDED, State.REJECTED])
def test_a_finished_run_cannot_be_rejected(state: State) -> None:
    with pytest.raises(Conflict, match="illegal move"):
        RunMachine(state).reject()


def test_next_edge_is_the_one_edge_out_of_each_state() -> None:
    assert RunMachine(State.DEVELOPMENT).next_edge() == TO_STAGING
    assert RunMachine(State.DEPLOY_STAGING).next_edge() == TO_PROD
    assert RunMachine(State.DEPLOY).next_edge() is None


def test_prod_edge_locks_staging_too() -> None:
    """The prod edge rebuilds staging first; if it did not hold staging, a staging deploy could swap
    the image out from under the promotion."""
    assert EDGE_ENVIRONMENTS[TO_STAGING] == ("staging",)
    assert set(EDGE_ENVIRONMENTS[TO_PROD]) == {"staging", "prod"}


@pytest.mark.parametrize(
    ("state", "allowed"),
    [
        (State.DEVELOPMENT, [State.DEPLOY_STAGING]),
        (State.DEPLOY_STAGING, [State.DEPLOY]),
        (State.DEPLOY, []),
    ],
)
def test_allowed_targets(state: State, allowed: list[State]) -> None:
    assert RunMachine(state).allowed_targets() == allowed


def test_full_walk_through_both_edges() -> None:
    machine = RunMachine(State.DEVELOPMENT)
    assert machine.succeed(machine.edge_to(State.DEPLOY_STAGING)) == State.DEPLOY_STAGING
    assert machine.succeed(machine.edge_to(State.DEPLOY)) == State.DEPLOY
    assert machine.state == State.DEPLOY


@pytest.mark.parametrize(
    ("state", "target"),
    [
        (State.DEVELOPMENT, State.DEPLOY),  # skipping staging
        (State.DEVELOPMENT, State.DEVELOPMENT),
        (State.DEPLOY_STAGING, State.DEVELOPMENT),  # rollback is the machine's call, not the caller's
        (State.DEPLOY_STAGING, State.DEPLOY_STAGING),
    ],
)
def test_illegal_moves_are_conflicts_naming_the_allowed_ones(state: State, target: State) -> None:
    machine = RunMachine(state)
    with pytest.raises(Conflict) as excinfo:
        machine.edge_to(target)
    assert excinfo.value.exit_code == 3
    allowed = machine.allowed_targets()[0].value
    assert f"cannot move from {state} to {target}" in excinfo.value.message
    assert f"allowed from {state}: {allowed}" in excinfo.value.message
    assert machine.state == state


@pytest.mark.parametrize("target", list(State))
def test_finished_run_has_no_moves(target: State) -> None:
    machine = RunMachine(State.DEPLOY)
    with pytest.raises(Conflict, match=r"none \(the run is finished\)"):
        machine.edge_to(target)
    with pytest.raises(Conflict):
        machine.fail()
    assert machine.state == State.DEPLOY


@pytest.mark.parametrize("state", [State.DEVELOPMENT, State.DEPLOY_STAGING])
def test_fail_lands_in_development_from_any_edge_source(state: State) -> None:
    """Whichever edge failed, the run goes back to development: never half-way, never forward."""
    machine = RunMachine(state)
    assert machine.fail() == State.DEVELOPMENT
    assert machine.state == State.DEVELOPMENT


def test_firing_an_edge_from_the_wrong_state_is_a_conflict_not_a_machine_error() -> None:
    """``transitions.MachineError`` would surface as a traceback (exit 1, i.e. 'gate failed')."""
    machine = RunMachine(State.DEVELOPMENT)
    with pytest.raises(Conflict, match="illegal move from development"):
        machine.succeed(TO_PROD)
    assert machine.state == State.DEVELOPMENT


def test_state_parse() -> None:
    assert State.parse("deploy-staging") is State.DEPLOY_STAGING
    with pytest.raises(BadInput) as excinfo:
        State.parse("production")
    assert excinfo.value.exit_code == 2
    assert "unknown state 'production'" in excinfo.value.message
    assert "development, deploy-staging, deploy" in excinfo.value.message
