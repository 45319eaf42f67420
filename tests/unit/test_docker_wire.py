"""docker_wire.py: a build sent ahead must send exactly the files the SDK's own build would send.

The SDK's ``exclude_paths`` is the reference (it is what DockerEngine.build sends); the build step also
compares the two at run time and rebuilds on any difference, so a divergence here costs speed, never
correctness. These tests keep the two in step on trees and .dockerignore files of many shapes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from docker.utils.build import exclude_paths

from orchestrator.build_context import (
    client_config_is_plain,
    client_config_sets_no_proxies,
    context_files,
    local_socket,
    selects,
)
from orchestrator.docker_wire import EngineApi

NAMES = ["a", "b.py", "node_modules", "src", "Dockerfile", ".git", "x.log", "build", "README.md", "Sub"]
PATTERNS = [
    "*.log",
    "node_modules",
    "!node_modules/keep",
    "src/**/test*",
    "**/*.py",
    "build/",
    "!build/out",
    ".git",
    "sub/*",
    "!sub/b.py",
    "*",
    "!src",
    "[ab]*",
    "[!a]*",
    "a/../b.py",
    "/src/",
    "**",
    "?",
    "src/**",
    "**/b.py",
    "# a comment",
    "",
    "  README.md  ",
    "Dockerfile",
]


def _tree(root: Path, rng: random.Random) -> None:
    for _ in range(15):
        path = root.joinpath(*(rng.choice(NAMES) for _ in range(rng.randint(1, 3))))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_text("x")
        except (NotADirectoryError, FileExistsError, IsADirectoryError):
            pass  # a name already taken by a file (or a directory): another shape of tree


def _sdk(root: Path, lines: list[str], dockerfile: str) -> list[str]:
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return sorted(exclude_paths(str(root), patterns, dockerfile=dockerfile))


@pytest.mark.parametrize("seed", range(40))
def test_the_files_sent_are_the_ones_the_sdk_sends(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    for trial in range(8):
        root = tmp_path / str(trial)
        root.mkdir()
        _tree(root, rng)
        if not (root / "Dockerfile").exists():
            (root / "Dockerfile").write_text("FROM scratch\n")
        lines = rng.sample(PATTERNS, rng.randint(0, 6))
        (root / ".dockerignore").write_text("\n".join(lines))
        assert context_files(root, "Dockerfile") == _sdk(root, lines, "Dockerfile"), lines


@pytest.mark.parametrize("seed", range(10))
def test_without_a_dockerignore_every_path_is_sent_both_ways(tmp_path: Path, seed: int) -> None:
    """What lets a build sent ahead skip importing the SDK to compare (build_context.selects): with no
    .dockerignore, the SDK and context_files select the same, whatever the tree holds: symlinks to
    files, to directories and to nothing, empty and hidden directories, a Dockerfile in a subdirectory."""
    rng = random.Random(seed)
    for trial in range(5):
        root = tmp_path / str(trial)
        root.mkdir()
        _tree(root, rng)
        (root / ".hidden" / "empty").mkdir(parents=True, exist_ok=True)
        (root / "docker").mkdir(exist_ok=True)
        (root / "docker" / "Dockerfile").write_text("FROM scratch\n")
        for name, target in (("to-file", "docker/Dockerfile"), ("to-dir", "docker"), ("dangling", "gone")):
            (root / name).symlink_to(target)
        assert not selects(root)
        assert context_files(root, "docker/Dockerfile") == _sdk(root, [], "docker/Dockerfile")
    (root / ".dockerignore").write_text("")
    assert selects(root)


def test_an_excluded_directory_with_an_exception_inside_is_entered(tmp_path: Path) -> None:
    (tmp_path / "build" / "out").mkdir(parents=True)
    (tmp_path / "build" / "out" / "app").write_text("x")
    (tmp_path / "build" / "junk").write_text("x")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text("build\n!build/out\n")
    assert context_files(tmp_path, "Dockerfile") == [
        ".dockerignore",
        "Dockerfile",
        "build/out",
        "build/out/app",
    ]


def test_only_a_local_socket_is_sent_to(tmp_path: Path) -> None:
    sock = tmp_path / "docker.sock"
    sock.write_text("")
    assert local_socket({"DOCKER_HOST": f"unix://{sock}"}) == str(sock.resolve())
    assert local_socket({"DOCKER_HOST": "tcp://127.0.0.1:2376"}) is None
    assert local_socket({"DOCKER_HOST": "ssh://deploy@host"}) is None
    assert local_socket({"DOCKER_HOST": f"unix://{tmp_path}/missing.sock"}) is None


@pytest.mark.parametrize(
    ("config", "plain", "no_proxies"),
    [
        (None, True, True),
        ({}, True, True),
        ({"detachKeys": "ctrl-x"}, True, True),
        ({"auths": {}}, True, True),
        ({"auths": {"registry.example": {"auth": "dTpw"}}}, False, True),
        ({"credsStore": "pass"}, False, True),
        ({"credHelpers": {"registry.example": "ecr-login"}}, False, True),
        ({"proxies": {"default": {"httpProxy": "http://proxy:3128"}}}, False, False),
        ("not json", False, False),
    ],
)
def test_a_client_config_that_adds_to_the_request_keeps_the_build_for_the_sdk(
    tmp_path: Path, config: object, plain: bool, no_proxies: bool
) -> None:
    """The build sent ahead needs a config that adds nothing to a build request; EngineApi only one
    that adds nothing to the containers it creates (proxies): credentials are for push, pull and
    builds, which stay the SDK's."""
    folder = tmp_path / "docker"
    folder.mkdir()
    if isinstance(config, dict):
        (folder / "config.json").write_text(json.dumps(config))
    elif config is not None:
        (folder / "config.json").write_text(str(config))
    assert client_config_is_plain({"DOCKER_CONFIG": str(folder)}) is plain
    assert client_config_sets_no_proxies({"DOCKER_CONFIG": str(folder)}) is no_proxies


