"""The only module that imports ``docker``: every engine call the orchestrator makes goes through here.

Deploy logic asks for intent ("build this context", "run this image as staging") and gets plain values
back, so it reads without SDK noise. Errors are translated once: an engine that does not answer is
InfraUnavailable (exit 4, nothing decided); an engine that answers "no" is a DockerError the caller
turns into a failed gate with evidence.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import math
import os
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack


def _defer_paramiko() -> None:
    """Import paramiko (the SDK's ssh:// transport) when an ssh:// engine first uses it, not with the SDK.

    docker-py imports its SSH adapter, and with it paramiko and invoke (about 45 ms), whenever paramiko
    is installed; every local deploy paid that at start-up (issue 12). The adapter only touches
    ``paramiko.<name>`` when it connects, so until then it holds a stand-in module whose first attribute
    lookup imports the real paramiko (which then replaces the stand-in in ``sys.modules``)."""
    if "paramiko" in sys.modules or importlib.util.find_spec("paramiko") is None:
        return  # already imported, or not installed (the SDK says so when an ssh:// engine is asked for)
    stand_in = types.ModuleType("paramiko", "stand-in: the real paramiko is imported on first use")

    def load(name: str) -> Any:
        if sys.modules.get("paramiko") is stand_in:
            del sys.modules["paramiko"]
        return getattr(importlib.import_module("paramiko"), name)

    stand_in.__getattr__ = load  # type: ignore[method-assign]
    sys.modules["paramiko"] = stand_in


def _sdk() -> Any:
    """The docker SDK, imported on first use: a local engine's deploy path goes through
    docker_wire.EngineApi and never needs it (issue 12); builds through the SDK, push, pull, logs,
    networks, swarm and remote engines do."""
    if "docker" not in sys.modules:
        _defer_paramiko()  # before the SDK's first import, which would import paramiko
    import docker
    import docker.errors
    import docker.tls
    import docker.transport

    return docker


def _timeouts() -> tuple[type[BaseException], ...]:
    """What a call that ran out of time raises: the standard library's, and, once the SDK is loaded,
    requests' and urllib3's (a streamed answer is read through urllib3 directly)."""
    found: list[type[BaseException]] = [TimeoutError]
    if (requests := sys.modules.get("requests.exceptions")) is not None:
        found.append(requests.Timeout)
    if (urllib3 := sys.modules.get("urllib3.exceptions")) is not None:
        found.append(urllib3.TimeoutError)
    return tuple(found)


def _unreachable() -> tuple[type[BaseException], ...]:
    """What a call to an engine that stopped answering raises (see _timeouts)."""
    found: list[type[BaseException]] = [ConnectionError, *_timeouts()]
    if (requests := sys.modules.get("requests.exceptions")) is not None:
        found.append(requests.ConnectionError)
    if (urllib3 := sys.modules.get("urllib3.exceptions")) is not None:
        found.append(urllib3.ProtocolError)
    return tuple(found)


class ContainerOptions(TypedDict, total=False):
    """How ``run`` and ``create`` make a container (``_container_config`` holds the defaults)."""

    environment: Mapping[str, str] | None
    command: list[str] | None
    host_network: bool
    publish: Mapping[int, tuple[str, int | None]] | None
    labels: Mapping[str, str] | None
    restart: bool
    network: str | None
    aliases: Sequence[str]
    user: str | None
    binds: Mapping[str, str] | None


_T = TypeVar("_T")


def _sdk_error(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is the SDK's ``docker.errors.<name>`` (False when the SDK was never loaded)."""
    errors = sys.modules.get("docker.errors")
    return errors is not None and isinstance(exc, getattr(errors, name))


from orchestrator.build_context import (  # noqa: E402
    PendingBuild,
    client_config_sets_no_proxies,
    local_socket,
    sdk_context_files,
)
from orchestrator.docker_wire import EngineApi, EngineNotFound, EngineRefused  # noqa: E402
from orchestrator.errors import DockerError, InfraUnavailable, StepTimeout  # noqa: E402

if TYPE_CHECKING:
    import docker

    from orchestrator.ssh import SshBridge


@dataclass(frozen=True)
class ImageInfo:
    """An image as the engine describes it (inspected or listed), as a plain value: its id, tags, labels,
    registry digests and size, so deploy logic never reads the SDK's objects."""

    id: str
    tags: tuple[str, ...]
    labels: Mapping[str, str]
    repo_digests: tuple[str, ...] = ()
    size: int = 0

    def label(self, key: str) -> str | None:
        return self.labels.get(key)


@dataclass(frozen=True)
class ContainerInfo:
    """A container as the engine describes it (a listing fills in less than an inspect), as a plain value:
    what it runs, its state and labels, and how it is reached on its networks and published ports."""

    id: str
    name: str
    image_id: str
    status: str
    labels: Mapping[str, str] = field(default_factory=dict)
    exit_code: int | None = None
    # How often the engine restarted it (restart policy) and when its current run started: a restart
    # between two looks at a container is how a crash-looping one shows while we wait for health.
    restart_count: int = 0
    started_at: str | None = None
    # Per network it is attached to: the names other containers resolve it by, and its address there
    # (a proxied environment's serving containers are the ones holding its alias).
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    addresses: Mapping[str, str] = field(default_factory=dict)
    # Container port -> host port, as the engine published them (an ephemeral port is known only here).
    ports: Mapping[int, int] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status == "running"


# A container in one of these states runs nothing and will not by itself (no restart under way).
STOPPED_STATUSES = frozenset({"created", "exited", "dead"})

# The oldest API the SDK speaks: enough to ask the engine which version it speaks.
_PROBE_API = "1.24"


def _tls_client(url: str, tls: Any, timeout: int) -> docker.DockerClient:
    """A client of a tcp:// engine that trusts exactly the configured CA. requests lets
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's CA for every request (its trust_env), so on a
    machine that sets them (many do, for a corporate proxy) the engine's own certificate would be judged
    against the wrong roots and refused. ``version="auto"`` asks the engine inside the constructor,
    before trust_env can be turned off, so the version is asked first by a probe that has it off."""
    docker = _sdk()
    probe = docker.APIClient(base_url=url, timeout=timeout, version=_PROBE_API, tls=tls)
    probe.trust_env = False
    try:
        api_version = str(probe.version(api_version=False)["ApiVersion"])
    finally:
        probe.close()
    client = docker.DockerClient(base_url=url, timeout=timeout, version=api_version, tls=tls)
    client.api.trust_env = False
    return client


# OpenSSL's names for the alerts an engine (or a TLS front) sends when it does not accept the client's
# certificate: not signed by its CA, none given, or otherwise refused.
_CLIENT_REFUSED = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_HANDSHAKE_FAILURE",
    "ALERT_ACCESS_DENIED",
)


