"""click commands: parse, call the service layer, print (human or --json), exit with the promised code.

Exit codes (also in README): 0 ok, 1 a gate failed and the run was rolled back, 2 bad input,
3 conflict, 4 infrastructure unavailable, 5 (`status` only) an environment drifted or is unhealthy.
With --json, stdout carries exactly one JSON object, errors included; logs always go to stderr.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from orchestrator import __version__, identity, progress, views
from orchestrator.errors import BadInput, Conflict, InfraUnavailable, OrchestratorError

# Everything else is imported inside the commands that need it: `--help`, `--version` and a usage error
# must not pay for SQLAlchemy, the docker SDK, transitions or Alembic (tests/unit/test_startup_imports.py).
# CI calls the orchestrator in every pipeline, so start-up is paid thousands of times a day.
if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.notify import Notifier
    from orchestrator.prune import PruneResult
    from orchestrator.service import AdvanceResult, PruneReport, RunHistory, RunService
    from orchestrator.store.repository import Store

F = TypeVar("F", bound=Callable[..., Any])

# `status` found an environment that drifted from its recorded release or fails its health check. Not
# an error (the report is printed, --json as usual) and not 1, which says a gate failed and a run moved
# back: CI runs `orchestrator status` as a check and must tell "checked: wrong" from 4, "could not check".
STATUS_NOT_OK = 5


@dataclass
class Invocation:
    """What one CLI call's commands share (``ctx.obj``): the config, the store and the notifier, each loaded
    or opened on first use, so a command pays only for what it touches, and closed by ``close``."""

    config_path: str | None
    verbose: bool = False
    quiet: bool = False
    _config: Config | None = None
    _store: Store | None = None
    _notifier: Notifier | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from orchestrator import logging as orch_logging
            from orchestrator.config import load_config

            self._config = load_config(self.config_path)
            level = self._config.settings.log_level
            # --quiet: warnings and errors only; --verbose: everything, debug included.
            level = "warning" if self.quiet else ("debug" if self.verbose else level)
            orch_logging.configure(self._config.settings.log_format, level)
            for warning in self._config.warnings:
                orch_logging.get_logger().warning("config_warning", message=warning)
            if self.verbose:
                _echo(f"config: {describe_config(self._config)}", err=True)
        return self._config

    def _open_store(self, *, upgrade: bool) -> Store:
        if self._store is None:
            from orchestrator.store.repository import Store

            if self.verbose:
                _echo(f"database: {describe_database(self.config)}", err=True)
            self._store = Store(self.config.settings.database_url, upgrade=upgrade, ci_url=identity.ci_url())
        return self._store

    def service(self, *, upgrade: bool = True) -> RunService:
        from orchestrator.service import RunService

        return RunService(self.config, self._open_store(upgrade=upgrade), notifier=self.notifier)

    @property
    def notifier(self) -> Notifier:
        if self._notifier is None:
            from orchestrator.notify import Notifier

            self._notifier = Notifier.from_config(self.config)
        return self._notifier

    def close(self) -> None:
        # Notifications first, while the store is open to record the ones that failed (notify.py).
        if self._notifier is not None:
            from orchestrator.notify import record_failures

            record_failures(self._store, self._notifier.close())
        if self._store is not None:
            self._store.close()


def describe_config(config: Config) -> str:
    return f"{config.path or 'none'} ({config.config_source})"


def describe_database(config: Config) -> str:
    from orchestrator.store import db

    return f"{db.safe_url(config.settings.database_url)} ({config.database_source})"


# C0 and C1 control characters other than newline and tab: an actor name or a reason carrying an
# escape sequence (OSC, CSI) could rewrite an operator's terminal, title or clipboard when printed.
_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"


def printable(text: str) -> str:
    """Text from users and apps as it may reach a terminal: control characters shown escaped."""
    return re.sub(_CONTROL, lambda m: f"\\x{ord(m.group()):02x}", text)


def _echo(text: str = "", *, err: bool = False) -> None:
    """Every human-readable line goes through here; JSON output is escaped by json.dumps instead."""
    click.echo(printable(text), err=err)


def _echo_table(rendered: str) -> None:
    """A table from tables.render, as it was drawn: every cell was made safe there (tables.clean), and
    on a terminal the text holds rich's own colour codes, which ``_echo`` would print as text."""
    click.echo(rendered)


