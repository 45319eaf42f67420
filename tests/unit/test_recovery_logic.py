"""What recovery decides from recorded steps and observed facts, without Docker.

Hazards: a crashed promotion that leaves prod on an unverified image, an interrupted one that keeps
the image it was told to abandon, a restore attempted with nothing to restore, a process that dies
while the hook meant to kill it is mis-armed, and a dead holder mistaken for a live one (or the
reverse, which would let two runners swap prod at once).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from orchestrator.config import load_config
from orchestrator.gates import GateResult, GateStatus
from orchestrator.holder import Holder, Liveness
from orchestrator.machine import PROD, STAGING, TO_PROD, TO_STAGING
from orchestrator.recovery import (
    Action,
    EnvFacts,
    Mode,
    abandoned,
    decide,
    edge_finished,
    new_digest,
    new_image,
    touched,
)
from orchestrator.service import RunService
from orchestrator.steps import CRASH_AT_VAR, CRASH_SIGNAL_VAR, StepLog, StepStatus
from orchestrator.store.repository import StepRecord, Store, TransitionRecord

if TYPE_CHECKING:
    from conftest import Workspace

    from orchestrator.docker_engine import DockerEngine

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def facts(env: str = PROD, **kw: object) -> EnvFacts:
    base: dict[str, object] = {
        "env": env,
        "touched": True,
        "new_image": "sha256:new",
        "runs_new": False,
        "runs_previous": False,
        "new_recorded": False,
        "has_previous": True,
    }
    base.update(kw)
    return EnvFacts(**base)  # type: ignore[arg-type]


def step(name: str, env: str | None, status: str = "done", **changes: object) -> StepRecord:
    return StepRecord(0, 0, name, env, status, NOW, NOW, dict(changes), None)


@pytest.mark.parametrize(
    ("given", "mode", "expected"),
    [
        # prod was swapped and the new image runs, verified: a dead runner's work is kept...
        (facts(runs_new=True), Mode.RECOVER, Action.RECORD),
        (facts(runs_new=True, new_recorded=True), Mode.RECOVER, Action.KEEP),
        # ...but a cancelled runner was told to stop: prod goes back.
        (facts(runs_new=True), Mode.UNDO, Action.RESTORE),
        # staging runs the run's own image, verified: keep it either way (it is what staging is for).
        (facts(STAGING, runs_new=True), Mode.UNDO, Action.RECORD),
        # prod half-swapped (container gone or another image): restore, or stop when nothing to restore.
        (facts(), Mode.RECOVER, Action.RESTORE),
        (facts(has_previous=False), Mode.RECOVER, Action.STOP),
        (facts(has_previous=False, runs_new=True), Mode.UNDO, Action.STOP),
        # the old container still runs; only the tags moved: move them back, no restart.
        (facts(runs_previous=True), Mode.RECOVER, Action.RETAG),
        # a compensation already put it back within this transition.
        (facts(runs_previous=True, restored=True), Mode.UNDO, Action.KEEP),
        # untouched: keep what runs, repair what the engine lost.
        (facts(touched=False, runs_previous=True), Mode.RECOVER, Action.KEEP),
        (facts(touched=False), Mode.RECOVER, Action.REPAIR),
        (facts(touched=False, has_previous=False), Mode.UNDO, Action.KEEP),
    ],
)
def test_decide(given: EnvFacts, mode: Mode, expected: Action) -> None:
    assert decide(given, mode) == expected


def test_prod_edge_is_finished_only_when_prod_runs_the_new_image() -> None:
    prod = facts(runs_new=True)
    staging = facts(STAGING, runs_new=True, new_recorded=True)
    both = {PROD: prod, STAGING: staging}
    assert edge_finished(TO_PROD, {PROD: Action.RECORD, STAGING: Action.KEEP}, both, [])
    assert not edge_finished(
        TO_PROD, {PROD: Action.RESTORE, STAGING: Action.KEEP}, {**both, PROD: facts()}, []
    )


def test_staging_edge_is_finished_only_after_its_check_passed() -> None:
    staging = {STAGING: facts(STAGING, runs_new=True)}
    actions = {STAGING: Action.RECORD}
    assert not edge_finished(TO_STAGING, actions, staging, [step("staging_check", STAGING, "started")])
    assert edge_finished(TO_STAGING, actions, staging, [step("staging_check", STAGING, "done")])


def test_touched_and_new_image_read_the_recorded_steps() -> None:
    steps = [
        step("build", None, image_id="sha256:built"),
        step("staging_check", STAGING),
        step("image_guard", None),
        step("prod_tag", PROD, "started", image_id="sha256:promoted"),
    ]
    assert touched(steps, PROD) and not touched(steps, STAGING)
    assert new_image(steps, PROD) == "sha256:promoted"
    assert new_image(steps, STAGING) == "sha256:built"
    assert touched([step("restore_prod_stop", PROD)], PROD)
    # A zero-downtime hand-over touches prod from its connect on, as a recover phase does.
    for name in ("prod_connect", "prod_retire", "recover_prod_retire"):
        assert touched([step(name, PROD)], PROD), name
    assert not touched([step("prod_verify_new", PROD), step("prod_takeover", STAGING)], PROD)


def _transition(**kw: object) -> TransitionRecord:
    base: dict[str, object] = {
        "id": 1,
        "run_id": 1,
        "from_state": "deploy-staging",
        "to_state": "deploy",
        "actor": "ci",
        "started_at": NOW,
        "finished_at": None,
        "outcome": "in_progress",
        "reason": None,
        "result_state": None,
        "checks": (),
    }
    base.update(kw)
    return TransitionRecord(**base)  # type: ignore[arg-type]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_holder_liveness() -> None:
    me = Holder.me()
    assert me.liveness() == Liveness.ALIVE
    assert Holder(me.host, _dead_pid(), None).liveness() == Liveness.DEAD
    # The pid is alive but was started at another time: a reused pid, so the holder is dead.
    assert Holder(me.host, me.pid, "1").liveness() == Liveness.DEAD
    assert Holder("another-host.invalid", me.pid, me.start).liveness() == Liveness.UNKNOWN


def test_abandoned() -> None:
    me = Holder.me()
    later = NOW + timedelta(seconds=30)
    assert not abandoned(_transition(holder=me, lease_expires_at=later), NOW)
    # A live holder on this host keeps it even past its lease: it may still be swapping prod.
    assert not abandoned(_transition(holder=me, lease_expires_at=NOW - timedelta(seconds=1)), NOW)
    assert abandoned(_transition(holder=Holder(me.host, _dead_pid(), None), lease_expires_at=later), NOW)
    elsewhere = Holder("another-host.invalid", 1, None)
    assert not abandoned(_transition(holder=elsewhere, lease_expires_at=later), NOW)
    assert abandoned(_transition(holder=elsewhere, lease_expires_at=NOW), NOW)
    assert abandoned(_transition(outcome="interrupted", holder=me, lease_expires_at=later), NOW)


def test_step_log_records_start_and_end_with_changes() -> None:
    calls: list[tuple[object, ...]] = []
    log = StepLog(
        lambda pos, name, env: (calls.append(("begin", pos, name, env)), len(calls))[1],
        lambda sid, status, changes, error: calls.append(("end", sid, status, dict(changes), error)),
    )
    with log.step("prod_stop", PROD) as s:
        s.changed(container_id="c1")
    with log.phase("restore"), log.step("prod_start", PROD) as s:
        s.fail("unhealthy")
    with pytest.raises(RuntimeError), log.step("prod_verify", PROD):
        raise RuntimeError("engine said no")
    assert calls == [
        ("begin", 1, "prod_stop", PROD),
        ("end", 1, StepStatus.DONE, {"container_id": "c1"}, None),
        ("begin", 2, "restore_prod_start", PROD),
        ("end", 3, StepStatus.FAILED, {}, "unhealthy"),
        ("begin", 3, "prod_verify", PROD),
        ("end", 5, StepStatus.FAILED, {}, "RuntimeError: engine said no"),
    ]


_HOOKED = """
from orchestrator.steps import StepLog
log = StepLog(lambda pos, name, env: pos, lambda *a: print("finished", a[0], flush=True))
with log.step("prod_stop", "prod"):
    print("acting", flush=True)
