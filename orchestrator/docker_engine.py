"""The only module that imports ``docker``: every engine call the orchestrator makes goes through here.

Deploy logic asks for intent ("build this context", "run this image as staging") and gets plain values
back, so it reads without SDK noise. Errors are translated once: an engine that does not answer is
InfraUnavailable (exit 4, nothing decided); an engine that answers "no" is a DockerError the caller
turns into a failed gate with evidence.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import docker
import docker.errors
import requests.exceptions

from orchestrator.errors import InfraUnavailable

_UNREACHABLE = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)


class DockerError(Exception):
    """The engine answered and refused: a build failed, a name is taken, an image is gone."""

    def __init__(self, message: str, *, log: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.log = log


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    repo_digests: tuple[str, ...] = ()
    size: int = 0

    def label(self, key: str) -> str | None:
        return self.labels.get(key)


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    image_id: str
    status: str
    labels: Mapping[str, str] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """An engine that does not answer is InfraUnavailable (exit 4); one that answers "no" is DockerError."""
    try:
        yield
    except _UNREACHABLE as exc:
        raise InfraUnavailable(f"Docker engine stopped answering during {what}: {exc}") from None
    except docker.errors.NotFound:
        raise  # callers that look things up turn "not found" into None
    except docker.errors.APIError as exc:
        raise DockerError(f"{what}: {exc.explanation or exc}") from None


def _image(obj: Any) -> ImageInfo:
    attrs = obj.attrs
    return ImageInfo(
        id=attrs["Id"],
        tags=tuple(attrs.get("RepoTags") or ()),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        repo_digests=tuple(attrs.get("RepoDigests") or ()),
        size=int(attrs.get("Size") or 0),
    )


def _container(obj: Any) -> ContainerInfo:
    attrs = obj.attrs
    state = attrs.get("State") or {}
    return ContainerInfo(
        id=attrs["Id"],
        name=attrs.get("Name", "").lstrip("/"),
        image_id=attrs["Image"],
        status=state.get("Status", "unknown"),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        exit_code=state.get("ExitCode"),
    )


class DockerEngine:
    def __init__(self, client: docker.DockerClient) -> None:
        self._client = client

    @classmethod
    def connect(cls, base_url: str | None = None, timeout: int = 120) -> DockerEngine:
        """Connect (DOCKER_HOST or the default socket) and prove the engine answers."""
        where = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        try:
            client = (
                docker.DockerClient(base_url=base_url, timeout=timeout, version="auto")
                if base_url
                else docker.from_env(timeout=timeout, version="auto")
            )
            client.ping()
        except (docker.errors.DockerException, *_UNREACHABLE) as exc:
            raise InfraUnavailable(
                f"Docker engine is unreachable at {where}: {exc}. "
                f"Start it (dockerd, or 'bash scripts/bootstrap.sh' as root) and try again"
            ) from None
        return cls(client)

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with _translated(what):
            return fn(*args, **kwargs)

    # images ---------------------------------------------------------------------------------------

    def build(
        self,
        context: IO[bytes],
        *,
        tag: str,
        dockerfile: str = "Dockerfile",
        buildargs: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ImageInfo:
        """Build from a tar stream (never a directory on disk: the caller decides exactly what goes in).
        A failed build raises DockerError carrying the build log as evidence."""
        log: list[str] = []
        image_id: str | None = None
        try:
            stream: Iterable[dict[str, Any]] = self._client.api.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                dockerfile=dockerfile,
                buildargs=dict(buildargs or {}),
                labels=dict(labels or {}),
                rm=True,
                forcerm=True,
                decode=True,
                pull=False,
            )
            for chunk in stream:
                if "stream" in chunk:
                    log.append(chunk["stream"])
                if "error" in chunk:
                    raise DockerError(f"build of {tag} failed: {chunk['error'].strip()}", log="".join(log))
                aux = chunk.get("aux") or {}
                if "ID" in aux:
                    image_id = aux["ID"]
        except _UNREACHABLE as exc:
            raise InfraUnavailable(f"Docker engine stopped answering during build of {tag}: {exc}") from None
        except docker.errors.APIError as exc:
            raise DockerError(f"build of {tag} failed: {exc.explanation or exc}", log="".join(log)) from None
        found = self.image(image_id or tag)
        if found is None:
            raise DockerError(f"build of {tag} reported success but produced no image", log="".join(log))
        return found

    def image(self, ref: str) -> ImageInfo | None:
        try:
            return _image(self._call(f"inspect image {ref}", self._client.images.get, ref))
        except docker.errors.NotFound:
            return None

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        ok = self._call(
            f"tag {image_id} as {repository}:{tag}",
            self._client.api.tag,
            image_id,
            repository,
            tag,
            force=True,
        )
        if not ok:
            raise DockerError(f"engine refused to tag {image_id} as {repository}:{tag}")

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        with contextlib.suppress(docker.errors.ImageNotFound):
            self._call(f"remove image {ref}", self._client.images.remove, ref, force=force, noprune=False)

    def push(self, repository: str, tag: str) -> str:
        """Push ``repository:tag``; returns the registry's manifest digest ('sha256:...')."""
        digest: str | None = None
        with _translated(f"push of {repository}:{tag}"):
            for chunk in self._client.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in chunk:
                    raise DockerError(f"push of {repository}:{tag} failed: {chunk['error'].strip()}")
                aux = chunk.get("aux") or {}
                digest = aux.get("Digest", digest)
        if not digest:
            raise DockerError(f"push of {repository}:{tag} reported no digest")
        return digest

    def pull(self, reference: str) -> ImageInfo:
        """Pull ``repo@sha256:...`` (or repo:tag) and return the local image."""
        repository, sep, digest = reference.partition("@")
        try:
            with _translated(f"pull of {reference}"):
                self._client.api.pull(repository, tag=digest if sep else None, stream=False)
        except docker.errors.NotFound as exc:  # for a pull, "not found" is a refusal, not a lookup miss
            raise DockerError(f"pull of {reference} failed: {exc.explanation or exc}") from None
        found = self.image(reference)
        if found is None:
            raise DockerError(f"pull of {reference} reported success but no image is there")
        return found

    # containers -----------------------------------------------------------------------------------

    def container(self, name: str) -> ContainerInfo | None:
        try:
            return _container(self._call(f"inspect container {name}", self._client.containers.get, name))
        except docker.errors.NotFound:
            return None

    def run(
        self,
        name: str,
        image: str,
        *,
        environment: Mapping[str, str] | None = None,
        command: list[str] | None = None,
        host_network: bool = True,
        publish: Mapping[int, tuple[str, int]] | None = None,
        labels: Mapping[str, str] | None = None,
        restart: bool = False,
    ) -> ContainerInfo:
        """Start a detached container. With ``host_network`` the app binds PORT itself; otherwise
        ``publish`` maps container ports to (host ip, host port), which callers keep on 127.0.0.1."""
        kwargs: dict[str, Any] = {
            "name": name,
            "detach": True,
            "environment": dict(environment or {}),
            "labels": dict(labels or {}),
        }
        if command is not None:
            kwargs["command"] = command
        if host_network:
            kwargs["network_mode"] = "host"
        elif publish:
            kwargs["ports"] = {f"{cport}/tcp": host for cport, host in publish.items()}
        if restart:
            kwargs["restart_policy"] = {"Name": "unless-stopped"}
        created = self._call(f"run container {name}", self._client.containers.run, image, **kwargs)
        created.reload()
        return _container(created)

    def remove_container(self, name: str) -> bool:
        """Force-remove; True when something was removed."""
        try:
            obj = self._client.containers.get(name)
            self._call(f"remove container {name}", obj.remove, force=True, v=True)
            return True
        except docker.errors.NotFound:
            return False
        except _UNREACHABLE as exc:
            raise InfraUnavailable(f"Docker engine stopped answering while removing {name}: {exc}") from None

    def logs(self, name: str, *, tail: int = 50) -> str:
        try:
            obj = self._client.containers.get(name)
            raw = self._call(f"logs of {name}", obj.logs, tail=tail)
        except docker.errors.NotFound:
            return ""
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    def wait(self, name: str, *, timeout: float = 60) -> int:
        obj = self._call(f"inspect container {name}", self._client.containers.get, name)
        result = self._call(f"wait for {name}", obj.wait, timeout=timeout)
        return int(result.get("StatusCode", -1))
