"""Locks, leases, freezes and takeovers through the real CLI and store, without Docker (issue 9).

A lock is only as good as the answer to "is its holder still there?": a live holder must never be
robbed, a dead one (same host: its pid is gone or is another process now; elsewhere: its lease ran
out) must never block the line for good, and every takeover must be on record. The holders that
died are real processes that exited; the live one is this test process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from orchestrator.errors import Conflict
from orchestrator.gates import Gate, GateContext, Verdict
from orchestrator.holder import Holder, Liveness
from orchestrator.machine import TO_PROD, TO_STAGING
from orchestrator.service import RunService
from orchestrator.store.models import LockWaiter
from orchestrator.store.repository import LockRecord, Store, Superseded, UnfinishedTransition

if TYPE_CHECKING:
    from conftest import Cli, Workspace

pytestmark = pytest.mark.usefixtures("docker_free_gates")

RegisterGate = Callable[..., type[Gate]]
OTHER_HOST = "another-runner.invalid"  # never this machine's name: only its lease can speak for it


# --------------------------------------------------------------------------------------------------
# helpers


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped: what a SIGKILLed runner leaves behind."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def dead_holder() -> Holder:
    me = Holder.me()
    holder = Holder(me.host, dead_pid(), "12345")
    assert holder.liveness() == Liveness.DEAD
    return holder


def start(cli: Cli, workspace: Workspace, app: str = "demo") -> int:
    payload = cli("run", "start", "--app", app, "--sha", workspace.repo.sha, as_json=True).ok()
    return int(payload["run_id"])


def begin(store: Store, run_id: int, holder: Holder, *, to_prod: bool = False, lease_s: float = 30.0) -> int:
    """A transition some runner began (and, for a dead holder, will never finish)."""
    edge = TO_PROD if to_prod else TO_STAGING
    envs = ("staging", "prod") if to_prod else ("staging",)
    return store.begin_transition(
        run_id,
        edge.source.value,
        edge.dest.value,
        "ci #7",
        envs,
        target_environment="prod" if to_prod else "staging",
        holder=holder,
        lease_s=lease_s,
    )


def at_staging(store: Store, cli: Cli, workspace: Workspace, app: str = "demo") -> int:
    """A run in deploy-staging, with the history that explains it."""
    run_id = start(cli, workspace, app)
    tid = begin(store, run_id, Holder.me())
    store.finish_transition(tid, outcome="succeeded", reason=None, result_state="deploy-staging")
    return run_id


def event_kinds(store: Store, **where: Any) -> list[str]:
    return [e.kind for e in reversed(store.events(**where))]


def lock_of(store: Store, env: str, app: str = "demo") -> LockRecord:
    (found,) = store.locks(app, [env])
    return found


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


# --------------------------------------------------------------------------------------------------
# lock / unlock / locks by hand


def test_lock_holds_an_environment_by_hand(cli: Cli, workspace: Workspace, store: Store) -> None:
    held = cli(
        "lock", "demo", "--env", "prod", "--reason", "investigating 502s", "--actor", "alice", as_json=True
    ).ok()["lock"]
    assert held["app"] == "demo" and held["environment"] == "prod"
    assert (held["kind"], held["holder"], held["reason"]) == ("manual", "alice", "investigating 502s")
    # A hand-held lock belongs to no process and never expires: only `unlock` ends it.
    assert (held["process"], held["lease_expires_at"], held["liveness"]) == (None, None, "held")
    assert (held["run_id"], held["transition_id"]) == (None, None)

    listed = cli("locks", as_json=True).ok()
    assert listed == {"locks": [held], "freezes": []}
    (event,) = store.events(app="demo")
    assert (event.kind, event.actor, event.environment, event.message) == (
        "lock",
        "alice",
        "prod",
        "investigating 502s",
    )

    human = cli("lock", "demo", "--env", "staging", "--reason", "db migration", "--actor", "bob")
    human.ok()
    assert "demo staging is locked by bob by hand (db migration) since" in human.stdout
    text = cli("locks")
    assert text.ok() is None
    lines = text.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith("[manual, holder held]") for line in lines), lines
    assert lines[0].startswith("demo prod is locked by alice by hand (investigating 502s) since")


@pytest.mark.parametrize("as_json", [False, True], ids=["human", "json"])
def test_a_second_lock_is_refused_naming_the_first(cli: Cli, workspace: Workspace, as_json: bool) -> None:
    cli("lock", "demo", "--env", "prod", "--reason", "incident 12", "--actor", "alice").ok()
    message = cli(
        "lock", "demo", "--env", "prod", "--reason", "mine", "--actor", "bob", as_json=as_json
    ).error(3, "conflict")
    assert "demo prod is locked by alice by hand (incident 12)" in message
    assert "orchestrator unlock demo --env prod" in message
    assert [lk["holder"] for lk in cli("locks", as_json=True).ok()["locks"]] == ["alice"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("lock", "demo", "--env", "prod", "--reason", "   "), "needs --reason"),
        (("lock", "demo", "--env", "qa", "--reason", "x"), "unknown environment 'qa'"),
        (("lock", "nope", "--env", "prod", "--reason", "x"), "nope"),
        (("lock", "demo", "--env", "prod"), "--reason"),
        (("unlock", "demo", "--env", "qa"), "unknown environment 'qa'"),
        (("freeze", "demo", "--reason", ""), "needs --reason"),
        (("freeze", "nope", "--reason", "x"), "nope"),
        (("freeze", "demo"), "--reason"),
    ],
    ids=[
        "blank-reason",
        "unknown-env",
        "unknown-app",
        "missing-reason",
        "unlock-unknown-env",
        "freeze-blank-reason",
        "freeze-unknown-app",
        "freeze-missing-reason",
    ],
)
def test_bad_operator_input_is_exit_2_and_changes_nothing(
    cli: Cli, workspace: Workspace, store: Store, args: tuple[str, ...], needle: str
) -> None:
    message = cli(*args, as_json=True).error(2, "bad_input")
    assert needle in message
    assert store.locks() == [] and store.freezes() == [] and store.events() == []


def test_unlock_releases_a_hand_held_lock_and_records_who(
    cli: Cli, workspace: Workspace, store: Store
) -> None:
    cli("lock", "demo", "--env", "prod", "--reason", "incident 12", "--actor", "alice").ok()
    done = cli("unlock", "demo", "--env", "prod", "--actor", "bob", as_json=True).ok()
    assert done["how"] == "released"
    assert (done["unlocked"]["holder"], done["unlocked"]["kind"]) == ("alice", "manual")
    assert store.locks() == []
    assert event_kinds(store, app="demo") == ["lock", "unlock"]
    unlock_event = store.events(app="demo", limit=1)[0]
    assert unlock_event.actor == "bob" and "alice" in unlock_event.message

    again = cli("unlock", "demo", "--env", "prod")
    assert "demo prod is not locked: nothing to unlock" in again.error(3, "conflict")


def test_unlock_of_a_live_runners_lock_needs_force(cli: Cli, workspace: Workspace, store: Store) -> None:
    """Hazard: an operator clearing a lock a runner still works under, so two runners swap prod at once.
    Without --force it is refused naming the live holder; with --force it goes, and that is recorded."""
    run_id = start(cli, workspace)
    tid = begin(store, run_id, Holder.me())

    refused = cli("unlock", "demo", "--env", "staging", "--actor", "bob", as_json=True)
    message = refused.error(3, "conflict")
    assert f"demo staging is locked by run {run_id} (ci #7)" in message
    assert Holder.me().describe() in message and "is alive" in message
    assert "orchestrator unlock demo --env staging --force" in message
    assert refused.payload["lock"]["liveness"] == "alive"
    assert [lk.transition_id for lk in store.locks()] == [tid]

    forced = cli("unlock", "demo", "--env", "staging", "--force", "--actor", "bob", as_json=True).ok()
    assert forced["how"] == "forced" and forced["unlocked"]["transition_id"] == tid
    assert store.locks() == []
    event = store.events(app="demo", limit=1)[0]
    assert (event.kind, event.actor, event.transition_id) == ("unlock", "bob", tid)
    assert "forced by bob" in event.message
    # The robbed runner learns it at its next heartbeat instead of carrying on as if it still held it.
    assert store.renew_lease(tid, Holder.me(), 30.0) is False


def test_unlock_of_a_dead_runners_lock_recovers_it(cli: Cli, workspace: Workspace, store: Store) -> None:
    run_id = start(cli, workspace)
    dead = dead_holder()
    tid = begin(store, run_id, dead)
    assert lock_of(store, "staging").liveness() == "dead"

    done = cli("unlock", "demo", "--env", "staging", "--actor", "bob", as_json=True).ok()
    assert done["how"].startswith("recovered: ")
    assert store.locks() == [] and store.unfinished_transitions() == []
    (closed,) = store.transitions(run_id)
    assert (closed.id, closed.outcome, closed.result_state) == (tid, "aborted", "development")
    assert store.get_run(run_id).state == "development"
    assert event_kinds(store, run_id=run_id) == ["lock_taken_over", "recovered"]


def test_unlock_names_whoever_took_a_dead_runners_lock_meanwhile(
    cli: Cli, workspace: Workspace, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between `unlock` seeing a dead holder and recovering, another process may take the transition
    over to recover it. The refusal must name that live holder, not call the dead one alive."""
    run_id = start(cli, workspace)
    dead = dead_holder()
    tid = begin(store, run_id, dead)
    rescuer = Holder.me()

    def another_process_recovers_first(self: RunService, app: str | None, actor: str | None) -> list[Any]:
        assert store.claim_transition(tid, dead, rescuer, 30, "rescuer")
        return []

    monkeypatch.setattr(RunService, "recover", another_process_recovers_first)
    message = cli("unlock", "demo", "--env", "staging", as_json=True).error(3, "conflict")
    assert f"its holder ({rescuer.describe()}) is alive" in message
    assert dead.describe() not in message
    assert lock_of(store, "staging").process == rescuer


