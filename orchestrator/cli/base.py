"""What every command shares: the root group, the call's ``Invocation``, output, errors and exit codes.

Exit codes (also in README): 0 ok, 1 a gate failed and the run was rolled back, 2 bad input,
3 conflict, 4 infrastructure unavailable, 5 (`status` only) an environment drifted or is unhealthy.
With --json, stdout carries exactly one JSON object, errors included; logs always go to stderr.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from orchestrator import __version__, identity, progress, views
from orchestrator.errors import BadInput, Interrupted, OrchestratorError

# Everything else is imported inside the commands that need it: `--help`, `--version` and a usage error
# must not pay for SQLAlchemy, the docker SDK, transitions or Alembic (tests/unit/test_startup_imports.py).
# CI calls the orchestrator in every pipeline, so start-up is paid thousands of times a day.
if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.notify import Notifier
    from orchestrator.service import Reads, RunService
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
                echo(f"config: {describe_config(self._config)}", err=True)
        return self._config

    def _open_store(self, *, upgrade: bool) -> Store:
        if self._store is None:
            from orchestrator.store.repository import Store

            if self.verbose:
                echo(f"database: {describe_database(self.config)}", err=True)
            self._store = Store(self.config.settings.database_url, upgrade=upgrade, ci_url=identity.ci_url())
        return self._store

    def service(self, *, upgrade: bool = True) -> RunService:
        from orchestrator.service import RunService

        return RunService(self.config, self._open_store(upgrade=upgrade), notifier=self.notifier)

    def reads(self) -> Reads:
        """The service of the commands that only read (the history's, `locks`, `status`): without what
        the edges and the operator actions load (the notifier, the run's heartbeat, the builds)."""
        from orchestrator.service import Reads

        return Reads(self.config, self._open_store(upgrade=True))

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


def echo(text: str = "", *, err: bool = False) -> None:
    """Every human-readable line goes through here; JSON output is escaped by json.dumps instead."""
    click.echo(printable(text), err=err)


def echo_table(rendered: str) -> None:
    """A table from tables.render, as it was drawn: every cell was made safe there (tables.clean), and
    on a terminal the text holds rich's own colour codes, which ``echo`` would print as text."""
    click.echo(rendered)


def print_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=False, default=str))


def fail(
    kind: str, message: str, exit_code: int, *, as_json: bool, details: dict[str, Any] | None = None
) -> NoReturn:
    """The one place an error becomes output and an exit status: with --json, one object on stdout
    saying its kind, message and code (and its details); otherwise ``error: ...`` on stderr."""
    if as_json:
        print_json(views.error(kind, message, exit_code, details))
    else:
        echo(f"error: {message}", err=True)
    sys.exit(exit_code)


def fail_with(exc: OrchestratorError, *, as_json: bool) -> NoReturn:
    fail(exc.kind, exc.message, exc.exit_code, as_json=as_json, details=exc.details)


def command(fn: F) -> F:
    """Shared --json option, and errors handed to ``fail``."""

    @click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(inv: Invocation, *args: Any, as_json: bool, **kwargs: Any) -> None:
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


# Each top-level command -> the module of this package that defines it, and its name there; in the order
# `--help` lists them (by name, click's order). A call imports the one module its command lives in (issue 12):
# defining all ~25 commands and their options took about 4 ms of every call's start-up, for one command
# run; `runs list` now defines the root group and the history's commands, about 2.4 ms.
COMMANDS = {
    "advance": ("edges", "advance"),
    "approve": ("operations", "approve_cmd"),
    "audit": ("history", "audit_cmd"),
    "db": ("admin", "db_group"),
    "deploy": ("edges", "deploy_cmd"),
    "freeze": ("operations", "freeze_cmd"),
    "lock": ("operations", "lock_cmd"),
    "locks": ("operations", "locks_cmd"),
    "metrics": ("history", "metrics_cmd"),
    "prune": ("environments", "prune_cmd"),
    "recover": ("operations", "recover_cmd"),
    "reject": ("operations", "reject_cmd"),
    "releases": ("history", "releases_cmd"),
    "rollback": ("environments", "rollback_cmd"),
    "run": ("edges", "run"),
    "runs": ("history", "runs"),
    "serve": ("admin", "serve"),
    "status": ("environments", "status_cmd"),
    "unfreeze": ("operations", "unfreeze_cmd"),
    "unlock": ("operations", "unlock_cmd"),
}


class _Cli(click.Group):
    """The root group. Knows its commands by name (``COMMANDS``) and imports a command's module when
    click looks the command up: click's lazily loaded subcommands.

    Keeps the --json promise for mistakes click itself catches (missing option, bad integer):
    with --json anywhere on the line, a usage error is the same one bad_input object, exit 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, name = COMMANDS[cmd_name]
        found: click.Command = getattr(importlib.import_module(f"orchestrator.cli.{module}"), name)
        return found

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
            echo("Aborted!", err=True)
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


def hanging(label: str, text: str, indent: int | None = None) -> str:
    """``label`` then ``text``, its further lines indented (under the first, by default)."""
    return label + text.replace("\n", "\n" + " " * (len(label) if indent is None else indent))


def main() -> None:
    try:
        cli(prog_name="orchestrator")
    except OrchestratorError as exc:  # raised outside any command (should not happen, but never a traceback)
        fail_with(exc, as_json=False)
