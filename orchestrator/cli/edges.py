"""Moving a run along its edges: `run start`, `advance`, `deploy` (the commands CI runs on every commit)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from orchestrator import views
from orchestrator.cli.base import Invocation, actor_option, command, echo, hanging, print_json

if TYPE_CHECKING:
    from orchestrator.service import AdvanceResult


@click.group()
def run() -> None:
    """Create runs."""


@run.command("start")
@click.option("--app", required=True, help="App name from orchestrator.toml.")
@click.option("--sha", required=True, help="Full 40-character commit sha that CI validated.")
@actor_option("Who started the run")
@command
def run_start(inv: Invocation, *, app: str, sha: str, actor: str | None, as_json: bool) -> None:
    """Start a run for APP at SHA in development."""
    from orchestrator.service.builds import source_read_early

    with source_read_early(inv.config, app, sha, at_run_start=True):  # git reads while the database opens
        record = inv.service().start_run(app, sha, actor, send_build=True)
    if as_json:
        print_json(views.run(record))
    else:
        echo(f"run {record.id} started: {record.app} @ {record.sha} in {record.state}")


# One definition for every command that can meet a locked environment (advance, deploy).
wait_option = click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Seconds to wait for a locked environment or an approval (at each edge) instead of exiting 3 "
    "at once.",
)


@click.command()
@click.argument("run_id", type=int)
@click.option("--to", "to", required=True, help="Target state (deploy-staging or deploy).")
@actor_option("Who asked for the move")
@wait_option
@command
def advance(
    inv: Invocation, run_id: int, *, to: str, actor: str | None, wait_s: float, as_json: bool
) -> None:
    """Run the gates of RUN_ID's edge to --to; move the run, or roll it back to development."""
    from orchestrator.service import FAILED

    result = inv.service().advance(run_id, to, actor, wait_s=wait_s)
    if as_json:
        print_json(views.advance(result))
    else:
        _print_advance(result)
    if result.outcome == FAILED:
        sys.exit(1)


@click.command("deploy")
@click.option("--app", required=True, help="App name from orchestrator.toml.")
@click.option("--sha", required=True, help="Full 40-character commit sha that CI validated.")
@actor_option("Who deploys")
@wait_option
@command
def deploy_cmd(
    inv: Invocation, *, app: str, sha: str, actor: str | None, wait_s: float, as_json: bool
) -> None:
    """Start a run for APP at SHA and advance it to deploy-staging, then to deploy, in one process.

    The same gates, records and exit codes as 'run start' followed by the two 'advance' calls: 1 when
    an edge failed (a failed staging edge stops there, prod untouched), 3 when an environment is locked,
    4 when the engine or database does not answer. With --json: the run id and each edge's result."""
    from orchestrator.service import FAILED
    from orchestrator.service.builds import source_read_early

    with source_read_early(inv.config, app, sha, at_run_start=False):  # git reads while the database opens
        result = inv.service().deploy(app, sha, actor, wait_s=wait_s)
    if as_json:
        print_json(views.deploy(result))
    else:
        echo(f"run {result.run.id} started: {result.run.app} @ {result.run.sha}")
        for edge in result.edges:
            _print_advance(edge)
    if result.outcome == FAILED:
        sys.exit(1)


def _print_advance(result: AdvanceResult) -> None:
    from orchestrator.service import FAILED
    from orchestrator.verdict import first_line

    for check in result.checks:
        # One line per check; the evidence a reason carries (a container's log) is printed once, below.
        summary = first_line(check.reason)
        echo(f"  {check.status.value:<8} {check.name:<32} {check.duration_s:7.3f}s  {summary}")
    if result.outcome != FAILED:
        echo(f"run {result.run_id}: {result.from_state} -> {result.to_state} ok, now in {result.state}")
        return
    echo(
        f"run {result.run_id}: {result.from_state} -> {result.to_state} FAILED, back in "
        f"{result.state}: {first_line(result.reason or '')}"
    )
    failure = result.failure
    if failure is None:
        return
    # Plain lines an operator (or a CI log) reads first: which gate, why, and what became of prod.
    echo(f"  gate:   {failure.gate}")
    echo(hanging("  reason: ", failure.reason))
    echo(f"  prod:   {failure.prod.summary}")
