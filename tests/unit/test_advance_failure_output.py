"""What `advance` says when an edge fails: the gate, the reason (with the evidence it carries on further
lines, such as a container's log), and what became of prod, in plain lines and as --json fields.

Logic only: test gates stand in for the Docker gates (the real ones are exercised on the engine in
tests/integration/test_fail_fast.py); prod's restore is a registered compensation like the real one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator import views
from orchestrator.gates import (
    PROD_OUTCOME,
    ROLLBACK_PROD,
    Compensation,
    Gate,
    GateContext,
    ProdAction,
    ProdOutcome,
    Verdict,
)
from orchestrator.machine import TO_PROD, TO_STAGING
from orchestrator.service import edge_reason

if TYPE_CHECKING:
    from conftest import Cli, Workspace

    from orchestrator.store.repository import Store

pytestmark = pytest.mark.usefixtures("docker_free_gates")

RegisterGate = Callable[..., type[Gate]]
CRASH = (
    "shop-staging exited with code 3 before http://127.0.0.1:8501/health answered (0.2s, 3 tries)\n"
    "--- last 2 log lines of shop-staging ---\n"
    "starting\n"
    "fatal: DB_PASSWORD=*** rejected"
)


def start(cli: Cli, workspace: Workspace) -> int:
    return int(cli("run", "start", "--app", "demo", "--sha", workspace.repo.sha, as_json=True).ok()["run_id"])


def test_failed_staging_edge_names_gate_reason_log_and_untouched_prod(
    cli: Cli, workspace: Workspace, store: Store, register_gate: RegisterGate
) -> None:
    register_gate(
        "deploy_staging_fake",
        TO_STAGING,
        Verdict.failed(CRASH, container="shop-staging", exit_code=3),
    )
    run_id = start(cli, workspace)

    human = cli("advance", run_id, "--to", "deploy-staging")
    assert human.exit_code == 1, human.describe()
    out = human.stdout.splitlines()
    table = [line for line in out if line.lstrip().startswith("fail ")]
    assert table and table[0].endswith("(0.2s, 3 tries)"), "the table shows the first line of the reason"
    assert (
        f"run {run_id}: development -> deploy-staging FAILED, back in development: deploy_staging_fake: "
        in ("\n".join(out))
    )
    at = out.index("  gate:   deploy_staging_fake")
    assert out[at + 1 :] == [
        "  reason: " + CRASH.splitlines()[0],
        "          --- last 2 log lines of shop-staging ---",
        "          starting",
        "          fatal: DB_PASSWORD=*** rejected",
        "  prod:   untouched",
    ], out
    assert human.stdout.count("fatal: DB_PASSWORD") == 1, "the log is printed once"

    # The recorded transition: a one-line summary first, then the evidence.
    transition = store.transitions(run_id)[-1]
    assert transition.reason == "deploy_staging_fake: " + CRASH

    as_json = cli("advance", run_id, "--to", "deploy-staging", as_json=True)
    assert as_json.exit_code == 1
    assert as_json.payload["failure"] == {
        "gate": "deploy_staging_fake",
        "reason": CRASH,
        "container": "shop-staging",
        "exit_code": 3,
        "prod": {"action": "untouched", "release_id": None, "summary": "untouched"},
    }

    shown = cli("runs", "show", run_id)
    assert shown.exit_code == 0, shown.describe()
    assert "          fatal: DB_PASSWORD=*** rejected" in shown.stdout.splitlines(), shown.stdout
    assert "(deploy_staging_fake: shop-staging exited with code 3" in shown.stdout


def _restore(outcome: ProdOutcome | None, status: str = "pass") -> Callable[[], Verdict]:
    def undo() -> Verdict:
        if outcome is None:
            raise RuntimeError("engine said no")
        details = {PROD_OUTCOME: views.prod_outcome(outcome)}
        if status == "pass":
            return Verdict.passed("prod restored: release 4 running and verified", **details)
        return Verdict.failed("restoring prod: release 4 failed verification\n--- log ---\nboom", **details)

    return undo


@pytest.mark.parametrize(
    ("outcome", "status", "printed", "action", "release_id"),
    [
        (
            ProdOutcome(ProdAction.RESTORED, 4, "restored to release 4 (abcdef123456), verified"),
            "pass",
            "restored to release 4 (abcdef123456), verified",
            "restored",
            4,
        ),
        (
            ProdOutcome(ProdAction.STOPPED, None, "stopped: no previous release to restore"),
            "pass",
            "stopped: no previous release to restore",
            "stopped",
            None,
        ),
        (
            ProdOutcome(ProdAction.NOT_RESTORED, None, "NOT restored to release 4: boom"),
            "fail",
            "NOT restored to release 4: boom",
            "not_restored",
            None,
        ),
        (
            None,
            "error",
            "unknown: the restore ended error (RuntimeError: engine said no); check 'orchestrator status'",
            "unknown",
            None,
        ),
    ],
    ids=["restored", "stopped", "not-restored", "restore-crashed"],
)
def test_failed_prod_edge_says_what_became_of_prod(
    cli: Cli,
    workspace: Workspace,
    register_gate: RegisterGate,
    outcome: ProdOutcome | None,
    status: str,
    printed: str,
    action: str,
    release_id: int | None,
) -> None:
    def swap(ctx: GateContext) -> Verdict:
        ctx.compensations.append(Compensation(ROLLBACK_PROD, _restore(outcome, status)))
        return Verdict.passed("prod swapped")

    register_gate("swap_fake", TO_PROD, swap, order=1001)
    register_gate("verify_fake", TO_PROD, Verdict.failed("prod serves the wrong revision"), order=1002)
    run_id = start(cli, workspace)
    cli("advance", run_id, "--to", "deploy-staging").ok()

    human = cli("advance", run_id, "--to", "deploy")
    assert human.exit_code == 1, human.describe()
    out = human.stdout.splitlines()
    assert out[-3:] == [
        "  gate:   verify_fake",
        "  reason: prod serves the wrong revision",
        f"  prod:   {printed}",
    ], out
    cli("advance", run_id, "--to", "deploy-staging").ok()
    payload = cli("advance", run_id, "--to", "deploy", as_json=True).payload
    assert payload["failure"]["gate"] == "verify_fake"
    assert payload["failure"]["prod"] == {"action": action, "release_id": release_id, "summary": printed}
    # The transition reason keeps one summary line, whatever evidence the restore's reason carries.
    assert "\n" not in payload["reason"].splitlines()[0]
    assert payload["reason"].startswith("verify_fake: prod serves the wrong revision; rollback_prod: ")


def test_succeeded_edge_has_no_failure(cli: Cli, workspace: Workspace) -> None:
    payload: dict[str, Any] = cli(
        "advance", start(cli, workspace), "--to", "deploy-staging", as_json=True
    ).ok()
    assert payload["failure"] is None


def test_edge_reason_puts_every_summary_first_and_the_evidence_after() -> None:
    assert edge_reason([("a", "one")]) == "a: one"
    assert edge_reason([("a", "one\nlog 1\nlog 2"), ("rollback_prod", "restored\nlog 3")]) == (
        "a: one; rollback_prod: restored\nlog 1\nlog 2\nlog 3"
    )
