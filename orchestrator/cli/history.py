"""Reading what was recorded: `runs list`, `runs show`, `audit`, `releases`, `metrics`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from orchestrator import views
from orchestrator.cli.base import Invocation, command, echo, echo_table, hanging, print_json

if TYPE_CHECKING:
    from orchestrator.service import RunHistory


@click.group()
def runs() -> None:
    """Inspect run history."""


@runs.command("list")
@click.option("--app", default=None)
@click.option("--state", default=None, help="Only runs in this state.")
@click.option(
    "--outcome", default=None, help="Only runs whose last transition ended so (failed, succeeded, ...)."
)
@click.option("--sha", "sha_prefix", default=None, help="Only runs of commits starting with this prefix.")
@click.option("--actor", default=None, help="Only runs started or moved by this actor.")
@click.option("--since", default=None, help="Only runs created since: 30d, 12h, or an ISO date.")
@click.option("--until", default=None, help="Only runs created before: 30d, 12h, or an ISO date.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--page", type=click.IntRange(1), default=1, show_default=True, help="Page of --limit runs.")
@command
def runs_list(
    inv: Invocation,
    *,
    app: str | None,
    state: str | None,
    outcome: str | None,
    sha_prefix: str | None,
    actor: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    page: int,
    as_json: bool,
) -> None:
    """List runs, newest first, with the outcome and reason of each one's last transition."""
    from orchestrator.store.listing import RunFilter, parse_when
    from orchestrator.verdict import first_line

    if state is not None:
        from orchestrator.machine import State

        state = State.parse(state).value
    found = RunFilter(
        app=app,
        state=state,
        outcome=outcome,
        sha_prefix=sha_prefix,
        actor=actor,
        since=parse_when(since) if since else None,
        until=parse_when(until) if until else None,
    )
    history = inv.reads().history()
    records = history.runs(found, limit=limit, offset=(page - 1) * limit)
    if as_json:
        print_json(views.runs(records))
        return
    if not records:
        echo("no runs")
        return
    from orchestrator.tables import Column, render, took, when

    rows = [
        (
            r.run.id,
            r.run.app,
            r.run.sha[:12],
            r.run.state,
            r.outcome,
            r.run.actor,
            when(r.run.created_at),
            took(r.last.started_at, r.last.finished_at) if r.last else "-",
            first_line(r.reason) if r.reason and r.outcome != "succeeded" else "",
        )
        for r in history.summaries(records)
    ]
    columns = [
        Column("run", 6, "right"),
        Column("app", 20),
        Column("sha", 12),
        Column("state", 15),
        Column("outcome", 11, styled=True),
        Column("actor", 16),
        Column("created", 19),
        Column("took", 6, "right"),
        Column("reason"),
    ]
    echo_table(render(columns, rows, tty=sys.stdout.isatty()))
    if len(records) == limit:
        echo(f"(page {page}; --page {page + 1} for older runs)", err=True)


@runs.command("show")
@click.argument("run_id", type=int)
@command
def runs_show(inv: Invocation, run_id: int, *, as_json: bool) -> None:
    """Show RUN_ID with every transition, gate result (with its evidence), step and release."""
    from orchestrator.verdict import first_line

    history = inv.reads().run_history(run_id)
    if as_json:
        print_json(views.run_history(history))
        return
    if sys.stdout.isatty():
        _print_run_tables(history)
        return
    from orchestrator.store.listing import revision_evidence
    from orchestrator.tables import took

    record, transitions, releases = history.run, history.transitions, history.releases
    echo(
        f"run {record.id}: {record.app} @ {record.sha}  state={record.state}  actor={record.actor}"
        + (f"  ci={record.ci_url}" if record.ci_url else "")
    )
    for t in transitions:
        echo(
            f"  #{t.id} {t.from_state} -> {t.to_state}  {t.outcome}  by {t.actor}  "
            f"{t.started_at:%Y-%m-%d %H:%M:%S}  took {took(t.started_at, t.finished_at)}"
            + (f"  ({first_line(t.reason)})" if t.reason else "")
        )
        for c in t.checks:
            # The whole reason, evidence included, under its check (the transition line has its summary).
            echo(hanging(f"      {c.status:<8} {c.name:<32} {c.duration_s:7.3f}s  ", c.reason, indent=10))
            expected, found = revision_evidence(c.details)
            if expected or found:
                echo(f"          revision: expected {expected or '-'}, found {found or '-'}")
        if t.steps:
            echo("      steps: " + ", ".join(_step_text(st) for st in t.steps))
    for rel in releases:
        echo(
            f"  release {rel.id}: {rel.environment:<8} {rel.kind:<8} {rel.image_id[:19]}  "
            f"revision {rel.revision[:12]}  {rel.created_at:%Y-%m-%d %H:%M:%S}"
            + (f"  compose {rel.compose_sha256[7:19]}" if rel.compose_sha256 else "")
            + (f"  ({rel.reason})" if rel.reason else "")
        )


