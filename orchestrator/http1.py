"""HTTP/1.1 as the orchestrator speaks it on its own: to a local engine's unix socket (docker_wire.py)
and to the apps it runs (httpclient.probe). A request written by hand; an answer read as a status line,
headers, and a body framed by ``Content-Length``, by chunks, or by the end of the connection.

Why not ``http.client``: importing it imports ``http`` (the ``HTTPStatus`` enum), ``email`` (its header
parser) and ``ssl``: 20-28 ms measured in a process that had imported everything else an `advance --to
deploy` imports, all of it before that command's first request to the engine, on the critical path of
the three-call CI path (issue 12). What is spoken here needs none of it: plain ``http://`` or a unix
socket, answers of a few headers. Anything that needs more of HTTP (https, the environment's proxies)
goes through ``urllib.request`` (httpclient.request), loaded only where it is used.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Mapping
from typing import BinaryIO

# As http.client: a longer line, or more header lines, is not an answer worth reading.
MAX_LINE = 65536
MAX_HEADERS = 100
_BODILESS_STATUSES = frozenset({204, 304})
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_SEND_BODY_APART = 64 * 1024  # a body this big goes in a send of its own instead of being copied


class ProtocolError(Exception):
    """What came back is not an HTTP/1.1 answer, or it ended before it was whole; or a request could
    not be written (a target or header that would break the request line)."""


class Answer:
    """An answer being read: status and headers known, the body read on demand (``read``, ``read1``).

    Header names are kept as sent (``headers``, for callers that show them) and looked up in any case
    (``getheader``)."""

    def __init__(self, fp: BinaryIO, method: str) -> None:
        self._fp = fp
        while True:  # an interim answer (100 Continue) precedes the one that counts
            version, self.status, self.reason = _status_line(fp)
            self.headers = _headers(fp)
            if not 100 <= self.status < 200:
                break
        self._by_name = {name.lower(): value for name, value in self.headers.items()}
        connection = self._by_name.get("connection", "").lower()
        self.will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
        self._chunked = "chunked" in self._by_name.get("transfer-encoding", "").lower()
        self._chunk_left = 0
        self._done = False
        self._left: int | None = None
        if method == "HEAD" or self.status in _BODILESS_STATUSES:
            self._left = 0
        elif not self._chunked:
            length = self._by_name.get("content-length")
            if length is not None:
                try:
                    self._left = int(length)
                except ValueError:
                    raise ProtocolError(f"Content-Length is not a number: {length!r}") from None
                if self._left < 0:
                    raise ProtocolError(f"Content-Length is negative: {length!r}")
            else:
                self.will_close = True  # the body ends where the connection does
        if self._left == 0:
            self._done = True

    @classmethod
    def read_from(cls, raw: io.RawIOBase, method: str) -> Answer:
        """The answer a raw stream carries (a socket's, or a parked build's copy of one)."""
        return cls(io.BufferedReader(raw), method)  # type: ignore[arg-type]

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self._by_name.get(name.lower(), default)

    def read(self, amount: int | None = None) -> bytes:
        """The body, or at most ``amount`` bytes of it; b"" once it is all read."""
        parts: list[bytes] = []
        wanted = -1 if amount is None else amount
        while wanted != 0 and (part := self.read1(wanted if wanted > 0 else 1 << 20)):
            parts.append(part)
            if wanted > 0:
                wanted -= len(part)
        return b"".join(parts)

    def read1(self, size: int) -> bytes:
        """Up to ``size`` bytes of the body, waiting only until some arrive: a streamed answer (a build's
        messages) is handed on as it comes. b"" once the body is all read."""
        if self._done or size <= 0:
            return b""
        if self._chunked:
            if self._chunk_left == 0:
                self._chunk_left = self._chunk_size()
                if self._chunk_left == 0:
                    self._trailer()
                    self._done = True
                    return b""
            data = self._fp.read1(min(size, self._chunk_left))  # type: ignore[attr-defined]
            if not data:
                raise ProtocolError("the answer ended inside a chunk")
            self._chunk_left -= len(data)
            if self._chunk_left == 0 and self._fp.readline(MAX_LINE + 1) not in (b"\r\n", b"\n"):
                raise ProtocolError("a chunk did not end with a line break")
            return bytes(data)
        if self._left is None:  # to the end of the connection
            data = self._fp.read1(size)  # type: ignore[attr-defined]
            if not data:
                self._done = True
            return bytes(data)
        data = self._fp.read1(min(size, self._left))  # type: ignore[attr-defined]
        if not data:
            raise ProtocolError(f"the answer ended {self._left} bytes before its Content-Length")
        self._left -= len(data)
        self._done = self._left == 0
        return bytes(data)

    def _chunk_size(self) -> int:
        line = _line(self._fp, "a chunk size")
        try:
            return int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"not a chunk size: {line[:40]!r}") from None

    def _trailer(self) -> None:
        for _ in range(MAX_HEADERS + 1):
            if _line(self._fp, "the trailer") in (b"\r\n", b"\n"):
                return
        raise ProtocolError(f"more than {MAX_HEADERS} trailer lines")


def _line(fp: BinaryIO, what: str) -> bytes:
    line = fp.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError(f"{what} is longer than {MAX_LINE} bytes")
    if not line:
        raise ProtocolError(f"the answer ended before {what}")
    return line


def _status_line(fp: BinaryIO) -> tuple[str, int, str]:
    line = _line(fp, "its status line").decode("iso-8859-1").rstrip("\r\n")
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return version, int(code), reason


def _headers(fp: BinaryIO) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = _line(fp, "the end of its headers")
        if line in (b"\r\n", b"\n"):
            return headers
        name, colon, value = line.decode("iso-8859-1").partition(":")
        if not colon or not name.strip():
            raise ProtocolError(f"not a header line: {line[:80]!r}")
        name, value = name.strip(), value.strip()
        # A repeated header is one list, as http.client's getheader joins it.
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    raise ProtocolError(f"more than {MAX_HEADERS} header lines")


def _checked(text: str, what: str) -> str:
    if any(c in text for c in "\r\n\0"):
        raise ProtocolError(f"{what} holds a line break or NUL: {text[:80]!r}")
    return text


def request_head(
    method: str, target: str, host: str, headers: Mapping[str, str], length: int | None
) -> bytes:
    """The request line and headers, ready to send; ``length`` None: no body (and, for a method that
    usually has one, an explicit ``Content-Length: 0`` as http.client sends)."""
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise ProtocolError(f"not a request target: {target[:80]!r}")
    lines = [f"{_checked(method, 'the method')} {target} HTTP/1.1", f"Host: {_checked(host, 'the host')}"]
    names = {name.lower() for name in headers}
    for name, value in headers.items():
        lines.append(f"{_checked(name, 'a header name')}: {_checked(str(value), 'a header value')}")
    if "accept-encoding" not in names:
        lines.append("Accept-Encoding: identity")  # the body as it is: nothing here decompresses
    if length is not None or method in _METHODS_WITH_BODY:
        lines.append(f"Content-Length: {length or 0}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")


class Connection:
    """One connection, opened on the first request by ``opener(timeout)``, kept for the next one while
    the answers allow it (like http.client.HTTPConnection, with none of its states: one request, then
    its answer read whole, then the next)."""

    def __init__(self, opener: Callable[[float], socket.socket], host: str, timeout: float) -> None:
        self._opener = opener
        self.host = host
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._fp: BinaryIO | None = None
        self._method = "GET"

    def request(
        self, method: str, target: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        head = request_head(method, target, self.host, headers or {}, None if body is None else len(body))
        if self.sock is None:
            self.sock = self._opener(self.timeout)
            self._fp = self.sock.makefile("rb")  # type: ignore[assignment]
        self._method = method
        if body is not None and len(body) < _SEND_BODY_APART:
            self.sock.sendall(head + body)
            return
        self.sock.sendall(head)
        if body:
            self.sock.sendall(body)

    def getresponse(self) -> Answer:
        if self._fp is None:
            raise ProtocolError("no request was sent on this connection")
        return Answer(self._fp, self._method)

    def close(self) -> None:
        fp, sock, self._fp, self.sock = self._fp, self.sock, None, None
        if fp is not None:
            fp.close()
        if sock is not None:
            sock.close()


def unix_connection(path: str, timeout: float) -> Connection:
    """A connection to a unix socket (the engine's): ``Host: localhost``, as the SDK and the CLI send."""

    def opener(timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock

    return Connection(opener, "localhost", timeout)


def tcp_connection(host: str, port: int, timeout: float) -> Connection:
    """A connection to ``host:port``, with the ``Host`` header http.client would send."""
    shown = f"[{host}]" if ":" in host else host
    named = shown if port == 80 else f"{shown}:{port}"
    return Connection(lambda t: connect_tcp(host, port, t), named, timeout)


def connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ``host:port``. An address literal (the usual 127.0.0.1) is connected to
    directly; a name is resolved, passed as bytes when it is ASCII: a str makes the resolver call load
    the IDNA codec (``encodings.idna``, ``stringprep``, ``unicodedata``: about 2 ms) for nothing."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        return socket.create_connection((host.encode() if host.isascii() else host, port), timeout)  # type: ignore[arg-type]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
