"""click commands: parse, call the service layer, print (human or --json), exit with the promised code.

Exit codes (also in README): 0 ok, 1 a gate failed and the run was rolled back, 2 bad input,
3 conflict, 4 infrastructure unavailable. With --json, stdout carries exactly one JSON object, errors
included; logs always go to stderr.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from orchestrator import logging as orch_logging
from orchestrator.config import Config, load_config
from orchestrator.errors import BadInput, OrchestratorError
from orchestrator.machine import State
from orchestrator.service import FAILED, AdvanceResult, RunService, connect_engine
from orchestrator.store import db
from orchestrator.store.repository import Store

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Invocation:
    config_path: str | None
    _config: Config | None = None
    _store: Store | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
            orch_logging.configure(self._config.settings.log_format, self._config.settings.log_level)
        return self._config

    def store(self, *, upgrade: bool = True) -> Store:
        if self._store is None:
            self._store = Store(self.config.settings.database_url, upgrade=upgrade)
        return self._store

    def service(self) -> RunService:
        return RunService(self.config, self.store())

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _print_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


def command(fn: F) -> F:
    """Shared --json option and the one place errors become output and exit codes."""

    @click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(inv: Invocation, *args: Any, as_json: bool, **kwargs: Any) -> None:
        try:
            fn(inv, *args, as_json=as_json, **kwargs)
        except OrchestratorError as exc:
            if as_json:
                _print_json(
                    {"error": exc.kind, "message": exc.message, "exit_code": exc.exit_code, **exc.details}
                )
            else:
                click.echo(f"error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
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
            _print_json(
                {"error": BadInput.kind, "message": exc.format_message(), "exit_code": BadInput.exit_code}
            )
            sys.exit(BadInput.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="orchestrator.toml to use (default: ORCH_CONFIG, then ./orchestrator.toml).",
)
@click.version_option(package_name="orchestrator")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Move validated commits through development -> deploy-staging -> deploy, behind gates."""
    orch_logging.configure()
    ctx.obj = Invocation(config_path)


@cli.group()
def run() -> None:
    """Create runs."""


@run.command("start")
@click.option("--app", required=True, help="App name from orchestrator.toml.")
@click.option("--sha", required=True, help="Full 40-character commit sha that CI validated.")
@click.option("--actor", default=None, help="Who started the run (default: the OS user).")
@command
def run_start(inv: Invocation, *, app: str, sha: str, actor: str | None, as_json: bool) -> None:
    """Start a run for APP at SHA in development."""
    record = inv.service().start_run(app, sha, actor)
    if as_json:
        _print_json(record.as_dict())
    else:
        click.echo(f"run {record.id} started: {record.app} @ {record.sha} in {record.state}")


@cli.command()
@click.argument("run_id", type=int)
@click.option("--to", "to", required=True, help="Target state (deploy-staging or deploy).")
@click.option("--actor", default=None, help="Who asked for the move (default: the OS user).")
@command
def advance(inv: Invocation, run_id: int, *, to: str, actor: str | None, as_json: bool) -> None:
    """Run the gates of RUN_ID's edge to --to; move the run, or roll it back to development."""
    result = inv.service().advance(run_id, to, actor)
    if as_json:
        _print_json(result.as_dict())
    else:
        _print_advance(result)
    if result.outcome == FAILED:
        sys.exit(1)


def _print_advance(result: AdvanceResult) -> None:
    for check in result.checks:
        click.echo(f"  {check.status.value:<8} {check.name:<32} {check.duration_s:7.3f}s  {check.reason}")
    if result.outcome == FAILED:
        click.echo(
            f"run {result.run_id}: {result.from_state} -> {result.to_state} FAILED, back in "
            f"{result.state}: {result.reason}"
        )
    else:
        click.echo(f"run {result.run_id}: {result.from_state} -> {result.to_state} ok, now in {result.state}")


@cli.group()
def runs() -> None:
    """Inspect run history."""