def _print_run_tables(history: RunHistory) -> None:
    """`runs show` for a person at a terminal: the edges as a table (how long each took, how it ended),
    each edge's gates with the revision expected and found, and the whole reason of every failed gate
    (the evidence: a container's log) below its table, where a table cell would cut it to one line."""
    from orchestrator.store.listing import revision_evidence
    from orchestrator.tables import Column, render, took, when
    from orchestrator.verdict import GateStatus, first_line

    record, transitions, releases = history.run, history.transitions, history.releases
    echo(
        f"run {record.id}: {record.app} @ {record.sha}  state={record.state}  actor={record.actor}"
        + (f"  ci={record.ci_url}" if record.ci_url else "")
    )
    if not transitions:
        echo("no transitions yet: 'orchestrator advance' moves it")
    edges = [
        (
            f"#{t.id}",
            f"{t.from_state} -> {t.to_state}",
            t.outcome,
            t.actor,
            when(t.started_at),
            took(t.started_at, t.finished_at),
            first_line(t.reason) if t.reason else "",
        )
        for t in transitions
    ]
    if edges:
        columns = [
            Column("#"),
            Column("edge"),
            Column("outcome", styled=True),
            Column("actor"),
            Column("started"),
            Column("took", align="right"),
            Column("reason"),
        ]
        echo_table(render(columns, edges, tty=True, title="transitions"))
    for t in transitions:
        if not t.checks and not t.steps:
            continue
        gates = []
        for c in t.checks:
            expected, found = revision_evidence(c.details)
            seen = found[:12] if found else ("none" if expected else "")
            if expected and found and found != expected:
                seen += " (differs)"
            gates.append(
                (c.status, c.name, f"{c.duration_s:.3f}s", (expected or "")[:12], seen, first_line(c.reason))
            )
        columns = [
            Column("status", styled=True),
            Column("gate"),
            Column("took", align="right"),
            Column("expected"),
            Column("found"),
            Column("reason"),
        ]
        title = (
            f"#{t.id} {t.from_state} -> {t.to_state}: {t.outcome}, took {took(t.started_at, t.finished_at)}"
        )
        if gates:
            echo_table(render(columns, gates, tty=True, title=title))
        else:
            echo(title)
        if t.steps:
            echo("  steps: " + ", ".join(_step_text(st) for st in t.steps))
        for c in t.checks:
            if c.status == GateStatus.FAIL and "\n" in c.reason.strip():
                echo(f"  evidence of {c.name}:")
                echo(hanging("    ", c.reason.strip()))
    if releases:
        rows = [
            (
                rel.id,
                rel.environment,
                rel.kind,
                rel.revision[:12],
                rel.image_id[:19],
                when(rel.created_at),
                rel.compose_sha256[7:19] if rel.compose_sha256 else "",
                rel.reason or "",
            )
            for rel in releases
        ]
        columns = [
            Column("release", align="right"),
            Column("env"),
            Column("kind"),
            Column("revision"),
            Column("image"),
            Column("at"),
            Column("compose"),
            Column("reason"),
        ]
        echo_table(render(columns, rows, tty=True, title="releases"))


