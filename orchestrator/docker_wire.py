"""The build request a deploy sends before the docker SDK is loaded: part of the Docker adapter.

docker_engine.py is the adapter; this is its one piece that must not import the SDK. Importing the SDK
(with requests and urllib3) costs a deploy process about 60 ms, and everything a deploy does before its
build (imports, the database, recording the run and its transition) adds about 100 ms more, all of it
in series before the engine starts the longest step. Sent ahead on the engine's unix socket with the
standard library alone, the build runs while that work is done (issue 12). The request is exactly the
one DockerEngine.build sends through the SDK: the same context (the files ``.dockerignore`` leaves in,
as docker's rules select them), the same query, less the tag; DockerEngine.finish_build reads its answer
as the build step's own, which takes it only if the SDK, once loaded, selects the same files
(steps/build.py BuildAhead).

Only a local engine (a unix socket) is sent ahead to; a remote one goes through the SDK as always.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import posixpath
import queue
import re
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


def client_config_is_plain(environ: Mapping[str, str]) -> bool:
    """Whether the docker client config adds nothing to a build request: the SDK sends registry
    credentials (``auths``, credential helpers) as a header and ``proxies`` as build args, which a build
    sent ahead would lack. With any of them, or a config that cannot be read, the build waits for the
    SDK. The SDK reads the first of these that exists."""
    home = os.path.expanduser("~")
    folder = environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    for path in (os.path.join(folder, "config.json"), os.path.join(home, ".dockercfg")):
        try:
            with open(path) as f:
                config = json.load(f)
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return False
        if path.endswith(".dockercfg"):  # the legacy file holds nothing but credentials
            return not config
        return isinstance(config, dict) and not any(
            config.get(k) for k in ("auths", "credsStore", "credHelpers", "proxies")
        )
    return True


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
                text = response.read().decode(errors="replace")
                with contextlib.suppress(ValueError, AttributeError):
                    text = json.loads(text).get("message", text)
                self._messages.put(RuntimeError(f"the engine answered {response.status}: {text.strip()}"))
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
