"""The image-freshness kill-switch on the real engine: ORCH_IMAGE_FRESHNESS_ENABLED=false, or an
ORCH_IMAGE_FRESHNESS_REPOS list that leaves the app out, skips check_staging_image_fresh on record and
with a warning, promotes the image staging got for the run, and still verifies prod.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker

DISABLED_EVENT = "image_freshness_check_disabled"


def log_events(stderr: str) -> list[dict[str, Any]]:
    """The CLI's structured log lines (JSON off a TTY); anything else on stderr is ignored."""
    events = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


@pytest.mark.parametrize("scope", ["disabled", "scoped-to-another-app"])
def test_kill_switch_skips_the_gate_on_record_and_promotes_the_staged_image(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch, scope: str
) -> None:
    """Hazard: a switched-off safety check that leaves no trace, or that lets something other than the
    image staged for this commit reach prod unverified. The skip must be recorded with its reason and
    logged as a warning; prod must get edge 1's image (staging not rebuilt) and still be verified."""
    app = busybox_app
    app.configure(other_apps=1)
    sha = app.commit("release")
    run_id = app.start(sha)
    to_staging = app.advance(run_id, "deploy-staging").ok()
    staged_image = to_staging["checks"][1]["details"]["image_id"]
    staging_before = app.running("staging")
    assert staging_before is not None and staging_before.image_id == staged_image

    if scope == "disabled":
        monkeypatch.setenv("ORCH_IMAGE_FRESHNESS_ENABLED", "false")
        why = "ORCH_IMAGE_FRESHNESS_ENABLED is off"
    else:
        monkeypatch.setenv("ORCH_IMAGE_FRESHNESS_REPOS", ",".join(app.other_apps))
        why = f"{app.name} is not in ORCH_IMAGE_FRESHNESS_REPOS"
    result = app.advance(run_id, "deploy")
    payload = result.ok()

    assert app.verdicts(payload) == [
        ("check_staging_image_fresh", "skipped"),
        ("promote_prod", "pass"),
        ("verify_prod", "pass"),
    ], payload
    fresh, promote, verify = payload["checks"]
    assert fresh["reason"].startswith(why), fresh["reason"]
    assert fresh["details"]["promote_image_id"] == staged_image
    assert promote["details"]["image_id"] == staged_image
    assert verify["details"]["found_image_id"] == staged_image
    assert verify["details"]["served_revision"] == sha, "post-deploy verification still ran"
    prod = app.running("prod")
    assert prod is not None and (prod.image_id, prod.revision) == (staged_image, sha)
    assert app.running("staging") == staging_before, "staging was neither rebuilt nor recreated"
    recorded = app.show(run_id)["transitions"][-1]["checks"][0]
    assert (recorded["name"], recorded["status"], recorded["reason"]) == (
        "check_staging_image_fresh",
        "skipped",
        fresh["reason"],
    )

    warnings = [e for e in log_events(result.stderr) if e.get("event") == DISABLED_EVENT]
    assert len(warnings) == 1, result.stderr
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["reason"] == why
    assert warnings[0]["app"] == app.name and warnings[0]["run_id"] == run_id


def test_freshness_scoped_to_this_app_runs_the_gate(
    busybox_app: BusyboxApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hazard: a scope list that names the app switching the check off anyway. With the app in
    ORCH_IMAGE_FRESHNESS_REPOS the gate runs: it checks the live staging container (still the run's
    own, so no rebuild is needed) and passes, with no kill-switch warning."""
    app = busybox_app
    app.configure(other_apps=1)
    sha = app.commit("release")
    run_id = app.start(sha)
    app.advance(run_id, "deploy-staging").ok()
    staging_before = app.running("staging")
    assert staging_before is not None

    monkeypatch.setenv("ORCH_IMAGE_FRESHNESS_REPOS", app.name)
    result = app.advance(run_id, "deploy")
    payload = result.ok()

    assert app.verdicts(payload) == [
        ("check_staging_image_fresh", "pass"),
        ("promote_prod", "pass"),
        ("verify_prod", "pass"),
    ], payload
    fresh = payload["checks"][0]
    staging = app.running("staging")
    assert staging == staging_before, "staging still ran the run's image: left as it was checked"
    assert staging.container_id == fresh["details"]["container_id"], "the gate inspected live staging"
    assert fresh["details"]["rebuilt"] is False and "staging_release" in fresh["details"], fresh
    prod = app.running("prod")
    assert prod is not None and prod.image_id == fresh["details"]["image_id"] and prod.revision == sha
    assert not [e for e in log_events(result.stderr) if e.get("event") == DISABLED_EVENT], result.stderr