@click.command("audit")
@click.argument("app", required=False)
@click.option("--since", default=None, help="Only entries since: 30d, 12h, or an ISO date.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@command
def audit_cmd(inv: Invocation, app: str | None, *, since: str | None, limit: int, as_json: bool) -> None:
    """Who did what, in time order: runs, transitions, locks, freezes, rollbacks, recoveries, with the
    CI job each came from."""
    from orchestrator.store.listing import parse_when

    entries = inv.reads().history().audit(app, parse_when(since) if since else None, limit)
    if as_json:
        print_json(views.audit(entries))
        return
    if not entries:
        echo("nothing recorded")
        return
    from orchestrator.tables import Column, render, when

    rows = [
        (when(e.at), e.kind, e.app or "*", e.environment or "", e.actor, e.message, e.ci_url or "")
        for e in entries
    ]
    columns = [
        Column("at", 19),
        Column("what", 16),
        Column("app", 16),
        Column("env", 8),
        Column("actor", 16),
        Column("message", 0),
        Column("ci job"),
    ]
    echo_table(render(columns, rows, tty=sys.stdout.isatty()))


@click.command("releases")
@click.argument("app")
@click.option("--env", "environment", default=None, help="Only this environment (staging, prod).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@command
def releases_cmd(inv: Invocation, app: str, *, environment: str | None, limit: int, as_json: bool) -> None:
    """What ran in each environment of APP, from when to when, newest first."""
    if environment is not None:
        from orchestrator.machine import parse_environment

        environment = parse_environment(environment)
    periods = inv.reads().history().release_periods(app, environment, limit)
    if as_json:
        print_json(views.releases(app, periods))
        return
    if not periods:
        echo(f"no releases of {app}")
        return
    from orchestrator.tables import Column, render, when

    rows = [
        (
            p.release.id,
            p.release.environment,
            p.release.kind,
            p.release.revision[:12],
            p.release.run_id if p.release.run_id is not None else "-",
            when(p.since),
            when(p.until) if p.until else "now",
            p.actor or "-",
            p.release.reason or "",
        )
        for p in periods
    ]
    columns = [
        Column("release", 7, "right"),
        Column("env", 8),
        Column("kind", 8),
        Column("revision", 12),
        Column("run", 5, "right"),
        Column("from", 19),
        Column("until", 19),
        Column("actor", 16),
        Column("reason"),
    ]
    echo_table(render(columns, rows, tty=sys.stdout.isatty()))


def _step_text(step: Any) -> str:
    return step.name if step.status == "done" else f"{step.name} ({step.status})"


@click.command("metrics")
@click.argument("app", required=False)
@click.option(
    "--since", default="30d", show_default=True, help="Window: a duration (30d, 12h, 2w) or a date."
)
@command
def metrics_cmd(inv: Invocation, app: str | None, *, since: str, as_json: bool) -> None:
    """DORA keys of APP (or every app) from the recorded history: deployment frequency, lead time for
    changes, change failure rate, time to restore."""
    found = inv.reads().metrics(app, since)
    if as_json:
        print_json(views.metrics(found))
        return
    echo(f"since {found.since:%Y-%m-%d %H:%M} UTC ({(found.until - found.since).days} days)")
    rows = [("all apps", found.total)] if app is None else []
    rows += sorted(found.apps.items())
    for name, m in rows:
        _print_dora(name, m)


def _print_dora(name: str, m: Any) -> None:
    from orchestrator.metrics import human_duration

    rate = "n/a" if m.change_failure_rate is None else f"{m.change_failure_rate:.0%}"
    missing = f", {m.lead_time_missing} without commit time" if m.lead_time_missing else ""
    echo(f"{name}:")
    echo(
        f"  deployment frequency   {m.deployments} to prod ({m.deploys_per_day:.2f}/day, "
        f"on {m.deploy_days} day(s))"
    )
    echo(
        f"  lead time for changes  median {human_duration(m.lead_time_median_s)}, "
        f"p90 {human_duration(m.lead_time_p90_s)} ({m.lead_time_samples} change(s){missing})"
    )
    echo(
        f"  change failure rate    {rate} ({m.failures} of {m.attempts}: {m.failed_in_prod} failed in prod, "
        f"{m.rolled_back} rolled back)"
    )
    echo(
        f"  time to restore        median {human_duration(m.time_to_restore_median_s)} "
        f"({m.time_to_restore_samples} restore(s))"
    )