def test_locks_json_says_whether_each_holder_lives(cli: Cli, workspace: Workspace, store: Store) -> None:
    """`locks` is what an operator reads before forcing anything: each holder's liveness must be true."""
    workspace.set_apps({name: workspace.repo.path for name in ("demo", "live", "dead", "away", "gone")})
    begin(store, start(cli, workspace, "live"), Holder.me())
    begin(store, start(cli, workspace, "dead"), dead_holder())
    begin(store, start(cli, workspace, "away"), Holder(OTHER_HOST, 4242, "77"), lease_s=300)
    begin(store, start(cli, workspace, "gone"), Holder(OTHER_HOST, 4242, "77"), lease_s=-1)
    cli("lock", "demo", "--env", "prod", "--reason", "hold", "--actor", "alice").ok()
    cli("freeze", "demo", "--reason", "release train stopped", "--actor", "carol").ok()

    listed = cli("locks", as_json=True).ok()
    seen = {(lk["app"], lk["environment"]): lk["liveness"] for lk in listed["locks"]}
    assert seen == {
        ("away", "staging"): "alive",
        ("dead", "staging"): "dead",
        ("demo", "prod"): "held",
        ("gone", "staging"): "expired",
        ("live", "staging"): "alive",
    }
    assert [(f["app"], f["actor"], f["reason"]) for f in listed["freezes"]] == [
        ("demo", "carol", "release train stopped")
    ]
    only_demo = cli("locks", "demo", as_json=True).ok()
    assert [(lk["app"], lk["environment"]) for lk in only_demo["locks"]] == [("demo", "prod")]
    assert len(only_demo["freezes"]) == 1
    assert cli("locks", "nope", as_json=True).error(2, "bad_input")

    human = cli("locks")
    assert human.ok() is None
    assert "[run, holder dead]" in human.stdout and "[run, holder expired]" in human.stdout
    assert "demo frozen by carol since" in human.stdout