def _tls_refusal(exc: BaseException, tls_files: tuple[Path, Path, Path] | None) -> str | None:
    """Which side of a failed TLS handshake said no, from OpenSSL's reason in ``exc``. The SDK's
    ``SSLError`` alone cannot tell an engine that refuses our client certificate (have it signed by the
    CA the engine trusts) from an engine certificate ``tls_ca`` did not sign or that names another host
    (point tls_ca at the engine's CA, or fix its SAN), and the two fixes are on different machines.
    Names the certificate and CA files (where they are), never their content or the key."""
    if tls_files is None:
        return None
    text = str(exc)
    ca, cert, _ = tls_files
    if "CERTIFICATE_VERIFY_FAILED" in text:
        detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip(" '\"")
        return f"the engine's certificate did not verify against tls_ca {ca}" + (
            f": {detail}" if detail and detail != text else ""
        )
    alert = next((name for name in _CLIENT_REFUSED if name in text), None)
    if alert is not None:
        said = alert.removeprefix("ALERT_").lower().replace("_", " ")
        return (
            f"the engine refused the client certificate tls_cert {cert} (TLS alert: {said}): it must be "
            "signed by the CA the engine trusts (its --tlscacert)"
        )
    return None


def _one_pool(client: docker.DockerClient, pool_size: int = 4) -> None:
    """Every request of ``client`` (on a unix socket) through one pool of at most ``pool_size`` kept
    connections; more are opened when more requests run at once, and closed after.

    The SDK's unix adapter keeps one connection pool per request URL (``/containers/x/json``,
    ``/images/y/json``, ... each its own, up to 25), and each pool its own idle connection. On a local
    socket that costs nothing; over ssh every connection is a ``docker system dial-stdio`` session, and
    sshd allows 10 per connection (MaxSessions): past that each request would pay a new ssh handshake.
    One pool for every URL: a handful of connections, reused."""

    class OnePoolUnixAdapter(_sdk().transport.UnixHTTPAdapter):  # type: ignore[misc]
        def get_connection(self, url: str, proxies: Any = None) -> Any:
            return super().get_connection("http+docker://localhost", proxies)

    api = client.api
    adapter = OnePoolUnixAdapter(api.base_url, api.timeout, max_pool_size=pool_size)
    adapter.socket_path = api._custom_adapter.socket_path
    api._custom_adapter.close()
    api._custom_adapter = adapter
    api.mount("http+docker://", adapter)


def _collect_ssh_pools() -> None:
    """The SDK's ssh-client transport (``use_ssh_client``) makes a connection pool and an ``ssh`` process
    per request and leaves both to the garbage collector, whose finalizer writes to the ssh process's
    stdin. Collected now, those processes end while we are here; left to interpreter exit, each one
    whose ssh already ended (host gone, connection refused) prints a BrokenPipe traceback after the
    command's own output. A BrokenPipe from that finalizer is the only thing silenced here."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, BrokenPipeError):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """An engine that does not answer is InfraUnavailable (exit 4); one that answers "no" is DockerError."""
    try:
        yield
    except EngineNotFound:
        raise  # callers that look things up turn "not found" into None
    except EngineRefused as exc:
        raise DockerError(f"{what}: {exc}") from None
    except Exception as exc:
        if isinstance(exc, _unreachable()):
            raise InfraUnavailable(f"Docker engine stopped answering during {what}: {exc}") from None
        if _sdk_error(exc, "NotFound"):  # the SDK's, as EngineApi's: one kind for callers to catch
            raise EngineNotFound(str(getattr(exc, "explanation", None) or exc)) from None
        if _sdk_error(exc, "APIError"):
            raise DockerError(f"{what}: {getattr(exc, 'explanation', None) or exc}") from None
        raise


@dataclass(frozen=True)
class _Deadline:
    """One step's time limit, e.g. the build of shop:abc may take ORCH_BUILD_TIMEOUT_S seconds."""

    what: str
    timeout_s: float
    setting: str
    started: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return self.timeout_s - (time.monotonic() - self.started)

    def exceeded(self, **details: Any) -> StepTimeout:
        return StepTimeout(
            f"{self.what} did not finish within {self.timeout_s:g} s ({self.setting})",
            details={"timeout_s": self.timeout_s, "setting": self.setting, **details},
        )


class _OneRequest:
    """A view of the SDK's APIClient for one streamed call (build, push or pull) under a deadline.

    Everything is the shared client's (connection pool, API version, auth), except the one HTTP request
    the call makes: it gets this call's read timeout (the step's remaining time, or the SDK's own timeout
    when that is shorter), and its response is kept, to tighten the socket's timeout to what is left after
    every chunk and to close it at the end. Closing matters: the engine cancels a build or pull when its
    client goes away (the build container is killed and removed, the registry request aborted).

    Why a view and not the obvious alternatives: setting ``client.api.timeout`` would change the limit for
    every other thread using the same engine; a fresh APIClient would have to rebuild the transport
    (DOCKER_HOST, TLS, ssh) from scratch; and the SDK's ``pull`` passes ``timeout=None`` explicitly, so
    only the request itself can carry a limit. The view is private to one call and the timeouts it sets
    are on the one pooled connection that call has checked out (urllib3 resets them when the connection
    is reused), so concurrent steps on one engine never see each other's limits.
    """

    def __init__(self, api: Any, deadline: _Deadline | None) -> None:
        self._api = api
        self._deadline = deadline
        self._sockets: list[Any] = []
        self._default: float | None = None
        self.response: Any = None
        # Whether the timeout armed last is the step's deadline (a read timeout then means "too slow",
        # StepTimeout) rather than the SDK's usual one (the engine stopped answering, InfraUnavailable).
        self.deadline_armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def _post(self, url: str, **kwargs: Any) -> Any:
        self._default = kwargs.get("timeout", self._api.timeout)
        kwargs["timeout"] = self._read_timeout()
        self.response = self._api._post(url, **kwargs)
        if self.response.ok and kwargs.get("stream"):
            with contextlib.suppress(AttributeError, TypeError):  # a transport without a plain socket
                raw = self._api._get_raw_response_socket(self.response)
                self._sockets = [s for s in (raw, getattr(raw, "_sock", None)) if hasattr(s, "settimeout")]
        return self.response

    def _post_json(self, url: str, data: Any, **kwargs: Any) -> Any:
        return _sdk().APIClient._post_json(self, url, data, **kwargs)  # so that it posts through _post

    def _read_timeout(self) -> float | None:
        if self._deadline is None:
            return self._default
        remaining = self._deadline.remaining()
        if remaining <= 0:
            raise self._deadline.exceeded()
        self.deadline_armed = self._default is None or remaining <= self._default
        return remaining if self.deadline_armed else self._default

    def rearm(self) -> None:
        """Between chunks: past the deadline is StepTimeout; otherwise the next wait may last only what
        is left, so a step that goes silent just before its deadline does not get a second allowance."""
        if self._deadline is None:
            return
        timeout = self._read_timeout()
        for sock in self._sockets:
            sock.settimeout(timeout)

    def close(self) -> None:
        if self.response is not None:
            self.response.close()