def _print_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


def fail(
    kind: str, message: str, exit_code: int, *, as_json: bool, details: dict[str, Any] | None = None
) -> NoReturn:
    """The one place an error becomes output and an exit status: with --json, one object on stdout
    saying its kind, message and code (and its details); otherwise ``error: ...`` on stderr."""
    if as_json:
        _print_json(views.error(kind, message, exit_code, details))
    else:
        _echo(f"error: {message}", err=True)
    sys.exit(exit_code)


def fail_with(exc: OrchestratorError, *, as_json: bool) -> NoReturn:
    fail(exc.kind, exc.message, exc.exit_code, as_json=as_json, details=exc.details)


def command(fn: F) -> F:
    """Shared --json option, and errors handed to ``fail``."""

    @click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(inv: Invocation, *args: Any, as_json: bool, **kwargs: Any) -> None:
        from orchestrator.lifecycle import Interrupted

        try:
            fn(inv, *args, as_json=as_json, **kwargs)
        except OrchestratorError as exc:
            fail_with(exc, as_json=as_json)
        except Interrupted as exc:
            # The edge undid its work and closed its transition before this reached us; exit as a shell
            # reports a process ended by that signal (143 for SIGTERM, 130 for SIGINT).
            fail("interrupted", str(exc), exc.exit_code, as_json=as_json)
        finally:
            inv.close()

    return wrapper  # type: ignore[return-value]