def test_no_locks_no_freezes(cli: Cli, workspace: Workspace) -> None:
    assert cli("locks", as_json=True).ok() == {"locks": [], "freezes": []}
    assert cli("locks").stdout.strip() == "no locks, no freezes"


# --------------------------------------------------------------------------------------------------
# advance against locks


def test_advance_into_a_hand_held_environment_exits_3_naming_the_holder(
    cli: Cli, workspace: Workspace, store: Store
) -> None:
    run_id = start(cli, workspace)
    cli("lock", "demo", "--env", "staging", "--reason", "disk full", "--actor", "alice").ok()
    for as_json in (False, True):
        message = cli("advance", run_id, "--to", "deploy-staging", as_json=as_json).error(3, "conflict")
        assert "demo staging is locked by alice by hand (disk full)" in message
        assert "orchestrator unlock demo --env staging" in message
    assert store.transitions(run_id) == [], "a refused advance writes no transition"
    assert store.get_run(run_id).state == "development"

    cli("unlock", "demo", "--env", "staging").ok()
    assert cli("advance", run_id, "--to", "deploy-staging", as_json=True).ok()["state"] == "deploy-staging"


def test_a_live_holder_is_never_taken_over(cli: Cli, workspace: Workspace, store: Store) -> None:
    """Hazard: mistaking a slow runner for a dead one and recovering under its feet."""
    first = start(cli, workspace)
    second = start(cli, workspace)
    tid = begin(store, first, Holder.me())

    message = cli("advance", second, "--to", "deploy-staging", as_json=True).error(3, "conflict")
    assert f"demo staging is locked by run {first} (ci #7) since" in message
    assert "wait for it to finish, or pass --wait SECONDS" in message

    # The same run: the message names who is moving it, and does not send the reader to `recover`
    # as if that runner were dead.
    same = cli("advance", first, "--to", "deploy-staging", as_json=True).error(3, "conflict")
    assert f"run {first} has an unfinished transition {tid} (development->deploy-staging" in same
    assert f"by ci #7, {Holder.me().describe()}: wait for it to finish" in same

    recovered = cli("recover", "--json").ok()
    assert recovered == {"recovered": []}
    assert [t.outcome for t in store.unfinished_transitions()] == ["in_progress"]
    assert [lk.transition_id for lk in store.locks()] == [tid]
    assert "lock_taken_over" not in event_kinds(store)