class _BuildOutput:
    """What a legacy build's messages say: its log, the image it made, or the error it stopped at."""

    def __init__(self, tag: str, on_line: Callable[[str], None] | None) -> None:
        self.tag = tag
        self.on_line = on_line
        self.log: list[str] = []
        self.image_id: str | None = None

    def read(self, chunk: Mapping[str, Any]) -> None:
        if "stream" in chunk:
            self.log.append(chunk["stream"])
            if self.on_line is not None:
                self.on_line(chunk["stream"])
        if "error" in chunk:
            raise DockerError(f"build of {self.tag} failed: {chunk['error'].strip()}", log="".join(self.log))
        aux = chunk.get("aux") or {}
        if "ID" in aux:
            self.image_id = aux["ID"]

    def no_image(self) -> DockerError:
        what = f"build of {self.tag} reported success but produced no image"
        return DockerError(what, log="".join(self.log))


def _log_tail(log: list[str] | None, lines: int = 20) -> dict[str, str]:
    """The end of a build log for a StepTimeout's details: which step was running when time ran out."""
    if not log:
        return {}
    return {"log_tail": "".join("".join(log).splitlines(keepends=True)[-lines:])}


def _image(attrs: Mapping[str, Any]) -> ImageInfo:
    return ImageInfo(
        id=attrs["Id"],
        tags=tuple(attrs.get("RepoTags") or ()),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        repo_digests=tuple(attrs.get("RepoDigests") or ()),
        size=int(attrs.get("Size") or 0),
    )


