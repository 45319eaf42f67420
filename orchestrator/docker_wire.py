"""The Docker adapter's calls that must not wait for the docker SDK: part of the Docker adapter.

docker_engine.py is the adapter; this is the piece of it written with the standard library alone.
Importing the SDK (with requests and urllib3) costs a process about 55 ms (issue 12). Two things here
spare a deploy that cost:

- The staging build, sent ahead (build_context.py sends it, without even this module: its answer is
  parsed here, ``build_messages``). Everything a deploy does before its build (imports, the database,
  recording the run and its transition) adds about 100 ms, all of it in series before the engine starts
  the longest step. Sent ahead on the engine's unix socket, the build runs while that work is done. The
  request is exactly the one DockerEngine.build sends through the SDK: the same context and query
  (build_context.py prepares both), less the tag; DockerEngine.finish_build reads its answer as the
  build step's own, which takes it only if the SDK, once loaded, selects the same files
  (steps/ahead.py).
- EngineApi: the calls a local deploy makes after its build (inspect, tag, create, start, stop,
  remove, list), so a process that promotes to prod never loads the SDK at all.

Only a local engine (a unix socket) is spoken to here; a remote one goes through the SDK as always.
"""

from __future__ import annotations

import contextlib
import io
import json
import select
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from orchestrator.http1 import Answer, Connection, ProtocolError, unix_connection


def _engine_message(body: bytes) -> str:
    """What the engine said in an error answer: its JSON ``message``, else the body as text."""
    text = body.decode(errors="replace")
    with contextlib.suppress(ValueError, AttributeError):
        text = json.loads(text).get("message", text)
    return text.strip()


class BuildRefused(RuntimeError):
    """The engine refused the build request itself (a status other than 200), in its words."""


def build_messages(response: Answer) -> Iterator[dict[str, Any]]:
    """The engine's JSON messages answering a POST /build, in order, as they arrive (each chunk decoded
    as soon as it is whole). A refusal is BuildRefused; a broken connection raises what the socket
    raised."""
    if response.status != 200:
        raise BuildRefused(f"the engine answered {response.status}: {_engine_message(response.read())}")
    decoder, buffer = json.JSONDecoder(), ""
    while chunk := response.read1(65536):
        buffer += chunk.decode("utf-8", errors="replace")
        while buffer := buffer.lstrip():
            try:
                message, end = decoder.raw_decode(buffer)
            except ValueError:
                break  # the rest of this message is still on its way
            buffer = buffer[end:]
            if isinstance(message, dict):
                yield message


def answer_messages(raw: io.RawIOBase) -> Iterator[dict[str, Any]]:
    """``build_messages`` of an answer to POST /build read from ``raw``: the socket it was sent on
    (build_context.PendingBuild), or a parked build's copy of it (parking.py). An answer that ends before
    it is whole is ConnectionError."""
    try:
        yield from build_messages(Answer.read_from(raw, "POST"))
    except ProtocolError as exc:
        raise ConnectionError(f"{type(exc).__name__}: {exc}") from None


# the engine's API for a local deploy ----------------------------------------------------------------


class EngineNotFound(Exception):
    """The engine has no such object (HTTP 404): lookups turn it into None."""