with log.step("prod_start", "prod"):
    print("acting", flush=True)
print("survived", flush=True)
"""


@pytest.mark.parametrize(
    ("at", "sig", "code", "printed"),
    [
        ("before:prod_start", "KILL", -9, ["acting", "finished 1"]),
        ("after:prod_start", "KILL", -9, ["acting", "finished 1", "acting"]),
        ("after:prod_stop", "TERM", -15, ["acting"]),
        ("after:nonexistent", "KILL", 0, ["acting", "finished 1", "acting", "finished 2", "survived"]),
    ],
)
def test_crash_hook_signals_the_process_at_the_named_boundary(
    at: str, sig: str, code: int, printed: list[str]
) -> None:
    env = {**os.environ, CRASH_AT_VAR: at, CRASH_SIGNAL_VAR: sig}
    proc = subprocess.run([sys.executable, "-c", _HOOKED], env=env, capture_output=True, text=True)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.split("\n")[:-1] == printed


def test_step_log_without_a_store_never_arms_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CRASH_AT_VAR, "before:prod_stop")
    with StepLog().step("prod_stop", PROD) as s:  # would have killed this very test process
        s.changed(ok=True)


def test_an_edge_a_gate_rejected_stays_rejected_when_its_runner_is_lost(
    workspace: Workspace, store: Store
) -> None:
    """Hazard: the runner dies after a gate said no (say, while undoing); recovery must not read the
    interruption as 'nothing decided' and leave the run where it could be promoted again."""
    run = store.create_run("demo", workspace.repo.sha, "ci", "deploy-staging")
    lost = Holder(Holder.me().host, _dead_pid(), None)
    tid = store.begin_transition(
        run.id,
        "deploy-staging",
        "deploy",
        "ci",
        (STAGING, PROD),
        target_environment=PROD,
        holder=lost,
        lease_s=30,
    )
    verdict = GateResult(
        "check_staging_image_fresh", GateStatus.FAIL, "layer B: label mismatch", {}, 0.1, NOW
    )
    store.record_gate_result(tid, 1, verdict)

    def no_engine() -> DockerEngine:
        raise AssertionError("nothing had touched an environment: recovery needs no engine")

    (report,) = RunService(load_config(workspace.config_path), store, no_engine).recover()
    assert (report.transition_id, report.outcome) == (tid, "failed")
    assert store.get_run(run.id).state == "development"
    (transition,) = store.transitions(run.id)
    assert (transition.outcome, transition.result_state) == ("failed", "development")
    assert store.locks() == []


def test_a_release_recorded_by_recovery_keeps_the_digest_the_edge_pushed() -> None:
    ref = "reg:5000/shop@sha256:" + "d" * 64
    steps = [
        step("staging_push", STAGING, image_id="img-old", digest="reg:5000/shop@sha256:" + "0" * 64),
        step("prod_tag", PROD, image_id="img-new"),
        step("prod_push", PROD, image_id="img-new", digest=ref),
        step("prod_update", PROD, "started"),
    ]
    assert new_digest(steps, PROD, "img-new") == ref
    assert new_digest(steps, PROD, "img-other") is None  # a digest is only ever the pushed image's
    assert new_digest(steps, STAGING, "img-new") is None