def _container_from(attrs: Mapping[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    settings = attrs.get("NetworkSettings") or {}
    networks: Mapping[str, Any] = settings.get("Networks") or {}
    ports: dict[int, int] = {}
    for key, bindings in (settings.get("Ports") or {}).items():
        number, _, proto = key.partition("/")
        for binding in bindings or ():
            if proto == "tcp" and binding.get("HostPort"):
                ports.setdefault(int(number), int(binding["HostPort"]))
    return ContainerInfo(
        id=attrs["Id"],
        name=attrs.get("Name", "").lstrip("/"),
        image_id=attrs["Image"],
        status=state.get("Status", "unknown"),
        labels=dict((attrs.get("Config") or {}).get("Labels") or {}),
        exit_code=state.get("ExitCode"),
        restart_count=int(attrs.get("RestartCount") or 0),
        started_at=state.get("StartedAt") or None,
        aliases={name: tuple(n.get("Aliases") or ()) for name, n in networks.items()},
        addresses={name: n["IPAddress"] for name, n in networks.items() if n.get("IPAddress")},
        ports=ports,
    )


def _unreachable_message(where: str, exc: BaseException) -> str:
    return (
        f"Docker engine is unreachable at {where}: {exc}. "
        "Start it ('systemctl start docker'; not installed: 'apt-get install docker.io', or Docker "
        "Engine from docs.docker.com), or point DOCKER_HOST at a running engine, and try again"
    )


class DockerEngine:
    def __init__(
        self,
        client: docker.DockerClient | None,
        where: str = "local",
        *,
        over_ssh: bool = False,
        cli_args: tuple[str, ...] = (),
        api: EngineApi | None = None,
    ) -> None:
        # The SDK's client; for an engine reached through ``api`` alone, made when first needed.
        self._sdk_client = client
        # The calls a deploy makes on its way (inspect, tag, create, start, stop, remove, list): the
        # SDK's APIClient, or for a local engine EngineApi, which answers them without the SDK.
        self._api: Any = api if api is not None else client.api if client is not None else None
        if self._api is None:
            raise ValueError("an engine needs an SDK client or an EngineApi")
        # What messages call this engine (``local``, or ``user@host:port`` of a remote one).
        self.where = where
        self._over_ssh = over_ssh
        # The docker CLI's global flags that reach this engine (BuildKit builds run through the CLI).
        self.cli_args = cli_args
        # The shared ssh connection of a remote engine, ended with it.
        self._bridge: SshBridge | None = None
        # This engine's unix socket, when it is a local one: a build sent there ahead is this engine's.
        self.socket_path: str | None = None

    @property
    def _client(self) -> docker.DockerClient:
        """The SDK's client, made on first use for an engine connected through EngineApi: the same
        socket and API version, so both speak to the engine alike."""
        if self._sdk_client is None:
            assert isinstance(self._api, EngineApi)
            self._sdk_client = _sdk().DockerClient(
                base_url=f"unix://{self._api.socket_path}",
                timeout=int(self._api.timeout),
                version=self._api.api_version,
            )
        return self._sdk_client

    @classmethod
    def connect(cls, base_url: str | None = None, timeout: int = 120) -> DockerEngine:
        """Connect (DOCKER_HOST or the default socket) and prove the engine answers: the API version
        negotiation (EngineApi's ping; the SDK's ``version="auto"``: GET /version) is that proof, so
        nothing else is asked first.

        A local socket is spoken to through EngineApi, and the SDK is loaded only if a call needs it,
        unless the docker client config sets proxies (the SDK adds them to every container it
        creates); anything else through the SDK from the start."""
        where = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        environ = {**os.environ, "DOCKER_HOST": where}
        socket_path = local_socket(environ)
        if socket_path is not None and client_config_sets_no_proxies(environ):
            try:
                api = EngineApi(socket_path, timeout)  # pings for the API version: the proof it answers
            except (EngineRefused, EngineNotFound, OSError, ValueError, KeyError) as exc:
                raise InfraUnavailable(_unreachable_message(where, exc)) from None
            engine = cls(None, api=api)
            engine.socket_path = socket_path
            return engine
        docker = _sdk()
        try:
            client = (
                docker.DockerClient(base_url=base_url, timeout=timeout, version="auto")
                if base_url
                else docker.from_env(timeout=timeout, version="auto")
            )
        except (docker.errors.DockerException, *_unreachable()) as exc:
            raise InfraUnavailable(_unreachable_message(where, exc)) from None
        engine = cls(client)
        if where.startswith("unix://"):
            engine.socket_path = os.path.realpath(where[len("unix://") :])
        return engine

    @classmethod
    def connect_remote(
        cls,
        url: str,
        *,
        host: str,
        what: str,
        tls_files: tuple[Path, Path, Path] | None = None,
        timeout: int = 120,
        connect_timeout_s: float = 15.0,
        ssh_multiplex: bool = True,
    ) -> DockerEngine:
        """Connect to another machine's engine and prove it answers. ``ssh://`` goes through the system
        ssh client (``docker system dial-stdio`` on the host), so ~/.ssh/config, the agent's keys and
        known_hosts apply exactly as for ``ssh host``; with ``ssh_multiplex`` every request shares one
        ssh connection (orchestrator/ssh.py), without it the SDK opens one per request. ``tcp://``
        verifies the engine's certificate against ``tls_files`` (ca, cert, key). ``connect_timeout_s``
        bounds the connection and the first answer: a host that drops packets is unreachable after it,
        not after TCP's minutes. ``host`` names the engine in messages: never a key or a certificate,
        only where it is."""
        # Here, with the SDK: a local engine's process never loads ssh.py (with shutil and tempfile).
        from orchestrator.ssh import SshBridge, SshOptions, SshUnreachable

        docker = _sdk()
        over_ssh = url.startswith("ssh://")
        bridge: SshBridge | None = None
        failed: str | None = None
        first = max(1, min(timeout, math.ceil(connect_timeout_s)))
        try:
            tls: Any = None
            if tls_files is not None:
                ca, cert, key = tls_files
                tls = docker.tls.TLSConfig(client_cert=(str(cert), str(key)), ca_cert=str(ca), verify=True)
            if tls is not None:
                client = _tls_client(url, tls, first)
            elif over_ssh and ssh_multiplex:
                bridge = SshBridge(url, SshOptions(connect_timeout_s))
                # The version is asked after the pool is replaced (``version="auto"`` would ask through
                # the SDK's own pool: one more dial-stdio session, thrown away).
                client = docker.DockerClient(base_url=bridge.url, timeout=first, version=_PROBE_API)
                _one_pool(client)
                client.api._version = str(client.api.version(api_version=False)["ApiVersion"])
            else:
                client = docker.DockerClient(
                    base_url=url, timeout=first, version="auto", use_ssh_client=over_ssh
                )
            client.ping()
            client.api.timeout = timeout
        except SshUnreachable as exc:
            failed = exc.reason
        except (docker.errors.DockerException, *_unreachable()) as exc:
            failed = (
                (bridge.session_error() if bridge is not None else None)
                or _tls_refusal(exc, tls_files)
                or type(exc).__name__
            )
        except BaseException:
            if bridge is not None:  # e.g. Interrupted while connecting: no ssh outlives the attempt
                bridge.close()
            raise
        if failed is not None:
            if bridge is not None:
                bridge.close()
            # Outside the except block: its traceback no longer holds the failed client's pools.
            _collect_ssh_pools()
            how = (
                f"check that 'ssh {host} docker version' works from here (the key in ssh-agent or "
                "IdentityFile, the host in known_hosts, a docker CLI on the host's PATH)"
                if over_ssh
                else "check the engine's address and its TLS certificates (tls_ca, tls_cert, tls_key)"
            )
            raise InfraUnavailable(
                f"the Docker engine of {what} on {host} is unreachable ({failed}): {how}, "
                "and try again; nothing was changed",
                details={"engine_host": host, "reason": failed},
            )
        cli_args: tuple[str, ...] = ("--host", bridge.url if bridge is not None else url)
        if tls_files is not None:
            ca, cert, key = tls_files
            cli_args += ("--tlsverify", "--tlscacert", str(ca), "--tlscert", str(cert), "--tlskey", str(key))
        engine = cls(client, host, over_ssh=over_ssh and bridge is None, cli_args=cli_args)
        engine._bridge = bridge
        return engine

    @property
    def ssh(self) -> SshBridge | None:
        """The shared ssh connection of an ``ssh://`` engine (None: a socket or tcp:// engine), which
        also reaches the engine host's loopback (zero-downtime checks and drain, proxy.py)."""
        return self._bridge

    def close(self) -> None:
        if self._sdk_client is not None:
            self._sdk_client.close()
        if isinstance(self._api, EngineApi):
            self._api.close()
        if self._bridge is not None:
            self._bridge.close()
        if self._over_ssh:
            _collect_ssh_pools()

    @property
    def calls_in_parallel(self) -> bool:
        """Whether two threads may call this engine at once: the local wire (docker_wire.EngineApi) keeps
        one connection per concurrent call. The SDK's client, whose transports include ssh, is left to one
        thread at a time."""
        return isinstance(self._api, EngineApi)

    @property
    def swarm(self) -> SwarmEngine:
        """Swarm services and overlay networks on this engine (see SwarmEngine)."""
        return SwarmEngine(self)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with _translated(what):
            return fn(*args, **kwargs)

    # images ---------------------------------------------------------------------------------------

    def build(
        self,
        context: IO[bytes] | Path,
        *,
        tag: str,
        dockerfile: str = "Dockerfile",
        buildargs: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        target: str | None = None,
        cache_from: Sequence[str] = (),
        nocache: bool = False,
        on_line: Callable[[str], None] | None = None,
    ) -> ImageInfo:
        """Build with the legacy builder from a tar stream, or from a directory the caller filled with
        exactly what may go in (``git archive`` of the sha; the SDK tars it, honouring .dockerignore, and
        adds a ``dockerfile`` outside it as Docker's CLI does). A failed build raises DockerError
        carrying the build log as evidence.

        ``cache_from`` / ``nocache`` are the caller's cache policy (see steps/build.py): with
        ``cache_from`` the engine takes a local cached step only if it is an ancestor of one of those
        images, so a layer someone made with ``docker commit`` is never reused.

        ``timeout_s`` bounds the whole build, output or not (a ``RUN`` that sleeps prints nothing):
        past it, the build is cancelled (the engine kills and removes the step's container; no image is
        tagged) and StepTimeout is raised, with the end of the log in its details. ``on_line`` gets the
        build's output as it comes (progress on a terminal: orchestrator/progress.py)."""
        output = _BuildOutput(tag, on_line)
        deadline = (
            None if timeout_s is None else _Deadline(f"build of {tag}", timeout_s, "ORCH_BUILD_TIMEOUT_S")
        )
        source: dict[str, Any] = (
            {"path": str(context)}
            if isinstance(context, Path)
            else {"fileobj": context, "custom_context": True}
        )

        def request(api: Any) -> Iterable[dict[str, Any]]:
            return _sdk().APIClient.build(
                api,
                **source,
                tag=tag,
                dockerfile=dockerfile,
                buildargs=dict(buildargs or {}),
                labels=dict(labels or {}),
                rm=True,
                forcerm=True,
                decode=True,
                pull=False,
                target=target,
                cache_from=list(cache_from) or None,
                nocache=nocache,
            )

        try:
            self._stream(deadline, request, output.read, log=output.log)
        except Exception as exc:
            if isinstance(exc, _unreachable()):
                raise InfraUnavailable(
                    f"Docker engine stopped answering during build of {tag}: {exc}"
                ) from None
            if _sdk_error(exc, "APIError"):
                raise DockerError(
                    f"build of {tag} failed: {getattr(exc, 'explanation', None) or exc}",
                    log="".join(output.log),
                ) from None
            raise
        found = self.image(output.image_id or tag)
        if found is None:
            raise output.no_image()
        return found

    def context_files(self, context: Path, dockerfile: str) -> list[str]:
        """The paths of ``context`` the SDK sends to build it (``.dockerignore`` applied), sorted: a build
        sent ahead (docker_wire.py) is taken only if it sent exactly these."""
        _sdk()  # first: the SDK's own import, with paramiko deferred
        return sdk_context_files(context, dockerfile)

    def finish_build(
        self,
        pending: PendingBuild,
        *,
        tag: str,
        timeout_s: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> str:
        """Read a build sent ahead to this engine (build_context.PendingBuild) to its end as ``build``
        would: the same log, errors and deadline (counted from when it was sent). Returns the id of the
        image it made, still unnamed (``tag`` names the build in messages)."""
        output = _BuildOutput(tag, on_line)
        deadline = (
            None
            if timeout_s is None
            else _Deadline(f"build of {tag}", timeout_s, "ORCH_BUILD_TIMEOUT_S", started=pending.started)
        )

        def wait_s() -> float | None:
            if deadline is None:
                return None
            if deadline.remaining() <= 0:
                raise deadline.exceeded(**_log_tail(output.log))
            return deadline.remaining()

        try:
            for message in pending.messages(wait_s):
                output.read(message)
        except TimeoutError:
            assert deadline is not None
            raise deadline.exceeded(**_log_tail(output.log)) from None
        except ConnectionError as exc:
            raise InfraUnavailable(f"Docker engine stopped answering during build of {tag}: {exc}") from None
        except RuntimeError as exc:  # the engine refused the request itself
            raise DockerError(f"build of {tag} failed: {exc}", log="".join(output.log)) from None
        finally:
            pending.cancel()
        if output.image_id is None:
            raise output.no_image()
        return output.image_id

    def _stream(
        self,
        deadline: _Deadline | None,
        request: Callable[[Any], Iterable[dict[str, Any]]],
        read: Callable[[dict[str, Any]], None],
        *,
        log: list[str] | None = None,
    ) -> None:
        """Run one streamed SDK call (``request`` gets the APIClient to call it on) and hand each decoded
        chunk to ``read``, under ``deadline``. The response is always closed: on a timeout that is what
        makes the engine stop the work."""
        call = _OneRequest(self._client.api, deadline)
        try:
            for chunk in request(call):
                read(chunk)
                call.rearm()
        except _timeouts():
            if deadline is not None and call.deadline_armed:
                raise deadline.exceeded(**_log_tail(log)) from None
            raise
        except StepTimeout as exc:
            exc.details.update(_log_tail(log))
            raise
        finally:
            call.close()

    def supports_buildkit(self) -> bool:
        """Whether the engine can run BuildKit builds a docker CLI starts (Linux, API 1.39 / 18.09+)."""
        if isinstance(self._api, EngineApi) and self._api.os_type:
            os_type, api_version = self._api.os_type, self._api.api_version  # its ping said both
        else:
            version = self._call("engine version", self._api.version)
            os_type, api_version = str(version.get("Os", "")), str(version.get("ApiVersion", "0.0"))
        api = tuple(int(p) for p in api_version.split(".")[:2] if p.isdigit())
        return os_type.lower() == "linux" and api >= (1, 39)

    def image(self, ref: str) -> ImageInfo | None:
        try:
            return _image(self._call(f"inspect image {ref}", self._api.inspect_image, ref))
        except EngineNotFound:
            return None

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        ok = self._call(
            f"tag {image_id} as {repository}:{tag}",
            self._api.tag,
            image_id,
            repository,
            tag,
            force=True,
        )
        if not ok:
            raise DockerError(f"engine refused to tag {image_id} as {repository}:{tag}")

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        with contextlib.suppress(EngineNotFound):
            self._call(f"remove image {ref}", self._api.remove_image, ref, force=force, noprune=False)

    def push(
        self,
        repository: str,
        tag: str,
        *,
        timeout_s: float | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> str:
        """Push ``repository:tag``; returns the registry's manifest digest ('sha256:...').

        Past ``timeout_s`` the push is abandoned (its connection closed) and StepTimeout is raised.
        ``on_status`` gets how far each layer got, as the engine reports it (progress on a terminal)."""
        digest: str | None = None
        what = f"push of {repository}:{tag}"
        deadline = None if timeout_s is None else _Deadline(what, timeout_s, "ORCH_PUSH_TIMEOUT_S")

        def read(chunk: dict[str, Any]) -> None:
            nonlocal digest
            if "error" in chunk:
                raise DockerError(f"{what} failed: {chunk['error'].strip()}")
            aux = chunk.get("aux") or {}
            digest = aux.get("Digest", digest)
            if on_status is not None and chunk.get("status"):
                layer = f"{chunk['id']}: " if chunk.get("id") else ""
                on_status(
                    f"{repository}:{tag} {layer}{chunk['status']} {chunk.get('progress') or ''}".rstrip()
                )

        with _translated(what):
            self._stream(
                deadline,
                lambda api: _sdk().APIClient.push(api, repository, tag=tag, stream=True, decode=True),
                read,
            )
        if not digest:
            raise DockerError(f"{what} reported no digest")
        return digest

    def pull(self, reference: str, *, timeout_s: float | None = None) -> ImageInfo:
        """Pull ``repo@sha256:...`` (or repo:tag) and return the local image.

        Past ``timeout_s`` the pull is abandoned (the engine cancels it when the connection closes) and
        StepTimeout is raised. The engine answers nothing until the registry does, so the limit covers
        the wait for the first byte too."""
        repository, sep, digest = reference.partition("@")
        what = f"pull of {reference}"
        deadline = None if timeout_s is None else _Deadline(what, timeout_s, "ORCH_PULL_TIMEOUT_S")

        def read(chunk: dict[str, Any]) -> None:
            if "error" in chunk:
                raise DockerError(f"{what} failed: {chunk['error'].strip()}")

        try:
            with _translated(what):
                self._stream(
                    deadline,
                    lambda api: _sdk().APIClient.pull(
                        api, repository, tag=digest if sep else None, stream=True, decode=True
                    ),
                    read,
                )
        except EngineNotFound as exc:  # for a pull, "not found" is a refusal, not a lookup miss
            raise DockerError(f"{what} failed: {exc}") from None
        found = self.image(reference)
        if found is None:
            raise DockerError(f"{what} reported success but no image is there")
        return found

    # containers -----------------------------------------------------------------------------------

    # Containers go through the low-level API by name or id: the SDK's models inspect a container
    # before every action (and again after `run`), which made a deploy inspect the same container
    # three or four times. One request per action is what the engine needs.

    def container(self, name: str) -> ContainerInfo | None:
        try:
            return _container_from(self._call(f"inspect container {name}", self._api.inspect_container, name))
        except EngineNotFound:
            return None

    def run(
        self,
        name: str,
        image: str,
        *,
        files: Mapping[str, bytes] | None = None,
        **options: Unpack[ContainerOptions],
    ) -> ContainerInfo:
        """Start a detached container. With ``host_network`` the app binds PORT itself; otherwise
        ``publish`` maps container ports to (host ip, host port; None: one the engine picks, read it
        from the returned ``ports``), which callers keep on 127.0.0.1, and
        ``network`` attaches it to that network under ``aliases`` (names other containers resolve).
        ``files`` (absolute path -> content) are written into the container before it starts: a
        bind mount would name a path on the engine's host, which for a remote engine is not ours.
        ``binds`` (host directory -> path inside) are for what only this machine's engine can use (a
        unix socket shared with the container); ``user`` is ``uid:gid`` to run it as (None: the image's)."""
        return self.start_created(self.create(name, image, **options), name, files=files)

    def create(self, name: str, image: str, **options: Unpack[ContainerOptions]) -> str:
        """The first half of ``run``: the container made, not started; returns its id."""
        if options.get("network") is not None and options.get("host_network", True):
            raise ValueError("a container on the host network cannot join another network")
        config = _container_config(image, **options)
        try:
            created = self._call(
                f"create container {name}", self._api.create_container_from_config, config, name=name
            )
        except EngineNotFound as exc:
            # A refusal of this step, not a lookup miss: the engine lacks something the container
            # needs, in its own words. Its image (pruned, or never pulled since the check that found
            # it) is the usual one, and says what to do.
            if "image" not in str(exc).lower():
                raise DockerError(f"create container {name}: {exc}") from None
            raise DockerError(
                f"create container {name}: image {image[:19]} is not on this engine (pruned or never "
                "pulled); 'docker image ls' there shows what it has"
            ) from None
        return str(created["Id"])

    def start_created(
        self, container_id: str, name: str, *, files: Mapping[str, bytes] | None = None
    ) -> ContainerInfo:
        """The second half of ``run``: ``files`` written in, the container started and inspected. One
        that does not start is removed, so that no half-made container stands under its name."""
        try:
            if files:
                archive = _tar(files)
                if not self._call(
                    f"write files into {name}", self._api.put_archive, container_id, "/", archive
                ):
                    raise DockerError(f"write files into {name}: the engine refused the archive")
            self._call(f"start container {name}", self._api.start, container_id)
        except (DockerError, EngineNotFound) as exc:
            # Created but never started (a network the engine lacks, a port taken): removed.
            self.discard_created(container_id, name)
            if isinstance(exc, EngineNotFound):
                raise DockerError(f"start container {name}: {exc}") from None
            raise
        return _container_from(
            self._call(f"inspect container {name}", self._api.inspect_container, container_id)
        )

    def discard_created(self, container_id: str, name: str) -> None:
        """Remove a container made and never started (best effort: what is left, prune removes)."""
        with contextlib.suppress(DockerError, EngineNotFound, InfraUnavailable):
            self._call(f"remove container {name}", self._api.remove_container, container_id, force=True)

    def kill_container(self, name: str) -> bool:
        """SIGKILL and wait until it has stopped, as ``remove_container`` does before removing (its
        restart policy does not bring it back: the engine counts it as stopped by hand). True when
        there was such a container."""
        try:
            self._call(f"kill container {name}", self._api.kill, name)
            return True
        except EngineNotFound:
            return False
        except DockerError:
            found = self.container(name)  # it stopped on its own meanwhile: what was asked is so
            if found is None:
                return False
            if found.status in STOPPED_STATUSES:
                return True
            raise  # restarting, paused: not stopped

    def rename_container(self, name: str, new_name: str) -> bool:
        """True when there was such a container to rename."""
        try:
            self._call(f"rename container {name} to {new_name}", self._api.rename, name, new_name)
            return True
        except EngineNotFound:
            return False

    @property
    def takes_concurrent_calls(self) -> bool:
        """Whether two calls at once go out at once (EngineApi, a local engine: one connection per call);
        through the SDK ``together`` makes them one after the other."""
        return isinstance(self._api, EngineApi)

    def together(self, first: Callable[[], Any], second: Callable[[], _T]) -> _T:
        """``first()`` and ``second()`` at once, on two connections, when this engine's client takes
        concurrent calls (EngineApi: one connection per call); one after the other through the SDK. Both
        always run to their end; then ``first``'s error is raised if it failed, else ``second``'s."""
        failed: list[BaseException] = []

        def run_first() -> None:
            try:
                first()
            except BaseException as exc:  # raised below, once ``second`` has ended too
                failed.append(exc)

        thread = None
        if self.takes_concurrent_calls:
            import threading

            thread = threading.Thread(target=run_first, name="engine-together", daemon=True)
            thread.start()
        else:
            run_first()
        try:
            result = second()
        finally:
            if thread is not None:
                thread.join()
            if failed:
                raise failed[0]
        return result

    def remove_container(self, name: str) -> bool:
        """Force-remove; True when something was removed."""
        try:
            self._call(f"remove container {name}", self._api.remove_container, name, force=True, v=True)
            return True
        except EngineNotFound:
            return False

    def stop_container(self, name: str, *, timeout_s: int = 1) -> bool:
        """Stop without removing (the container and its log stay for ``docker logs``); a stopped
        container is not restarted by its restart policy. True when something was stopped."""
        try:
            self._call(f"stop container {name}", self._api.stop, name, timeout=timeout_s)
            return True
        except EngineNotFound:
            return False

    def logs(self, name: str, *, tail: int = 50) -> str:
        try:
            raw = self._call(f"logs of {name}", self._client.api.logs, name, tail=tail)
        except EngineNotFound:
            return ""
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    def wait(self, name: str, *, timeout: float = 60) -> int:
        result = self._call(f"wait for {name}", self._client.api.wait, name, timeout=timeout)
        return int(result.get("StatusCode", -1))

    # networks -------------------------------------------------------------------------------------

    def ensure_network(
        self, name: str, *, driver: str = "bridge", labels: Mapping[str, str] | None = None
    ) -> bool:
        """Create the network unless one of that name exists; True when it was created. An overlay
        network is made attachable, so plain containers (a proxy) can join swarm services on it."""
        api = self._client.api
        # The engine's name filter matches substrings; only an exact name counts.
        listed = self._call(f"list networks {name}", api.networks, names=[name])
        if any(n.get("Name") == name for n in listed):
            return False
        self._call(
            f"create network {name}",
            api.create_network,
            name,
            driver=driver,
            attachable=driver == "overlay" or None,
            labels=dict(labels or {}),
            check_duplicate=True,
        )
        return True

    def join_network(self, container: str, network: str, *, aliases: Sequence[str] = ()) -> None:
        """Attach a running container to ``network`` under ``aliases``: from now on the network's DNS
        answers those names with its address too (how a proxied environment adds a backend)."""
        self._call(
            f"connect {container} to {network}",
            self._client.api.connect_container_to_network,
            container,
            network,
            aliases=list(aliases),
        )

    def remove_network(self, name: str) -> bool:
        """Remove the network; True when something was removed (False: none of that name)."""
        try:
            self._call(f"remove network {name}", self._client.api.remove_network, name)
            return True
        except EngineNotFound:
            return False

    # housekeeping (orchestrator.prune) ------------------------------------------------------------

    def images(self) -> list[ImageInfo]:
        """Every image ``docker images`` shows (tagged or digested, and dangling ones; never the
        intermediate layers of a build), from one list call: inspecting each would cost one round trip
        per image on a busy engine. ``prune`` picks the app's own images out of these by name."""
        rows = self._call("list images", self._api.images, all=False)
        return [_listed_image(row) for row in rows]

    def containers(self, labels: Mapping[str, str] | None = None) -> list[ListedContainer]:
        """Every container, running or not, from one list call: an image any of them uses is in use,
        whichever app (or person) started it. ``labels`` keeps only those carrying all of them."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]} if labels else None
        rows = self._call("list containers", self._api.containers, all=True, filters=filters)
        return [_listed_container(row) for row in rows]

    def remove_stopped_container(self, container_id: str) -> bool:
        """Remove a container only if it is not running: without force the engine itself refuses a
        running one (DockerError), so a container someone restarted since it was listed stays.
        Its anonymous volumes go with it. True when something was removed."""
        try:
            found = self._call(f"inspect container {container_id}", self._api.inspect_container, container_id)
            name = str(found["Name"]).lstrip("/")
            self._call(
                f"remove container {name}", self._api.remove_container, container_id, force=False, v=True
            )
            return True
        except EngineNotFound:
            return False


def _container_config(
    image: str,
    *,
    environment: Mapping[str, str] | None = None,
    command: list[str] | None = None,
    host_network: bool = True,
    publish: Mapping[int, tuple[str, int | None]] | None = None,
    labels: Mapping[str, str] | None = None,
    restart: bool = False,
    network: str | None = None,
    aliases: Sequence[str] = (),
    user: str | None = None,
    binds: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The body of ``POST /containers/create`` for DockerEngine.run's arguments, as the SDK's
    ``create_container`` wrote it for them (docker/types/containers.py), built here once for both
    ways of sending it (EngineApi, or the SDK's ``create_container_from_config``)."""
    publish = None if host_network else publish
    host_config: dict[str, Any] = {"NetworkMode": "host" if host_network else network or "default"}
    if publish:
        host_config["PortBindings"] = {
            f"{port}/tcp": [{"HostIp": ip, "HostPort": "" if host_port is None else str(host_port)}]
            for port, (ip, host_port) in publish.items()
        }
    if restart:
        host_config["RestartPolicy"] = {"Name": "unless-stopped"}
    if binds:
        host_config["Binds"] = [f"{host}:{inside}:rw" for host, inside in binds.items()]
    endpoint = {"Aliases": list(aliases)} if aliases else {}
    return {
        "Image": image,
        "Cmd": command,
        "Env": [f"{k}={v}" for k, v in (environment or {}).items()],
        "Labels": dict(labels or {}),
        "User": user,
        "ExposedPorts": {f"{port}/tcp": {} for port in publish} if publish else None,
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "NetworkDisabled": False,
        "HostConfig": host_config,
        "NetworkingConfig": {"EndpointsConfig": {network: endpoint}} if network is not None else None,
    }


def _tar(files: Mapping[str, bytes]) -> bytes:
    """A tar archive of ``files`` (absolute paths), with their parent directories, for put_archive."""
    import tarfile  # with shutil, bz2 and lzma: only for a container given files (a proxy's config)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        made: set[str] = set()
        for path, content in files.items():
            parts = PurePosixPath(path).relative_to("/").parts
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in made:
                    made.add(folder)
                    info = tarfile.TarInfo(folder)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            info = tarfile.TarInfo("/".join(parts))
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@dataclass(frozen=True)
class ListedContainer:
    """A container as ``docker ps -a`` lists it, with when it was created (housekeeping keeps the
    newest stopped one per environment)."""

    info: ContainerInfo
    created: float  # seconds since the epoch


def _listed_image(row: Mapping[str, Any]) -> ImageInfo:
    """An image from the list endpoint, whose shape differs from inspect's (labels at the top level,
    ``<none>`` placeholders for a missing tag or digest)."""
    return ImageInfo(
        id=row["Id"],
        tags=tuple(t for t in row.get("RepoTags") or () if t != "<none>:<none>"),
        labels=dict(row.get("Labels") or {}),
        repo_digests=tuple(d for d in row.get("RepoDigests") or () if d != "<none>@<none>"),
        size=int(row.get("Size") or 0),
    )


def _listed_container(row: Mapping[str, Any]) -> ListedContainer:
    names = row.get("Names") or []
    info = ContainerInfo(
        id=row["Id"],
        name=names[0].lstrip("/") if names else row["Id"][:12],
        image_id=row.get("ImageID") or "",
        status=row.get("State") or "unknown",
        labels=dict(row.get("Labels") or {}),
    )
    return ListedContainer(info, float(row.get("Created") or 0))


# swarm services (orchestrator.runtimes.swarm) -----------------------------------------------------


@dataclass(frozen=True)
class ServiceSpec:
    """What a swarm service should be: ``image`` is always ``repo@sha256:...`` (a tag would let each node
    resolve it on its own, at its own time). ``container_labels`` go on every task's container (so what
    runs can be read back per task); ``labels`` on the service only (changing them restarts nothing)."""

    name: str
    image: str
    replicas: int
    network: str
    environment: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    container_labels: Mapping[str, str] = field(default_factory=dict)
    monitor_s: float = 5.0
    # How long a task told to stop may take before it is killed: the drain time (Settings.drain_s),
    # so an app that finishes what it is answering before it exits is not cut mid-request.
    stop_grace_s: float = 5.0
    # Ports published through the routing mesh (published -> target, tcp, ingress mode); empty: none
    # (a proxy on the service's network publishes the environment's port instead).
    ingress_ports: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceInfo:
    """A swarm service as the engine inspects it: the spec in force (image, replicas, labels, published ports)
    and Swarm's own account of its last update, which ``runtimes.swarm.judge`` weighs with the tasks."""

    id: str
    name: str
    version: int
    image: str
    replicas: int
    labels: Mapping[str, str]
    # Swarm's own account of the last update: None (never updated), updating, paused, completed,
    # rollback_started, rollback_paused or rollback_completed, and why.
    update_state: str | None = None
    update_message: str | None = None
    previous_image: str | None = None
    # When the spec last changed and when Swarm started its last update (engine clock, RFC 3339): an
    # update status older than the spec belongs to an earlier update, not to the spec now in force.
    updated_at: str | None = None
    update_started_at: str | None = None
    # What the service publishes (published -> target), as its spec asks: a published port is held on
    # every node of the swarm, so a proxy cannot take it until an update has left it out.
    published_ports: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskInfo:
    """One task Swarm keeps for a service (running, starting, or from its recent history): the image its spec
    names, its desired and actual state, its container and node, and what Swarm said about it."""

    id: str
    slot: int | None
    image: str  # the task spec's image reference (repo@sha256:...)
    desired_state: str
    state: str
    container_id: str | None
    error: str | None
    message: str | None
    updated_at: str | None
    # The swarm node the task was scheduled on ("" while it is not assigned yet).
    node_id: str = ""
    # The labels its spec puts on its container (the same on every node: they are part of the spec).
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state == "running" and self.desired_state == "running"


def _service(attrs: Mapping[str, Any]) -> ServiceInfo:
    spec = attrs.get("Spec") or {}
    container = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    previous = ((attrs.get("PreviousSpec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
    status = attrs.get("UpdateStatus") or {}
    return ServiceInfo(
        id=attrs["ID"],
        name=spec.get("Name", ""),
        version=int((attrs.get("Version") or {}).get("Index", 0)),
        image=container.get("Image", ""),
        replicas=int(((spec.get("Mode") or {}).get("Replicated") or {}).get("Replicas", 0)),
        labels=dict(spec.get("Labels") or {}),
        update_state=status.get("State") or None,
        update_message=status.get("Message") or None,
        previous_image=previous.get("Image") or None,
        updated_at=attrs.get("UpdatedAt") or None,
        update_started_at=status.get("StartedAt") or None,
        published_ports={
            int(p["PublishedPort"]): int(p.get("TargetPort") or 0)
            for p in (spec.get("EndpointSpec") or {}).get("Ports") or ()
            if p.get("PublishedPort")
        },
    )


def _task(attrs: Mapping[str, Any]) -> TaskInfo:
    status = attrs.get("Status") or {}
    spec = (attrs.get("Spec") or {}).get("ContainerSpec") or {}
    container = spec.get("Image", "")
    return TaskInfo(
        id=attrs["ID"],
        slot=attrs.get("Slot"),
        image=container,
        desired_state=attrs.get("DesiredState", ""),
        state=status.get("State", ""),
        container_id=((status.get("ContainerStatus") or {}).get("ContainerID")) or None,
        error=status.get("Err") or None,
        message=status.get("Message") or None,
        updated_at=attrs.get("UpdatedAt"),
        node_id=attrs.get("NodeID") or "",
        labels=dict(spec.get("Labels") or {}),
    )


class SwarmEngine:
    """Swarm calls on a DockerEngine's client (``DockerEngine.swarm``), kept apart so the container API
    above reads without them; errors are translated the same way. The overlay network a service joins
    is made by ``DockerEngine.ensure_network(name, driver="overlay")``, as for the proxy."""

    def __init__(self, engine: DockerEngine) -> None:
        self._engine = engine
        self._api = engine._client.api

    def manager(self) -> bool:
        """Whether this engine can manage services (a swarm manager); a worker or a plain engine cannot."""
        info = self._engine._call("engine info", self._api.info)
        swarm = info.get("Swarm") or {}
        return swarm.get("LocalNodeState") == "active" and bool(swarm.get("ControlAvailable"))

    def node_id(self) -> str:
        """This engine's own swarm node ("" outside a swarm): a task whose NodeID is this one has its
        container here; any other task's container lives on another node's engine."""
        info = self._engine._call("engine info", self._api.info)
        return str((info.get("Swarm") or {}).get("NodeID") or "")

    def service(self, name: str) -> ServiceInfo | None:
        try:
            return _service(self._engine._call(f"inspect service {name}", self._api.inspect_service, name))
        except EngineNotFound:
            return None

    def tasks(self, name: str) -> list[TaskInfo]:
        """Every task Swarm keeps for the service (running, starting, and the recent history it retains);
        none when there is no such service."""
        try:
            rows = self._engine._call(f"list tasks of {name}", self._api.tasks, filters={"service": name})
        except EngineNotFound:  # no such service: no tasks
            return []
        return [_task(row) for row in rows if (row.get("ServiceID") and row.get("Spec"))]

    def task_logs(self, task_id: str, *, tail: int = 50, timeout_s: float = 10) -> str:
        """The last ``tail`` lines (stdout and stderr) of one task's container, wherever it runs: a
        manager answers ``GET /tasks/{id}/logs`` for a task on any node by asking that node's agent, so
        this reads the log of a task on another node without a connection to that node's engine.

        The SDK has no call for it (only ``service_logs``, which mixes every task of a service): this is
        its ``service_logs`` with the tasks endpoint, the same parameters and the same multiplexed
        stream. Reads wait at most ``timeout_s`` for the manager: the agent of a node that is down never
        answers it. A manager that refuses, does not know the task, or goes silent is a DockerError;
        the caller keeps the log out of its evidence then."""
        what = f"logs of task {task_id[:12]}"
        api = self._api
        try:
            with _translated(what):
                attrs = api.inspect_task(task_id)
                tty = bool(((attrs.get("Spec") or {}).get("ContainerSpec") or {}).get("TTY"))
                params = {"stdout": True, "stderr": True, "follow": False, "timestamps": False, "tail": tail}
                response = api._get(
                    api._url("/tasks/{0}/logs", task_id), params=params, stream=True, timeout=timeout_s
                )
                raw = api._get_result_tty(False, response, tty)
        except EngineNotFound as exc:
            raise DockerError(f"{what}: no such task ({exc})") from None
        except InfraUnavailable as exc:
            # The manager answered the inspection just before: a silent logs request is the node.
            raise DockerError(f"{what}: nothing within {timeout_s:g} s ({exc})") from None
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)

    @staticmethod
    def _template(spec: ServiceSpec) -> dict[str, Any]:
        from docker import types

        container = types.ContainerSpec(
            spec.image,
            env=dict(spec.environment),
            labels=dict(spec.container_labels),
            # The app's own HEALTHCHECK (if any) decides when a task is up; none is added here.
            # Swarm takes a task out of DNS ~2 s before its SIGTERM; the grace period after it is
            # what an app that drains on SIGTERM has left to finish its requests.
            stop_grace_period=int(spec.stop_grace_s * 1_000_000_000),
        )
        return types.TaskTemplate(
            container,
            restart_policy=types.RestartPolicy(condition="any", delay=1_000_000_000),
            networks=[types.NetworkAttachmentConfig(spec.network)],
        )

    @staticmethod
    def _update_configs(spec: ServiceSpec) -> tuple[Any, Any]:
        from docker import types

        monitor = int(spec.monitor_s * 1_000_000_000)
        update = types.UpdateConfig(
            parallelism=1,
            delay=0,
            failure_action="rollback",
            monitor=monitor,
            max_failure_ratio=0.0,
            order="start-first",
        )
        rollback = types.RollbackConfig(
            parallelism=1,
            delay=0,
            failure_action="pause",
            monitor=monitor,
            max_failure_ratio=0.0,
            order="start-first",
        )
        return update, rollback

    def create_service(self, spec: ServiceSpec) -> None:
        self._engine._call(
            f"create service {spec.name}", self._api.create_service, self._template(spec), **self._spec(spec)
        )

    def update_service(self, spec: ServiceSpec, *, version: int) -> list[str]:
        """Replace the service's whole spec (declarative: an unchanged spec restarts nothing). ``version``
        is the one read before deciding: a concurrent change makes the engine refuse (DockerError)
        instead of silently overwriting. Returns the engine's warnings."""

        answer = self._engine._call(
            f"update service {spec.name}",
            self._api.update_service,
            spec.name,
            version,
            task_template=self._template(spec),
            **self._spec(spec),
        )
        return list((answer or {}).get("Warnings") or [])

    def _spec(self, spec: ServiceSpec) -> dict[str, Any]:
        """What a create and an update both send besides the task template: the whole spec each time."""
        from docker import types

        update, rollback = self._update_configs(spec)
        return {
            "name": spec.name,
            "labels": dict(spec.labels),
            "mode": types.ServiceMode("replicated", replicas=spec.replicas),
            "update_config": update,
            "rollback_config": rollback,
            # Published through the routing mesh only when asked (swarm_publish = "ingress"): the mesh
            # does not answer everywhere, and two tasks cannot publish one host port on one node, so by
            # default a proxy on the same network publishes it instead. Sent every time, so an update
            # without ingress_ports takes a port the service published off it.
            "endpoint_spec": types.EndpointSpec(
                mode="vip",
                ports={
                    published: (target, "tcp", "ingress") for published, target in spec.ingress_ports.items()
                }
                or None,
            ),
        }

    def remove_service(self, name: str) -> bool:
        try:
            self._engine._call(f"remove service {name}", self._api.remove_service, name)
            return True
        except EngineNotFound:
            return False
