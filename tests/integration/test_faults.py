"""Never half-done (issue 9): a runner that dies, is cancelled or loses its engine mid-edge leaves every
environment on a verified release, no lock behind, and a transition whose reason says what happened.

Everything is real: the orchestrator runs as a child process (``python -m orchestrator``) that signals
itself at a named step boundary through the documented hook ORCH_TEST_CRASH_AT (SIGKILL: `recover` or
the next advance reconciles; SIGTERM: the runner undoes its own work); recovery, status and locks are
asked through the CLI; what runs is read from the engine and over HTTP, what was recorded from the
database. The last test restarts dockerd itself: it stops every container on the engine, so it runs at
the end of the session and skips when containers other than its own are running.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

import pytest

# Assertions in the helpers get pytest's explanations; the module is also this file's plugin (below).
pytest.register_assert_rewrite("faults_support")
from faults_support import (  # noqa: E402
    DOCKER_PIDFILE,
    Orchestrator,
    Proc,
    freeze,
    process_state,
    restarts_engine,
    start_dockerd,
    stop_dockerd,
    thaw,
    wait_until,
)

from orchestrator import views  # noqa: E402

if TYPE_CHECKING:
    import docker
    from conftest import BusyboxApp

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.docker
# Registers the engine_restart marker and runs the tests that restart the engine last in the session.
pytest_plugins = ("faults_support",)

OLD, NEW = "old", "new"
# The prod edge's first record_release is staging's (check_staging_image_fresh rebuilds staging). With
# the freshness gate switched off the prod edge has no staging steps, so its record_release is prod's.
NO_FRESHNESS = {"ORCH_IMAGE_FRESHNESS_ENABLED": "false"}


def kill_point(edge: str, crash_at: str, prod_after: str, meaning: str, **env: str) -> Any:
    """One SIGKILL point: the edge it is on, the hook, which release prod must serve after recovery
    (the previous one, or the new one when the edge had already put it there verified)."""
    to = "deploy-staging" if edge == "staging" else "deploy"
    return pytest.param(to, crash_at, prod_after, env, id=f"{edge}-{crash_at.replace(':', '_')}-{meaning}")


KILL_POINTS = [
    kill_point("staging", "before:build", OLD, "nothing_touched"),
    kill_point("staging", "after:staging_stop", OLD, "staging_gone"),
    kill_point("staging", "after:staging_start", OLD, "staging_new_unchecked"),
    kill_point("staging", "before:staging_check", OLD, "staging_recorded_unchecked"),
    kill_point("prod", "before:prod_tag", OLD, "staging_refreshed_prod_untouched"),
    kill_point("prod", "after:prod_tag", OLD, "prod_tags_moved"),
    kill_point("prod", "after:prod_stop", OLD, "prod_container_gone"),
    kill_point("prod", "before:prod_start", OLD, "prod_stop_recorded"),
    kill_point("prod", "after:prod_start", NEW, "prod_new_unchecked"),
    kill_point("prod", "after:prod_verify", NEW, "prod_new_verified_unrecorded"),
    kill_point("prod", "before:record_release", NEW, "prod_release_unrecorded", **NO_FRESHNESS),
    kill_point("prod", "after:record_release", NEW, "prod_release_recorded_unclosed", **NO_FRESHNESS),
]


# --------------------------------------------------------------------------------------------------
# what every fault must leave behind


def shown(orch: Orchestrator, run_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """`runs show --json`: the run, and its last transition (with its recorded steps)."""
    run = orch.show(run_id)
    return run, run["transitions"][-1]


def assert_died_at(orch: Orchestrator, proc: Proc, run_id: int, crash_at: str) -> dict[str, Any]:
    """The process died by SIGKILL at the step the hook names: that step is the last one recorded and
    is still ``started`` (before: its work had not begun; after: done but not recorded), the transition
    is ``in_progress`` and its locks are held by a dead process. Returns that transition."""
    assert proc.returncode == -9, proc.describe()
    _, step = crash_at.split(":")
    _, left = shown(orch, run_id)
    assert left["outcome"] == "in_progress", left
    assert left["steps"], proc.describe()
    assert (left["steps"][-1]["name"], left["steps"][-1]["status"]) == (step, "started"), left["steps"]
    locks = orch.locks()
    assert locks and {lock["liveness"] for lock in locks} == {"dead"}, locks
    return left


def assert_serves_latest_release(app: BusyboxApp, store: Store, env: str) -> dict[str, Any]:
    """``env`` answers /health with 200 from a running container whose image id, label and /version are
    those of its latest recorded release (read from the database and the engine, not from the CLI)."""
    release = store.latest_release(app.name, env)
    assert release is not None, f"{env} has no release"
    running = app.running(env)
    assert running is not None, f"{env}: no container, release {release.id} expects {release.image_id}"
    assert running.status == "running", running
    assert running.image_id == release.image_id, (running, release)
    assert running.revision == release.revision, (running, release)
    health = app.get(env, "/health")
    assert health.status == 200, health
    version = app.get(env, "/version")
    assert (version.status, version.body.strip()) == (200, release.revision), version
    return views.release(release)


def assert_consistent(app: BusyboxApp, orch: Orchestrator, store: Store) -> None:
    """Prod and staging run their latest releases, verified; no drift; no lock."""
    for env in ("staging", "prod"):
        assert_serves_latest_release(app, store, env)
    status = orch.status(app.name)
    drift = {e["environment"]: (e["drift"], e["differences"]) for e in status["environments"]}
    assert drift == {"staging": (False, []), "prod": (False, [])}, status
    assert status["drift"] is False, status
    assert orch.locks() == []


def assert_next_run_promotes(app: BusyboxApp, orch: Orchestrator, store: Store) -> None:
    """The line is usable again: a new commit goes through both edges (each exits 0) and prod serves it."""
    sha = app.commit("after the fault")
    orch.deploy(app.name, sha)
    prod = assert_serves_latest_release(app, store, "prod")
    assert (prod["revision"], prod["kind"]) == (sha, "deploy"), prod


def deploy_baseline(app: BusyboxApp) -> tuple[str, str]:
    """A known-good release in both environments (in-process: nothing to kill here); returns its sha and
    prod image id."""
    sha = app.commit("baseline")
    app.deploy(sha)
    prod = app.running("prod")
    assert prod is not None
    return sha, prod.image_id


def crashing_run(app: BusyboxApp, orch: Orchestrator, to: str) -> tuple[str, int]:
    """A new commit, its run started, and advanced normally up to the edge that will crash."""
    sha = app.commit("crashes")
    run_id = orch.start_run(app.name, sha)
    if to == "deploy":
        orch.advance(run_id, "deploy-staging").ok()
    return sha, run_id


# --------------------------------------------------------------------------------------------------
# SIGKILL: nobody undoes anything; `recover` reconciles the records with the engine


@pytest.mark.parametrize(("to", "crash_at", "prod_after", "env"), KILL_POINTS)
def test_sigkill_at_step_boundary_then_recover(
    busybox_app: BusyboxApp, store: Store, to: str, crash_at: str, prod_after: str, env: dict[str, str]
) -> None:
    """Hazard: a runner killed mid-edge leaves prod down or on an unverified image, its locks held
    forever, and a transition ``in_progress`` that no one will ever close."""
    app = busybox_app
    orch = Orchestrator(app.workspace.path)
    old_sha, old_image = deploy_baseline(app)
    new_sha, run_id = crashing_run(app, orch, to)

    proc = orch.advance(run_id, to, crash_at=crash_at, env=env)
    left = assert_died_at(orch, proc, run_id, crash_at)

    reports = orch.recover(app.name)
    assert [r["transition_id"] for r in reports] == [left["transition_id"]], reports

    assert_consistent(app, orch, store)
    prod = assert_serves_latest_release(app, store, "prod")
    expected = old_sha if prod_after == OLD else new_sha
    assert prod["revision"] == expected, (prod, reports)
    if prod_after == OLD:
        assert prod["image_id"] == old_image
    run, closed = shown(orch, run_id)
    # Finished when prod already ran the new image verified; otherwise undone, the run where it was.
    assert closed["outcome"] == ("succeeded" if prod_after == NEW else "aborted"), closed
    assert "recovered by" in closed["reason"], closed
    assert run["state"] == closed["result_state"] == (to if prod_after == NEW else closed["from"]), run

    assert_next_run_promotes(app, orch, store)


def test_sigkill_then_the_next_advance_of_another_run_recovers(busybox_app: BusyboxApp, store: Store) -> None:
    """Hazard: after a runner died mid-swap, nobody runs `recover` and the line stays blocked (or the
    next deploy starts from a prod that is down). The next run's first advance finds the dead holder's
    locks, reconciles its transition itself, and only then goes on."""
    app = busybox_app
    orch = Orchestrator(app.workspace.path)
    old_sha, old_image = deploy_baseline(app)
    _, run_id = crashing_run(app, orch, "deploy")
    proc = orch.advance(run_id, "deploy", crash_at="after:prod_stop")
    assert_died_at(orch, proc, run_id, "after:prod_stop")
    assert app.running("prod") is None, "the kill left prod without a container"

    next_sha = app.commit("the next run")
    next_run = orch.start_run(app.name, next_sha)
    staged = orch.advance(next_run, "deploy-staging").ok()
    assert (staged["state"], staged["outcome"]) == ("deploy-staging", "succeeded"), staged

    run, closed = shown(orch, run_id)
    assert closed["outcome"] == "aborted", closed
    assert "recovered by" in closed["reason"] and "prod restored" in closed["reason"], closed
    assert run["state"] == "deploy-staging", run
    prod = assert_serves_latest_release(app, store, "prod")
    assert (prod["revision"], prod["image_id"], prod["kind"]) == (old_sha, old_image, "rollback"), prod
    assert orch.locks() == []

    promoted = orch.advance(next_run, "deploy").ok()
    assert (promoted["state"], promoted["outcome"]) == ("deploy", "succeeded"), promoted
    prod = assert_serves_latest_release(app, store, "prod")
    assert prod["revision"] == next_sha, prod
    assert_consistent(app, orch, store)


def test_sigkill_of_the_recovery_itself_is_recovered_by_the_next_recover(
    busybox_app: BusyboxApp, store: Store
) -> None:
    """Hazard: `recover` is a process too and can die half-way through putting prod back (here: the
    previous release's container started, neither health-checked nor recorded). The transition it had
    taken over is abandoned again, and the next `recover` must finish the job from what really runs."""
    app = busybox_app
    orch = Orchestrator(app.workspace.path)
    old_sha, old_image = deploy_baseline(app)
    _, run_id = crashing_run(app, orch, "deploy")
    assert_died_at(
        orch, orch.advance(run_id, "deploy", crash_at="after:prod_stop"), run_id, "after:prod_stop"
    )

    dead = orch.run("recover", app.name, "--json", crash_at="after:recover_prod_start")
    assert_died_at(orch, dead, run_id, "after:recover_prod_start")

    reports = orch.recover(app.name)
    assert len(reports) == 1 and "recover_prod_start" in reports[0]["found"], reports
    assert_consistent(app, orch, store)
    prod = assert_serves_latest_release(app, store, "prod")
    assert (prod["revision"], prod["image_id"]) == (old_sha, old_image), prod
    run, closed = shown(orch, run_id)
    assert (run["state"], closed["outcome"]) == ("deploy-staging", "aborted"), closed
    assert "recovered by" in closed["reason"], closed
    assert_next_run_promotes(app, orch, store)


# --------------------------------------------------------------------------------------------------
# SIGTERM (a cancelled CI job): the runner undoes its own work before it exits; no `recover` needed

TERM_POINTS = [
    pytest.param("deploy", "after:prod_stop", id="prod-after_prod_stop-prod_container_gone"),
    pytest.param("deploy", "after:prod_start", id="prod-after_prod_start-prod_new_unchecked"),
    pytest.param("deploy-staging", "before:staging_start", id="staging-before_staging_start-staging_gone"),
]


@pytest.mark.parametrize(("to", "crash_at"), TERM_POINTS)
def test_sigterm_at_step_boundary_undoes_the_edge(
    busybox_app: BusyboxApp, store: Store, to: str, crash_at: str
) -> None:
    """Hazard: Python's default SIGTERM kills the runner on the spot, leaving prod half-swapped and the
    locks held. Interrupted, the runner must restore the previous release, close its transition
    ``aborted`` saying why, free its locks and exit 143, with nobody running `recover`."""
    app = busybox_app
    orch = Orchestrator(app.workspace.path)
    old_sha, old_image = deploy_baseline(app)
    _, run_id = crashing_run(app, orch, to)

    proc = orch.advance(run_id, to, crash_at=crash_at, crash_signal="TERM")
    assert proc.returncode == 143, proc.describe()
    assert proc.payload is not None and proc.payload["error"] == "interrupted", proc.describe()
    assert "SIGTERM" in proc.payload["message"], proc.describe()

    run, closed = shown(orch, run_id)
    assert closed["outcome"] == "aborted", closed
    assert "interrupted by SIGTERM" in closed["reason"], closed
    assert run["state"] == closed["from"], run
    # The interrupted step ends failed, and the undo is recorded as steps of its own.
    _, step = crash_at.split(":")
    steps = closed["steps"]
    hit = [s for s in steps if s["name"] == step]
    assert hit and hit[-1]["status"] == "failed" and "Interrupted" in hit[-1]["error"], steps
    assert not [s for s in steps if s["status"] == "started"], steps
    assert [s for s in steps if s["name"].startswith(("restore_", "undo_"))], steps

    assert_consistent(app, orch, store)
    prod = assert_serves_latest_release(app, store, "prod")
    assert (prod["revision"], prod["image_id"]) == (old_sha, old_image), prod
    assert_next_run_promotes(app, orch, store)


# --------------------------------------------------------------------------------------------------
# the engine itself goes away in the middle of the prod swap (runs last: it stops every container)

SLOW_PROD_START_S = 4  # prod's httpd starts this late, so the swap is caught inside prod_health


def commit_slow_prod_start(app: BusyboxApp) -> str:
    """A commit whose prod container answers /health only after SLOW_PROD_START_S seconds (staging at
    once): the edge then sits in its prod_health step long enough to be caught there."""
    app.commit("slow prod start")
    serve = app.repo.path / "rootfs" / "serve.sh"
    text = serve.read_text()
    delay = f'if [ "$ORCH_ENVIRONMENT" = prod ]; then $bb sleep {SLOW_PROD_START_S}; fi\n'
    assert "exec $bb httpd" in text, text
    return str(
        app.repo.commit(
            "slow prod start", {"rootfs/serve.sh": text.replace("exec $bb httpd", delay + "exec $bb httpd")}
        )
    )


def in_step(store: Store, run_id: int, name: str) -> bool:
    transitions = store.transitions(run_id)
    return bool(transitions) and any(s.name == name and s.status == "started" for s in transitions[-1].steps)


@restarts_engine
def test_engine_restart_mid_prod_swap_is_recovered_by_one_command(
    busybox_app: BusyboxApp, store: Store, docker_client: docker.DockerClient
) -> None:
    """Hazard: dockerd restarts (upgrade, crash, OOM) while prod is being swapped; the runner can neither
    finish nor undo. It must say so (exit 4, prod needs recovery) and keep the transition and its locks
    for `recover`, which, once the engine is back, puts prod on a verified release in one command.

    Two runs of two apps meet the restart: one inside the swap (its new prod container starting), one
    whose prod verification just failed, so that restoring prod is what cannot reach the engine. Each
    is frozen (SIGSTOP: the first by the test once its steps show prod_health, the second by the hook,
    ORCH_TEST_CRASH_SIGNAL=STOP) until the old daemon has exited, so what they meet is deterministic: no
    engine at all, not a daemon half-way through its shutdown."""
    if os.geteuid() != 0 or os.environ.get("DOCKER_HOST") or not DOCKER_PIDFILE.is_file():
        pytest.skip(f"needs root and the local dockerd that scripts/bootstrap.sh manages ({DOCKER_PIDFILE})")
    app = busybox_app

    def refuse_if_shared() -> None:
        # Restarting the engine would stop them under someone else's feet (another session, a service).
        others = [c.name for c in docker_client.containers.list() if not c.name.startswith(f"{app.name}-")]
        if others:
            pytest.skip(
                f"other containers run on this engine, a restart would stop them: {sorted(others)[:5]}"
            )

    refuse_if_shared()
    app.configure(other_apps=1)
    (other_name, (other_staging, other_prod)), *_ = app.other_apps.items()
    other = dataclasses.replace(app, name=other_name, staging_port=other_staging, prod_port=other_prod)
    orch = Orchestrator(app.workspace.path)
    base_sha, _ = deploy_baseline(app)
    orch.deploy(other.name, base_sha)
    other_base = other.running("prod")
    assert other_base is not None
    other_base_image = other_base.image_id
    slow_sha = commit_slow_prod_start(app)
    broken_sha = app.commit("prod serves another revision", prod="wrong_version")
    swap_run = orch.start_run(app.name, slow_sha)
    orch.advance(swap_run, "deploy-staging").ok()
    failed_run = orch.start_run(other.name, broken_sha)
    orch.advance(failed_run, "deploy-staging").ok()

    failing = orch.start(
        "advance",
        failed_run,
        "--to",
        "deploy",
        "--json",
        env={"ORCH_TEST_CRASH_AT": "after:prod_verify", "ORCH_TEST_CRASH_SIGNAL": "STOP"},
    )
    swapping = orch.start("advance", swap_run, "--to", "deploy", "--json")
    engine_stopped = False
    try:
        wait_until(
            "the other app's run stops itself after its failed prod verification",
            lambda: process_state(failing.popen.pid) == "T",
            running=failing,
        )
        wait_until(
            "the swap waits for the new prod container's health",
            lambda: in_step(store, swap_run, "prod_health"),
            running=swapping,
        )
        freeze(swapping)
        refuse_if_shared()  # again: a parallel session may have started containers meanwhile
        engine_stopped = True  # from here on, whatever happens, the engine is brought back
        stop_dockerd()
        thaw(swapping)
        thaw(failing)
        swapped, undone = swapping.wait(), failing.wait()
    finally:
        swapping.stop()
        failing.stop()
        if engine_stopped:
            start_dockerd()

    for proc in (swapped, undone):
        assert proc.returncode == 4, proc.describe()
        error = proc.payload
        assert error is not None and error["error"] == "infrastructure_unavailable", proc.describe()
        assert "prod" in error["message"] and "'orchestrator recover'" in error["message"], error
    assert "verify_prod" in undone.payload["message"], undone.describe()
    left = {run_id: shown(orch, run_id)[1] for run_id in (swap_run, failed_run)}
    assert {t["outcome"] for t in left.values()} == {"interrupted"}, left
    held = {(lock["app"], lock["environment"]) for lock in orch.locks()}
    assert held == {(a, env) for a in (app.name, other.name) for env in ("staging", "prod")}, held

    reports = orch.recover()
    assert sorted(r["transition_id"] for r in reports) == sorted(t["transition_id"] for t in left.values())

    assert_consistent(app, orch, store)
    assert_consistent(other, orch, store)
    # The engine brings the swapped prod container back itself (restart policy unless-stopped); once it
    # answers (slowly) it is verified, so the swap is finished rather than undone. Staging has no restart
    # policy: it is put back on its release.
    prod = assert_serves_latest_release(app, store, "prod")
    assert (prod["revision"], prod["kind"]) == (slow_sha, "deploy"), prod
    run, closed = shown(orch, swap_run)
    assert (run["state"], closed["outcome"]) == ("deploy", "succeeded"), closed
    assert "recovered by" in closed["reason"], closed
    # A revision that failed its verification never stays: the previous release is back, verified.
    other_prod = assert_serves_latest_release(other, store, "prod")
    assert (other_prod["revision"], other_prod["image_id"], other_prod["kind"]) == (
        base_sha,
        other_base_image,
        "rollback",
    ), other_prod
    run, closed = shown(orch, failed_run)
    # verify_prod had rejected it before the engine went: that verdict stands (undone, back to development).
    assert (run["state"], closed["outcome"]) == ("development", "failed"), closed
    assert "recovered by" in closed["reason"] and "verify_prod" in closed["reason"], closed
    assert_next_run_promotes(app, orch, store)
