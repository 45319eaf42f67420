"""The dashboard and its JSON API: what runs where, the runs, their gates and evidence, DORA charts,
``/metrics`` for Prometheus.

Flask for routing and Jinja2 templates (autoescaped: actors, reasons and gate evidence come from users
and apps and must never become markup). The API answers in the shapes of the CLI's ``--json`` (a test
holds the two equal), so a script can move between them. Everything here reads, except the POST
endpoints of web/actions.py (approve, reject, lock, unlock, freeze, unfreeze), which need the bearer
token from ORCH_API_TOKEN and are disabled without it.

The config and the database are opened on first use, not at start: ``/health`` and ``/version`` must
answer (the orchestrator deploys itself with them) even where no database is reachable yet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, abort, jsonify, render_template, request

from orchestrator import views
from orchestrator.config import Config, load_config
from orchestrator.errors import BadInput, OrchestratorError
from orchestrator.machine import State
from orchestrator.metrics import DoraHistory, human_duration
from orchestrator.service.reads import Reads
from orchestrator.store.history import OUTCOMES, RunFilter, parse_when, revision_evidence
from orchestrator.store.repository import RunRecord, Store
from orchestrator.web import actions
from orchestrator.web.actions import configured_token
from orchestrator.web.charts import dora_charts
from orchestrator.web.prometheus import Snapshot, exposition, registry_for

if TYPE_CHECKING:
    from orchestrator.docker_engine import DockerEngine
    from orchestrator.releases import EnvStatus
    from orchestrator.service import RunService

PAGE_SIZE = 50
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
METRICS_WINDOW = "30d"


@dataclass
class Backend:
    """Where the dashboard reads from (the service layer's reads, service/reads.py) and acts through
    (the run service, for web/actions.py); built on first use and shared by the server's threads."""

    config_path: str | None = None
    engine_factory: Callable[[], DockerEngine] | None = None
    # The window /metrics reports the DORA keys over (as `metrics --since` reads it).
    metrics_window: str = METRICS_WINDOW
    # ORCH_API_TOKEN as the server started with it; None disables the POST endpoints (web/actions.py).
    api_token: str | None = field(default_factory=configured_token, repr=False)
    _config: Config | None = None
    _store: Store | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def config(self) -> Config:
        with self._lock:
            if self._config is None:
                self._config = load_config(self.config_path)
            return self._config

    def _open_store(self) -> Store:
        config = self.config
        with self._lock:
            if self._store is None:
                self._store = Store(config.settings.database_url)
            return self._store

    @property
    def reads(self) -> Reads:
        return Reads(self.config, self._open_store(), self.engine_factory)

    def status(self, app: str | None = None) -> list[EnvStatus]:
        return self.reads.status(app)

    @contextmanager
    def service(self) -> Iterator[RunService]:
        """The service layer for one state-changing request, as the CLI builds it for one command:
        its notifications are delivered (or recorded as failed) before the response goes out."""
        from orchestrator.notify import Notifier, record_failures
        from orchestrator.service import RunService, connect_engine

        config, store = self.config, self._open_store()
        notifier = Notifier.from_config(config)
        try:
            yield RunService(config, store, self.engine_factory or connect_engine, notifier)
        finally:
            record_failures(store, notifier.close())

    def dora_history(self) -> DoraHistory:
        """Every app's keys over the metrics window, and per day for the charts, read now."""
        return self.reads.dora(self.metrics_window, by_day=True)

    def snapshot(self) -> Snapshot:
        """What one /metrics scrape reports, read now (orchestrator/web/prometheus.py)."""
        from datetime import UTC, datetime

        from orchestrator.web import revision

        reads = self.reads
        reports = reads.reports()
        holds = reads.holds(None)
        now = datetime.now(UTC)
        return Snapshot(
            window=self.metrics_window,
            report=reads.dora(self.metrics_window, now=now).report(),
            runs=reports.run_counts(),
            transitions=reports.transition_counts(),
            awaiting_approval=reports.awaiting_approval(),
            locks=holds.locks,
            freezes=holds.freezes,
            now=now,
            revision=revision(),
        )


def _filter_from_query() -> tuple[RunFilter, int, int]:
    args = request.args
    state = args.get("state") or None
    if state is not None:
        state = State.parse(state).value
    since, until = args.get("since") or None, args.get("until") or None
    found = RunFilter(
        app=args.get("app") or None,
        state=state,
        outcome=args.get("outcome") or None,
        sha_prefix=args.get("sha") or None,
        actor=args.get("actor") or None,
        since=parse_when(since) if since else None,
        until=parse_when(until) if until else None,
    )
    try:
        limit = min(max(int(args.get("limit", PAGE_SIZE)), 1), 10_000)
        page = max(int(args.get("page", 1)), 1)
    except ValueError:
        raise BadInput("limit and page must be whole numbers") from None
    return found, limit, page


def _query_with(**changes: Any) -> str:
    """The current query string with ``changes`` applied (the pager keeps the filters)."""
    from urllib.parse import urlencode

    args = {k: v for k, v in request.args.items() if v}
    args.update({k: str(v) for k, v in changes.items()})
    return urlencode(args)


def _slug(name: str) -> str:
    """An app name as it may appear in an element id (ids must be unique and free of spaces)."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _app_names(backend: Backend) -> list[str]:
    """Configured apps and any the history knows (a dashboard may run without the apps' config)."""
    return sorted(set(backend.config.apps) | set(backend.reads.history().apps()))


def _awaiting_decision(backend: Backend, run: RunRecord) -> str | None:
    """The environment ``run``'s next edge needs a person's approval for, while nobody decided yet
    (the run page then offers Approve and Reject); None otherwise."""
    from orchestrator.approvals import Standing, standing, target_environment
    from orchestrator.machine import TO_PROD, TO_STAGING

    edge = {State.DEVELOPMENT.value: TO_STAGING, State.DEPLOY_STAGING.value: TO_PROD}.get(run.state)
    app = backend.config.apps.get(run.app)
    if edge is None or app is None:
        return None
    if standing(app.require_approval, edge, backend.reads.approvals(run.id)) != Standing.AWAITING:
        return None
    return target_environment(edge)


def create_app(backend: Backend | None = None) -> Flask:
    from orchestrator.web import revision

    backend = backend or Backend()
    app = Flask(__name__)
    app.config["JSON_SORT_KEYS"] = False
    app.config["MAX_CONTENT_LENGTH"] = actions.MAX_BODY
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.jinja_env.globals.update(
        revision=revision,
        revision_evidence=revision_evidence,
        outcomes=OUTCOMES,
        query_with=_query_with,
        human_duration=human_duration,
        app_slug=_slug,
    )

    @app.context_processor
    def api_state() -> dict[str, Any]:
        return {"api_enabled": backend.api_token is not None}

    @app.after_request
    def content_security_policy(response: Response) -> Response:
        # Only the server's own script runs (static/actions.js): markup that slipped past escaping
        # could not run a script, so it could not read the API token a person keeps in the tab.
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response

    @app.errorhandler(OrchestratorError)
    def domain_error(exc: OrchestratorError) -> Response | tuple[Any, int]:
        # The CLI's error object, with the HTTP status that fits: bad input 400 (unknown run: 404),
        # an unreachable engine or database 503.
        status = 400 if exc.exit_code == BadInput.exit_code else 409 if exc.exit_code == 3 else 503
        if "unknown run" in exc.message or "unknown release" in exc.message:
            status = 404
        payload = {"error": exc.kind, "message": exc.message, "exit_code": exc.exit_code}
        if request.path.startswith("/api/"):
            return jsonify(payload), status
        if request.path == "/metrics":  # a scraper shows the body of a failed scrape as it is
            return Response(f"{exc.kind}: {exc.message}\n", status=status, mimetype="text/plain"), status
        return render_template("error.html", error=payload, status=status), status

    @app.errorhandler(404)
    def not_found(_exc: Exception) -> tuple[Any, int]:
        return jsonify({"error": "not found", "path": request.path}), 404

    @app.get("/health")
    def health() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/version")
    def version() -> Response:
        return Response(revision() + "\n", mimetype="text/plain")

    # One registry per application, never prometheus_client's global one (web/prometheus.py).
    scrape_registry = registry_for(backend.snapshot)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        body, content_type = exposition(scrape_registry, request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    # JSON API -----------------------------------------------------------------------------------

    @app.get("/api/runs")
    def api_runs() -> Response:
        found, limit, page = _filter_from_query()
        runs = backend.reads.history().runs(found, limit=limit, offset=(page - 1) * limit)
        return jsonify({"runs": [views.run(r) for r in runs]})

    @app.get("/api/runs/<int:run_id>")
    def api_run(run_id: int) -> Response:
        return jsonify(views.run_history(backend.reads.run_history(run_id)))

    @app.get("/api/status")
    def api_status() -> Response:
        return jsonify(views.status(backend.config, backend.status(request.args.get("app") or None)))

    @app.get("/api/releases")
    def api_releases() -> Response:
        app_name = request.args.get("app")
        env = request.args.get("env") or None
        history = backend.reads.history()
        if app_name:
            return jsonify(views.releases(app_name, history.release_periods(app_name, env)))
        names = _app_names(backend)
        return jsonify(
            {"apps": {n: [views.release_period(p) for p in history.release_periods(n, env)] for n in names}}
        )

    @app.get("/api/locks")
    def api_locks() -> Response:
        holds = backend.reads.holds(None)
        return jsonify(
            {
                "locks": [views.lock_record(lk) for lk in holds.locks],
                "freezes": [views.freeze_record(f) for f in holds.freezes],
            }
        )

    @app.get("/api/audit")
    def api_audit() -> Response:
        since = request.args.get("since") or None
        entries = backend.reads.history().audit(
            request.args.get("app") or None, parse_when(since) if since else None
        )
        return jsonify(views.audit(entries))

    actions.register(app, backend)

    # dashboard ----------------------------------------------------------------------------------

    @app.get("/")
    def index() -> str:
        found, limit, page = _filter_from_query()
        reads = backend.reads
        history = reads.history()
        runs = history.summaries(history.runs(found, limit=limit, offset=(page - 1) * limit))
        try:
            environments, status_error = backend.status(), None
        except OrchestratorError as exc:  # no engine: the history is still worth showing
            environments, status_error = [], exc.message
        holds = reads.holds(None)
        dora = backend.dora_history()
        return render_template(
            "index.html",
            metrics_window=backend.metrics_window,
            dora=dora.report(),
            charts={a: dora_charts(a, backend.metrics_window, dora.daily(a)) for a in dora.apps},
            runs=runs,
            filters=request.args,
            page=page,
            more=len(runs) == limit,
            environments=environments,
            status_error=status_error,
            locks=holds.locks,
            freezes=holds.freezes,
            apps=_app_names(backend),
        )

    @app.get("/runs/<int:run_id>")
    def run_page(run_id: int) -> str:
        found = backend.reads.run_history(run_id)
        return render_template(
            "run.html",
            run=found.run,
            transitions=found.transitions,
            releases=found.releases,
            awaiting_env=_awaiting_decision(backend, found.run),
        )

    @app.get("/releases")
    def releases_page() -> str:
        history = backend.reads.history()
        names = [request.args["app"]] if request.args.get("app") else _app_names(backend)
        env = request.args.get("env") or None
        return render_template(
            "releases.html", periods={n: history.release_periods(n, env) for n in names}, env=env
        )

    @app.get("/audit")
    def audit_page() -> str:
        since = request.args.get("since") or None
        entries = backend.reads.history().audit(
            request.args.get("app") or None, parse_when(since) if since else None
        )
        return render_template("audit.html", entries=list(reversed(entries)))

    @app.get("/favicon.ico")
    def favicon() -> None:
        abort(404)

    return app
