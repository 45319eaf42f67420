"""Registry-side tag moves over the Registry HTTP API v2.

Moving ``:latest`` in the registry (instead of tagging locally and pushing) is what a build host does
for a fleet: the deploy side only learns of it by pulling. That is exactly why a plain-tag
``docker compose up -d`` can be a silent no-op, and why pinned deploys use the digest instead.
Loopback registries are spoken to over HTTP (Docker trusts them without TLS), all others over HTTPS.
Registries that want credentials answer 401/403 here; callers then fall back to tag-and-push.
"""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.request
from dataclasses import dataclass

_MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


class RegistryError(Exception):
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


@dataclass(frozen=True)
class Registry:
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

    def _open(self, req: urllib.request.Request, what: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read(300).decode(errors="replace") if exc.fp else ""
            raise RegistryError(f"{what}: HTTP {exc.code} {body.strip()}", status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"{what}: registry {self.host} unreachable ({exc})") from None

    def manifest_digest(self, app: str, ref: str) -> str | None:
        """The digest a tag points at in the registry, or None if the tag does not exist."""
        req = urllib.request.Request(self._url(app, ref), method="HEAD", headers={"Accept": _MANIFEST_TYPES})
        try:
            _, headers, _ = self._open(req, f"HEAD {self._path(app)}:{ref}")
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        return headers.get("Docker-Content-Digest")

    def retag(self, app: str, digest: str, tag: str) -> None:
        """Point ``tag`` at the manifest ``digest`` inside the registry, without any local image."""
        what = f"move {self._path(app)}:{tag} to {digest[:19]}"
        _, headers, body = self._open(
            urllib.request.Request(self._url(app, digest), headers={"Accept": _MANIFEST_TYPES}), what
        )
        content_type = headers.get("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
        put = urllib.request.Request(
            self._url(app, tag), data=body, method="PUT", headers={"Content-Type": content_type}
        )
        self._open(put, what)