class _Cli(click.Group):
    """Keeps the --json promise for mistakes click itself catches (missing option, bad integer):
    with --json anywhere on the line, a usage error is the same one bad_input object, exit 2."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if "--json" not in argv or not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            fail_with(BadInput(exc.format_message()), as_json=True)
        except click.Abort:
            _echo("Aborted!", err=True)
            sys.exit(1)


def actor_option(who: str) -> Callable[[F], F]:
    """``--actor``, defined once: who is recorded as having done it, by default whoever CI or the OS says
    runs this process (orchestrator/identity.py)."""
    return click.option(
        "--actor", default=None, help=f"{who} (default: the CI job's user, else the OS user)."
    )


def env_option(what: str) -> Callable[[F], F]:
    """``--env`` of the commands that act on one environment."""
    return click.option(
        "--env", "environment", required=True, help=f"Environment to {what} (staging or prod)."
    )


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="orchestrator.toml to use (default: ORCH_CONFIG, then orchestrator.toml in the current "
    "directory or its nearest parent that has one). The default database lives beside it, in "
    ".orchestrator/orchestrator.db.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Say on stderr which config file and which database are used, and how each was chosen; "
    "log at debug level; show the progress of builds, pushes and health waits even off a terminal.",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Log only warnings and errors on stderr, and show no progress of long steps (results and "
    "errors are printed as always).",
)
# The version from the package itself: asking the installed metadata (click's default) imports
# importlib.metadata, email and zipfile, about 40 ms of `--version` (issue 12: <= 150 ms in all).
@click.version_option(version=__version__, prog_name="orchestrator")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool, quiet: bool) -> None:
    """Move validated commits through development -> deploy-staging -> deploy, behind gates."""
    from orchestrator import logging as orch_logging

    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose contradict each other: pick one")
    orch_logging.configure(level="warning" if quiet else "info")
    # Long steps (build, push, health waits) show how far they got on a terminal; --quiet: never;
    # --verbose: also off a terminal, as plain lines (orchestrator/progress.py).
    progress.install(progress.choose(sys.stderr, quiet=quiet, verbose=verbose))
    ctx.obj = Invocation(config_path, verbose, quiet)


@cli.group()
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
        _print_json(views.run(record))
    else:
        _echo(f"run {record.id} started: {record.app} @ {record.sha} in {record.state}")


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


@cli.command()
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
        _print_json(views.advance(result))
    else:
        _print_advance(result)
    if result.outcome == FAILED:
        sys.exit(1)


@cli.command("deploy")
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
        _print_json(views.deploy(result))
    else:
        _echo(f"run {result.run.id} started: {result.run.app} @ {result.run.sha}")
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
        _echo(f"  {check.status.value:<8} {check.name:<32} {check.duration_s:7.3f}s  {summary}")
    if result.outcome != FAILED:
        _echo(f"run {result.run_id}: {result.from_state} -> {result.to_state} ok, now in {result.state}")
        return
    _echo(
        f"run {result.run_id}: {result.from_state} -> {result.to_state} FAILED, back in "
        f"{result.state}: {first_line(result.reason or '')}"
    )
    failure = result.failure
    if failure is None:
        return
    # Plain lines an operator (or a CI log) reads first: which gate, why, and what became of prod.
    _echo(f"  gate:   {failure.gate}")
    _echo(_hanging("  reason: ", failure.reason))
    _echo(f"  prod:   {failure.prod.summary}")


def _hanging(label: str, text: str, indent: int | None = None) -> str:
    """``label`` then ``text``, its further lines indented (under the first, by default)."""
    return label + text.replace("\n", "\n" + " " * (len(label) if indent is None else indent))


@cli.group()
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
    from orchestrator.machine import State
    from orchestrator.store.listing import RunFilter, parse_when
    from orchestrator.verdict import first_line

    if state is not None:
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
    history = inv.service().history()
    records = history.runs(found, limit=limit, offset=(page - 1) * limit)
    if as_json:
        _print_json(views.runs(records))
        return
    if not records:
        _echo("no runs")
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
    _echo_table(render(columns, rows, tty=sys.stdout.isatty()))
    if len(records) == limit:
        _echo(f"(page {page}; --page {page + 1} for older runs)", err=True)


@runs.command("show")
@click.argument("run_id", type=int)
@command
def runs_show(inv: Invocation, run_id: int, *, as_json: bool) -> None:
    """Show RUN_ID with every transition, gate result (with its evidence), step and release."""
    from orchestrator.verdict import first_line

    history = inv.service().run_history(run_id)
    if as_json:
        _print_json(views.run_history(history))
        return
    if sys.stdout.isatty():
        _print_run_tables(history)
        return
    from orchestrator.store.listing import revision_evidence
    from orchestrator.tables import took

    record, transitions, releases = history.run, history.transitions, history.releases
    _echo(
        f"run {record.id}: {record.app} @ {record.sha}  state={record.state}  actor={record.actor}"
        + (f"  ci={record.ci_url}" if record.ci_url else "")
    )
    for t in transitions:
        _echo(
            f"  #{t.id} {t.from_state} -> {t.to_state}  {t.outcome}  by {t.actor}  "
            f"{t.started_at:%Y-%m-%d %H:%M:%S}  took {took(t.started_at, t.finished_at)}"
            + (f"  ({first_line(t.reason)})" if t.reason else "")
        )
        for c in t.checks:
            # The whole reason, evidence included, under its check (the transition line has its summary).
            _echo(_hanging(f"      {c.status:<8} {c.name:<32} {c.duration_s:7.3f}s  ", c.reason, indent=10))
            expected, found = revision_evidence(c.details)
            if expected or found:
                _echo(f"          revision: expected {expected or '-'}, found {found or '-'}")
        if t.steps:
            _echo("      steps: " + ", ".join(_step_text(st) for st in t.steps))
    for rel in releases:
        _echo(
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
    _echo(
        f"run {record.id}: {record.app} @ {record.sha}  state={record.state}  actor={record.actor}"
        + (f"  ci={record.ci_url}" if record.ci_url else "")
    )
    if not transitions:
        _echo("no transitions yet: 'orchestrator advance' moves it")
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
        _echo_table(render(columns, edges, tty=True, title="transitions"))
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
            _echo_table(render(columns, gates, tty=True, title=title))
        else:
            _echo(title)
        if t.steps:
            _echo("  steps: " + ", ".join(_step_text(st) for st in t.steps))
        for c in t.checks:
            if c.status == GateStatus.FAIL and "\n" in c.reason.strip():
                _echo(f"  evidence of {c.name}:")
                _echo(_hanging("    ", c.reason.strip()))
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
        _echo_table(render(columns, rows, tty=True, title="releases"))


@cli.command("audit")
@click.argument("app", required=False)
@click.option("--since", default=None, help="Only entries since: 30d, 12h, or an ISO date.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@command
def audit_cmd(inv: Invocation, app: str | None, *, since: str | None, limit: int, as_json: bool) -> None:
    """Who did what, in time order: runs, transitions, locks, freezes, rollbacks, recoveries, with the
    CI job each came from."""
    from orchestrator.store.listing import parse_when

    entries = inv.service().history().audit(app, parse_when(since) if since else None, limit)
    if as_json:
        _print_json(views.audit(entries))
        return
    if not entries:
        _echo("nothing recorded")
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
    _echo_table(render(columns, rows, tty=sys.stdout.isatty()))


@cli.command("releases")
@click.argument("app")
@click.option("--env", "environment", default=None, help="Only this environment (staging, prod).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@command
def releases_cmd(inv: Invocation, app: str, *, environment: str | None, limit: int, as_json: bool) -> None:
    """What ran in each environment of APP, from when to when, newest first."""
    if environment is not None:
        from orchestrator.machine import parse_environment

        environment = parse_environment(environment)
    periods = inv.service().history().release_periods(app, environment, limit)
    if as_json:
        _print_json(views.releases(app, periods))
        return
    if not periods:
        _echo(f"no releases of {app}")
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
    _echo_table(render(columns, rows, tty=sys.stdout.isatty()))


def _step_text(step: Any) -> str:
    return step.name if step.status == "done" else f"{step.name} ({step.status})"


@cli.command("approve")
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
        _print_json(views.decision(result))
    else:
        _echo(
            f"run {result.run_id} ({result.app} @ {result.sha[:12]}) {result.approval.describe()}; "
            f"'orchestrator advance {result.run_id} --to {result.edge.dest}' promotes it"
        )


@cli.command("reject")
@click.argument("run_id", type=int)
@click.option("--reason", required=True, help="Why; recorded and told to whoever started the run.")
@actor_option("Who rejects")
@command
def reject_cmd(inv: Invocation, run_id: int, *, reason: str, actor: str | None, as_json: bool) -> None:
    """Refuse RUN_ID's edge that awaits approval: the run ends as rejected and is never promoted."""
    from orchestrator.approvals import Decision

    result = inv.service().decide(run_id, Decision.REJECTED, actor=actor, reason=reason)
    if as_json:
        _print_json(views.decision(result))
    else:
        _echo(
            f"run {result.run_id} ({result.app} @ {result.sha[:12]}) {result.approval.describe()}; "
            f"it is now {result.state} and will not be promoted"
        )


