"""Operator commands when prod is not what the database says: the repair paths.

Hazards found by trying them as an operator would: with prod down and the database naming release N,
`rollback --to N` answered "already runs, nothing to do"; and `status` blamed "a container started by
hand" when it was the orchestrator itself that stopped mid-edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from orchestrator.holder import Holder
from orchestrator.machine import PROD, STAGING

if TYPE_CHECKING:
    from conftest import BusyboxApp

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker


def test_rollback_to_the_current_release_repairs_a_prod_that_is_down(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    app.configure()
    app.deploy(app.commit("release A"))
    run_b = app.deploy(app.commit("release B"))
    (release_b,) = [r for r in app.show(run_b)["releases"] if r["environment"] == PROD]
    app.engine.remove_container(f"{app.name}-prod")  # prod is down; the database still names B

    repaired = app.cli(
        "rollback", app.name, "--env", "prod", "--to", release_b["release_id"], as_json=True
    ).ok()
    assert repaired["to_release"]["release_id"] == release_b["release_id"]
    now = app.running(PROD)
    assert now is not None and (now.status, now.image_id) == ("running", release_b["image_id"])
    status = app.cli("status", app.name, as_json=True).ok()
    assert status["drift"] is False, status

    # When prod does run it, naming it again is still the no-op it always was.
    again = app.cli("rollback", app.name, "--env", "prod", "--to", release_b["release_id"], as_json=True)
    assert "already runs" in again.error(3, "conflict")


def test_status_names_an_unfinished_transition_as_the_cause_of_drift(
    busybox_app: BusyboxApp, store: Store
) -> None:
    app = busybox_app
    app.configure()
    app.deploy(app.commit("release A"))
    run_b = app.start(app.commit("release B"))
    assert app.advance(run_b, "deploy-staging").ok()["outcome"] == "succeeded"
    # A runner that is still alive (this process) is half-way through prod: its container is gone.
    transition = store.begin_transition(
        run_b,
        "deploy-staging",
        "deploy",
        "ci",
        (STAGING, PROD),
        target_environment=PROD,
        holder=Holder.me(),
        lease_s=30,
    )
    app.engine.remove_container(f"{app.name}-prod")
    result = app.cli("status", app.name, as_json=True)
    assert result.exit_code == 5, result.describe()  # drift: status is a failing check
    status = result.payload
    (prod,) = [e for e in status["environments"] if e["environment"] == PROD]
    assert (prod["drift"], prod["cause"]) == (True, "container_gone")
    assert prod["differences"][0].startswith(
        f"transition {transition} of run {run_b} (deploy-staging->deploy)"
    )
    assert "orchestrator recover" in prod["differences"][0]