def test_wait_gives_up_on_a_live_holder_and_leaves_no_waiter(
    cli: Cli, workspace: Workspace, store: Store
) -> None:
    first = start(cli, workspace)
    second = start(cli, workspace)
    begin(store, first, Holder.me())

    started = time.monotonic()
    message = cli("advance", second, "--to", "deploy-staging", "--wait", "0.6", as_json=True).error(
        3, "conflict"
    )
    waited = time.monotonic() - started
    assert 0.5 <= waited < 10, waited
    assert f"locked by run {first}" in message and "(waited " in message
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(LockWaiter)).scalar() == 0
    assert store.transitions(second) == []


@pytest.mark.parametrize("holder", ["dead-pid", "reused-pid", "expired-elsewhere"])
def test_an_abandoned_lock_is_taken_over_by_the_next_advance_and_recorded(
    cli: Cli, workspace: Workspace, store: Store, holder: str
) -> None:
    """Hazard: a runner SIGKILLed mid-edge leaves staging locked for ever. The next advance that needs
    staging must recover the dead runner's transition (recorded as a takeover event) and proceed."""
    me = Holder.me()
    gone = {
        "dead-pid": dead_holder(),
        # This very pid, but a different start time: the pid was reused by another process.
        "reused-pid": Holder(me.host, os.getpid(), "1"),
        "expired-elsewhere": Holder(OTHER_HOST, os.getpid(), me.start),
    }[holder]
    first = start(cli, workspace)
    second = start(cli, workspace)
    tid = begin(store, first, gone, lease_s=-1 if holder == "expired-elsewhere" else 30.0)
    assert lock_of(store, "staging").abandoned

    result = cli("advance", second, "--to", "deploy-staging", as_json=True).ok()
    assert (result["state"], result["outcome"]) == ("deploy-staging", "succeeded")

    (abandoned,) = store.transitions(first)
    assert (abandoned.id, abandoned.outcome, abandoned.result_state) == (tid, "aborted", "development")
    assert abandoned.finished_at is not None
    assert gone.describe() in (abandoned.reason or "")
    assert store.get_run(first).state == "development"
    assert store.locks() == [] and store.unfinished_transitions() == []

    events = list(reversed(store.events(run_id=first)))
    assert [e.kind for e in events] == ["lock_taken_over", "recovered"]
    takeover = events[0]
    assert takeover.transition_id == tid
    assert takeover.details == {"from": gone.describe(), "to": me.describe()}
    assert gone.describe() in takeover.message


