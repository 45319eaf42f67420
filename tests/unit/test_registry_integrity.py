"""Registry tag moves write only the manifest that was pushed (issue 10, "Registry tag moves follow
redirects and trust what comes back").

Hazard: moving ``latest``/``staging`` reads the manifest by digest and PUTs what came back under the
tag. A registry (or anything between us and it) that redirects the read to another host, or answers
with other bytes, would make every later ``pull <repo>:latest`` run an image nobody built from the
commit. These tests stand up tiny HTTP servers on loopback and record every request they receive: the
attacks must end in a RegistryError with nothing written (no PUT anywhere).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.registry import Registry, RegistryError

APP = "shop"
MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": ""},
        "layers": [],
    }
).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
# What an attacker would rather have ``latest`` name: another image's manifest.
FORGED = MANIFEST.replace(b'"layers": []', b'"layers": [{"digest": "sha256:' + b"e" * 64 + b'"}]')


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    body: bytes
    content_type: str | None


# A route answers (status, headers, body) for a method and path; None means 404.
Route = Callable[[str, str], "tuple[int, dict[str, str], bytes] | None"]


@dataclass
class FakeRegistry:
    """A loopback HTTP server that records every request and answers through ``route``."""

    host: str
    route: Route
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"{self.host}:{self.server.server_address[1]}"

    def puts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "PUT"]

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.seen.append(Seen(self.command, self.path, body, self.headers.get("Content-Type")))
                answer = fake.route(self.command, self.path)
                status, headers, payload = answer if answer is not None else (404, {}, b"not found")
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_PUT = _answer

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def fake_registry() -> Iterator[Callable[[str, Route], FakeRegistry]]:
    started: list[FakeRegistry] = []

    def start(host: str, route: Route) -> FakeRegistry:
        fake = FakeRegistry(host, route)
        fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def serves(manifest: bytes) -> Route:
    """A well-behaved registry for APP: the manifest at DIGEST, and accepts PUTs of tags."""

    def route(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        if method == "GET" and path == f"/v2/{APP}/manifests/{DIGEST}":
            return 200, {"Content-Type": MEDIA_TYPE, "Docker-Content-Digest": DIGEST}, manifest
        if method == "PUT" and path.startswith(f"/v2/{APP}/manifests/"):
            return 201, {"Docker-Content-Digest": DIGEST}, b""
        return None

    return route


def test_a_matching_manifest_is_written_under_the_tag(fake_registry: Callable[..., FakeRegistry]) -> None:
    """The control: the move works, byte for byte, with the manifest's own media type."""
    registry = fake_registry("127.0.0.1", serves(MANIFEST))
    Registry(registry.address).retag(APP, DIGEST, "latest")
    [put] = registry.puts()
    assert put.path == f"/v2/{APP}/manifests/latest"
    assert put.body == MANIFEST
    assert put.content_type == MEDIA_TYPE


def test_manifest_redirected_to_another_host_is_refused_and_nothing_is_written(
    fake_registry: Callable[..., FakeRegistry],
) -> None:
    """Attack: the registry answers the manifest GET with a redirect to another host (127.0.0.2, a
    different loopback address and port: another origin) that serves a forged manifest under the same
    path. Before the fix urllib followed it and PUT the forged bytes under ``latest``."""
    other = fake_registry("127.0.0.2", serves(FORGED))

    def redirect(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        if method == "GET" and path.startswith(f"/v2/{APP}/manifests/sha256:"):
            return 302, {"Location": f"http://{other.address}{path}"}, b""
        return serves(MANIFEST)(method, path)

    registry = fake_registry("127.0.0.1", redirect)
    with pytest.raises(RegistryError) as caught:
        Registry(registry.address).retag(APP, DIGEST, "latest")
    assert "redirect" in caught.value.message and other.address in caught.value.message
    assert caught.value.status == 302
    assert other.seen == [], "the other host was never asked"
    assert registry.puts() == [] and other.puts() == [], "nothing was written under the tag"


def test_manifest_redirected_on_the_same_host_is_refused_too(
    fake_registry: Callable[..., FakeRegistry],
) -> None:
    """A same-host redirect can still point at another repository's manifest: every redirect is refused
    (a registry serves manifests itself)."""

    def redirect(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        if method == "GET" and path == f"/v2/{APP}/manifests/{DIGEST}":
            return 301, {"Location": f"/v2/evil/manifests/{DIGEST}"}, b""
        if method == "GET" and path == f"/v2/evil/manifests/{DIGEST}":
            return 200, {"Content-Type": MEDIA_TYPE}, FORGED
        return serves(MANIFEST)(method, path)

    registry = fake_registry("127.0.0.1", redirect)
    with pytest.raises(RegistryError, match="redirect"):
        Registry(registry.address).retag(APP, DIGEST, "staging")
    assert [s.path for s in registry.seen] == [f"/v2/{APP}/manifests/{DIGEST}"]
    assert registry.puts() == []


def test_tag_lookup_does_not_follow_redirects_either(fake_registry: Callable[..., FakeRegistry]) -> None:
    """The digest a tag names now (the undo point of a failed deploy) must come from the registry too."""
    other = fake_registry("127.0.0.2", serves(FORGED))

    def redirect(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        return 307, {"Location": f"http://{other.address}{path}"}, b""

    registry = fake_registry("127.0.0.1", redirect)
    with pytest.raises(RegistryError, match="redirect"):
        Registry(registry.address).manifest_digest(APP, "latest")
    assert other.seen == []


def test_manifest_that_does_not_hash_to_the_digest_is_refused_and_nothing_is_written(
    fake_registry: Callable[..., FakeRegistry],
) -> None:
    """Attack: the registry (or a proxy) answers GET <repo>@<digest> with other bytes. Before the fix
    they were PUT under ``latest`` unchecked, so ``latest`` named an image nobody pushed."""
    registry = fake_registry("127.0.0.1", serves(FORGED))
    with pytest.raises(RegistryError) as caught:
        Registry(registry.address).retag(APP, DIGEST, "latest")
    forged = "sha256:" + hashlib.sha256(FORGED).hexdigest()
    assert DIGEST[:19] in caught.value.message and forged in caught.value.message
    assert "refused" in caught.value.message
    assert registry.puts() == []


def test_a_digest_that_is_not_a_content_digest_is_refused_before_any_request(
    fake_registry: Callable[..., FakeRegistry],
) -> None:
    """A malformed digest can neither be verified nor be allowed to reshape the URL ('../latest')."""
    registry = fake_registry("127.0.0.1", serves(MANIFEST))
    for bad in ("../latest", "sha256:abc", "md5:" + "0" * 32, DIGEST.upper()):
        with pytest.raises(RegistryError, match="not a sha256/sha512 content digest"):
            Registry(registry.address).retag(APP, bad, "latest")
    assert registry.seen == []


def test_a_body_that_is_not_a_manifest_is_not_written(fake_registry: Callable[..., FakeRegistry]) -> None:
    """Bytes that hash right but come back as, say, text/html are not written as a manifest."""

    def html(method: str, path: str) -> tuple[int, dict[str, str], bytes] | None:
        if method == "GET":
            return 200, {"Content-Type": "text/html"}, MANIFEST
        return serves(MANIFEST)(method, path)

    registry = fake_registry("127.0.0.1", html)
    with pytest.raises(RegistryError, match="not an image manifest"):
        Registry(registry.address).retag(APP, DIGEST, "latest")
    assert registry.puts() == []
