#!/usr/bin/env python3
"""Stub staging check: run against a freshly deployed staging container before anything is promoted.

It proves the container answers its health path and, for apps that serve their revision (a version
path), that the revision it serves is the commit being promoted. Real smoke tests plug in as further
modes later; the stub is deliberately small so that its verdict is easy to trust.

Exit codes: 0 all checks passed, 1 a check failed, 2 bad arguments. Standard library only, so it runs
anywhere the orchestrator (or a plain python3) does.
"""

from __future__ import annotations

import argparse
import http.client
import re
import sys
import urllib.parse
from typing import TextIO

MODES = ("stub",)


def fetch(url: str, timeout: float) -> tuple[int | None, str, str | None]:
    """GET ``url``: (status, start of the body, None), or (None, "", why) when nothing answered.

    Plain http goes straight to the app with http.client, following redirects as a browser would: never
    through a proxy the environment names, since a CI runner's HTTP_PROXY cannot reach the runner's own
    loopback, where staging listens. Anything else (https) goes through urllib, which honours proxies."""
    for _ in range(10):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            return _fetch_urllib(url, timeout)
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        try:
            conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
            resp = conn.getresponse()
            location = resp.getheader("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                url = urllib.parse.urljoin(url, location)
                continue
            return resp.status, resp.read(4096).decode(errors="replace"), None
        except (OSError, http.client.HTTPException) as exc:
            return None, "", f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
    return None, "", f"more than 10 redirects from {url}"


def _fetch_urllib(url: str, timeout: float) -> tuple[int | None, str, str | None]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read(4096).decode(errors="replace"), None
    except urllib.error.HTTPError as exc:
        return exc.code, (exc.read(4096).decode(errors="replace") if exc.fp else ""), None
    except (urllib.error.URLError, OSError) as exc:
        return None, "", f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def main(argv: list[str] | None = None, *, out: TextIO | None = None) -> int:
    """``out``: where the report goes (stdout and stderr when run as a script; the orchestrator runs the
    stub in its own process and passes a buffer)."""
    stdout = out or sys.stdout
    stderr = out or sys.stderr
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="stub", help=f"check mode ({', '.join(MODES)})")
    parser.add_argument("--base-url", required=True, help="staging base URL, e.g. http://127.0.0.1:8501")
    parser.add_argument("--expected-revision", required=True, help="full 40-character commit sha")
    parser.add_argument("--health-path", default="/health")
    parser.add_argument("--version-path", default=None, help="path serving the revision (optional per app)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request")
    args = parser.parse_args(argv)

    if args.mode not in MODES:
        print(f"error: mode {args.mode!r} is not available (modes: {', '.join(MODES)})", file=stderr)
        return 2
    if not re.fullmatch(r"[0-9a-f]{40}", args.expected_revision):
        print(f"error: --expected-revision {args.expected_revision!r} is not a full 40-hex sha", file=stderr)
        return 2
    base = args.base_url.rstrip("/")
    failures = 0

    status, body, error = fetch(base + args.health_path, args.timeout)
    if status is not None and 200 <= status < 300:
        print(f"ok: GET {args.health_path} -> {status}", file=stdout)
    else:
        failures += 1
        print(
            f"FAIL: GET {base}{args.health_path} -> {status if status is not None else error} {body[:200]!r}",
            file=stdout,
        )

    if args.version_path:
        status, body, error = fetch(base + args.version_path, args.timeout)
        served = body.strip()
        if status == 200 and served == args.expected_revision:
            print(f"ok: GET {args.version_path} serves {served}", file=stdout)
        else:
            failures += 1
            seen = f"HTTP {status} {served[:80]!r}" if status is not None else error
            url, expected = base + args.version_path, args.expected_revision
            print(f"FAIL: GET {url}: expected revision {expected}, got {seen}", file=stdout)
    else:
        print("ok: no version path for this app; revision is proven by image label and image id", file=stdout)

    if failures:
        print(f"staging check failed: {failures} check(s) failed", file=stdout)
        return 1
    print("staging check passed", file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