def test_the_same_run_recovers_its_own_dead_transition(cli: Cli, workspace: Workspace, store: Store) -> None:
    run_id = start(cli, workspace)
    tid = begin(store, run_id, dead_holder())
    result = cli("advance", run_id, "--to", "deploy-staging", as_json=True).ok()
    assert result["state"] == "deploy-staging" and result["transition_id"] != tid
    assert [(t.id, t.outcome) for t in store.transitions(run_id)] == [
        (tid, "aborted"),
        (result["transition_id"], "succeeded"),
    ]
    assert event_kinds(store, run_id=run_id) == ["lock_taken_over", "recovered"]


def test_an_unexpired_lease_elsewhere_is_respected(cli: Cli, workspace: Workspace, store: Store) -> None:
    first = start(cli, workspace)
    second = start(cli, workspace)
    begin(store, first, Holder(OTHER_HOST, 4242, "77"), lease_s=300)
    message = cli("advance", second, "--to", "deploy-staging", as_json=True).error(3, "conflict")
    assert f"locked by run {first}" in message
    assert cli("recover", as_json=True).ok() == {"recovered": []}
    assert "lock_taken_over" not in event_kinds(store)


def test_recover_reports_what_it_found_and_frees_everything(
    cli: Cli, workspace: Workspace, store: Store
) -> None:
    first = start(cli, workspace)
    dead = dead_holder()
    tid = begin(store, first, dead)
    human = cli("recover", "--actor", "oncall")
    assert human.ok() is None
    assert human.stdout.startswith(f"demo: transition {tid} (run {first}) -> aborted: "), human.stdout

    assert store.unfinished_transitions() == []
    assert store.locks() == []
    report = store.events(run_id=first, limit=1)[0]
    assert report.kind == "recovered" and report.transition_id == tid
    assert dead.describe() in report.message and "before its first step" in report.message
    assert cli("recover", as_json=True).ok() == {"recovered": []}
    assert cli("recover").stdout.strip().startswith("nothing to recover")


def test_recover_json(cli: Cli, workspace: Workspace, store: Store) -> None:
    first = start(cli, workspace)
    tid = begin(store, first, dead_holder())
    (report,) = cli("recover", "--actor", "oncall", as_json=True).ok()["recovered"]
    assert (report["app"], report["transition_id"], report["run_id"]) == ("demo", tid, first)
    assert report["outcome"] == "aborted" and report["actions"] == {}
    assert "recovered by oncall" in report["reason"]


# --------------------------------------------------------------------------------------------------
# leases