@cli.command("metrics")
@click.argument("app", required=False)
@click.option(
    "--since", default="30d", show_default=True, help="Window: a duration (30d, 12h, 2w) or a date."
)
@command
def metrics_cmd(inv: Invocation, app: str | None, *, since: str, as_json: bool) -> None:
    """DORA keys of APP (or every app) from the recorded history: deployment frequency, lead time for
    changes, change failure rate, time to restore."""
    found = inv.service().metrics(app, since)
    if as_json:
        _print_json(views.metrics(found))
        return
    _echo(f"since {found.since:%Y-%m-%d %H:%M} UTC ({(found.until - found.since).days} days)")
    rows = [("all apps", found.total)] if app is None else []
    rows += sorted(found.apps.items())
    for name, m in rows:
        _print_dora(name, m)


def _print_dora(name: str, m: Any) -> None:
    from orchestrator.metrics import human_duration

    rate = "n/a" if m.change_failure_rate is None else f"{m.change_failure_rate:.0%}"
    missing = f", {m.lead_time_missing} without commit time" if m.lead_time_missing else ""
    _echo(f"{name}:")
    _echo(
        f"  deployment frequency   {m.deployments} to prod ({m.deploys_per_day:.2f}/day, "
        f"on {m.deploy_days} day(s))"
    )
    _echo(
        f"  lead time for changes  median {human_duration(m.lead_time_median_s)}, "
        f"p90 {human_duration(m.lead_time_p90_s)} ({m.lead_time_samples} change(s){missing})"
    )
    _echo(
        f"  change failure rate    {rate} ({m.failures} of {m.attempts}: {m.failed_in_prod} failed in prod, "
        f"{m.rolled_back} rolled back)"
    )
    _echo(
        f"  time to restore        median {human_duration(m.time_to_restore_median_s)} "
        f"({m.time_to_restore_samples} restore(s))"
    )