# The container a deploy creates, as the SDK would have asked for it --------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({}, id="host-network"),
        pytest.param({"restart": True, "environment": {"PORT": "8500", "X": "a b=c"}}, id="prod"),
        pytest.param(
            {
                "host_network": False,
                "network": "orch-net",
                "aliases": ["app-prod", "backend"],
                "publish": {8080: ("127.0.0.1", None), 9090: ("127.0.0.1", 19090)},
                "labels": {"orchestrator.app": "demo"},
                "command": ["haproxy", "-f", "/etc/haproxy.cfg"],
                "user": "1000:1000",
                "binds": {"/run/orch/admin": "/admin"},
            },
            id="proxied",
        ),
        pytest.param({"host_network": False, "publish": {80: ("127.0.0.1", 8080)}}, id="bridge-publish"),
        pytest.param({"host_network": False, "network": "net-without-aliases"}, id="network-no-aliases"),
    ],
)
def test_the_container_body_is_the_one_the_sdk_would_send(kwargs: dict[str, Any]) -> None:
    """DockerEngine.run builds ``POST /containers/create``'s body itself (docker_engine._container_config)
    for EngineApi and the SDK alike; it must be what the SDK's create_container sent for the same
    arguments (as DockerEngine.run called it before), less the null fields its _post_json drops."""
    import docker

    from orchestrator.docker_engine import _container_config

    host_network = kwargs.pop("host_network", True)
    network, aliases, publish = kwargs.get("network"), kwargs.get("aliases", []), kwargs.get("publish")
    restart, binds = kwargs.get("restart", False), kwargs.get("binds")
    api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")
    host_config = api.create_host_config(
        network_mode="host" if host_network else network,
        port_bindings=None if host_network or not publish else dict(publish),
        restart_policy={"Name": "unless-stopped"} if restart else None,
        binds=[f"{h}:{i}:rw" for h, i in (binds or {}).items()] or None,
    )
    networking = (
        api.create_networking_config({network: api.create_endpoint_config(aliases=list(aliases))})
        if network is not None
        else None
    )
    sdk = api.create_container_config(
        "sha256:" + "1" * 64,
        command=kwargs.get("command"),
        environment=dict(kwargs.get("environment") or {}),
        labels=dict(kwargs.get("labels") or {}),
        user=kwargs.get("user"),
        ports=None if host_network or not publish else list(publish),
        host_config=host_config,
        networking_config=networking,
        detach=True,
    )
    ours = _container_config("sha256:" + "1" * 64, host_network=host_network, **kwargs)

    def sent(body: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps({k: v for k, v in body.items() if v is not None}))

    assert sent(ours) == sent(sdk)


@pytest.mark.parametrize("closed_after_the_check", [False, True], ids=["closed-before", "closed-after-check"])
def test_a_kept_connection_the_engine_closed_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_after_the_check: bool
) -> None:
    """EngineApi keeps its connections for the next call, as the SDK's pool does; an engine that
    restarted (or dropped an idle connection: the suite's session-long engine met one after 20 minutes)
    closed them, and a call must not fail on one. Like urllib3, a kept connection that reads as ready
    (its end of stream) is dropped before use; one closed after that check, whose request could not
    be sent, is sent again on a new connection. A local HTTP server that closes every connection after
    one answer (while saying nothing of it) stands in for the engine: this is about our HTTP client,
    not about Docker."""
    if closed_after_the_check:  # the check sees nothing: the engine closes it just after
        import orchestrator.docker_wire as wire

        monkeypatch.setattr(wire.select, "select", lambda r, w, x, t: ([], [], []))
    import http.server
    import socketserver
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = json.dumps({"ApiVersion": "1.41", "Path": self.path}).encode()
            self.send_response(200)
            self.send_header("Api-Version", "1.41")  # as an engine answers its ping
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True  # closes after answering, without "Connection: close"

        def log_message(self, *args: object) -> None:
            pass

    closed = threading.Event()

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self) -> tuple[object, tuple[str, int]]:
            conn, _ = super().get_request()
            return conn, ("local", 0)  # http.server logs a client address

        def shutdown_request(self, request: object) -> None:
            super().shutdown_request(request)
            closed.set()  # the connection is closed on the server's side

    path = str(tmp_path / "engine.sock")
    server = Server(path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = EngineApi(path, timeout=5)
        assert api.api_version == "1.41"
        for _ in range(3):  # each call after the first finds its kept connection closed
            closed.wait(5)
            closed.clear()
            assert api.version()["Path"] == "/v1.41/version"
        api.close()
    finally:
        server.shutdown()
        server.server_close()


def test_an_engine_whose_ping_names_no_api_version_is_asked_its_version(tmp_path: Path) -> None:
    """Engines before API 1.25 say their API version only in ``/version``: negotiating by ping (issue 12)
    must still find it there, and never guess."""
    import http.server
    import socketserver
    import threading

    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            asked.append(self.path)
            body = (
                b"OK" if self.path == "/_ping" else json.dumps({"ApiVersion": "1.24", "Os": "linux"}).encode()
            )
            self.send_response(200)
            self.send_header("Content-Type", "text/plain" if self.path == "/_ping" else "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self) -> tuple[object, tuple[str, int]]:
            conn, _ = super().get_request()
            return conn, ("local", 0)

    path = str(tmp_path / "engine.sock")
    server = Server(path, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = EngineApi(path, timeout=5)
        assert (api.api_version, api.os_type) == ("1.24", "linux")
        assert asked == ["/_ping", "/version"]
        api.close()
    finally:
        server.shutdown()
        server.server_close()
