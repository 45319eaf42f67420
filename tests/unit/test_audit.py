"""Audit (issue 13): who did what, from which CI job, in time order; and the history filters.

The actor defaults to the CI's own name for who triggered the job, else the OS user; the CI job's link
is recorded beside every run, transition, lock, freeze and event written by that process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from dashboard_support import BAD_SHA, GOOD_SHA, seed

from orchestrator import identity
from orchestrator.errors import BadInput
from orchestrator.store.history import RunFilter, parse_when
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Cli, Workspace

pytestmark = pytest.mark.usefixtures("docker_free_gates")

GITHUB = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_ACTOR": "octocat",
    "GITHUB_SERVER_URL": "https://github.example",
    "GITHUB_REPOSITORY": "acme/shop",
    "GITHUB_RUN_ID": "4242",
}


@pytest.mark.parametrize(
    ("env", "actor", "url"),
    [
        (GITHUB, "octocat", "https://github.example/acme/shop/actions/runs/4242"),
        (
            {
                "GITLAB_CI": "true",
                "GITLAB_USER_LOGIN": "gl-user",
                "CI_JOB_URL": "https://gitlab.example/-/jobs/7",
            },
            "gl-user",
            "https://gitlab.example/-/jobs/7",
        ),
        (
            {"JENKINS_URL": "https://j/", "BUILD_URL": "https://j/job/shop/12/"},
            None,
            "https://j/job/shop/12/",
        ),
        (
            {
                "BUILDKITE": "true",
                "BUILDKITE_BUILD_URL": "https://bk/b/3",
                "BUILDKITE_JOB_ID": "j1",
                "BUILDKITE_BUILD_CREATOR": "bk-user",
            },
            "bk-user",
            "https://bk/b/3#j1",
        ),
        ({"GITLAB_CI": "true", "CI_JOB_URL": "javascript:alert(1)"}, None, None),
        ({}, None, None),
    ],
    ids=["github", "gitlab", "jenkins", "buildkite", "not-a-link", "no-ci"],
)
def test_ci_identity(env: dict[str, str], actor: str | None, url: str | None) -> None:
    assert identity.ci_url(env) == url
    assert identity.default_actor(env) == (actor or identity.os_user())


def start(cli: Cli, workspace: Workspace, *extra: str) -> dict[str, Any]:
    return cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, *extra, as_json=True).ok()


def test_run_in_ci_records_actor_and_job_link_and_audit_lists_them_in_order(
    cli: Cli, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in GITHUB.items():
        monkeypatch.setenv(name, value)
    run_id = start(cli, workspace)["run_id"]
    cli("advance", run_id, "--to", "deploy-staging").ok()
    cli("freeze", "demo", "--reason", "incident 12", "--actor", "ops-oncall").ok()
    for name in GITHUB:
        monkeypatch.delenv(name)
    cli("unfreeze", "demo", "--actor", "ops-oncall").ok()

    entries = cli("audit", "demo", as_json=True).ok()["entries"]
    assert [(e["kind"], e["actor"]) for e in entries] == [
        ("run_started", "octocat"),
        ("transition", "octocat"),
        ("freeze", "ops-oncall"),
        ("unfreeze", "ops-oncall"),
    ]
    link = "https://github.example/acme/shop/actions/runs/4242"
    assert [e["ci_url"] for e in entries] == [link, link, link, None]
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    assert "development -> deploy-staging succeeded" in entries[1]["message"]
    human = cli("audit").stdout
    assert "octocat" in human and link in human and "incident 12" in human
    assert cli("audit", "nobody").stdout == "nothing recorded\n"


def test_runs_list_filters_and_pages(cli: Cli, store: Store) -> None:
    seeded = seed(store)

    def ids(*args: str) -> list[int]:
        return [r["run_id"] for r in cli("runs", "list", *args, as_json=True).ok()["runs"]]

    assert ids() == [seeded.bad_run, seeded.good_run]
    assert ids("--outcome", "failed") == [seeded.bad_run]
    assert ids("--outcome", "succeeded") == [seeded.good_run]
    assert ids("--sha", BAD_SHA[:7]) == [seeded.bad_run]
    assert ids("--sha", GOOD_SHA[:7].upper()) == [seeded.good_run]
    assert ids("--actor", "alice") == [seeded.bad_run]
    assert ids("--since", "1h") == [seeded.bad_run, seeded.good_run]
    assert ids("--until", "1h") == []
    assert ids("--limit", "1") == [seeded.bad_run]
    assert ids("--limit", "1", "--page", "2") == [seeded.good_run]
    assert ids("--limit", "1", "--page", "3") == []
    human = cli("runs", "list", "--outcome", "failed").stdout.splitlines()
    assert len(human) == 1 and human[0].split()[:5] == [
        str(seeded.bad_run),
        "demo",
        BAD_SHA[:12],
        "development",
        "failed",
    ]
    assert "deploy_staging: shop-staging exited with code 3" in human[0]
    assert cli("runs", "list", "--outcome", "nope").exit_code == 2
    assert cli("runs", "list", "--since", "yesterday").exit_code == 2


def test_runs_show_prints_duration_and_expected_vs_found_revision(cli: Cli, store: Store) -> None:
    seeded = seed(store)
    out = cli("runs", "show", seeded.bad_run).stdout
    assert "took " in out
    assert f"revision: expected {BAD_SHA}, found -" in out
    assert "fatal: cannot open the database" in out


def test_releases_says_from_when_to_when(cli: Cli, store: Store) -> None:
    seeded = seed(store)
    newer = store.record_release(
        app="demo",
        environment="staging",
        image_id="sha256:" + "c" * 64,
        revision=BAD_SHA,
        run_id=None,
        transition_id=None,
        kind="rollback",
        reason="rollback by bob",
    )
    store.record_event(
        "rollback",
        "bob",
        "rollback by bob",
        app="demo",
        environment="staging",
        details={"release_id": newer.id},
    )
    payload = cli("releases", "demo", "--env", "staging", as_json=True).ok()
    first, second = payload["releases"]
    assert (first["release_id"], first["until"], first["actor"], first["current"]) == (
        newer.id,
        None,
        "bob",
        True,
    )
    assert (second["release_id"], second["actor"]) == (seeded.release, "ci-bot")
    assert second["until"] == first["since"]
    assert "now" in cli("releases", "demo").stdout
    assert cli("releases", "demo", "--env", "qa").exit_code == 2


def test_parse_when() -> None:
    assert parse_when("2026-11-30").year == 2026
    with pytest.raises(BadInput):
        parse_when("soon")
    with pytest.raises(BadInput):
        RunFilter(sha_prefix="xyz")


def test_every_transition_outcome_can_be_filtered_on() -> None:
    """A run a person rejected ends with a ``rejected`` transition: `runs list --outcome rejected` (and the
    dashboard's filter) must accept it like every other way an edge can end."""
    from orchestrator.store.history import OUTCOMES, RunFilter
    from orchestrator.verdict import TransitionOutcome

    assert {o.value for o in TransitionOutcome} <= set(OUTCOMES)
    assert RunFilter(outcome="rejected").outcome == "rejected"
