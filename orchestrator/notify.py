"""Webhook notifications: a JSON POST to every URL in ``notify_urls`` on each outcome.

A notification is news about a decision already recorded, never part of it, so it must not delay or
fail a deploy. The design, and why:

- ``send`` is called once the outcome is committed to the database, and starts one daemon thread per
  URL at once: delivery overlaps whatever the command still does (printing, the prune after a deploy).
- Each delivery tries ``ATTEMPTS`` times with ``notify_timeout_s`` per attempt, backing off between
  tries for a tenth, then a fifth of that timeout (0.5 s and 1 s at the default 5 s), so the one setting
  bounds the whole wait (about 3.3 times it) rather than a fixed back-off dominating a short one. A
  5xx, a 429, a refused connection or a timeout is retried, any other 4xx is not (the receiver said the
  request itself is wrong).
- The command joins the threads when it ends (``close``) with one bounded budget for all of them, so a
  hung receiver costs at most that budget once, not per URL, and the process never outlives it.
- Threads never touch the database (the store's sessions are not shared across threads): they return
  what happened, and ``record_failures`` writes each failure as a ``notify_failed`` event from the
  main thread, next to a warning in the log.

Payloads carry no secrets: the reason goes through orchestrator.redact with the app's configured
values, and URLs (a Slack-style webhook's path *is* its credential) are shown only as scheme and host.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from orchestrator.logging import get_logger
from orchestrator.redact import redact

if TYPE_CHECKING:
    from orchestrator.config import Config
    from orchestrator.store.repository import Store

ATTEMPTS = 3
# The pause after each failed attempt, as a share of the per-attempt timeout.
BACKOFF_SHARES = (0.1, 0.2)
# The outcomes a notification can announce (the payload's "event").
EVENTS = (
    "promoted",
    "failed",
    "aborted",
    "rolled_back",
    "recovered",
    "superseded",
    "awaiting_approval",
    "approved",
    "rejected",
)


def safe_url(url: str) -> str:
    """scheme://host[:port]/… : enough to tell receivers apart, never the path or query that may hold
    the webhook's token, nor a user:password."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Notification:
    """One outcome to announce (``event`` is one of ``EVENTS``), sent once it is recorded; ``payload`` is the
    JSON every URL gets, with the actor, reason and text details redacted of the app's secrets."""

    event: str
    app: str
    environment: str | None
    run_id: int | None
    sha: str | None
    actor: str
    reason: str | None = None
    transition_id: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=_utcnow)

    def payload(self, secrets: Iterable[str] = ()) -> dict[str, Any]:
        known = list(secrets)
        return {
            "source": "orchestrator",
            "event": self.event,
            "app": self.app,
            "environment": self.environment,
            "run_id": self.run_id,
            "transition_id": self.transition_id,
            "sha": self.sha,
            "actor": redact(self.actor, known),
            "reason": redact(self.reason, known) if self.reason else None,
            "details": {
                k: redact(v, known) if isinstance(v, str) else v for k, v in sorted(self.details.items())
            },
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True)
class Delivery:
    """What became of one notification to one URL."""

    url: str  # safe_url form
    notification: Notification
    ok: bool
    attempts: int
    error: str | None = None


Post = Callable[[str, bytes, float], int]


class NotAnswered(OSError):
    """Nothing answered the webhook (refused, reset, timed out, no such host): worth another try."""


def post_json(url: str, body: bytes, timeout_s: float) -> int:
    """POST ``body``; the HTTP status. Redirects are not followed: the payload goes where configured."""
    from orchestrator import httpclient

    response = httpclient.request(
        url,
        method="POST",
        data=body,
        headers={"Content-Type": "application/json", "User-Agent": "orchestrator-notify"},
        timeout=timeout_s,
        limit=4096,
        follow_redirects=False,
    )
    if response.status is None:
        raise NotAnswered(response.error or "no answer")
    return response.status


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429 or 300 <= status < 400