@cli.command("recover")
@click.argument("app", required=False)
@actor_option("Who recovers")
@command
def recover_cmd(inv: Invocation, app: str | None, *, actor: str | None, as_json: bool) -> None:
    """Reconcile transitions and locks left by dead runners with what really runs, and free them."""
    reports = inv.service().recover(app, actor)
    if as_json:
        _print_json(views.recovered(reports))
        return
    if not reports:
        _echo("nothing to recover: no transition or lock was left by a dead runner")
    for r in reports:
        what = f"transition {r.transition_id} (run {r.run_id})" if r.transition_id else "environment"
        _echo(f"{r.app}: {what} -> {r.outcome}: {r.reason}")


@cli.command("locks")
@click.argument("app", required=False)
@command
def locks_cmd(inv: Invocation, app: str | None, *, as_json: bool) -> None:
    """List environment locks and freezes, with whether each holder is still alive."""
    found = inv.service().holds(app)
    if as_json:
        _print_json(views.holds(found))
        return
    held, freezes = found.locks, found.freezes
    if not held and not freezes:
        _echo("no locks, no freezes")
    for lk in held:
        _echo(f"{lk.describe()}  [{lk.kind}, holder {lk.liveness()}]")
    for f in freezes:
        _echo(f.describe())


@cli.command("lock")
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
        _print_json(views.lock(held))
    else:
        _echo(held.describe())


@cli.command("unlock")
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
        _print_json(views.unlocked(done))
    else:
        _echo(f"unlocked {app} {environment} ({done.how}); it was: {done.lock.describe()}")


@cli.command("freeze")
@click.argument("app", required=False)
@click.option("--reason", required=True, help="Why the line stops; shown to every blocked advance.")
@actor_option("Who freezes")
@command
def freeze_cmd(inv: Invocation, app: str | None, *, reason: str, actor: str | None, as_json: bool) -> None:
    """Stop the line: no run of APP (or of any app) may advance until unfrozen. Rollback still works."""
    frozen = inv.service().freeze(app, reason=reason, actor=actor)
    if as_json:
        _print_json(views.freeze(frozen))
    else:
        _echo(frozen.describe())


@cli.command("unfreeze")
@click.argument("app", required=False)
@actor_option("Who unfreezes")
@command
def unfreeze_cmd(inv: Invocation, app: str | None, *, actor: str | None, as_json: bool) -> None:
    """Let runs of APP (or, without APP, of every app) advance again."""
    was = inv.service().unfreeze(app, actor=actor)
    if as_json:
        _print_json(views.unfrozen(was))
    else:
        _echo(f"unfrozen; it was: {was.describe()}")


@cli.command("rollback")
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
        _print_json(views.rollback(result))
        return
    _echo(
        f"{result.app} {result.environment}: rolled back from release {result.from_release.id} "
        f"({result.from_release.revision[:12]}) to release {result.to_release.id} "
        f"({result.to_release.revision[:12]}), verified; recorded as release {result.release.id}"
    )


@cli.command("status")
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
    found = inv.service().status(app)
    ok = all(e.ok for e in found)
    if as_json:
        _print_json(views.status(inv.config, found))
    else:
        _echo(f"config:   {describe_config(inv.config)}")
        _echo(f"database: {describe_database(inv.config)}")
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
            _echo(f"{e.app:<20} {e.environment:<8} {running:<50} {rel:<26} {health_text}")
            if e.engine != "local":
                _echo(f"    engine: {e.engine}")
            if o.runtime is not None:
                published = f", published by {o.runtime.published}" if o.runtime.published else ""
                _echo(
                    f"    {o.runtime.kind} {o.runtime.name}: pinned {o.runtime.pinned or 'none'}{published}"
                )
                for task in o.runtime.tasks:
                    _echo(f"      task {task}")
            if e.problem:
                _echo(f"    problem: {e.problem}")
            for diff in e.differences:
                _echo(f"    drift: {diff}")
    if any(e.unreachable is not None for e in found):
        # After the report, not instead of it: what could be seen was printed.
        sys.exit(InfraUnavailable.exit_code)
    if not ok:
        sys.exit(STATUS_NOT_OK)


