"""What a build sends, and to which engine, decided without the docker SDK, and the one request that
sends it ahead: part of the Docker adapter (docker_wire.py speaks to the engine
otherwise, and parses what it answers to this request).

- Which engine: the local unix socket DOCKER_HOST names (or the default), and whether the docker client
  config adds anything to a request (credentials, proxies) that a request sent without the SDK would
  lack.
- What a build sends: the context's files as ``.dockerignore`` leaves them in, by docker's rules as the
  SDK applies them (``context_files``; ``sdk_context_files`` asks the SDK itself, to compare), their tar
  as the SDK makes it, and the query of the SDK's build call less the tag.
- ``post_build``: the request sent on a connection of its own, which the engine closes after the build,
  so that whoever holds the socket can read the answer to its end. A parked build's answer is read by
  ``cat`` and parsed later, in another process (parking.ParkedEngineBuild); a build sent ahead in this
  process is read as it comes (``PendingBuild``), parsed by docker_wire.py once the request is out.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import queue
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from orchestrator.http1 import request_head

DEFAULT_SOCKET = "/var/run/docker.sock"


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
    """One ``.dockerignore`` line, parsed once: whether it is a ``!`` exception, its cleaned path elements and
    the regex the SDK would match paths with (ignoring case), for ``_Ignore`` to apply in order."""

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


def selects(context: Path) -> bool:
    """Whether the context has a ``.dockerignore`` to select its files by. Without one, ``context_files``
    and the SDK both send every path under the context (tests/unit/test_docker_wire.py), so a build
    sent ahead need not import the SDK (~60 ms of CPU while the engine builds) to compare."""
    return os.path.lexists(context / ".dockerignore")


def sdk_context_files(context: Path, dockerfile: str) -> list[str]:
    """The paths of ``context`` the docker SDK sends to build it, sorted (its own ``.dockerignore``
    rules, imported here on purpose): a build sent ahead with ``context_files`` is taken only if the two
    agree, since without it the build step builds through the SDK."""
    from docker.utils.build import exclude_paths

    return sorted(exclude_paths(str(context), read_dockerignore(context), dockerfile=dockerfile))


def context_tar(context: Path, files: Sequence[str]) -> IO[bytes]:
    """The build context as the SDK makes it: each path's own tar header, in the given order."""
    # Here, not at the top: tarfile brings shutil, bz2 and lzma, which a process that builds nothing
    # (a promotion to prod, whose engine connection reads local_socket) does not need.
    import tarfile
    import tempfile

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


def post_build(
    socket_path: str, query: Mapping[str, str], body: IO[bytes], timeout_s: float
) -> socket.socket:
    """POST /build with ``body`` (closed here) on a new connection to the engine's socket, its answer
    unread, and ``Connection: close``: the engine ends the connection with the build, so whoever reads
    the answer reads to the end of the stream. Returns the connected socket (blocking)."""
    try:
        body.seek(0, os.SEEK_END)
        size = body.tell()
        body.seek(0)
        head = request_head(
            "POST",
            f"/build?{urllib.parse.urlencode(query)}",
            "docker",
            {"Content-Type": "application/tar", "Connection": "close"},
            size,
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect(socket_path)
            sock.sendall(head)
            while block := body.read(1 << 20):
                sock.sendall(block)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return sock
    finally:
        body.close()


_EOF = object()


class PendingBuild:
    """A POST /build on its way (``post_build``): a thread reads the engine's JSON messages as they come
    (an unread answer would fill the socket's buffer and stall the build), and ``messages`` hands them
    on. DockerEngine.finish_build reads them as the build step's own."""

    def __init__(self, socket_path: str, query: Mapping[str, str], body: IO[bytes], timeout_s: float) -> None:
        self.socket_path = socket_path
        self.started = time.monotonic()
        self._messages: queue.Queue[Any] = queue.Queue()
        self._sock = post_build(socket_path, query, body, timeout_s)
        self._reader = threading.Thread(target=self._read, name="build-ahead", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            # Here, not at the top: the request is out by now (parsing is not on its critical path).
            from orchestrator.docker_wire import answer_messages

            for message in answer_messages(self._sock.makefile("rb", buffering=0)):
                self._messages.put(message)
            self._messages.put(_EOF)
        except Exception as exc:  # handed to the reader of the messages
            self._messages.put(exc)

    def messages(self, wait_s: Any) -> Iterator[dict[str, Any]]:
        """The engine's messages in order. ``wait_s()`` says how long the next one may take (None: no
        limit); past that, TimeoutError. A broken connection is ConnectionError; the engine's refusal
        of the request itself, docker_wire.BuildRefused (a RuntimeError)."""
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
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._reader.join(timeout=5)
