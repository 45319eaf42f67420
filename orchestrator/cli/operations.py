"""An operator's hand on the line: `approve`, `reject`, `recover`, `locks`, `lock`, `unlock`, `freeze`,
`unfreeze`."""

from __future__ import annotations

import click

from orchestrator import views
from orchestrator.cli.base import Invocation, actor_option, command, echo, env_option, print_json


@click.command("approve")
@click.argument("run_id", type=int)
@click.option("--reason", default=None, help="Optional note recorded with the approval.")
@actor_option("Who approves")
@command
def approve_cmd(
    inv: Invocation, run_id: int, *, reason: str | None, actor: str | None, as_json: bool
) -> None:
    """Let RUN_ID's next edge (prod, with require_approval) through; recorded with who and when."""
    from orchestrator.approvals import Decision

    result = inv.service().decide(run_id, Decision.APPROVED, actor=actor, reason=reason)
    if as_json:
        print_json(views.decision(result))
    else:
        echo(
            f"run {result.run_id} ({result.app} @ {result.sha[:12]}) {result.approval.describe()}; "
            f"'orchestrator advance {result.run_id} --to {result.edge.dest}' promotes it"
        )


@click.command("reject")
@click.argument("run_id", type=int)
@click.option("--reason", required=True, help="Why; recorded and told to whoever started the run.")
@actor_option("Who rejects")
@command
def reject_cmd(inv: Invocation, run_id: int, *, reason: str, actor: str | None, as_json: bool) -> None:
    """Refuse RUN_ID's edge that awaits approval: the run ends as rejected and is never promoted."""
    from orchestrator.approvals import Decision

    result = inv.service().decide(run_id, Decision.REJECTED, actor=actor, reason=reason)
    if as_json:
        print_json(views.decision(result))
    else:
        echo(
            f"run {result.run_id} ({result.app} @ {result.sha[:12]}) {result.approval.describe()}; "
            f"it is now {result.state} and will not be promoted"
        )


@click.command("recover")
@click.argument("app", required=False)
@actor_option("Who recovers")
@command
def recover_cmd(inv: Invocation, app: str | None, *, actor: str | None, as_json: bool) -> None:
    """Reconcile transitions and locks left by dead runners with what really runs, and free them."""
    reports = inv.service().recover(app, actor)
    if as_json:
        print_json(views.recovered(reports))
        return
    if not reports:
        echo("nothing to recover: no transition or lock was left by a dead runner")
    for r in reports:
        what = f"transition {r.transition_id} (run {r.run_id})" if r.transition_id else "environment"
        echo(f"{r.app}: {what} -> {r.outcome}: {r.reason}")


@click.command("locks")
@click.argument("app", required=False)
@command
def locks_cmd(inv: Invocation, app: str | None, *, as_json: bool) -> None:
    """List environment locks and freezes, with whether each holder is still alive."""
    found = inv.reads().holds(app)
    if as_json:
        print_json(views.holds(found))
        return
    held, freezes = found.locks, found.freezes
    if not held and not freezes:
        echo("no locks, no freezes")
    for lk in held:
        echo(f"{lk.describe()}  [{lk.kind}, holder {lk.liveness()}]")
    for f in freezes:
        echo(f.describe())


@click.command("lock")
@click.argument("app")
@env_option("hold")
@click.option("--reason", required=True, help="Why; shown to everyone the lock stops.")
@actor_option("Who holds it")
@command
def lock_cmd(
    inv: Invocation, app: str, *, environment: str, reason: str, actor: str | None, as_json: bool
) -> None:
    """Hold APP's --env by hand: promotions and rollbacks of it exit 3 until 'orchestrator unlock'."""
    held = inv.service().lock(app, environment, reason=reason, actor=actor)
    if as_json:
        print_json(views.lock(held))
    else:
        echo(held.describe())


@click.command("unlock")
@click.argument("app")
@env_option("release")
@click.option("--force", is_flag=True, help="Take the lock even from a live holder (recorded).")
@actor_option("Who unlocks")
@command
def unlock_cmd(
    inv: Invocation, app: str, *, environment: str, force: bool, actor: str | None, as_json: bool
) -> None:
    """Release APP's --env lock: a hand-held one, one whose holder died (recovering first), or --force."""
    done = inv.service().unlock(app, environment, force=force, actor=actor)
    if as_json:
        print_json(views.unlocked(done))
    else:
        echo(f"unlocked {app} {environment} ({done.how}); it was: {done.lock.describe()}")


@click.command("freeze")
@click.argument("app", required=False)
@click.option("--reason", required=True, help="Why the line stops; shown to every blocked advance.")
@actor_option("Who freezes")
@command
def freeze_cmd(inv: Invocation, app: str | None, *, reason: str, actor: str | None, as_json: bool) -> None:
    """Stop the line: no run of APP (or of any app) may advance until unfrozen. Rollback still works."""
    frozen = inv.service().freeze(app, reason=reason, actor=actor)
    if as_json:
        print_json(views.freeze(frozen))
    else:
        echo(frozen.describe())


@click.command("unfreeze")
@click.argument("app", required=False)
@actor_option("Who unfreezes")
@command
def unfreeze_cmd(inv: Invocation, app: str | None, *, actor: str | None, as_json: bool) -> None:
    """Let runs of APP (or, without APP, of every app) advance again."""
    was = inv.service().unfreeze(app, actor=actor)
    if as_json:
        print_json(views.unfrozen(was))
    else:
        echo(f"unfrozen; it was: {was.describe()}")
