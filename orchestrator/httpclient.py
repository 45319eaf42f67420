"""The one HTTP client inside the package: health and /version probes, and the registry's manifest API.

Every answer comes back as a ``Response``, an HTTP error status included (a 503 from a health path is
an answer worth reporting, not an exception), and "nothing answered" as ``status=None`` with the cause.
Redirects are followed only where the caller allows it: the registry refuses them (registry.py says why).
scripts/staging_check.py keeps a copy of its own on purpose: it runs standalone, without this package.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Response:
    status: int | None  # None: nothing answered (refused, reset, timed out, no such host)
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None  # why nothing answered

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header by name, in any case (HTTP header names are case-insensitive)."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), default)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Returning None makes urllib raise the 3xx as an HTTPError instead of following it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


_FOLLOWING = urllib.request.build_opener()
_REFUSING = urllib.request.build_opener(_RefuseRedirects)


def request(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
    timeout: float = 2.0,
    limit: int | None = None,
    follow_redirects: bool = True,
) -> Response:
    """One request; at most ``limit`` bytes of the body are read (all of it without a limit)."""
    req = urllib.request.Request(
        url, data=data, method=method, headers={"User-Agent": "orchestrator", **(headers or {})}
    )
    opener = _FOLLOWING if follow_redirects else _REFUSING
    try:
        with opener.open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(limit), dict(resp.headers.items()))
    except urllib.error.HTTPError as exc:
        body = exc.read(limit) if exc.fp else b""
        return Response(exc.code, body, dict(exc.headers.items()) if exc.headers else {})
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return Response(None, error=f"{type(reason).__name__}: {reason}")


def get(url: str, *, timeout: float = 2.0, limit: int | None = None) -> Response:
    return request(url, timeout=timeout, limit=limit)
