"""`orchestrator deploy`: run start and both edges in one process, the natural CI call (issue 12).

It must mean exactly what the three calls mean: the same gates and records, the same exit codes, a failed
staging edge stopping there with prod untouched, and, when something goes wrong after the run exists,
an error that still tells CI which run it was and what each edge did.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from probe_support import LOADED_PROBE, run_probe

if TYPE_CHECKING:
    from conftest import BusyboxApp

pytestmark = pytest.mark.docker

TO_STAGING_GATES = ["commit_exists", "build_image", "image_revision", "deploy_staging", "staging_check"]
TO_PROD_GATES = ["check_staging_image_fresh", "promote_prod", "verify_prod"]


def deploy(app: BusyboxApp, sha: str, *extra: str) -> object:
    return app.cli("deploy", "--app", app.name, "--sha", sha, "--actor", "ci", *extra, as_json=True)


def test_deploy_runs_both_edges_and_records_what_the_three_calls_record(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    sha = app.commit("release")
    payload = deploy(app, sha).ok()

    assert (payload["state"], payload["outcome"], payload["sha"], payload["actor"]) == (
        "deploy",
        "succeeded",
        sha,
        "ci",
    )
    staging, prod_edge = payload["edges"]
    assert (staging["from"], staging["to"], staging["outcome"]) == (
        "development",
        "deploy-staging",
        "succeeded",
    )
    assert app.verdicts(staging) == [(g, "pass") for g in TO_STAGING_GATES]
    assert (prod_edge["from"], prod_edge["to"], prod_edge["outcome"]) == (
        "deploy-staging",
        "deploy",
        "succeeded",
    )
    assert app.verdicts(prod_edge) == [(g, "pass") for g in TO_PROD_GATES]

    built = staging["checks"][1]["details"]["image_id"]
    prod = app.running("prod")
    assert prod is not None and prod.image_id == built and prod.revision == sha, "built once, promoted"
    shown = app.show(payload["run_id"])
    assert shown["state"] == "deploy" and shown["actor"] == "ci"
    assert [(t["from"], t["to"], t["outcome"]) for t in shown["transitions"]] == [
        ("development", "deploy-staging", "succeeded"),
        ("deploy-staging", "deploy", "succeeded"),
    ]
    assert [t["transition_id"] for t in shown["transitions"]] == [
        staging["transition_id"],
        prod_edge["transition_id"],
    ]
    assert [(r["environment"], r["image_id"]) for r in shown["releases"]][-1] == ("prod", built)


def test_a_failed_staging_edge_stops_there_and_leaves_prod_alone(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    app.configure(health_timeout_s=2)
    good = app.commit("good")
    deploy(app, good).ok()
    prod_before = app.running("prod")

    result = deploy(app, app.commit("no health", health=False))
    assert result.exit_code == 1, result.describe()
    payload = result.payload
    assert (payload["outcome"], payload["state"]) == ("failed", "development")
    (staging,) = payload["edges"]
    assert staging["to"] == "deploy-staging" and staging["failure"]["gate"] == "deploy_staging"
    assert app.running("prod") == prod_before
    assert len(app.show(payload["run_id"])["transitions"]) == 1


def test_a_failed_prod_edge_exits_1_with_both_edges_and_prod_restored(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    deploy(app, app.commit("good")).ok()
    prod_before = app.running("prod")

    result = deploy(app, app.commit("serves the wrong revision in prod", prod="wrong_version"))
    assert result.exit_code == 1, result.describe()
    staging, prod_edge = result.payload["edges"]
    assert staging["outcome"] == "succeeded"
    assert prod_edge["outcome"] == "failed" and prod_edge["failure"]["gate"] == "verify_prod"
    assert prod_edge["failure"]["prod"]["action"] == "restored"
    now = app.running("prod")
    assert now is not None and now.image_id == prod_before.image_id


def test_a_locked_prod_exits_3_naming_the_run_and_the_staging_edge_done(busybox_app: BusyboxApp) -> None:
    """CI must be able to tell which run to look at even when the deploy stops on an error."""
    app = busybox_app
    app.configure()
    app.cli("lock", app.name, "--env", "prod", "--reason", "maintenance", as_json=True).ok()

    result = deploy(app, app.commit("release"))
    result.error(3, "conflict")
    payload = result.payload
    (staging,) = payload["edges"]
    assert staging["outcome"] == "succeeded" and staging["to"] == "deploy-staging"
    assert app.show(payload["run_id"])["state"] == "deploy-staging"
    assert app.running("prod") is None


def test_bad_input_is_refused_before_a_run_exists(busybox_app: BusyboxApp) -> None:
    app = busybox_app
    app.configure()
    deploy(app, "not-a-sha").error(2, "bad_input")
    app.cli("freeze", app.name, "--reason", "release freeze", as_json=True).ok()
    deploy(app, app.commit("release")).error(3, "conflict")
    assert app.cli("runs", "list", "--app", app.name, as_json=True).ok()["runs"] == []


# What a promotion to prod of a container app never uses (issue 12): git (gitrepo), compose (compose.py)
# and the staging check; about 2.4 ms of the third CI call when it imported them.
NOT_FOR_PROD = ["orchestrator.gitrepo", "orchestrator.compose", "orchestrator.steps.staging_check"]


def advance_loading(app: BusyboxApp, run_id: int, to: str) -> tuple[list[str], dict[str, Any]]:
    """Which of NOT_FOR_PROD the console script's `advance --to` loaded, and its result."""
    probe = LOADED_PROBE.replace("{heavy}", repr(NOT_FOR_PROD))
    argv = ["advance", str(run_id), "--to", to, "--json"]
    loaded, proc = run_probe(probe, argv, app.workspace.path, "LOADED", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return loaded, json.loads(proc.stdout)


def test_a_promotion_to_prod_loads_neither_git_nor_compose_nor_the_staging_check(
    busybox_app: BusyboxApp,
) -> None:
    app = busybox_app
    run_id = app.start(app.commit("imports"))
    loaded, result = advance_loading(app, run_id, "deploy-staging")
    assert result["outcome"] == "succeeded", result
    # The probe sees them where they are used: the staging edge checks the commit and runs the check.
    assert {"orchestrator.gitrepo", "orchestrator.steps.staging_check"} <= set(loaded), loaded
    loaded, result = advance_loading(app, run_id, "deploy")
    assert result["outcome"] == "succeeded", result
    assert loaded == [], f"advance --to deploy loaded {loaded}"
