"""Registry-side tag moves over the Registry HTTP API v2.

Moving ``:latest`` in the registry (instead of tagging locally and pushing) is what a build host does
for a fleet: the deploy side only learns of it by pulling. That is exactly why a plain-tag
``docker compose up -d`` can be a silent no-op, and why pinned deploys use the digest instead.
Loopback registries are spoken to over HTTP (Docker trusts them without TLS), all others over HTTPS.
Registries that want credentials answer 401/403 here; callers then fall back to tag-and-push.

A tag move reads a manifest and writes it back under another name, so whatever the read returns is
what every later ``pull <repo>:latest`` runs. Two rules keep that the manifest we pushed:

- **No redirects, at all.** A registry serves manifests itself (only blobs are handed off to storage
  backends), so a redirect on a manifest request is a misconfiguration or an attack: followed, it
  could fetch the manifest from another host, or downgrade https to http so anyone on the path
  chooses it. Allowing "same-host only" would still let a proxy bounce us to another repository's
  manifest on that host; refusing every redirect is simpler to reason about and loses nothing a
  registry needs.
- **The bytes must hash to the digest asked for.** The digest is content addressing: before the
  manifest is written under a tag its sha256 (or sha512) is checked against the requested digest, so
  a registry or proxy that answers with other bytes cannot move the tag to an image nobody built.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from orchestrator import httpclient

_MANIFEST_TYPE_LIST = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
)
_MANIFEST_TYPES = ", ".join(_MANIFEST_TYPE_LIST)
# The algorithms a registry addresses content with; the hex length is fixed by the algorithm.
_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


class RegistryError(Exception):
    """``status`` is the HTTP status of the answer that was refused (a 3xx redirect, a 200 whose
    manifest failed its digest check, a 4xx/5xx); None only when the registry could not be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def needs_credentials(self) -> bool:
        return self.status in (401, 403)


def split(registry: str) -> tuple[str, str]:
    """'host:port/ns' -> ('host:port', 'ns/')."""
    host, _, namespace = registry.partition("/")
    return host, f"{namespace}/" if namespace else ""


def is_loopback(host: str) -> bool:
    if host.startswith("["):
        name = host[1 : host.find("]")]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hex_digest(algorithm: str, body: bytes) -> str:
    import hashlib  # OpenSSL's: loaded only by what talks to a registry (issue 12)

    return hashlib.new(algorithm, body).hexdigest()


def manifest_matches(digest: str, body: bytes) -> bool:
    """Whether ``body`` is the content ``digest`` addresses (``sha256:<hex>`` or ``sha512:<hex>``)."""
    if not _DIGEST.match(digest):
        return False
    algorithm, _, expected = digest.partition(":")
    return _hex_digest(algorithm, body) == expected


@dataclass(frozen=True)
class Registry:
    """A configured registry (``host[:port][/namespace]``): the repository an app's images go by there, and
    its manifest API, asked for a tag's digest and to move a tag without a local image."""

    address: str  # host[:port][/namespace], as configured

    @property
    def host(self) -> str:
        return split(self.address)[0]

    def repository(self, app: str) -> str:
        """The image repository name Docker uses: '127.0.0.1:5000/ns/app'."""
        return f"{self.address}/{app}"

    def _path(self, app: str) -> str:
        return f"{split(self.address)[1]}{app}"

    def _url(self, app: str, ref: str) -> str:
        scheme = "http" if is_loopback(self.host) else "https"
        return f"{scheme}://{self.host}/v2/{self._path(app)}/manifests/{ref}"

    def _open(
        self,
        url: str,
        what: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        resp = httpclient.request(
            url, method=method, headers=headers, data=data, timeout=30, follow_redirects=False
        )
        if resp.status is None:
            raise RegistryError(f"{what}: registry {self.host} unreachable ({resp.error})")
        if 300 <= resp.status < 400:
            location = resp.header("Location", "?")
            raise RegistryError(
                f"{what}: registry {self.host} answered HTTP {resp.status} redirecting to {location}; "
                "refused: a registry serves manifests itself, and following a redirect could fetch "
                "them from another host or over plain http. Check the registry address",
                status=resp.status,
            )
        if resp.status >= 400:
            body = resp.body[:300].decode(errors="replace")
            raise RegistryError(f"{what}: HTTP {resp.status} {body.strip()}", status=resp.status)
        return resp.status, dict(resp.headers), resp.body

    def manifest_digest(self, app: str, ref: str) -> str | None:
        """The digest a tag points at in the registry, or None if the tag does not exist."""
        try:
            _, headers, _ = self._open(
                self._url(app, ref),
                f"HEAD {self._path(app)}:{ref}",
                method="HEAD",
                headers={"Accept": _MANIFEST_TYPES},
            )
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        return headers.get("Docker-Content-Digest")

    def retag(self, app: str, digest: str, tag: str) -> None:
        """Point ``tag`` at the manifest ``digest`` inside the registry, without any local image.

        Nothing is written unless the manifest read back is exactly the content ``digest`` names."""
        what = f"move {self._path(app)}:{tag} to {digest[:19]}"
        if not _DIGEST.match(digest):
            # Also keeps the digest from reshaping the URL ('../', '?').
            raise RegistryError(f"{what}: {digest!r} is not a sha256/sha512 content digest")
        status, headers, body = self._open(self._url(app, digest), what, headers={"Accept": _MANIFEST_TYPES})
        if not manifest_matches(digest, body):
            algorithm = digest.partition(":")[0]
            got = f"{algorithm}:{_hex_digest(algorithm, body)}"
            raise RegistryError(
                f"{what}: registry {self.host} answered {self._path(app)}@{digest} with a manifest whose "
                f"content is {got}; refused to write it under {tag!r} (the registry, or something "
                "between us and it, serves content other than what was pushed)",
                status=status,
            )
        content_type = headers.get("Content-Type", _MANIFEST_TYPE_LIST[0]).split(";", 1)[0].strip()
        if content_type not in _MANIFEST_TYPE_LIST:
            raise RegistryError(
                f"{what}: registry {self.host} answered with Content-Type {content_type!r}, not an image "
                "manifest; refused",
                status=status,
            )
        self._open(self._url(app, tag), what, method="PUT", headers={"Content-Type": content_type}, data=body)