@runs.command("list")
@click.option("--app", default=None)
@click.option("--state", default=None, help="Only runs in this state.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@command
def runs_list(inv: Invocation, *, app: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    if state is not None:
        state = State.parse(state).value
    records = inv.store().list_runs(app=app, state=state, limit=limit)
    if as_json:
        _print_json({"runs": [r.as_dict() for r in records]})
        return
    if not records:
        click.echo("no runs")
    for r in records:
        click.echo(
            f"{r.id:>6}  {r.app:<20} {r.sha[:12]}  {r.state:<15} {r.actor:<16} "
            f"{r.created_at:%Y-%m-%d %H:%M:%S}"
        )


@runs.command("show")
@click.argument("run_id", type=int)
@command
def runs_show(inv: Invocation, run_id: int, *, as_json: bool) -> None:
    """Show RUN_ID with every transition and gate result."""
    store = inv.store()
    record = store.get_run(run_id)
    transitions = store.transitions(run_id)
    releases = store.releases_of_run(run_id)
    if as_json:
        _print_json(
            {
                **record.as_dict(),
                "transitions": [t.as_dict() for t in transitions],
                "releases": [r.as_dict() for r in releases],
            }
        )
        return
    click.echo(f"run {record.id}: {record.app} @ {record.sha}  state={record.state}  actor={record.actor}")
    for t in transitions:
        click.echo(
            f"  #{t.id} {t.from_state} -> {t.to_state}  {t.outcome}  by {t.actor}  "
            f"{t.started_at:%Y-%m-%d %H:%M:%S}" + (f"  ({t.reason})" if t.reason else "")
        )
        for c in t.checks:
            click.echo(f"      {c.status:<8} {c.name:<32} {c.duration_s:7.3f}s  {c.reason}")
    for rel in releases:
        click.echo(
            f"  release {rel.id}: {rel.environment:<8} {rel.kind:<8} {rel.image_id[:19]}  "
            f"revision {rel.revision[:12]}  {rel.created_at:%Y-%m-%d %H:%M:%S}"
            + (f"  ({rel.reason})" if rel.reason else "")
        )


@cli.command("rollback")
@click.argument("app")
@click.option("--env", "environment", required=True, help="Environment to roll back (staging or prod).")
@click.option(
    "--to", "to", type=int, default=None, help="Release id to return to (default: the previous one)."
)
@click.option("--reason", default=None, help="Why; recorded with the rollback release.")
@click.option("--actor", default=None, help="Who rolls back (default: the OS user).")
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
    from orchestrator.releases import rollback

    result = rollback(
        inv.config, inv.store(), connect_engine, app, environment, to=to, actor=actor, reason=reason
    )
    if as_json:
        _print_json(result.as_dict())
        return
    click.echo(
        f"{result.app} {result.environment}: rolled back from release {result.from_release.id} "
        f"({result.from_release.revision[:12]}) to release {result.to_release.id} "
        f"({result.to_release.revision[:12]}), verified; recorded as release {result.release.id}"
    )


@cli.command("status")
@click.argument("app", required=False)
@command
def status_cmd(inv: Invocation, app: str | None, *, as_json: bool) -> None:
    """What runs in each environment, and whether it drifted from the last recorded release."""
    from orchestrator.releases import status

    found = status(inv.config, inv.store(), connect_engine, app)
    if as_json:
        _print_json({"environments": [e.as_dict() for e in found], "drift": any(e.drift for e in found)})
        return
    for e in found:
        o = e.observed
        rel = f"release {e.release.id} ({e.release.revision[:12]})" if e.release else "no release"
        running = f"{o.container} {o.status} {(o.image_id or '')[:19]}" if o.container_id else "no container"
        health_text = (
            "" if o.healthy is None else ("healthy" if o.healthy else f"UNHEALTHY ({o.health_detail})")
        )
        click.echo(f"{e.app:<20} {e.environment:<8} {running:<50} {rel:<26} {health_text}")
        for diff in e.differences:
            click.echo(f"    drift: {diff}")


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
def serve(host: str, port: int) -> None:
    """Serve /health and /version (the revision baked in at build time) over HTTP."""
    from orchestrator.logging import get_logger
    from orchestrator.web import make_server, revision

    server = make_server(host, port)
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
    store = inv.store(upgrade=False)
    before, after = db.upgrade(store.engine)
    url = db.safe_url(store.url)
    if as_json:
        _print_json({"database": url, "from_revision": before, "to_revision": after})
    elif before == after:
        click.echo(f"{url} is at {after}: nothing to do")
    else:
        click.echo(f"{url} upgraded from {before or 'empty'} to {after}")


def main() -> None:
    try:
        cli(prog_name="orchestrator")
    except BadInput as exc:  # raised outside any command (should not happen, but never a traceback)
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
