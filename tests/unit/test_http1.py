"""http1.py: the HTTP/1.1 client the engine's unix socket and the apps' probes are spoken to with.

Each answer is read both by http1.Answer and by the standard library's http.client from the same bytes,
and the two must agree (status, headers, body): http.client is what this replaced, and the engine and
the apps are HTTP/1.1 servers it has long been right about. The rest: what http.client refuses (an
answer cut short, a request line that would be split) is refused here too, a streamed answer is handed
on as it arrives, and a connection is reused while its answers allow it."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import http1


class _Sock:
    """What http.client.HTTPResponse reads from: a socket's ``makefile``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))


def _stdlib(data: bytes, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    import http.client

    response = http.client.HTTPResponse(_Sock(data), method=method)  # type: ignore[arg-type]
    response.begin()
    # getheader joins a repeated header into one list, as http1 keeps it.
    headers = {k.lower(): response.getheader(k) for k, _ in response.getheaders()}
    return response.status, headers, response.read()


def _ours(data: bytes, method: str = "GET", *, step: int | None = None) -> tuple[int, dict[str, str], bytes]:
    answer = http1.Answer(io.BufferedReader(io.BytesIO(data)), method)  # type: ignore[arg-type]
    if step is None:
        body = answer.read()
    else:
        parts = []
        while part := answer.read1(step):
            parts.append(part)
        body = b"".join(parts)
    return answer.status, {k.lower(): v for k, v in answer.headers.items()}, body


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, at = b"", 0
    for size in sizes:
        piece = body[at : at + size]
        if piece:
            out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        at += size
    if at < len(body):
        out += f"{len(body) - at:x};ext=1\r\n".encode() + body[at:] + b"\r\n"
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


ANSWERS = {
    "content-length": b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1'
    b"}",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(b"hello world", [3, 5]),
    "to the end of the connection": b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nall of it",
    "interim 100 first": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    "no content": b"HTTP/1.1 204 No Content\r\nApi-Version: 1.41\r\n\r\n",
    "not modified": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "error status": b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno such x",
    "repeated header": b"HTTP/1.1 200 OK\r\nVary: a\r\nVary: b\r\nContent-Length: 0\r\n\r\n",
    "bare line feeds": b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc",
}


@pytest.mark.parametrize("data", list(ANSWERS.values()), ids=list(ANSWERS))
def test_an_answer_reads_as_http_client_reads_it(data: bytes) -> None:
    assert _ours(data) == _stdlib(data)
    assert _ours(data, step=1) == _stdlib(data)


def test_a_head_answer_has_no_body_whatever_its_length() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert _ours(data, "HEAD") == _stdlib(data, "HEAD") == (200, {"content-length": "5"}, b"")


@settings(max_examples=60, deadline=None)
@given(
    body=st.binary(max_size=300),
    sizes=st.lists(st.integers(min_value=1, max_value=64), max_size=8),
    step=st.integers(min_value=1, max_value=100),
)
def test_any_chunking_reads_as_http_client_reads_it(body: bytes, sizes: list[int], step: int) -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(body, sizes)
    assert _ours(data, step=step) == _stdlib(data)


CUT_SHORT = {
    "inside a chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nhello",
    "before the last chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    "before its length": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
    "before its status line": b"",
    "not HTTP": b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    "a chunk size that is no number": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}
# http.client takes these (the headers so far; the body to the end of the connection): an engine
# answer cut inside its headers, or with a length that is no number, is not one to act on.
STRICTER = {
    "inside its headers": b"HTTP/1.1 200 OK\r\nContent-Len",
    "a length that is no number": b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\nten",
}


@pytest.mark.parametrize("data", list(CUT_SHORT.values()), ids=list(CUT_SHORT))
def test_an_answer_that_is_not_whole_is_refused_as_http_client_refuses_it(data: bytes) -> None:
    import http.client

    with pytest.raises((http.client.HTTPException, ValueError)):
        _stdlib(data)
    with pytest.raises(http1.ProtocolError):
        _ours(data)


@pytest.mark.parametrize(
    "target,headers",
    [
        ("/x HTTP/1.1\r\nX-Injected: 1", {}),
        ("/a b", {}),
        ("no-slash", {}),
        ("/ok", {"X-Id": "1\r\nX-Injected: 1"}),
    ],
)
def test_a_request_that_would_be_split_is_not_written(target: str, headers: dict[str, str]) -> None:
    with pytest.raises(http1.ProtocolError):
        http1.request_head("GET", target, "localhost", headers, None)


def test_the_request_head_says_what_http_client_says() -> None:
    head = http1.request_head("POST", "/build?q=1", "127.0.0.1:8500", {"Content-Type": "x"}, None)
    assert head == (
        b"POST /build?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8500\r\nContent-Type: x\r\n"
        b"Accept-Encoding: identity\r\nContent-Length: 0\r\n\r\n"
    )
    assert http1.tcp_connection("::1", 80, 1).host == "[::1]"
    assert http1.tcp_connection("localhost", 8501, 1).host == "localhost:8501"


class _Server:
    """A loopback server that answers each request with the next scripted answer, sent in pieces with
    pauses, and records what it was sent."""

    def __init__(self, answers: list[list[bytes]], pause_s: float = 0.0) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answers, self.pause_s = answers, pause_s
        self.requests: list[bytes] = []
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            conn, _ = self.listener.accept()
            self.connections += 1
            with conn:
                reader = conn.makefile("rb")
                while self.answers:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = reader.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    self.requests.append(head)
                    for piece in self.answers.pop(0):
                        conn.sendall(piece)
                        time.sleep(self.pause_s)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def server_factory() -> Iterator[list[_Server]]:
    made: list[_Server] = []
    yield made
    for server in made:
        server.close()


def test_a_kept_connection_carries_the_next_request(server_factory: list[_Server]) -> None:
    server = _Server(
        [
            [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"],
            [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n"],
        ]
    )
    server_factory.append(server)
    conn = http1.tcp_connection("127.0.0.1", server.port, 5)
    bodies = []
    for path in ("/a", "/b"):
        conn.request("GET", path, headers={"User-Agent": "t"})
        answer = conn.getresponse()
        assert not answer.will_close
        bodies.append(answer.read())
    conn.close()
    assert bodies == [b"one", b"two"]
    assert server.connections == 1
    assert [r.split(b"\r\n")[0] for r in server.requests] == [b"GET /a HTTP/1.1", b"GET /b HTTP/1.1"]
    assert f"Host: 127.0.0.1:{server.port}".encode() in server.requests[0]


def test_a_streamed_answer_is_handed_on_as_it_arrives(server_factory: list[_Server]) -> None:
    """A build's messages come one chunk at a time while it runs: each must be read when it arrives,
    not once the answer has ended (the build step shows progress and times out on silence)."""
    pieces = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    pieces += [f"{len(m):x}\r\n".encode() + m + b"\r\n" for m in (b'{"stream":"1"}', b'{"stream":"2"}')]
    pieces.append(b"0\r\n\r\n")
    server = _Server([pieces], pause_s=0.3)
    server_factory.append(server)
    conn = http1.tcp_connection("127.0.0.1", server.port, 5)
    conn.request("POST", "/build", body=b"tar")
    answer = conn.getresponse()
    started = time.monotonic()
    first = answer.read1(65536)
    waited = time.monotonic() - started
    assert first == b'{"stream":"1"}'
    assert waited < 0.3 + 0.25, f"the first message waited {waited:.2f} s for the rest of the answer"
    assert answer.read1(65536) == b'{"stream":"2"}'
    assert answer.read1(65536) == b""
    conn.close()
    assert server.requests[0].endswith(b"Content-Length: 3\r\n\r\n")


def test_probing_an_app_imports_no_http_library() -> None:
    """The reason http1.py exists: a probe, and the engine's API on its socket, load neither http.client
    nor what it imports (email, ssl), nor urllib.request."""
    code = (
        "import sys\n"
        "from orchestrator import docker_wire, httpclient\n"
        "r = httpclient.probe('http://127.0.0.1:9/health', timeout=0.5)\n"
        "assert r.status is None, r\n"
        "names = ('http', 'http.client', 'email', 'ssl', 'urllib.request')\n"
        "print(sorted(m for m in names if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("data", list(STRICTER.values()), ids=list(STRICTER))
def test_an_answer_http_client_would_guess_at_is_refused(data: bytes) -> None:
    with pytest.raises(http1.ProtocolError):
        _ours(data)