def test_begin_transition_writes_holder_and_lease(store: Store, cli: Cli, workspace: Workspace) -> None:
    run_id = start(cli, workspace)
    before = datetime.now(UTC)
    tid = begin(store, run_id, Holder.me(), to_prod=False, lease_s=30)
    transition = store.get_transition(tid)
    assert transition.holder == Holder.me()
    assert transition.lease_expires_at is not None
    assert before + timedelta(seconds=29) <= transition.lease_expires_at <= before + timedelta(seconds=40)
    held = lock_of(store, "staging")
    assert (held.kind, held.run_id, held.transition_id, held.process) == ("run", run_id, tid, Holder.me())
    assert held.lease_expires_at == transition.lease_expires_at


def test_renew_lease_pushes_the_transition_and_its_locks_forward(
    store: Store, cli: Cli, workspace: Workspace
) -> None:
    run_id = at_staging(store, cli, workspace)
    tid = begin(store, run_id, Holder.me(), to_prod=True, lease_s=1)
    old = store.get_transition(tid).lease_expires_at
    assert old is not None

    assert store.renew_lease(tid, Holder.me(), 120) is True
    renewed = store.get_transition(tid).lease_expires_at
    assert renewed is not None and renewed >= old + timedelta(seconds=100)
    assert {lk.environment: lk.lease_expires_at for lk in store.locks()} == {
        "staging": renewed,
        "prod": renewed,
    }
    # Only the holder renews: another process (or a stale one) learns the lease is not its own.
    me = Holder.me()
    for stranger in (
        Holder(me.host, dead_pid(), None),
        Holder(me.host, me.pid, "1"),
        Holder(OTHER_HOST, me.pid, me.start),
    ):
        assert store.renew_lease(tid, stranger, 600) is False, stranger
    assert store.get_transition(tid).lease_expires_at == renewed


def test_a_closed_or_interrupted_transition_cannot_be_renewed(
    store: Store, cli: Cli, workspace: Workspace
) -> None:
    """Hazard: a heartbeat still running while its transition is handed to `recover` pushing the
    locks' lease forward again, so another host would see them held by a live runner for one more
    lease."""
    run_id = start(cli, workspace)
    tid = begin(store, run_id, Holder.me(), lease_s=60)
    store.interrupt_transition(tid, "engine gone")
    expired = lock_of(store, "staging").lease_expires_at
    assert expired is not None and expired <= datetime.now(UTC)

    assert store.renew_lease(tid, Holder.me(), 60) is False
    assert lock_of(store, "staging").lease_expires_at == expired
    assert store.get_transition(tid).lease_expires_at == expired

    store.finish_transition(tid, outcome="aborted", reason="recovered", result_state="development")
    assert store.renew_lease(tid, Holder.me(), 60) is False


def test_a_runner_back_after_recovery_cannot_overwrite_it(
    store: Store, cli: Cli, workspace: Workspace
) -> None:
    """Hazard: a runner on another host, cut off from the database past its lease, comes back after
    `recover` closed its transition and put the environments back: its late verdict must not rewrite
    history nor move the run, and its late interruption must not reopen the transition."""
    run_id = start(cli, workspace)
    tid = begin(store, run_id, Holder(OTHER_HOST, 4242, "77"), lease_s=-1)
    (report,) = cli("recover", as_json=True).ok()["recovered"]
    assert report["transition_id"] == tid
    recovered = store.get_transition(tid)
    assert recovered.outcome == "aborted"

    with pytest.raises(Conflict, match=f"transition {tid} of run {run_id} was already closed"):
        store.finish_transition(tid, outcome="succeeded", reason=None, result_state="deploy-staging")
    store.interrupt_transition(tid, "engine gone")
    assert store.get_transition(tid) == recovered
    assert store.get_run(run_id).state == "development"
    assert store.unfinished_transitions() == [] and store.locks() == []