class EngineRefused(Exception):
    """The engine answered a request with an error (its own message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _quote(ref: str) -> str:
    return urllib.parse.quote(ref, safe="/:")  # what the SDK does to names in paths


def _flag(value: bool) -> str:
    return "1" if value else "0"


class EngineApi:
    """The calls a local deploy makes between its build and its end (inspect, tag, create, start, stop,
    remove, list), over the engine's unix socket with the standard library: a process that promotes to
    prod on this machine never imports the docker SDK (about 55 ms of every such process, issue 12).

    Its methods are named and called like the SDK's ``APIClient`` ones, so DockerEngine makes each call
    once for either; everything else (builds through the SDK, push, pull, logs, networks, swarm, remote
    engines) is the SDK's, loaded when first needed. Connections are kept and reused like the SDK's pool:
    one per concurrent call, each used by one call at a time."""

    def __init__(self, socket_path: str, timeout: float, version: str | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        # The engine's OS, when its ping said it (supports_buildkit needs no /version then).
        self.os_type: str | None = None
        self.api_version = version or self._negotiate()

    def _negotiate(self) -> str:
        """The engine's API version, from the headers of ``GET /_ping`` as the docker CLI negotiates it:
        the engine answers a ping in 0.6 ms, ``/version`` (which reads its kernel, OS and components) in
        7-8 ms (measured on 20.10), and every process connects once. An engine whose ping says nothing
        of it (API < 1.25) is asked ``/version``."""
        response, _ = self._exchange("GET", "/_ping", versioned=False)
        api, self.os_type = response.getheader("Api-Version"), response.getheader("OSType")
        if api:
            return api
        info = self._request("GET", "/version", versioned=False)
        self.os_type = info.get("Os")
        return str(info["ApiVersion"])

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _send(
        self,
        conn: Connection,
        timeout: float | None,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> None:
        conn.timeout = self.timeout if timeout is None else timeout
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        conn.request(method, url, body=body, headers=dict(headers))

    def _connection(self) -> Connection:
        """A kept connection the engine has not closed meanwhile (an engine restart closes them all;
        a closed one reads as ready: its end of stream), else a new one."""
        while True:
            with self._lock:
                if not self._idle:
                    return unix_connection(self.socket_path, self.timeout)
                conn = self._idle.pop()
            if conn.sock is not None and not select.select([conn.sock], [], [], 0)[0]:
                return conn
            conn.close()

    def _request(
        self, method: str, path: str, params: Mapping[str, str] | None = None, **options: Any
    ) -> Any:
        """``_exchange``'s answer decoded: JSON as Python values, anything else as bytes."""
        response, data = self._exchange(method, path, params, **options)
        if data and response.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(data)
        return data

    def _exchange(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        body: bytes | None = None,
        json_body: Any = None,
        versioned: bool = True,
        timeout: float | None = None,
    ) -> tuple[Answer, bytes]:
        """One request and its whole answer; an error status is raised as the engine's words."""
        url = (f"/v{self.api_version}" if versioned else "") + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {}
        if json_body is not None:
            body = json.dumps({k: v for k, v in json_body.items() if v is not None}).encode()
            headers["Content-Type"] = "application/json"
        elif body is not None:
            headers["Content-Type"] = "application/x-tar"
        conn = self._connection()
        reused = conn.sock is not None
        try:
            try:
                self._send(conn, timeout, method, url, body, headers)
            except (BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # A kept connection the engine closed after it was checked, before it read this
                # request: nothing was done, so the request goes once more on a new connection.
                conn.close()
                conn = unix_connection(self.socket_path, self.timeout)
                self._send(conn, timeout, method, url, body, headers)
            response = conn.getresponse()
            data = response.read()
        except (ProtocolError, OSError) as exc:
            conn.close()
            if isinstance(exc, TimeoutError | ConnectionError):
                raise
            raise ConnectionError(f"{method} {path}: {exc}") from None
        if response.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        if response.status >= 400:
            message = _engine_message(data)
            if response.status == 404:
                raise EngineNotFound(message)
            raise EngineRefused(response.status, message)
        return response, data

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/version")
        return result

    def inspect_image(self, image: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/images/{_quote(image)}/json")
        return result

    def tag(self, image: str, repository: str, tag: str | None = None, force: bool = False) -> bool:
        params = {"repo": repository, "force": _flag(force), **({"tag": tag} if tag else {})}
        self._request("POST", f"/images/{_quote(image)}/tag", params)
        return True

    def images(self, all: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", "/images/json", {"all": _flag(all)})
        return result

    def inspect_container(self, container: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/containers/{_quote(container)}/json")
        return result

    def containers(
        self,
        all: bool = False,
        filters: Mapping[str, Sequence[str]] | None = None,
    ) -> list[dict[str, Any]]:
        params = {"all": _flag(all), **({"filters": json.dumps(dict(filters))} if filters else {})}
        result: list[dict[str, Any]] = self._request("GET", "/containers/json", params)
        return result

    def create_container_from_config(
        self, config: Mapping[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        params = {"name": name} if name else None
        result: dict[str, Any] = self._request("POST", "/containers/create", params, json_body=config)
        return result

    def start(self, container: str) -> None:
        self._request("POST", f"/containers/{_quote(container)}/start")

    def stop(self, container: str, timeout: int | None = None) -> None:
        params = {} if timeout is None else {"t": str(timeout)}
        wait = self.timeout + (10 if timeout is None else timeout)  # the engine answers after the stop
        self._request("POST", f"/containers/{_quote(container)}/stop", params, timeout=wait)

    def kill(self, container: str, signal: str | None = None) -> None:
        params = {"signal": signal} if signal else None
        self._request("POST", f"/containers/{_quote(container)}/kill", params)

    def rename(self, container: str, name: str) -> None:
        self._request("POST", f"/containers/{_quote(container)}/rename", {"name": name})

    def remove_container(self, container: str, v: bool = False, force: bool = False) -> None:
        params = {"v": _flag(v), "force": _flag(force)}
        self._request("DELETE", f"/containers/{_quote(container)}", params)

    def remove_image(self, image: str, force: bool = False, noprune: bool = False) -> None:
        params = {"force": _flag(force), "noprune": _flag(noprune)}
        self._request("DELETE", f"/images/{_quote(image)}", params)

    def put_archive(self, container: str, path: str, data: bytes) -> bool:
        self._request("PUT", f"/containers/{_quote(container)}/archive", {"path": path}, body=data)
        return True