@cli.command("prune")
@click.argument("app", required=False)
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@actor_option("Who prunes")
@command
def prune_cmd(inv: Invocation, app: str | None, *, dry_run: bool, actor: str | None, as_json: bool) -> None:
    """Remove APP's (or every app's) images, stopped containers and override anchors that no kept
    release (keep_releases per environment) references."""
    report = inv.service().prune(app, dry_run=dry_run, actor=actor)
    if as_json:
        _print_json(views.prune(report))
    else:
        _print_prune_report(report)
    if report.locked:
        sys.exit(Conflict.exit_code)


def _print_prune_report(report: PruneReport) -> None:
    for result in report.results:
        _print_prune(result)
    for name, exc in report.locked.items():
        _echo(f"{name}: not pruned: {exc.message}")


def _print_prune(result: PruneResult) -> None:
    plan = result.plan
    kept = ", ".join(f"{env} {list(ids)}" for env, ids in plan.kept_releases.items())
    _echo(f"{plan.app}: keeping the newest {plan.keep_releases} release(s) per environment ({kept})")
    if result.dry_run:
        images, containers, anchors, size = plan.images, plan.containers, plan.anchors, plan.bytes
        verb = "would remove"
    else:
        images, containers, anchors = result.images, result.containers, result.anchors
        size, verb = result.bytes_reclaimed, "removed"
    for c in containers:
        _echo(f"  {verb} container {c.name} ({c.environment}, {c.status}) {c.id[:12]}")
    for i in images:
        _echo(f"  {verb} image {i.image_id[:19]} {' '.join(i.refs)} ({i.size} bytes)")
    for a in anchors:
        _echo(f"  {verb} anchor {a.path}")
    for skip in result.skipped:
        _echo(f"  skipped {skip.what}: {skip.reason}")
    if not (images or containers or anchors):
        _echo(f"  nothing to prune ({len(plan.kept)} image(s) kept)")
    elif result.dry_run:
        _echo(f"  {size} bytes would be reclaimed (the images' sizes on the engine)")
    else:
        _echo(f"  {size} bytes reclaimed (the removed images' sizes on the engine)")


@cli.command()
@click.option(
    "--host",
    envvar="ORCH_SERVE_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (ORCH_SERVE_HOST).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    envvar="PORT",
    default=8080,
    show_default=True,
    help="Port to bind (PORT, as given by the orchestrator to the containers it runs).",
)
@click.pass_obj
def serve(inv: Invocation, host: str, port: int) -> None:
    """Serve the dashboard, the JSON API under /api/ (its approve, reject, lock, unlock, rollback,
    freeze and unfreeze need ORCH_API_TOKEN as a bearer token), /metrics for Prometheus, /health and
    /version (the revision baked in at build time) over HTTP."""
    from orchestrator.logging import get_logger
    from orchestrator.web import make_server, revision
    from orchestrator.web.app import Backend, create_app

    server = make_server(host, port, app=create_app(Backend(inv.config_path)))
    get_logger().info("serving", host=host, port=port, revision=revision())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@cli.group("db")
def db_group() -> None:
    """Database maintenance."""


@db_group.command("upgrade")
@command
def db_upgrade(inv: Invocation, *, as_json: bool) -> None:
    """Apply pending migrations explicitly (they also run automatically on first use)."""
    from orchestrator.store import db

    before, after = inv.service(upgrade=False).upgrade_database()
    url = db.safe_url(inv.config.settings.database_url)
    if as_json:
        _print_json(views.database_upgrade(url, before, after))
    elif before == after:
        _echo(f"{url} is at {after}: nothing to do")
    else:
        _echo(f"{url} upgraded from {before or 'empty'} to {after}")


def main() -> None:
    try:
        cli(prog_name="orchestrator")
    except OrchestratorError as exc:  # raised outside any command (should not happen, but never a traceback)
        fail_with(exc, as_json=False)
