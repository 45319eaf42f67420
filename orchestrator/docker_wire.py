"""The Docker adapter's calls that must not wait for the docker SDK: part of the Docker adapter.

docker_engine.py is the adapter; this is the piece of it written with the standard library alone.
Importing the SDK (with requests and urllib3) costs a process about 55 ms (issue 12). Two things here
spare a deploy that cost:

- The staging build, sent ahead. Everything a deploy does before its build (imports, the database,
  recording the run and its transition) adds about 100 ms, all of it in series before the engine starts
  the longest step. Sent ahead on the engine's unix socket, the build runs while that work is done. The
  request is exactly the one DockerEngine.build sends through the SDK: the same context (the files
  ``.dockerignore`` leaves in, as docker's rules select them), the same query, less the tag;
  DockerEngine.finish_build reads its answer as the build step's own, which takes it only if the SDK,
  once loaded, selects the same files (steps/build.py BuildAhead).
- EngineApi: the calls a local deploy makes after its build (inspect, tag, create, start, stop,
  remove, list), so a process that promotes to prod never loads the SDK at all.

Only a local engine (a unix socket) is spoken to here; a remote one goes through the SDK as always.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import posixpath
import queue
import re
import select
import socket
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

DEFAULT_SOCKET = "/var/run/docker.sock"
_EOF = object()


def local_socket(environ: Mapping[str, str]) -> str | None:
    """The unix socket of the engine the SDK would connect to (DOCKER_HOST, else the default), or None
    when that engine is not a local socket (tcp://, ssh://)."""
    host = environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"
    if not host.startswith("unix://"):
        return None
    path = host[len("unix://") :]
    return os.path.realpath(path) if os.path.exists(path) else None


def _client_config(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The docker client config the SDK would read (the first of these that exists; {} when none
    does), or None when it cannot be read."""
    home = os.path.expanduser("~")
    folder = environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    for path in (os.path.join(folder, "config.json"), os.path.join(home, ".dockercfg")):
        try:
            with open(path) as f:
                config = json.load(f)
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return None
        if path.endswith(".dockercfg"):  # the legacy file holds nothing but credentials
            return {"auths": config} if config else {}
        return config if isinstance(config, dict) else None
    return {}


def client_config_is_plain(environ: Mapping[str, str]) -> bool:
    """Whether the docker client config adds nothing to a build request: the SDK sends registry
    credentials (``auths``, credential helpers) as a header and ``proxies`` as build args, which a build
    sent ahead would lack. With any of them, or a config that cannot be read, the build waits for the
    SDK."""
    config = _client_config(environ)
    return config is not None and not any(
        config.get(k) for k in ("auths", "credsStore", "credHelpers", "proxies")
    )


def client_config_sets_no_proxies(environ: Mapping[str, str]) -> bool:
    """Whether the docker client config leaves containers' environment alone: with ``proxies`` the SDK
    adds HTTP_PROXY and the like to every container it creates, which EngineApi does not. Credentials
    do not matter there: nothing EngineApi sends uses them."""
    config = _client_config(environ)
    return config is not None and not config.get("proxies")


class _UnixConnection(http.client.HTTPConnection):
    # The body goes out in blocks this big (http.client's default is 8 KiB): each block is one trip
    # through the interpreter lock, which the rest of the process, importing meanwhile, holds for up
    # to 5 ms at a time; a 2 MB context took 35-50 ms in 8 KiB blocks.
    BLOCK = 1 << 20

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout, blocksize=self.BLOCK)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


# .dockerignore: docker's rules (moby's patternmatcher, as the SDK applies them to a build context) --------


def _clean(pattern: str) -> list[str]:
    """A pattern's path elements, as docker cleans them: spaces trimmed, leading and trailing slashes and
    ``.`` dropped, ``..`` taking the element before it away."""
    parts: list[str] = []
    for part in pattern.strip().split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return parts


def _regex(pattern: str) -> re.Pattern[str]:
    """A cleaned pattern as the SDK matches it (the non-ahead build path, so the two select alike): ``*``
    and ``?`` stay within one path element; ``**`` (and ``**/``) spans any number of directories, none
    included; ``[...]`` is a class (``[!...]`` negated); nothing is quoted by a backslash."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*" and pattern.startswith("*", i):
            i += 1
            if pattern.startswith("/", i):
                i += 1
            out.append(".*" if i >= n else "(?:.*/)?")
        elif c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1 if pattern.startswith("!", i) else i
            j = j + 1 if pattern.startswith("]", j) else j
            end = pattern.find("]", j)
            if end == -1:
                out.append(re.escape(c))
                continue
            body = pattern[i:end].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
            i = end + 1
        else:
            out.append(re.escape(c))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


@dataclass(frozen=True)
class _Pattern:
    exclusion: bool
    dirs: tuple[str, ...]
    regex: re.Pattern[str]

    @property
    def cleaned(self) -> str:
        return "/".join(self.dirs)

    @classmethod
    def parse(cls, text: str) -> _Pattern:
        exclusion = text.startswith("!")
        dirs = tuple(_clean(text[1:] if exclusion else text))
        return cls(exclusion, dirs, _regex("/".join(dirs).lower()))  # the SDK matches ignoring case


class _Ignore:
    """Which paths of a context .dockerignore leaves out. A path is out when the last pattern matching it
    (or one of its parent directories) is not a ``!`` exception; ``.dockerignore`` and the Dockerfile are
    always sent (the engine reads both)."""

    def __init__(self, lines: Sequence[str], dockerfile: str) -> None:
        patterns = [_Pattern.parse(p) for p in (*lines, f"!{dockerfile}", "!.dockerignore")]
        self.patterns = [p for p in patterns if p.dirs]

    def excluded(self, path: str) -> bool:
        out = False
        path = path.lower()
        parent = [p for p in posixpath.dirname(path).split("/") if p and p != "."]
        for pattern in self.patterns:
            hit = bool(pattern.regex.match(path))
            if not hit and parent and len(pattern.dirs) <= len(parent):
                hit = bool(pattern.regex.match("/".join(parent[: len(pattern.dirs)])))
            if hit:
                out = not pattern.exclusion
        return out

    def walk(self, root: Path, rel: str = "") -> Iterator[str]:
        for name in os.listdir(root / rel if rel else root):
            path = f"{rel}/{name}" if rel else name
            out = self.excluded(path)
            if not out:
                yield path
            full = root / path
            if not full.is_dir() or full.is_symlink():
                continue
            # An excluded directory is still entered when an exception may bring back something inside.
            if out and not any(p.exclusion and p.cleaned.startswith(path) for p in self.patterns):
                continue
            yield from self.walk(root, path)


def read_dockerignore(context: Path) -> list[str]:
    try:
        text = (context / ".dockerignore").read_text()
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def context_files(context: Path, dockerfile: str) -> list[str]:
    """The context's paths a build sends, sorted, relative to ``context`` (``dockerfile`` relative too)."""
    return sorted(_Ignore(read_dockerignore(context), dockerfile).walk(context))


def context_tar(context: Path, files: Sequence[str]) -> IO[bytes]:
    """The build context as the SDK makes it: each path's own tar header, in the given order."""
    out = tempfile.SpooledTemporaryFile(max_size=32 << 20)  # noqa: SIM115 - the request's body, closed by it
    with tarfile.open(mode="w", fileobj=out) as tar:
        for path in files:
            full = context / path
            info = tar.gettarinfo(str(full), arcname=path)
            if info is None:  # a socket: the SDK skips those too
                continue
            if info.mtime < 0 or info.mtime > 8**11 - 1:
                info.mtime = int(info.mtime)
            if info.isfile():
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info, None)
    out.seek(0)
    return out


# the request -----------------------------------------------------------------------------------------


def build_query(
    *,
    dockerfile: str,
    buildargs: Mapping[str, str],
    target: str | None,
    cache_from: Sequence[str],
    nocache: bool,
) -> dict[str, str]:
    """The query DockerEngine.build's SDK call sends, less the tag (the build step tags the image it
    adopts: a build sent ahead and then not needed leaves no name behind)."""
    query = {
        "dockerfile": dockerfile,
        "q": "false",
        "nocache": "true" if nocache else "false",
        "rm": "true",
        "forcerm": "true",
        "pull": "false",
        "buildargs": json.dumps(dict(buildargs)),
        "labels": json.dumps({}),
    }
    if target:
        query["target"] = target
    if cache_from:
        query["cachefrom"] = json.dumps(list(cache_from))
    return query


def _engine_message(body: bytes) -> str:
    """What the engine said in an error answer: its JSON ``message``, else the body as text."""
    text = body.decode(errors="replace")
    with contextlib.suppress(ValueError, AttributeError):
        text = json.loads(text).get("message", text)
    return text.strip()


class PendingBuild:
    """A POST /build on its way: a thread reads the engine's JSON messages as they come (an unread
    answer would fill the socket's buffer and stall the build), and ``messages`` hands them on."""

    def __init__(self, socket_path: str, query: Mapping[str, str], body: IO[bytes], timeout_s: float) -> None:
        self.socket_path = socket_path
        self.started = time.monotonic()
        self._messages: queue.Queue[Any] = queue.Queue()
        self._conn = _UnixConnection(socket_path, timeout_s)
        body.seek(0, os.SEEK_END)
        size = body.tell()
        body.seek(0)
        try:
            self._conn.request(
                "POST",
                "/build?" + urllib.parse.urlencode(query),
                body=body,
                headers={"Content-Type": "application/tar", "Content-Length": str(size)},
            )
        except http.client.HTTPException as exc:
            self._conn.close()
            raise OSError(f"could not send the build: {exc}") from None
        except OSError:
            self._conn.close()
            raise
        finally:
            body.close()
        self._reader = threading.Thread(target=self._read, name="build-ahead", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            response = self._conn.getresponse()
            if response.status != 200:
                text = _engine_message(response.read())
                self._messages.put(RuntimeError(f"the engine answered {response.status}: {text}"))
                return
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
                        self._messages.put(message)
            self._messages.put(_EOF)
        except Exception as exc:  # handed to the reader of the messages
            self._messages.put(exc)

    def messages(self, wait_s: Any) -> Iterator[dict[str, Any]]:
        """The engine's messages in order. ``wait_s()`` says how long the next one may take (None: no
        limit); past that, TimeoutError. A broken connection is ConnectionError."""
        while True:
            try:
                item = self._messages.get(timeout=wait_s())
            except queue.Empty:
                raise TimeoutError("the build sent nothing within the time left") from None
            if item is _EOF:
                return
            if isinstance(item, BaseException):
                if isinstance(item, RuntimeError):
                    raise item
                raise ConnectionError(f"the engine's answer to the build broke off: {item}") from None
            yield item

    def cancel(self) -> None:
        """Close the connection: the engine cancels a build whose client went away (it kills and removes
        the step's container; nothing is tagged, since the request named no tag). A build that had
        finished leaves its image unnamed, and it is not removed here: another process building the
        same commit gets the very same image id (same content, same cache), and may be about to tag it."""
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()
        self._reader.join(timeout=5)


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
        self._idle: list[_UnixConnection] = []
        self._lock = threading.Lock()
        self.api_version = version or str(self._request("GET", "/version", versioned=False)["ApiVersion"])

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _send(
        self,
        conn: _UnixConnection,
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

    def _connection(self) -> _UnixConnection:
        """A kept connection the engine has not closed meanwhile (an engine restart closes them all;
        a closed one reads as ready: its end of stream), else a new one."""
        while True:
            with self._lock:
                if not self._idle:
                    return _UnixConnection(self.socket_path, self.timeout)
                conn = self._idle.pop()
            if conn.sock is not None and not select.select([conn.sock], [], [], 0)[0]:
                return conn
            conn.close()

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        body: bytes | None = None,
        json_body: Any = None,
        versioned: bool = True,
        timeout: float | None = None,
    ) -> Any:
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
                conn = _UnixConnection(self.socket_path, self.timeout)
                self._send(conn, timeout, method, url, body, headers)
            response = conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, OSError) as exc:
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
        if data and response.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(data)
        return data

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

    def remove_container(self, container: str, v: bool = False, force: bool = False) -> None:
        params = {"v": _flag(v), "force": _flag(force)}
        self._request("DELETE", f"/containers/{_quote(container)}", params)

    def remove_image(self, image: str, force: bool = False, noprune: bool = False) -> None:
        params = {"force": _flag(force), "noprune": _flag(noprune)}
        self._request("DELETE", f"/images/{_quote(image)}", params)

    def put_archive(self, container: str, path: str, data: bytes) -> bool:
        self._request("PUT", f"/containers/{_quote(container)}/archive", {"path": path}, body=data)
        return True
