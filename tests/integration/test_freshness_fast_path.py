"""check_staging_image_fresh from the staging edge's record and the live staging container (issue 12).

When staging still runs, healthy, the image this run's staging edge built, guarded, checked and recorded,
the prod edge promotes it without rebuilding or redeploying staging. Whenever that cannot be proven from
what the engine and the app answer now (staging stopped, hand-replaced, or deployed by another run since),
the gate still rebuilds and re-checks staging from the commit, and prod runs that image (fail closed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker


def prod_edge_steps(app: BusyboxApp, run_id: int) -> list[str]:
    last = app.show(run_id)["transitions"][-1]
    assert last["to"] == "deploy"
    return [s["name"] for s in last["steps"]]


def staged_image(app: BusyboxApp, run_id: int) -> str:
    """What the run's staging edge built and released to staging (its first staging release)."""
    staged = [r for r in app.show(run_id)["releases"] if r["environment"] == "staging"]
    return str(staged[0]["image_id"])


def test_live_staging_is_promoted_without_a_rebuild(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    sha = app.commit("release")
    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()
    staging_before = app.running("staging")
    assert staging_before is not None

    payload = app.advance(run_id, "deploy").ok()
    fresh = payload["checks"][0]
    assert (fresh["name"], fresh["status"]) == ("check_staging_image_fresh", "pass")
    assert fresh["details"]["rebuilt"] is False, fresh
    assert fresh["details"]["image_id"] == staging_before.image_id
    assert "build" not in prod_edge_steps(app, run_id), "no rebuild"
    assert app.running("staging") == staging_before, "staging was left as it was checked"
    prod = app.running("prod")
    assert prod is not None and prod.image_id == staging_before.image_id and prod.revision == sha


def _rebuilt(payload: dict[str, Any]) -> dict[str, Any]:
    fresh = payload["checks"][0]
    assert (fresh["name"], fresh["status"]) == ("check_staging_image_fresh", "pass"), fresh
    assert "rebuilt_because" in fresh["details"], fresh
    return dict(fresh["details"])


def test_a_stopped_staging_is_rebuilt_and_rechecked(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    sha = app.commit("release")
    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()
    assert app.engine.stop_container(f"{app.name}-staging")

    details = _rebuilt(app.advance(run_id, "deploy").ok())
    assert "not running" in details["rebuilt_because"], details
    assert "build" in prod_edge_steps(app, run_id)
    staging, prod = app.running("staging"), app.running("prod")
    assert staging is not None and staging.status == "running", "staging was redeployed and checked"
    assert prod is not None and prod.image_id == details["image_id"] and prod.revision == sha


def test_a_hand_replaced_staging_is_not_trusted(busybox_app: BusyboxApp) -> None:
    """Staging answers healthy, but with another image (an older release put there by hand): its
    answers say nothing about this run's image, so the gate rebuilds instead of trusting the record."""
    app = busybox_app
    old_run = app.deploy(app.commit("release A"))
    old_image = staged_image(app, old_run)
    sha = app.commit("release B")
    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()
    app.engine.remove_container(f"{app.name}-staging")
    app.engine.run(
        f"{app.name}-staging",
        old_image,
        environment={"PORT": str(app.staging_port), "ORCH_ENVIRONMENT": "staging"},
    )

    details = _rebuilt(app.advance(run_id, "deploy").ok())
    assert "no longer runs" in details["rebuilt_because"], details
    prod = app.running("prod")
    assert prod is not None and prod.revision == sha and prod.image_id != old_image
    assert prod.image_id == details["image_id"] == staged_image(app, run_id), "the commit, rebuilt"


def test_staging_deployed_by_another_run_since_is_rebuilt(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    sha_a = app.commit("release A")
    run_a = app.start(sha_a)
    app.advance(run_a, "deploy-staging").ok()
    run_b = app.start(app.commit("release B"))
    app.advance(run_b, "deploy-staging").ok()

    details = _rebuilt(app.advance(run_a, "deploy").ok())
    assert "deployed again" in details["rebuilt_because"], details
    prod, staging = app.running("prod"), app.running("staging")
    assert prod is not None and prod.revision == sha_a
    assert staging is not None and staging.revision == sha_a, "staging was rechecked with run A's image"
