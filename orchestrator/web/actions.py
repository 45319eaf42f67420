"""The API's state-changing endpoints: approve or reject a run, lock or unlock an environment, roll it
back, freeze or unfreeze, each a POST that goes through the service layer exactly like the CLI command
of the same name and answers with that command's ``--json`` object.

Who may call them, and why this way:

- Only a caller presenting ``Authorization: Bearer <ORCH_API_TOKEN>``. The comparison is constant-time
  (``hmac.compare_digest``), so response timing says nothing about how much of a guess was right.
- Without ORCH_API_TOKEN in the server's environment the endpoints are disabled (403 saying so): a
  dashboard bound to a shared interface must not become writable because someone forgot a variable.
  A token shorter than ``MIN_TOKEN_LENGTH`` counts as not set (it could be guessed).
- No query string at all on these endpoints: a token in a URL lands in proxy logs, shell history and
  browser history. The request is refused (400) before the token is even looked at, and the value is
  never echoed or logged.
- Bearer only, no cookie and no session: a page on another site can make a browser POST here, but it
  cannot make it add an Authorization header (that needs a CORS preflight this server never grants), so
  there is nothing for a cross-site request to ride on. The body must be JSON (or empty), never a form.
- The actor recorded is ``api``, or ``api:<name>`` with the name from the ``X-Orchestrator-Actor``
  header: everyone holding the token can claim any name, so the record says the name came through the
  API rather than passing it off as a person's own command.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request

from orchestrator import views
from orchestrator.errors import BadInput

if TYPE_CHECKING:
    from orchestrator.service import RunService
    from orchestrator.web.app import Backend

TOKEN_VARIABLE = "ORCH_API_TOKEN"
ACTOR_HEADER = "X-Orchestrator-Actor"
API_ACTOR = "api"
MIN_TOKEN_LENGTH = 16
MAX_BODY = 16 * 1024


def configured_token(environ: Mapping[str, str] | None = None) -> str | None:
    """ORCH_API_TOKEN, or None when unset or blank."""
    value = (os.environ if environ is None else environ).get(TOKEN_VARIABLE, "").strip()
    return value or None


@dataclass(frozen=True)
class Refusal:
    """Why ``authorize`` turns a state-changing request away: the HTTP status and error to answer with, a
    message saying what to do, and the ``WWW-Authenticate`` challenge of a 401."""

    status: int
    error: str
    message: str
    challenge: str | None = None  # the WWW-Authenticate header of a 401


def authorize(token: str | None, authorization: str | None, query_string: bytes) -> Refusal | None:
    """Why a state-changing request may not go on, or None when it may (see the module docstring)."""
    if query_string:
        return Refusal(
            400,
            "query_string_refused",
            "state-changing endpoints take no query string (a token in a URL ends up in logs and "
            "histories): send the token as 'Authorization: Bearer <token>' and parameters in a JSON body",
        )
    if token is None:
        return Refusal(
            403,
            "api_disabled",
            f"state-changing API endpoints are disabled: start 'orchestrator serve' with {TOKEN_VARIABLE} "
            "set to a secret (e.g. the output of 'openssl rand -hex 32') to enable them",
        )
    if len(token) < MIN_TOKEN_LENGTH:
        return Refusal(
            403,
            "api_disabled",
            f"state-changing API endpoints are disabled: {TOKEN_VARIABLE} is shorter than "
            f"{MIN_TOKEN_LENGTH} characters and could be guessed; set a longer one (openssl rand -hex 32)",
        )
    scheme, _, presented = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return Refusal(
            401,
            "unauthorized",
            "this endpoint needs 'Authorization: Bearer <token>' (the server's ORCH_API_TOKEN)",
            'Bearer realm="orchestrator"',
        )
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return Refusal(
            401,
            "unauthorized",
            "the bearer token is not the server's ORCH_API_TOKEN",
            'Bearer realm="orchestrator", error="invalid_token"',
        )
    return None


def api_actor(named: str | None) -> str:
    """``api``, or ``api:<name>`` for a name the caller gave (see the module docstring)."""
    from orchestrator.service import parse_actor

    name = (named or "").strip()
    return parse_actor(f"{API_ACTOR}:{name}" if name else API_ACTOR)


def _body() -> dict[str, Any]:
    """The request's JSON object (empty without a body). A form-encoded body is refused: that is what a
    cross-site form would send."""
    if not request.content_length:
        return {}
    if request.mimetype != "application/json":
        raise BadInput("send the parameters as a JSON object with 'Content-Type: application/json'")
    found = request.get_json(silent=True)
    if not isinstance(found, dict):
        raise BadInput("the request body is not a JSON object")
    return found


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadInput(f"'{key}' must be a string")
    return value


def register(app: Flask, backend: Backend) -> None:
    """The POST endpoints under /api/ (their paths mirror the CLI commands)."""

    def refused(refusal: Refusal) -> Response:
        response = jsonify({"error": refusal.error, "message": refusal.message})
        response.status_code = refusal.status
        if refusal.challenge:
            response.headers["WWW-Authenticate"] = refusal.challenge
        return response

    def act(do: Callable[[RunService, dict[str, Any], str], dict[str, Any]]) -> Response:
        refusal = authorize(backend.api_token, request.headers.get("Authorization"), request.query_string)
        if refusal is not None:
            return refused(refusal)
        if (request.content_length or 0) > MAX_BODY:
            raise BadInput(f"the request body is larger than {MAX_BODY} bytes")
        body = _body()
        actor = api_actor(request.headers.get(ACTOR_HEADER))
        with backend.service() as service:
            return jsonify(do(service, body, actor))

    @app.post("/api/runs/<int:run_id>/<any(approve, reject):verb>")
    def decide(run_id: int, verb: str) -> Response:
        from orchestrator.approvals import Decision

        decision = Decision.APPROVED if verb == "approve" else Decision.REJECTED
        return act(
            lambda s, body, actor: views.decision(
                s.decide(run_id, decision, actor=actor, reason=_text(body, "reason"))
            )
        )

    @app.post("/api/apps/<app_name>/<env>/lock")
    def lock(app_name: str, env: str) -> Response:
        from orchestrator import views

        return act(
            lambda s, body, actor: views.lock(
                s.lock(app_name, env, reason=_text(body, "reason"), actor=actor)
            )
        )

    @app.post("/api/apps/<app_name>/<env>/unlock")
    def unlock(app_name: str, env: str) -> Response:
        from orchestrator import views

        def do(s: RunService, body: dict[str, Any], actor: str) -> dict[str, Any]:
            force = body.get("force", False)
            if not isinstance(force, bool):
                raise BadInput("'force' must be true or false")
            return views.unlocked(s.unlock(app_name, env, force=force, actor=actor))

        return act(do)

    @app.post("/api/apps/<app_name>/<env>/rollback")
    def rollback(app_name: str, env: str) -> Response:
        from orchestrator import views

        def do(s: RunService, body: dict[str, Any], actor: str) -> dict[str, Any]:
            to = body.get("to")
            if to is not None and (isinstance(to, bool) or not isinstance(to, int)):
                raise BadInput("'to' must be a release id (a whole number)")
            return views.rollback(s.rollback(app_name, env, to=to, actor=actor, reason=_text(body, "reason")))

        return act(do)

    @app.post("/api/freeze")
    def freeze() -> Response:
        from orchestrator import views

        return act(
            lambda s, body, actor: views.freeze(
                s.freeze(_text(body, "app"), reason=_text(body, "reason"), actor=actor)
            )
        )

    @app.post("/api/unfreeze")
    def unfreeze() -> Response:
        from orchestrator import views

        return act(lambda s, body, actor: views.unfrozen(s.unfreeze(_text(body, "app"), actor=actor)))
