"""Keep secrets out of the history: evidence captured from apps is redacted before it is stored.

Container logs, build logs and check output are kept as evidence of why a gate failed, in the database
and in `runs show` / `advance --json`. An app that logs its environment (a common start-up habit) would
put its configured secrets there for every operator and every backup to read. So every value the
orchestrator itself handed the app (``env``, ``build_args``) is cut out, and so is anything shaped like
a credential: ``password=...``, ``token: ...``, ``Authorization: Bearer ...``, ``user:pass@`` in URLs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

MASK = "***"
# Values shorter than this are left alone: masking "1" or "on" everywhere would shred the evidence.
_MIN_SECRET = 4
_SECRET_NAME = (
    r"[A-Za-z0-9_.-]*"
    r"(?:passw(?:or)?d|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential|authorization)"
    r"[A-Za-z0-9_.-]*"
)


@functools.cache
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """Bearer, assigned and URL-password patterns, compiled on first use: about 2 ms that a process
    with nothing to redact (a promotion whose checks all passed) never pays (issue 12)."""
    return (
        re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
        re.compile(rf"(?i)(\b{_SECRET_NAME}\b[\"']?\s*[=:]\s*[\"']?)([^\s\"',;]+)"),
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^/\s@]+)(@)"),
    )


def looks_secret(name: str) -> bool:
    """Whether a variable or build-arg name says it holds a credential (NPM_TOKEN, DB_PASSWORD, ...)."""
    return re.fullmatch(_SECRET_NAME, name, flags=re.IGNORECASE) is not None


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret value and every credential-shaped value replaced by ***."""
    for value in sorted({s for s in secrets if len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(value, MASK)
    bearer, assigned, url_password = _patterns()
    # Bearer first: "Authorization: Bearer <token>" must lose the token, not just the word Bearer.
    text = bearer.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = assigned.sub(lambda m: m.group(1) + MASK, text)
    return url_password.sub(lambda m: m.group(1) + MASK + m.group(3), text)
