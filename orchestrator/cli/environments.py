"""What runs in an environment: `status` (and its drift), `rollback`, `prune`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from orchestrator import views
from orchestrator.cli.base import (
    STATUS_NOT_OK,
    Invocation,
    actor_option,
    command,
    describe_config,
    describe_database,
    echo,
    env_option,
    print_json,
)
from orchestrator.errors import Conflict, InfraUnavailable

if TYPE_CHECKING:
    from orchestrator.prune import PruneResult
    from orchestrator.service import PruneReport


@click.command("rollback")
@click.argument("app")
@env_option("roll back")
@click.option(
    "--to", "to", type=int, default=None, help="Release id to return to (default: the previous one)."
)
@click.option("--reason", default=None, help="Why; recorded with the rollback release.")
@actor_option("Who rolls back")
@command
def rollback_cmd(
    inv: Invocation,
    app: str,
    *,
    environment: str,
    to: int | None,
    reason: str | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Redeploy APP's previous (or --to) release in --env by its pinned reference and verify it."""
    result = inv.service().rollback(app, environment, to=to, actor=actor, reason=reason)
    if as_json:
        print_json(views.rollback(result))
        return
    echo(
        f"{result.app} {result.environment}: rolled back from release {result.from_release.id} "
        f"({result.from_release.revision[:12]}) to release {result.to_release.id} "
        f"({result.to_release.revision[:12]}), verified; recorded as release {result.release.id}"
    )


@click.command("status")
@click.argument("app", required=False)
@command
def status_cmd(inv: Invocation, app: str | None, *, as_json: bool) -> None:
    """What runs in each environment, and whether it drifted from the last recorded release.

    Exits 0 when every environment runs its recorded release and answers its health check, and 5 when
    any drifted or is unhealthy (each names its cause: container gone, another image, not running,
    unhealthy, ...), so CI can use it as a check. An environment whose engine cannot be reached is
    reported as unreachable (its host and why) beside the others, and the command exits 4 after
    printing them all; when no environment's engine answers, it is the engine's error alone (exit 4).
    Other errors keep their codes (4: database unreachable).
    """
    found = inv.reads().status(app)
    ok = all(e.ok for e in found)
    if as_json:
        print_json(views.status(inv.config, found))
    else:
        echo(f"config:   {describe_config(inv.config)}")
        echo(f"database: {describe_database(inv.config)}")
        for e in found:
            o = e.observed
            rel = f"release {e.release.id} ({e.release.revision[:12]})" if e.release else "no release"
            if e.unreachable is not None:
                running = f"UNREACHABLE ({e.engine})"
            elif o.container_id:
                running = f"{o.container} {o.status} {(o.image_id or '')[:19]}"
            else:
                running = "no container"
            health_text = (
                "" if o.healthy is None else ("healthy" if o.healthy else f"UNHEALTHY ({o.health_detail})")
            )
            echo(f"{e.app:<20} {e.environment:<8} {running:<50} {rel:<26} {health_text}")
            if e.engine != "local":
                echo(f"    engine: {e.engine}")
            if o.runtime is not None:
                published = f", published by {o.runtime.published}" if o.runtime.published else ""
                echo(f"    {o.runtime.kind} {o.runtime.name}: pinned {o.runtime.pinned or 'none'}{published}")
                for task in o.runtime.tasks:
                    echo(f"      task {task}")
            if e.problem:
                echo(f"    problem: {e.problem}")
            for diff in e.differences:
                echo(f"    drift: {diff}")
    if any(e.unreachable is not None for e in found):
        # After the report, not instead of it: what could be seen was printed.
        sys.exit(InfraUnavailable.exit_code)
    if not ok:
        sys.exit(STATUS_NOT_OK)


@click.command("prune")
@click.argument("app", required=False)
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@actor_option("Who prunes")
@command
def prune_cmd(inv: Invocation, app: str | None, *, dry_run: bool, actor: str | None, as_json: bool) -> None:
    """Remove APP's (or every app's) images, stopped containers and override anchors that no kept
    release (keep_releases per environment) references."""
    report = inv.service().prune(app, dry_run=dry_run, actor=actor)
    if as_json:
        print_json(views.prune(report))
    else:
        _print_prune_report(report)
    if report.locked:
        sys.exit(Conflict.exit_code)


def _print_prune_report(report: PruneReport) -> None:
    for result in report.results:
        _print_prune(result)
    for name, exc in report.locked.items():
        echo(f"{name}: not pruned: {exc.message}")


def _print_prune(result: PruneResult) -> None:
    plan = result.plan
    kept = ", ".join(f"{env} {list(ids)}" for env, ids in plan.kept_releases.items())
    echo(f"{plan.app}: keeping the newest {plan.keep_releases} release(s) per environment ({kept})")
    if result.dry_run:
        images, containers, anchors, size = plan.images, plan.containers, plan.anchors, plan.bytes
        verb = "would remove"
    else:
        images, containers, anchors = result.images, result.containers, result.anchors
        size, verb = result.bytes_reclaimed, "removed"
    for c in containers:
        echo(f"  {verb} container {c.name} ({c.environment}, {c.status}) {c.id[:12]}")
    for i in images:
        echo(f"  {verb} image {i.image_id[:19]} {' '.join(i.refs)} ({i.size} bytes)")
    for a in anchors:
        echo(f"  {verb} anchor {a.path}")
    for skip in result.skipped:
        echo(f"  skipped {skip.what}: {skip.reason}")
    if not (images or containers or anchors):
        echo(f"  nothing to prune ({len(plan.kept)} image(s) kept)")
    elif result.dry_run:
        echo(f"  {size} bytes would be reclaimed (the images' sizes on the engine)")
    else:
        echo(f"  {size} bytes reclaimed (the removed images' sizes on the engine)")
