"""The orchestrator's own upkeep: `serve` (dashboard, API, metrics) and `db upgrade`."""

from __future__ import annotations

import click

from orchestrator import views
from orchestrator.cli.base import Invocation, command, echo, print_json


@click.command()
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


@click.group("db")
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
        print_json(views.database_upgrade(url, before, after))
    elif before == after:
        echo(f"{url} is at {after}: nothing to do")
    else:
        echo(f"{url} upgraded from {before or 'empty'} to {after}")