def test_a_slow_edge_keeps_its_lease_alive(
    cli: Cli, workspace: Workspace, store: Store, register_gate: RegisterGate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat renews every third of the lease: a gate that takes longer than one lease must
    still hold an unexpired lease (another host would otherwise take the environment mid-edge)."""
    monkeypatch.setenv("ORCH_LOCK_LEASE_S", "1")
    seen: list[tuple[datetime | None, datetime, datetime | None]] = []

    def slow(ctx: GateContext) -> Verdict:
        watcher = Store(workspace.db_url)
        try:
            deadline = time.monotonic() + 1.8
            while time.monotonic() < deadline:
                time.sleep(0.3)
                (held,) = watcher.locks("demo", ["prod"])
                transition = watcher.get_transition(held.transition_id or 0)
                seen.append((held.lease_expires_at, datetime.now(UTC), transition.lease_expires_at))
        finally:
            watcher.close()
        return Verdict.passed("slow but fine")

    register_gate("slow_probe", TO_PROD, slow)
    run_id = at_staging(store, cli, workspace)
    result = cli("advance", run_id, "--to", "deploy", as_json=True).ok()
    assert result["outcome"] == "succeeded"
    assert len(seen) >= 5
    for lock_lease, now, transition_lease in seen:
        assert lock_lease is not None and lock_lease > now, seen
        # Read one after the other, so a renewal may fall between them: both must be in the future.
        assert transition_lease is not None and transition_lease > now, seen
    assert seen[-1][0] > seen[0][0], "the lease moved forward while the edge ran"
    assert store.locks() == []


# --------------------------------------------------------------------------------------------------
# freeze / unfreeze


def test_freeze_stops_the_line_saying_who_when_and_why(cli: Cli, workspace: Workspace, store: Store) -> None:
    run_id = start(cli, workspace)
    frozen = cli("freeze", "demo", "--reason", "incident 42", "--actor", "carol", as_json=True).ok()["freeze"]
    assert (frozen["app"], frozen["actor"], frozen["reason"]) == ("demo", "carol", "incident 42")

    for as_json in (False, True):
        result = cli("advance", run_id, "--to", "deploy-staging", as_json=as_json)
        message = result.error(3, "conflict")
        assert f"demo frozen by carol since {frozen['since']}: incident 42" in message
        assert "orchestrator unfreeze demo" in message
        if as_json:
            assert result.payload["freeze"] == frozen
    assert store.transitions(run_id) == []
    assert event_kinds(store, app="demo") == ["freeze"]

    was = cli("unfreeze", "demo", "--actor", "dave", as_json=True).ok()["unfrozen"]
    assert was == frozen
    assert event_kinds(store, app="demo") == ["freeze", "unfreeze"]
    assert store.events(app="demo", limit=1)[0].actor == "dave"
    assert cli("advance", run_id, "--to", "deploy-staging", as_json=True).ok()["state"] == "deploy-staging"
    again = cli("unfreeze", "demo", as_json=True).error(3, "conflict")
    assert "demo is not frozen" in again


def test_a_freeze_of_one_app_leaves_the_others_moving(cli: Cli, workspace: Workspace) -> None:
    workspace.set_apps({"demo": workspace.repo.path, "shop": workspace.repo.path})
    demo, shop = start(cli, workspace, "demo"), start(cli, workspace, "shop")
    cli("freeze", "demo", "--reason", "flaky tests").ok()
    cli("advance", demo, "--to", "deploy-staging").error(3, "conflict")
    assert cli("advance", shop, "--to", "deploy-staging", as_json=True).ok()["state"] == "deploy-staging"


def test_freezing_every_app(cli: Cli, workspace: Workspace, store: Store) -> None:
    workspace.set_apps({"demo": workspace.repo.path, "shop": workspace.repo.path})
    demo, shop = start(cli, workspace, "demo"), start(cli, workspace, "shop")
    human = cli("freeze", "--reason", "change freeze for the holidays", "--actor", "erin")
    assert human.ok() is None and "every app frozen by erin since" in human.stdout
    for run_id, app in ((demo, "demo"), (shop, "shop")):
        message = cli("advance", run_id, "--to", "deploy-staging").error(3, "conflict")
        assert "every app frozen by erin since" in message
        assert "change freeze for the holidays" in message
        assert f"no run of {app} may advance until 'orchestrator unfreeze'" in message
    # Unfreezing one app does not lift the freeze of all of them.
    assert "shop is not frozen" in cli("unfreeze", "shop").error(3, "conflict")
    assert [f.app for f in store.freezes()] == ["*"]
    assert "unfrozen; it was: every app frozen by erin" in cli("unfreeze").stdout
    assert store.freezes() == []
    cli("advance", demo, "--to", "deploy-staging").ok()


def test_freezing_again_updates_who_and_why(cli: Cli, workspace: Workspace, store: Store) -> None:
    cli("freeze", "demo", "--reason", "first", "--actor", "a").ok()
    second = cli("freeze", "demo", "--reason", "second", "--actor", "b", as_json=True).ok()["freeze"]
    (only,) = store.freezes()
    assert (only.actor, only.reason) == ("b", "second")
    assert iso(only.since) == second["since"]


# --------------------------------------------------------------------------------------------------
# supersede, at the store


def test_a_newer_run_waiting_for_prod_supersedes_an_older_one(
    cli: Cli, workspace: Workspace, store: Store
) -> None:
    older = at_staging(store, cli, workspace)
    newer = at_staging(store, cli, workspace)
    store.wait_for("demo", "prod", newer, 30)

    message = cli("advance", older, "--to", "deploy", as_json=True).error(3, "conflict")
    assert f"run {older} is superseded by newer run {newer}: it is waiting for prod too" in message
    assert store.get_run(older).state == "superseded"
    last = store.transitions(older)[-1]
    assert (last.outcome, last.result_state, last.from_state, last.to_state) == (
        "superseded",
        "superseded",
        "deploy-staging",
        "deploy",
    )
    assert last.finished_at is not None and last.reason == message
    assert last.started_at == last.finished_at, "an instant, never finished before it started"
    # Superseded is the end of the line for that run.
    assert "cannot move from superseded" in cli("advance", older, "--to", "deploy").error(3, "conflict")
    assert store.locks() == []


def test_a_newer_release_in_prod_supersedes_an_older_run(
    cli: Cli, workspace: Workspace, store: Store
) -> None:
    older = at_staging(store, cli, workspace)
    newer = at_staging(store, cli, workspace)
    release = store.record_release(
        app="demo",
        environment="prod",
        image_id="sha256:" + "a" * 64,
        revision="b" * 40,
        run_id=newer,
        transition_id=None,
    )
    message = cli("advance", older, "--to", "deploy", as_json=True).error(3, "conflict")
    assert f"superseded by newer run {newer}: its release {release.id} already runs in prod" in message
    assert store.get_run(older).state == "superseded"


def test_supersede_never_tears_a_run_that_moved_meanwhile(
    cli: Cli, workspace: Workspace, store: Store
) -> None:
    """Hazard: between the claim that found a newer run and the write that records the supersede,
    another runner begins (or finishes) an edge of the same run; writing ``superseded`` anyway leaves a
    run whose state its history does not explain."""
    run_id = at_staging(store, cli, workspace)
    tid = begin(store, run_id, Holder.me(), to_prod=True)
    with pytest.raises(UnfinishedTransition):
        store.supersede(run_id, "deploy-staging", "deploy", "ci", "newer run 99 is moving to deploy")
    assert store.get_run(run_id).state == "deploy-staging"
    assert [t.outcome for t in store.transitions(run_id)] == ["succeeded", "in_progress"]

    store.finish_transition(tid, outcome="succeeded", reason=None, result_state="deploy")
    with pytest.raises(Conflict, match="no longer in deploy-staging") as raised:
        store.supersede(run_id, "deploy-staging", "deploy", "ci", "newer run 99 is moving to deploy")
    assert not isinstance(raised.value, Superseded)
    assert store.get_run(run_id).state == "deploy"
    assert [t.outcome for t in store.transitions(run_id)] == ["succeeded", "succeeded"]