class Notifier:
    def __init__(
        self,
        urls: Sequence[str] = (),
        *,
        timeout_s: float = 5.0,
        secrets_for: Callable[[str], Iterable[str]] = lambda app: (),
        post: Post = post_json,
    ) -> None:
        self.urls = tuple(urls)
        self.timeout_s = timeout_s
        self._secrets_for = secrets_for
        self._post = post
        self._threads: list[tuple[threading.Thread, str, Notification]] = []
        self._done: dict[threading.Thread, Delivery] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config) -> Notifier:
        def secrets_for(app: str) -> list[str]:
            found = config.apps.get(app)
            if found is None:
                return []
            from orchestrator.steps.build import secret_values

            return [*found.env.values(), *found.build_args.values(), *secret_values(found)]

        return cls(
            config.settings.notify_urls, timeout_s=config.settings.notify_timeout_s, secrets_for=secrets_for
        )

    @property
    def budget_s(self) -> float:
        """The longest one delivery can take: every attempt timing out, plus the back-offs between."""
        return self.timeout_s * (ATTEMPTS + sum(BACKOFF_SHARES[: ATTEMPTS - 1]))

    def send(self, notification: Notification) -> None:
        """Start delivering ``notification`` to every URL; returns at once. Never raises."""
        if not self.urls:
            return
        try:
            body = json.dumps(notification.payload(self._secrets_for(notification.app))).encode()
        except Exception as exc:  # a payload we cannot build must not break the command either
            get_logger().warning("notify_failed", event=notification.event, error=str(exc))
            return
        for url in self.urls:
            thread = threading.Thread(
                target=self._deliver, args=(url, body, notification), name="notify", daemon=True
            )
            with self._lock:
                self._threads.append((thread, url, notification))
            thread.start()

    def _deliver(self, url: str, body: bytes, notification: Notification) -> None:
        error: str | None = None
        attempt = 0
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status = self._post(url, body, self.timeout_s)
            except Exception as exc:  # timeouts, refused connections, DNS: all worth another try
                error = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
            else:
                if 200 <= status < 300:
                    error = None
                    break
                error = f"HTTP {status}"
                if not _retryable(status):
                    break
            if attempt < ATTEMPTS:
                time.sleep(self.timeout_s * BACKOFF_SHARES[min(attempt - 1, len(BACKOFF_SHARES) - 1)])
        with self._lock:
            self._done[threading.current_thread()] = Delivery(
                safe_url(url), notification, error is None, attempt, error
            )

    def close(self, budget_s: float | None = None) -> list[Delivery]:
        """Wait (at most ``budget_s`` in all, default ``budget_s`` property) for every delivery; the
        ones that failed or did not finish in time, which are abandoned (daemon threads)."""
        deadline = time.monotonic() + (self.budget_s if budget_s is None else budget_s)
        with self._lock:
            threads, self._threads = self._threads, []
        for thread, _, _ in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            done, self._done = self._done, {}
        failed = [d for d in done.values() if not d.ok]
        for thread, url, notification in threads:
            if thread not in done:
                failed.append(
                    Delivery(
                        safe_url(url),
                        notification,
                        False,
                        0,
                        f"no answer within {budget_s if budget_s is not None else self.budget_s:g} s; "
                        "abandoned when the command ended",
                    )
                )
        for d in done.values():
            if d.ok:
                get_logger().debug("notified", url=d.url, notify_event=d.notification.event)
        return failed


def record_failures(store: Store | None, failures: Sequence[Delivery]) -> None:
    """Log every failed delivery, and record it as a ``notify_failed`` event when a store is open."""
    log = get_logger()
    for d in failures:
        n = d.notification
        message = (
            f"notification {n.event!r} of {n.app}"
            + (f" run {n.run_id}" if n.run_id is not None else "")
            + f" to {d.url} failed after {d.attempts} attempt(s): {d.error}; the outcome itself stands"
        )
        log.warning("notify_failed", url=d.url, notify_event=n.event, attempts=d.attempts, error=d.error)
        if store is None:
            continue
        try:
            store.record_event(
                "notify_failed",
                n.actor,
                message,
                app=n.app,
                environment=n.environment,
                run_id=n.run_id,
                transition_id=n.transition_id,
                details={"url": d.url, "event": n.event, "attempts": d.attempts, "error": d.error},
            )
        except Exception as exc:  # the database may be what is failing; the log line above stands
            log.warning("notify_failure_not_recorded", error=str(exc))
