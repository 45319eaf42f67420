"""The one HTTP client inside the package: probes of the apps it runs (health, /version, the proxy's
takeover), and the registry's manifest API and notification webhooks.

Every answer comes back as a ``Response``, an HTTP error status included (a 503 from a health path is
an answer worth reporting, not an exception), and "nothing answered" as ``status=None`` with the cause.
Redirects are followed only where the caller allows it: the registry refuses them (registry.py says why).
scripts/staging_check.py keeps a copy of its own on purpose: it runs standalone, without this package.

Two ways out, one answer type:

- ``probe``: plain ``http://`` straight to the app's port with http1.py, the HTTP/1.1 client a local
  engine is spoken to with too (docker_wire.py). Never through an HTTP proxy named in the environment:
  a CI runner's ``HTTP_PROXY`` without ``NO_PROXY`` would otherwise send the health check of
  127.0.0.1:8501 to the proxy, which cannot reach the runner's loopback. And neither ``urllib.request``
  nor ``http.client`` (with ``email`` and ``ssl``: 20-28 ms of every `advance --to deploy`, issue 12)
  is imported for it.
- ``request``: anything else (https, a webhook behind the runner's proxy) through ``urllib.request``,
  which honours the environment's proxies, loaded when first needed.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator import http1

# As urllib's HTTPRedirectHandler: more hops than this is a loop.
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Response:
    """The one answer type of ``probe`` and ``request``: an HTTP status (an error status too) with its body
    and headers, or ``status`` None and the cause when nothing answered."""

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


def probe(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 2.0,
    limit: int | None = None,
) -> Response:
    """One GET to an app this orchestrator runs, following redirects on ``http://`` as ``request`` does;
    at most ``limit`` bytes of the body are read. Not ``http://``: through ``request``."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            return request(url, headers=headers, timeout=timeout, limit=limit)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = http1.tcp_connection(parts.hostname, parts.port or 80, timeout)
        try:
            conn.request("GET", target, headers={"User-Agent": "orchestrator", **(headers or {})})
            resp = conn.getresponse()
            location = resp.getheader("Location")
            if resp.status in _REDIRECTS and location:
                url = urllib.parse.urljoin(url, location)
                continue
            return Response(resp.status, resp.read(limit), dict(resp.headers))
        except (OSError, http1.ProtocolError) as exc:
            return Response(None, error=f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
    return Response(None, error=f"RedirectLoop: more than {MAX_REDIRECTS} redirects from {url}")


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
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url, data=data, method=method, headers={"User-Agent": "orchestrator", **(headers or {})}
    )
    redirects = urllib.request.HTTPRedirectHandler()
    if not follow_redirects:
        # Returning None makes urllib raise the 3xx as an HTTPError instead of following it.
        redirects.redirect_request = lambda *args: None  # type: ignore[method-assign]
    # Made per call, reading the environment's proxies then: requests here are few (a registry, a
    # webhook), and a kept opener would keep proxies the environment no longer names.
    opener = urllib.request.build_opener(redirects)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(limit), dict(resp.headers.items()))
    except urllib.error.HTTPError as exc:
        body = exc.read(limit) if exc.fp else b""
        return Response(exc.code, body, dict(exc.headers.items()) if exc.headers else {})
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return Response(None, error=f"{type(reason).__name__}: {reason}")
