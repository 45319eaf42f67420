"""Many runners at once, as CI really starts them: separate `orchestrator` processes on one database and
the real engine (issue 9).

Each test starts real processes of the installed CLI (not click in-process, so that every runner has
its own pid, its own connection pool and its own SQLite lock) and then checks what matters afterwards:
exactly who won, what the losers were told, that history has no duplicate, torn or overlapping rows,
and that no lock or waiter is left behind.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from orchestrator.holder import Holder
from orchestrator.machine import TO_STAGING
from orchestrator.store.models import GateResultRow, LockWaiter, StepRow
from orchestrator.store.repository import Store, TransitionRecord

if TYPE_CHECKING:
    from conftest import BusyboxApp, Workspace

pytestmark = pytest.mark.docker

ORCHESTRATOR = Path(sys.executable).with_name("orchestrator")
RUNNERS = 20
UNFINISHED = ("in_progress", "interrupted")


@dataclass(frozen=True)
class Finished:
    """One runner process, after it exited."""

    index: int
    pid: int
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    seconds: float  # from the moment all runners were started to this one's exit

    @property
    def payload(self) -> dict[str, Any]:
        try:
            payload = json.loads(self.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"--json stdout is not one JSON object:\n{self.describe()}")
        assert isinstance(payload, dict), self.describe()
        return payload

    @property
    def message(self) -> str:
        payload = self.payload
        assert payload.get("error") == "conflict" and payload.get("exit_code") == 3, self.describe()
        return str(payload["message"])

    def describe(self) -> str:
        return (
            f"runner {self.index} (pid {self.pid}) {' '.join(self.argv)} -> exit {self.exit_code}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr[-3000:]}"
        )


def _argv_env(workspace: Workspace, args: Iterable[str | int]) -> tuple[list[str], dict[str, str]]:
    assert ORCHESTRATOR.is_file(), f"{ORCHESTRATOR} is missing: pip install -e . into this virtualenv"
    return [str(ORCHESTRATOR), *(str(a) for a in args)], {**os.environ, "ORCH_DATABASE_URL": workspace.db_url}


def spawn(workspace: Workspace, *args: str | int) -> subprocess.Popen[str]:
    """One runner: the installed CLI in the workspace, on the workspace's database."""
    argv, env = _argv_env(workspace, args)
    return subprocess.Popen(
        argv, cwd=workspace.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def orchestrator(workspace: Workspace, *args: str | int) -> subprocess.CompletedProcess[str]:
    argv, env = _argv_env(workspace, args)
    return subprocess.run(
        argv, cwd=workspace.path, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def run_at_once(
    workspace: Workspace, commands: Sequence[Sequence[str | int]], timeout: float
) -> list[Finished]:
    """Start every command before waiting for any (the CI fan-out), then collect them all."""
    procs = [spawn(workspace, *cmd) for cmd in commands]
    started = time.monotonic()
    outputs: dict[int, tuple[str, str, float]] = {}

    def collect(i: int, proc: subprocess.Popen[str]) -> None:
        out, err = proc.communicate()
        outputs[i] = (out, err, time.monotonic() - started)

    threads = [threading.Thread(target=collect, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(timeout=max(started + timeout - time.monotonic(), 1))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert len(outputs) == len(procs), f"runners still going after {timeout} s were killed"
    return [
        Finished(i, proc.pid, tuple(proc.args[1:]), proc.returncode, *outputs[i])
        for i, proc in enumerate(procs)
    ]


def assert_no_database_is_locked(results: Iterable[Finished]) -> None:
    for r in results:
        assert "database is locked" not in r.stderr + r.stdout, r.describe()
        assert "Traceback" not in r.stderr, r.describe()


def positions(store: Store, model: type[GateResultRow] | type[StepRow]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    with store.engine.connect() as conn:
        for transition_id, position in conn.execute(
            sa.select(model.transition_id, model.position).order_by(model.transition_id, model.position)
        ):
            found.setdefault(transition_id, []).append(position)
    return found


def assert_history_whole(store: Store, app: str) -> dict[int, list[TransitionRecord]]:
    """No torn rows: every transition closed with a verdict, numbered gate results and steps without
    gaps or duplicates, every run in the state its last transition put it in, and nothing held."""
    history: dict[int, list[TransitionRecord]] = {}
    checks = positions(store, GateResultRow)
    steps = positions(store, StepRow)
    for run in store.list_runs(app=app, limit=10_000):
        transitions = store.transitions(run.id)
        history[run.id] = transitions
        for t in transitions:
            assert t.outcome not in UNFINISHED, t
            assert t.finished_at is not None and t.result_state is not None, t
            assert t.started_at <= t.finished_at, t
            got = checks.get(t.id, [])
            assert got == list(range(1, len(got) + 1)), f"gate results of transition {t.id}: {got}"
            assert len(got) == len(t.checks)
            got = steps.get(t.id, [])
            assert got == list(range(1, len(got) + 1)), f"steps of transition {t.id}: {got}"
        expected = transitions[-1].result_state if transitions else "development"
        assert run.state == expected, (run, transitions)
    assert store.locks(app) == [], store.locks(app)
    assert store.unfinished_transitions(app) == []
    with store.engine.connect() as conn:
        waiters = conn.execute(sa.select(LockWaiter.run_id).where(LockWaiter.app == app)).all()
    assert waiters == [], f"waiters left behind: {waiters}"
    return history


def at_staging(store: Store, app: BusyboxApp, sha: str) -> int:
    """A run already in deploy-staging, with the transition that explains it. The prod edge rebuilds
    and re-checks staging from the commit anyway (check_staging_image_fresh), so the staging edge's
    own Docker work would only cost time here."""
    run = store.create_run(app.name, sha, "ci", "development")
    tid = store.begin_transition(
        run.id,
        TO_STAGING.source.value,
        TO_STAGING.dest.value,
        "ci",
        ("staging",),
        target_environment="staging",
        holder=Holder.me(),
        lease_s=30,
    )
    store.finish_transition(
        tid, outcome="succeeded", reason="arranged by the test", result_state="deploy-staging"
    )
    return run.id


def assert_promotions_one_at_a_time(
    history: dict[int, list[TransitionRecord]], sha_of: dict[int, str]
) -> list[int]:
    """Prod edges that did work never overlap in time, and no older run reaches prod after a newer one.
    Returns the runs that promoted, in the order they did."""
    worked = sorted(
        (t for ts in history.values() for t in ts if t.to_state == "deploy" and t.outcome != "superseded"),
        key=lambda t: t.started_at,
    )
    for before, after in itertools.pairwise(worked):
        assert before.finished_at is not None
        assert before.finished_at <= after.started_at, f"prod edges overlap: {before} / {after}"
    promoted = [t.run_id for t in worked if t.outcome == "succeeded"]
    assert promoted == sorted(promoted), f"an older run was promoted after a newer one: {promoted}"
    assert len(set(promoted)) == len(promoted)
    for superseded in (t for ts in history.values() for t in ts if t.outcome == "superseded"):
        assert superseded.result_state == "superseded" and superseded.to_state == "deploy"
        assert (
            superseded.reason and f"run {superseded.run_id} is superseded by newer run" in superseded.reason
        )
    assert promoted, "nobody promoted"
    assert all(r in sha_of for r in promoted)
    return promoted


def assert_prod_runs(app: BusyboxApp, store: Store, run_id: int, sha: str) -> None:
    prod = app.running("prod")
    assert prod is not None and prod.status == "running", prod
    assert prod.revision == sha, f"prod runs {prod.revision}, not run {run_id}'s {sha}"
    served = app.get("prod", "/version")
    assert (served.status, served.body.strip()) == (200, sha)
    releases = [r for r in reversed(store.releases(app.name, "prod", limit=1000)) if r.kind == "deploy"]
    assert releases and releases[-1].run_id == run_id and releases[-1].revision == sha
    order = [r.run_id or 0 for r in releases]
    assert order == sorted(order), f"prod releases by run id: {order}"


# --------------------------------------------------------------------------------------------------
# the same run, twenty times


def test_twenty_advances_of_one_run_move_it_once(busybox_app: BusyboxApp, store: Store) -> None:
    """Hazard: two CI jobs for the same commit both building and swapping staging, or both recording a
    transition. Exactly one may proceed; the others exit 3 at once naming who is moving the run."""
    app = busybox_app
    sha = app.commit("release")
    run_id = app.start(sha)

    started = time.monotonic()
    results = run_at_once(
        app.workspace,
        [
            ("advance", run_id, "--to", "deploy-staging", "--actor", f"runner-{i}", "--json")
            for i in range(RUNNERS)
        ],
        timeout=150,
    )
    elapsed = time.monotonic() - started
    assert_no_database_is_locked(results)
    codes = sorted(r.exit_code for r in results)
    assert codes == [0] + [3] * (RUNNERS - 1), "\n\n".join(r.describe() for r in results if r.exit_code)

    (winner,) = (r for r in results if r.exit_code == 0)
    won = winner.payload
    assert (won["state"], won["outcome"]) == ("deploy-staging", "succeeded"), winner.describe()
    me = Holder.me()
    for loser in (r for r in results if r.exit_code == 3):
        message = loser.message
        if "has an unfinished transition" in message:
            # Told who is moving the run: the winner's actor and process.
            assert f"transition {won['transition_id']} (development->deploy-staging" in message, message
            assert f"by runner-{winner.index}, pid {winner.pid} on {me.host}" in message, message
        else:
            # Or, if it looked after the winner finished, that the run has moved on.
            assert (
                f"run {run_id} is no longer in development: another runner moved it" in message
                or "cannot move from deploy-staging to deploy-staging" in message
            ), message
        assert "checks" not in loser.payload
        # Told at once, not made to wait for the winner (a margin for scheduling on a busy machine).
        assert loser.seconds <= winner.seconds + 2, (loser.seconds, winner.seconds)

    history = assert_history_whole(store, app.name)
    (only,) = history[run_id]
    assert (only.id, only.outcome, only.actor) == (
        won["transition_id"],
        "succeeded",
        f"runner-{winner.index}",
    )
    assert [c.name for c in only.checks] == [c["name"] for c in won["checks"]]
    assert [(r.environment, r.revision) for r in store.releases_of_run(run_id)] == [("staging", sha)]
    staging = app.running("staging")
    assert staging is not None and staging.revision == sha
    losers = sorted(r.seconds for r in results if r.exit_code)
    print(f"20 advances of one run: {elapsed:.1f} s", f"(winner {winner.seconds:.1f} s,", end=" ")
    print(f"losers {losers[0]:.1f}-{losers[-1]:.1f} s)")


# --------------------------------------------------------------------------------------------------
# twenty runs of one app, to prod at once


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "no-wait"])
def test_twenty_runs_to_prod_promote_one_at_a_time_newest_last(
    busybox_app: BusyboxApp, store: Store, wait: bool
) -> None:
    """Hazard: a CI backlog deploying twenty stale commits to prod one after another, or two at once,
    or an older commit landing after a newer one. Prod edges must never overlap, releases must go by
    increasing run id, and prod must end on the newest commit that promoted; with --wait that is the
    newest run of all, every other one superseded."""
    app = busybox_app
    shas = [app.commit(f"release {i}") for i in range(RUNNERS)]
    runs = [at_staging(store, app, sha) for sha in shas]
    sha_of = dict(zip(runs, shas, strict=True))
    extra = ("--wait", "120") if wait else ()

    started = time.monotonic()
    results = run_at_once(
        app.workspace,
        [
            ("advance", r, "--to", "deploy", "--actor", f"runner-{i}", *extra, "--json")
            for i, r in enumerate(runs)
        ],
        timeout=170,
    )
    elapsed = time.monotonic() - started
    assert_no_database_is_locked(results)
    assert {r.exit_code for r in results} <= {0, 3}, "\n\n".join(
        r.describe() for r in results if r.exit_code not in (0, 3)
    )

    history = assert_history_whole(store, app.name)
    promoted = assert_promotions_one_at_a_time(history, sha_of)
    by_run = dict(zip(runs, results, strict=True))
    for run_id, result in by_run.items():
        state = store.get_run(run_id).state
        if result.exit_code == 0:
            assert result.payload["state"] == "deploy" and state == "deploy", result.describe()
            continue
        message = result.message
        if state == "superseded":
            last = history[run_id][-1]
            assert f"run {run_id} is superseded by newer run " in message, message
            newer = int(message.split("newer run ", 1)[1].split(":", 1)[0])
            assert newer > run_id and last.reason == message
        else:
            # Told at once who holds prod (only without --wait: waiting, nobody gives up on a live lock).
            assert not wait, result.describe()
            assert state == "deploy-staging", result.describe()
            assert len(history[run_id]) == 1, "a refused advance writes no transition"
            if f"{app.name} was locked by another runner a moment ago" in message:
                continue  # the holder finished between the refused insert and the look at who it was
            assert (
                f"{app.name} staging is locked by run " in message
                or f"{app.name} prod is locked by run " in message
            ), message
            holder = int(message.split(" is locked by run ", 1)[1].split(" ", 1)[0])
            assert by_run[holder].exit_code == 0, (message, by_run[holder].describe())
            assert result.seconds <= by_run[holder].seconds + 2, "told at once, not after the holder finished"
    assert sorted(promoted) == sorted(r for r, res in by_run.items() if res.exit_code == 0)
    if wait:
        assert promoted[-1] == runs[-1], f"with --wait the newest run must end in prod: {promoted}"
        assert all(store.get_run(r).state == "superseded" for r in runs if r not in promoted)
    assert_prod_runs(app, store, promoted[-1], sha_of[promoted[-1]])
    how = "--wait 120" if wait else "no wait"
    print(f"20 runs to prod ({how}): promoted {promoted} in {elapsed:.1f} s")


# --------------------------------------------------------------------------------------------------
# --wait waits; freeze stops the line but not a rollback


def test_wait_takes_the_environment_when_a_hand_held_lock_goes(busybox_app: BusyboxApp, store: Store) -> None:
    app = busybox_app
    run_id = app.start(app.commit("release"))
    lock = orchestrator(app.workspace, "lock", app.name, "--env", "staging", "--reason", "disk check")
    assert lock.returncode == 0, lock.stderr

    waiting = spawn(app.workspace, "advance", run_id, "--to", "deploy-staging", "--wait", "60", "--json")
    time.sleep(1.0)
    try:
        assert waiting.poll() is None, "advance --wait gave up on a hand-held lock at once"
        with store.engine.connect() as conn:
            waiters = conn.execute(sa.select(LockWaiter.run_id, LockWaiter.environment)).all()
        # Registered as a waiter (unless the machine is so busy it has not even started yet).
        assert [tuple(w) for w in waiters] in ([(run_id, "staging")], []), waiters
        assert store.transitions(run_id) == []
        unlocked = orchestrator(app.workspace, "unlock", app.name, "--env", "staging")
        assert unlocked.returncode == 0, unlocked.stderr
        out, err = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, f"{out}\n{err}"
    assert "database is locked" not in err
    payload = json.loads(out)
    assert (payload["state"], payload["outcome"]) == ("deploy-staging", "succeeded")
    (transition,) = store.transitions(run_id)
    kinds = [e.kind for e in reversed(store.events(app=app.name))]
    assert kinds == ["lock", "unlock"]
    unlock_at = store.events(app=app.name, limit=1)[0].at
    assert transition.started_at >= unlock_at, "the waiter moved only once the lock was gone"
    assert "waiting_for_lock" in err
    assert_history_whole(store, app.name)


def test_freeze_stops_advance_but_not_rollback(busybox_app: BusyboxApp, store: Store) -> None:
    """Hazard: a freeze during an incident that also blocks the way out. Advancing must stop (exit 3,
    saying who froze, when and why); rolling prod back must still work."""
    app = busybox_app
    first_sha, second_sha, third_sha = (app.commit(f"release {i}") for i in range(3))
    for sha in (first_sha, second_sha):
        run_id = at_staging(store, app, sha)
        assert app.advance(run_id, "deploy").ok()["state"] == "deploy"
    third = at_staging(store, app, third_sha)

    frozen = app.cli(
        "freeze", app.name, "--reason", "incident 7: checkout errors", "--actor", "carol", as_json=True
    ).ok()["freeze"]
    refused = orchestrator(app.workspace, "advance", third, "--to", "deploy", "--json")
    assert refused.returncode == 3, refused.stderr
    message = json.loads(refused.stdout)["message"]
    assert f"{app.name} frozen by carol since {frozen['since']}: incident 7: checkout errors" in message
    assert f"orchestrator unfreeze {app.name}" in message
    assert [t.to_state for t in store.transitions(third)] == ["deploy-staging"]

    rolled = orchestrator(
        app.workspace, "rollback", app.name, "--env", "prod", "--reason", "incident 7", "--json"
    )
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert json.loads(rolled.stdout)["to_release"]["revision"] == first_sha
    prod = app.running("prod")
    assert prod is not None and prod.revision == first_sha
    assert store.locks(app.name) == []
    assert [f.app for f in store.freezes()] == [app.name], "the rollback did not lift the freeze"
    assert orchestrator(app.workspace, "unfreeze", app.name).returncode == 0
    assert app.advance(third, "deploy").ok()["state"] == "deploy", "unfrozen, the line moves again"
