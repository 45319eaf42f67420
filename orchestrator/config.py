"""orchestrator.toml + ORCH_* variables -> frozen dataclasses. All validation lives here.

A deploy tool that silently reads a typo as "off" is worse than one that refuses to start, so every
value is checked and every unknown key or variable is an error (exit 2) that names the offender.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from orchestrator.errors import BadInput

CONFIG_FILENAME = "orchestrator.toml"
DEFAULT_DB_PATH = Path(".orchestrator") / "orchestrator.db"
ENV_PREFIX = "ORCH_"

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
# The patterns of this module are kept as text and matched by ``re.match(pattern, text)``: ``re`` compiles a
# pattern on its first use and keeps it, so a command pays only for the ones it uses (compiling all of them
# at import cost every command about a millisecond).
# App names become image repositories and container names, which Docker only accepts in lowercase.
_APP_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


@dataclass(frozen=True)
class BuildSecret:
    """A build secret: BuildKit mounts it for ``RUN --mount=type=secret,id=<id>`` and it never enters the
    image, its history, the database or the logs. The config names where the value comes from (an
    environment variable of the orchestrator's process, or a file), never the value itself."""

    id: str
    env: str | None = None
    file: Path | None = None

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"


# The proxy image users run (its entrypoint is haproxy; tests build one from Debian's binary).
DEFAULT_PROXY_IMAGE = "haproxy:2.8"


LOCAL_ENGINE_NAME = "local"


@dataclass(frozen=True)
class TlsFiles:
    """Client certificates for a ``tcp://`` engine (paths; read by the SDK when it connects)."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class EngineTarget:
    """Where an environment's Docker engine is. ``url`` None is this machine's engine (DOCKER_HOST or
    the default socket), as before per-environment engines existed.

    Only where the engine is and how to reach it: credentials stay with the system ssh client
    (keys, known_hosts) or in the certificate files, never in the config, the database or a message."""

    url: str | None = None
    tls: TlsFiles | None = None
    # The address health checks and /version probes go to when it is not the URL's host (NAT, a proxy).
    health_host: str | None = None

    @property
    def is_local(self) -> bool:
        return self.url is None

    @property
    def key(self) -> str:
        """Two environments share an engine exactly when their keys are equal (one connection, no
        registry transfer between them)."""
        return self.url or LOCAL_ENGINE_NAME

    @property
    def host(self) -> str:
        """What messages and records call this engine: ``user@host:port`` without the scheme, or
        ``local``. A URL never carries a password (refused at load), so this is safe to print."""
        if self.url is None:
            return LOCAL_ENGINE_NAME
        parts = urllib.parse.urlsplit(self.url)
        return parts.netloc or parts.path

    @property
    def address(self) -> str:
        """Where the environment's published ports answer: ``health_host``, else the engine's host
        name; loopback for this machine's engine and for a unix socket."""
        if self.health_host:
            return self.health_host
        if self.url is None:
            return "127.0.0.1"
        parts = urllib.parse.urlsplit(self.url)
        return parts.hostname or "127.0.0.1"


LOCAL_ENGINE = EngineTarget()


@dataclass(frozen=True)
class AppConfig:
    """One app of ``[apps.<name>]``, validated: where its source and Dockerfile are, its ports and health
    path, and how each environment runs it (a container, a compose service or a swarm service) and where."""

    name: str
    source: Path
    # The build context: a directory of the repository (``app`` in a monorepo); "." is the whole tree.
    context: str = "."
    # Relative to the context, as Docker reads it; a path relative to the repository root is accepted
    # where no such file exists in the context (what ``dockerfile`` meant before ``context`` existed).
    dockerfile: str = "Dockerfile"
    # The Dockerfile stage to build (``docker build --target``); None: the last one.
    target: str | None = None
    health_path: str = "/health"
    staging_port: int = 8501
    prod_port: int = 8500
    # Publish on 127.0.0.1:<env port> -> container_port instead of host networking.
    container_port: int | None = None
    # Apps that serve their revision over HTTP name the path; the others are proven by label + image id.
    version_path: str | None = None
    # Extra build args (GIT_SHA is always set by the orchestrator and cannot be overridden here).
    build_args: Mapping[str, str] = field(default_factory=dict)
    # BuildKit build secrets by id (``secrets = { npm = "env:NPM_TOKEN" }``): for credentials a build
    # needs, which as build args would be stored in the image history and pushed with it.
    secrets: Mapping[str, BuildSecret] = field(default_factory=dict)
    # Extra environment for the app's containers (PORT and ORCH_ENVIRONMENT are set by the orchestrator).
    env: Mapping[str, str] = field(default_factory=dict)
    # Push promoted images here (host[:port][/namespace]) and pin by registry digest.
    registry: str | None = None
    # Compose apps: the orchestrator pins these services through an override file and runs
    # `docker compose up -d <service>` instead of creating containers itself.
    compose_file: Path | None = None
    staging_service: str | None = None
    prod_service: str | None = None
    override_file: Path | None = None
    # false = the plain-tag deploy (`image: repo:latest` as written): only for showing the no-op hazard.
    pin_digests: bool = True
    # Compose apps: "own" runs staging in a compose project of its own (<project>-staging: its own
    # networks, named volumes and dependent services, so staging never writes prod's database);
    # "prod" shares prod's project and everything in it, on purpose.
    staging_project: str = "own"
    # Pinned overrides kept per environment as rollback anchors.
    keep_releases: int = 5
    # Environments whose edge waits for a person (`orchestrator approve RUN`): ``true`` means prod,
    # a list names them (["staging", "prod"]). Empty: no approval.
    require_approval: frozenset[str] = frozenset()
    # How each environment runs when it is not a compose service: "direct" (one container) or "swarm"
    # (a Docker Swarm service pinned by registry digest). ``runtime = "swarm"`` in the config means both
    # environments; a table (``runtime = { prod = "swarm" }``) names them one by one.
    runtime: Mapping[str, str] = field(default_factory=dict)
    # Swarm environments: tasks per service (two, so a start-first update always has one serving), the
    # attachable overlay network the service and its proxy share (None: ``orch-<app>``), and how long
    # Swarm watches each new task before it counts the update as good (a task failing within that
    # window makes Swarm roll the service back by itself).
    replicas: int = 2
    swarm_network: str | None = None
    update_monitor_s: float = 5.0
    # Swarm apps deployed as a stack (``docker stack deploy -c stack_file``): ``stack_service`` is the
    # app's service in it, the only one pinned (by digest, through an override file beside the stack
    # file, like compose); every other service runs as the stack file says.
    stack_file: Path | None = None
    stack_service: str | None = None
    # How a swarm environment's port reaches its tasks: "proxy" (a kept haproxy container on the manager
    # publishes it and finds the tasks by DNS; works on one node, where the routing mesh may not answer)
    # or "ingress" (the service publishes it through Swarm's routing mesh, on every node, no proxy: for
    # clusters where the mesh works). A string means every swarm environment; a table names them.
    swarm_publish: Mapping[str, str] = field(default_factory=dict)
    # Zero-downtime promotion (runtimes/direct.py ProxiedRuntime): a kept haproxy container owns each
    # environment's port and the release's containers sit behind it on a Docker network, so a new
    # release starts, is checked and takes traffic before the old one stops. Needs container_port.
    zero_downtime: bool = False
    proxy_image: str = DEFAULT_PROXY_IMAGE

    # The Docker engine of each environment (``docker_host``, per app or per ``[apps.X.<env>]``, or
    # ORCH_DOCKER_HOST_<ENV>); an environment not named here runs on this machine's engine.
    engines: Mapping[str, EngineTarget] = field(default_factory=dict)
    # Where images are built (``build_host``); None: on staging's engine.
    build_engine: EngineTarget | None = None

    def engine(self, env: str) -> EngineTarget:
        return self.engines.get(env, LOCAL_ENGINE)

    @property
    def builds_on(self) -> EngineTarget:
        return self.build_engine if self.build_engine is not None else self.engine("staging")

    @property
    def remote_environments(self) -> tuple[str, ...]:
        """Environments whose engine is not the build engine: their image travels through the registry."""
        return tuple(env for env in ("staging", "prod") if self.engine(env).key != self.builds_on.key)

    @property
    def is_compose(self) -> bool:
        # Config parsing always derives override_file for compose apps; both are checked for the type checker.
        return self.compose_file is not None and self.override_file is not None

    def runtime_of(self, env: str) -> str:
        """ "compose", "direct" or "swarm": how ``env`` runs."""
        if self.is_compose:
            return "compose"
        return self.runtime.get(env, "direct")

    def publish_of(self, env: str) -> str:
        """ "proxy" or "ingress": how a swarm environment's port reaches its tasks."""
        return self.swarm_publish.get(env, "proxy")

    @property
    def swarm_environments(self) -> frozenset[str]:
        return frozenset(env for env, kind in self.runtime.items() if kind == "swarm")

    @property
    def network(self) -> str:
        """The overlay network of the app's swarm services (and the proxy in front of them)."""
        return self.swarm_network or f"orch-{self.name}"

    @property
    def task_port(self) -> int:
        """The port the app listens on (0.0.0.0) inside a swarm task: it has its own network namespace,
        so every task may use the same one; the proxy publishes the environment's port."""
        return self.container_port or SWARM_TASK_PORT

    def service(self, env: str) -> str:
        name = self.staging_service if env == "staging" else self.prod_service
        assert name is not None, "compose apps always name both services"
        return name


@dataclass(frozen=True)
class Settings:
    """The ``[orchestrator]`` table with the ORCH_* variables over it (a variable wins), validated: what holds
    for every app, such as the database, logging, timeouts, leases and the builder."""

    database_url: str
    log_format: str = "auto"
    log_level: str = "info"
    image_freshness_enabled: bool = True
    image_freshness_repos: frozenset[str] = frozenset()
    health_timeout_s: float = 30.0
    health_interval_s: float = 0.05
    # zero_downtime: how long the proxy may wait for the requests an old release is answering to end
    # before it is stopped anyway (those still in flight then are cut).
    drain_s: float = 5.0
    registry: str | None = None
    keep_releases: int = 5
    # How long a step may take before it is ended as a timeout (StepTimeout, exit 4): a hung registry or
    # a build waiting on the network must not hold the environment's lock forever.
    build_timeout_s: float = 1800.0
    push_timeout_s: float = 600.0
    pull_timeout_s: float = 600.0
    staging_check_timeout_s: float = 120.0
    compose_timeout_s: float = 600.0
    # How long a swarm service may take to converge on an update (every task replaced, healthy and past
    # its monitor window) before the step is ended as a timeout.
    swarm_timeout_s: float = 600.0
    # A lock holder's lease: it renews every third of this while alive, so a runner that died frees
    # the environment after at most one lease instead of leaving it locked until someone notices.
    lock_lease_s: float = 30.0
    # auto: BuildKit when a docker CLI here can drive it, else the legacy builder (builders.py).
    builder: str = "auto"
    # The docker CLI BuildKit builds run with; None: the first `docker` on PATH that can.
    docker_cli: str | None = None
    # After every successful promotion to prod, prune the app's images, stopped containers and override
    # anchors that no kept release (keep_releases per environment) references: a host deploying many
    # times a day otherwise fills its disk with images nothing will ever run again.
    prune_after_deploy: bool = True
    # `run start` sends the run's staging build at once and parks it for the staging advance
    # (parking.py): off where the advance runs on another machine, whose build this one would waste.
    build_at_run_start: bool = True
    # Webhooks told about every outcome (orchestrator/notify.py): a JSON POST each, never blocking a deploy.
    notify_urls: tuple[str, ...] = ()
    # Per attempt (3 attempts); a command waits at most about three times this for its notifications.
    notify_timeout_s: float = 5.0
    # How long a remote engine (docker_host) may take to connect and answer, ssh handshake included, and
    # about how long a connection whose host stopped answering is kept: a blackholed host is exit 4
    # after this, not a hang.
    engine_connect_timeout_s: float = 15.0
    # ssh:// engines: every request of a command over one shared ssh connection (orchestrator/ssh.py);
    # false: the docker SDK's own transport, one ssh connection (a full handshake) per request.
    ssh_multiplex: bool = True

    def freshness_applies_to(self, app: str) -> bool:
        """The kill-switch: off globally, or on but scoped to other apps."""
        if not self.image_freshness_enabled:
            return False
        return not self.image_freshness_repos or app in self.image_freshness_repos


@dataclass(frozen=True)
class Config:
    """What ``load_config`` returns: the settings, every app by name, and how the config file and the database
    were chosen; ``app`` looks an app up, refusing an unknown name with the ones it knows."""

    settings: Settings
    apps: Mapping[str, AppConfig] = field(default_factory=dict)
    path: Path | None = None
    # Non-fatal findings the CLI logs as warnings (e.g. a freshness scope naming apps defined elsewhere).
    warnings: tuple[str, ...] = ()
    # How the config file and the database were chosen, for `--verbose` and `status`: an operator looking
    # at an empty history must be able to see at once that it is the wrong file, not a lost one.
    config_source: str = "none found"
    database_source: str = "default"

    def app(self, name: str) -> AppConfig:
        try:
            return self.apps[name]
        except KeyError:
            if self.path is None:
                raise BadInput(
                    f"unknown app {name!r}: no {CONFIG_FILENAME} in {Path.cwd()} or its parent directories "
                    f"(pass --config PATH or set ORCH_CONFIG)"
                ) from None
            known = ", ".join(sorted(self.apps)) or "none"
            raise BadInput(f"unknown app {name!r} in {self.path} (known apps: {known})") from None


# The port an app listens on inside a swarm task when container_port does not say.
SWARM_TASK_PORT = 8080

# Every ORCH_* variable the orchestrator reads, with its meaning; .env.example mirrors this table.
ENV_VARS: dict[str, str] = {
    "ORCH_CONFIG": "path to orchestrator.toml (default: orchestrator.toml in the current directory or its "
    "nearest parent that has one)",
    "ORCH_DATABASE_URL": "SQLAlchemy URL (default: SQLite in .orchestrator/orchestrator.db beside the config "
    "file)",
    "ORCH_LOG_FORMAT": "auto | json | console",
    "ORCH_LOG_LEVEL": "debug | info | warning | error",
    "ORCH_IMAGE_FRESHNESS_ENABLED": "kill-switch for check_staging_image_fresh (default true)",
    "ORCH_IMAGE_FRESHNESS_REPOS": "comma-separated apps the freshness check applies to (empty: all)",
    "ORCH_HEALTH_TIMEOUT_S": "seconds a health check waits for a green answer (default 30)",
    "ORCH_HEALTH_INTERVAL_S": "seconds between health polls (default 0.05)",
    "ORCH_DRAIN_S": "zero_downtime: seconds the proxy waits for an old release's requests in flight to end "
    "before it is stopped (default 5)",
    "ORCH_REGISTRY": "registry (host:port[/namespace]) apps push promoted images to (default: none)",
    "ORCH_KEEP_RELEASES": "releases kept per environment: their images and override anchors are never pruned "
    "(default 5)",
    "ORCH_PRUNE_AFTER_DEPLOY": "prune what no kept release needs after each successful promotion to prod "
    "(default true)",
    "ORCH_BUILD_AT_RUN_START": "`run start` sends the staging build at once, parked for the staging advance "
    "(default true; false where the advance runs on another machine)",
    "ORCH_BUILD_TIMEOUT_S": "seconds a build may take before it is ended as a timeout (default 1800)",
    "ORCH_PUSH_TIMEOUT_S": "seconds a push may take before it is ended as a timeout (default 600)",
    "ORCH_PULL_TIMEOUT_S": "seconds a pull may take before it is ended as a timeout (default 600)",
    "ORCH_STAGING_CHECK_TIMEOUT_S": "seconds the staging check may take before it is ended as a timeout "
    "(default 120)",
    "ORCH_COMPOSE_TIMEOUT_S": "seconds a `docker compose` command may take before it is ended as a timeout "
    "(default 600)",
    "ORCH_SWARM_TIMEOUT_S": "seconds a swarm service update may take to converge before it is ended as a "
    "timeout (default 600)",
    "ORCH_LOCK_LEASE_S": "seconds a lock holder's lease lasts without renewal; it renews every third of "
    "that (default 30)",
    "ORCH_BUILDER": "auto | buildkit | legacy: which builder builds images (default auto: BuildKit when a "
    "docker CLI here can drive it, else the legacy builder)",
    "ORCH_DOCKER_CLI": "the docker CLI BuildKit builds run with (default: the first `docker` on PATH with "
    "buildx or embeds BuildKit)",
    "ORCH_NOTIFY_URLS": "comma-separated webhook URLs (http or https) that get a JSON POST on every outcome "
    "(default: none)",
    "ORCH_NOTIFY_TIMEOUT_S": "seconds each notification attempt may take (3 attempts; default 5)",
    "ORCH_DOCKER_HOST_STAGING": "Docker engine of every app's staging (ssh://user@host[:port], "
    "tcp://host:port with the app's TLS files, or unix:///path); overrides docker_host in the config "
    "(default: this machine's engine)",
    "ORCH_DOCKER_HOST_PROD": "Docker engine of every app's prod, as ORCH_DOCKER_HOST_STAGING",
    "ORCH_ENGINE_CONNECT_TIMEOUT_S": "seconds a remote engine may take to connect and answer (ssh "
    "handshake included) before it is unreachable, exit 4; also about how long a connection to a host "
    "that stopped answering is kept (default 15)",
    "ORCH_SSH_MULTIPLEX": "ssh:// engines: one shared ssh connection per engine for all of a command's "
    "requests (default true); false: one ssh connection per request (the docker SDK's transport)",
    "ORCH_SERVE_HOST": "address `orchestrator serve` binds (default 127.0.0.1)",
    "ORCH_REVISION": "commit `orchestrator serve` reports on /version (the Dockerfile sets it from GIT_SHA)",
    "ORCH_API_TOKEN": "bearer token `orchestrator serve` requires on its state-changing API endpoints "
    "(unset: they are disabled)",
    # Not settings: read by orchestrator.steps for the crash tests, listed so they are not refused.
    "ORCH_TEST_CRASH_AT": (
        "test-only: <before|after>:<step name>: the process signals itself at that step boundary"
    ),
    "ORCH_TEST_CRASH_SIGNAL": "test-only: KILL (default), TERM or STOP",
}

# Seconds, at least 1: a shorter limit would end healthy steps (and leases) on scheduling noise.
_LIMIT_KEYS = (
    "build_timeout_s",
    "push_timeout_s",
    "pull_timeout_s",
    "staging_check_timeout_s",
    "compose_timeout_s",
    "swarm_timeout_s",
    "lock_lease_s",
)


def parse_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BadInput(f"{name}={raw!r} is not a boolean: use true/false, 1/0 or yes/no")


def _parse_float(name: str, raw: Any, *, minimum: float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise BadInput(f"{name}={raw!r} is not a number") from None
    if isinstance(raw, bool) or not math.isfinite(value) or value < minimum:
        raise BadInput(f"{name}={raw!r} must be a number >= {minimum}")
    return value


def _parse_port(name: str, raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 65535:
        raise BadInput(f"{name}={raw!r} must be a port number between 1 and 65535")
    return raw


def _parse_http_path(name: str, raw: Any) -> str:
    if not isinstance(raw, str) or not raw.startswith("/"):
        raise BadInput(f"{name}={raw!r} must be an HTTP path starting with '/'")
    return raw


def _parse_str_table(name: str, raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str | int | float) for v in raw.values()):
        raise BadInput(f"{name} must be a table of names to string values")
    return {str(k): str(v) for k, v in raw.items()}


def _parse_choice(name: str, raw: Any, choices: tuple[str, ...]) -> str:
    text = str(raw).strip().lower()
    if text not in choices:
        raise BadInput(f"{name}={raw!r} must be one of: {', '.join(choices)}")
    return text


@dataclass(frozen=True)
class _Database:
    """The database URL ``_database`` settled on, how it was chosen (for ``Config.database_source``), and
    warnings about a history left where earlier versions kept it."""

    url: str
    source: str
    warnings: tuple[str, ...] = ()


def _parse_settings(
    table: Mapping[str, Any], env: Mapping[str, str], cfg_path: Path | None = None
) -> tuple[Settings, _Database]:
    known = {f.name for f in fields(Settings)}
    unknown = set(table) - known
    if unknown:
        raise BadInput(f"unknown key(s) in [orchestrator]: {', '.join(sorted(unknown))}")
    stray = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in ENV_VARS)
    if stray:
        raise BadInput(_unknown_variables(stray))

    def pick(key: str) -> tuple[str, Any] | None:
        var = ENV_PREFIX + key.upper()
        if var in env:
            return var, env[var]
        if key in table:
            return f"[orchestrator].{key}", table[key]
        return None

    values: dict[str, Any] = {}
    database = _database(pick("database_url"), cfg_path)
    values["database_url"] = database.url
    if got := pick("log_format"):
        values["log_format"] = _parse_choice(*got, ("auto", "json", "console"))
    if got := pick("log_level"):
        values["log_level"] = _parse_choice(*got, ("debug", "info", "warning", "error"))
    if got := pick("image_freshness_enabled"):
        values["image_freshness_enabled"] = parse_bool(*got)
    if got := pick("image_freshness_repos"):
        values["image_freshness_repos"] = _parse_app_names(*got)
    if got := pick("health_timeout_s"):
        values["health_timeout_s"] = _parse_float(*got, minimum=0.1)
    if got := pick("health_interval_s"):
        values["health_interval_s"] = _parse_float(*got, minimum=0.01)
    if got := pick("drain_s"):
        values["drain_s"] = _parse_float(*got, minimum=0)
    if got := pick("registry"):
        values["registry"] = _parse_registry(*got) or None
    if got := pick("keep_releases"):
        values["keep_releases"] = _parse_int(*got, minimum=1)
    if got := pick("prune_after_deploy"):
        values["prune_after_deploy"] = parse_bool(*got)
    if got := pick("build_at_run_start"):
        values["build_at_run_start"] = parse_bool(*got)
    for key in _LIMIT_KEYS:
        if got := pick(key):
            values[key] = _parse_float(*got, minimum=1)
    if got := pick("notify_urls"):
        values["notify_urls"] = _parse_urls(*got)
    if got := pick("notify_timeout_s"):
        values["notify_timeout_s"] = _parse_float(*got, minimum=0.1)
    if got := pick("engine_connect_timeout_s"):
        values["engine_connect_timeout_s"] = _parse_float(*got, minimum=1)
    if got := pick("ssh_multiplex"):
        values["ssh_multiplex"] = parse_bool(*got)
    if got := pick("builder"):
        values["builder"] = _parse_choice(*got, ("auto", "buildkit", "legacy"))
    if got := pick("docker_cli"):
        name, raw = got
        if not isinstance(raw, str) or not raw.strip():
            raise BadInput(f"{name} must be the path (or name on PATH) of a docker CLI")
        values["docker_cli"] = raw.strip()
    return Settings(**values), database


def _parse_urls(name: str, raw: Any) -> tuple[str, ...]:
    """A TOML list or a comma-separated string of http(s) URLs. The message never repeats a URL: a
    webhook's path is often its credential."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    urls = tuple(str(i).strip() for i in items if str(i).strip())
    for position, url in enumerate(urls, 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInput(
                f"{name}: entry {position} is not an http(s) URL with a host (e.g. "
                "https://hooks.example.com/deploys)"
            )
    return urls


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.as_posix()}"


def _database(got: tuple[str, Any] | None, cfg_path: Path | None) -> _Database:
    """The database URL and how it was chosen.

    The history belongs to the config file, not to wherever the command happens to run: with the
    default beside the current directory, ``--config ../deploy/orchestrator.toml`` run from elsewhere
    showed an empty history and would have started a second one (with its own locks, so two runners
    could promote the same app at once). So the default is ``<config dir>/.orchestrator/orchestrator.db``,
    and a relative SQLite path in ``[orchestrator].database_url`` is read relative to the config file like
    every other path in it. ``ORCH_DATABASE_URL`` is taken as given (a relative SQLite path in it is
    relative to the current directory, as for any shell variable naming a file).
    """
    base = cfg_path.resolve().parent if cfg_path is not None else None
    if got is not None:
        name, raw = got
        if not isinstance(raw, str) or not raw.strip():
            raise BadInput(f"{name} must be a non-empty SQLAlchemy URL")
        url = raw.strip()
        if name.startswith("[") and base is not None:
            url = _relative_sqlite_to(url, base)
            return _Database(url, f"{name} in {cfg_path}")
        return _Database(url, name)
    if base is None:
        where = Path.cwd()
        return _Database(
            _sqlite_url(where / DEFAULT_DB_PATH),
            f"default: no {CONFIG_FILENAME} found, so in the current directory",
        )
    default = base / DEFAULT_DB_PATH
    return _Database(
        _sqlite_url(default), "default: beside the config file", _legacy_database(default, cfg_path)
    )


def _relative_sqlite_to(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return url
    rest = url[len(prefix) :]
    path, sep, query = rest.partition("?")
    if not path or path == ":memory:" or path.startswith("/") or path.startswith("file:"):
        return url
    return _sqlite_url(base / path) + sep + query


def _legacy_database(default: Path, cfg_path: Path | None) -> tuple[str, ...]:
    """Earlier versions kept the default database in ``./.orchestrator/`` of the current directory.
    An upgrading user whose history sits there (because they ran with --config or ORCH_CONFIG from
    another directory) must not silently get a fresh, empty history beside the config file: that loses
    the rollback anchors and splits the locks between two databases. While the new default does not
    exist yet this refuses, saying exactly how to move the history (or keep it where it is); once it
    exists, the old file is only named in a warning, so it is never forgotten without a word."""
    legacy = Path.cwd() / DEFAULT_DB_PATH
    if not legacy.is_file() or legacy.resolve() == default.resolve():
        return ()
    if not default.exists():
        import shlex  # for this message alone: every command loads this module

        quoted_dir = shlex.quote(str(default.parent))
        raise BadInput(
            f"run history found at {legacy}, where earlier versions kept the default database (the "
            f"current directory), but the default database now lives beside the config file {cfg_path}: "
            f"{default}. Move the history there (with no orchestrator command running): "
            f"'mkdir -p -m 700 {quoted_dir} && mv {shlex.quote(str(legacy))}* {quoted_dir}/' "
            f"(the * takes its -wal and -shm files along), or keep using it where it is with "
            f"ORCH_DATABASE_URL={_sqlite_url(legacy.resolve())}"
        )
    return (
        f"{legacy} (the default database of earlier versions, in the current directory) is not used: "
        f"the history of {cfg_path} is {default}. Merge or remove the old file once you no longer "
        "need it",
    )


def _unknown_variables(stray: list[str]) -> str:
    """The message names the variable each typo most resembles and lists the real ones in full: the
    reference file of the source repository (.env.example) is not installed with the package."""
    import difflib  # only for this message

    hints = [
        f"{name}: did you mean {close[0]}?"
        for name in stray
        if (close := difflib.get_close_matches(name, ENV_VARS, n=1, cutoff=0.75))
    ]
    known = ", ".join(sorted(k for k in ENV_VARS if not ENV_VARS[k].startswith("test-only")))
    return (
        f"unknown variable(s) {', '.join(stray)}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + f": the ORCH_* variables orchestrator reads are {known}"
    )


def _parse_app_names(name: str, raw: Any) -> frozenset[str]:
    """A comma-separated string or a TOML list of app names. Whether each names an app of *this* config
    is checked later, and only warned about: one CI-wide variable serves many repositories. Something
    that cannot be an app name at all is a typo, and an error."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    names = [str(i).strip() for i in items if str(i).strip()]
    malformed = [n for n in names if not re.match(_APP_NAME, n)]
    if malformed:
        raise BadInput(
            f"{name}={raw!r}: {', '.join(repr(n) for n in malformed)} cannot be app name(s) "
            "(lowercase letters, digits, '.', '_' or '-'): use a comma-separated list of app names"
        )
    return frozenset(names)


def _parse_int(name: str, raw: Any, *, minimum: int) -> int:
    try:
        value = int(str(raw).strip()) if not isinstance(raw, bool) else None
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise BadInput(f"{name}={raw!r} must be a whole number >= {minimum}")
    return value


_REGISTRY = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._/-][a-z0-9]+)*)?$"


def _parse_registry(name: str, raw: Any) -> str:
    text = str(raw).strip().rstrip("/")
    if text and not re.match(_REGISTRY, text):
        raise BadInput(
            f"{name}={raw!r} must be host[:port][/namespace] without a scheme, e.g. 127.0.0.1:5000"
        )
    return text


_SERVICE = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"


def _parse_app(
    name: str,
    table: Any,
    base: Path,
    settings: Settings,
    host_overrides: Mapping[str, tuple[str, str]] | None = None,
) -> AppConfig:
    where = f"[apps.{name}]"
    if not re.match(_APP_NAME, name):
        raise BadInput(f"{where}: app names must be lowercase letters, digits, '.', '_' or '-'")
    if not isinstance(table, dict):
        raise BadInput(f"{where} must be a table")
    known = ({f.name for f in fields(AppConfig)} - {"name", "engines", "build_engine"}) | _ENGINE_APP_KEYS
    unknown = set(table) - known
    if unknown:
        raise BadInput(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if "source" not in table or not isinstance(table["source"], str):
        raise BadInput(f"{where}: 'source' (path to the app's git repository) is required")
    source = (base / table["source"]).resolve()
    if source == Path(source.anchor):
        # Compose files "inside the source" would then be anywhere, and the repository is never "/".
        raise BadInput(
            f"{where}.source = {table['source']!r} resolves to the filesystem root {source}: "
            "point it at the app's git repository"
        )
    values: dict[str, Any] = {"name": name, "source": source}
    if "context" in table:
        values["context"] = _parse_context(f"{where}.context", table["context"])
    if "dockerfile" in table:
        values["dockerfile"] = _parse_dockerfile(
            f"{where}.dockerfile", table["dockerfile"], values.get("context", ".")
        )
    if "target" in table:
        if not isinstance(table["target"], str) or not re.match(_STAGE, table["target"]):
            raise BadInput(f"{where}.target = {table['target']!r} must name a stage of the Dockerfile")
        values["target"] = table["target"]
    if "secrets" in table:
        values["secrets"] = _parse_secrets(f"{where}.secrets", table["secrets"], base)
    for key in ("health_path", "version_path"):
        if key in table:
            values[key] = _parse_http_path(f"{where}.{key}", table[key])
    for key in ("build_args", "env"):
        if key in table:
            values[key] = _parse_str_table(f"{where}.{key}", table[key])
    if "GIT_SHA" in values.get("build_args", {}):
        raise BadInput(f"{where}.build_args must not set GIT_SHA: the orchestrator stamps the run's sha")
    for key in ("staging_port", "prod_port", "container_port"):
        if key in table:
            values[key] = _parse_port(f"{where}.{key}", table[key])
    values["registry"] = (
        _parse_registry(f"{where}.registry", table["registry"]) if "registry" in table else settings.registry
    ) or None
    values["keep_releases"] = (
        _parse_int(f"{where}.keep_releases", table["keep_releases"], minimum=1)
        if "keep_releases" in table
        else settings.keep_releases
    )
    if "pin_digests" in table:
        values["pin_digests"] = parse_bool(f"{where}.pin_digests", table["pin_digests"])
    if "require_approval" in table:
        values["require_approval"] = _parse_approval(f"{where}.require_approval", table["require_approval"])
    values.update(_parse_compose(where, table, base, source))
    values.update(
        _parse_swarm(
            where,
            table,
            compose="compose_file" in values,
            registry=values["registry"],
            base=base,
            source=source,
        )
    )
    values.update(_parse_zero_downtime(where, table, values))
    values.update(_parse_engines(where, table, base, host_overrides or {}))
    if "compose_file" in values and (values["engines"] or values.get("build_engine")):
        raise BadInput(
            f"{where}: docker_host/build_host (or ORCH_DOCKER_HOST_<ENV>) are supported for direct-container "
            "apps only for now: a compose app's environments run on this machine's engine (unset them, or "
            "set DOCKER_HOST for the whole orchestrator)"
        )
    if values.get("zero_downtime"):
        _zero_downtime_engines(where, values["engines"], settings)
    app = AppConfig(**values)
    if app.staging_port == app.prod_port and app.engine("staging").address == app.engine("prod").address:
        raise BadInput(f"{where}: staging_port and prod_port are both {app.prod_port}; they must differ")
    return app


_APPROVAL_ENVIRONMENTS = ("staging", "prod")
RUNTIMES = ("direct", "swarm")
SWARM_PUBLISH = ("proxy", "ingress")
_SWARM_ONLY = (
    "replicas",
    "swarm_network",
    "update_monitor_s",
    "stack_file",
    "stack_service",
    "swarm_publish",
)
# Docker network names: what `docker network create` accepts, kept to a safe subset.
_NETWORK = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"


def _parse_swarm(
    where: str, table: Mapping[str, Any], *, compose: bool, registry: str | None, base: Path, source: Path
) -> dict[str, Any]:
    """``runtime`` ("direct" | "swarm", or a table per environment) and the swarm keys. A swarm service
    is pinned by registry digest (every node pulls it by that reference), so swarm without a registry is
    refused here, before anything runs, rather than failing on the first update."""
    raw = table.get("runtime", "direct")
    chosen = _per_environment(where, "runtime", raw, RUNTIMES, _APPROVAL_ENVIRONMENTS, '{ prod = "swarm" }')
    kinds = {"staging": "direct", "prod": "direct", **chosen}
    swarm = any(k == "swarm" for k in kinds.values())
    if not swarm:
        for key in _SWARM_ONLY:
            if key in table:
                raise BadInput(f'{where}.{key} only applies to swarm environments (set runtime = "swarm")')
        return {}
    if compose:
        raise BadInput(
            f'{where}: runtime = "swarm" and compose_file cannot be combined: a compose app runs its '
            "services through docker compose; leave one of them out"
        )
    if registry is None:
        raise BadInput(
            f'{where}: runtime = "swarm" needs a registry: a swarm service is pinned by registry digest '
            f"(repo@sha256:...), which every node pulls; set {where}.registry or ORCH_REGISTRY "
            "(host[:port][/namespace])"
        )
    values: dict[str, Any] = {"runtime": kinds}
    if "replicas" in table:
        values["replicas"] = _parse_int(f"{where}.replicas", table["replicas"], minimum=1)
    if "update_monitor_s" in table:
        values["update_monitor_s"] = _parse_float(
            f"{where}.update_monitor_s", table["update_monitor_s"], minimum=0
        )
    if "swarm_network" in table:
        name = table["swarm_network"]
        if not isinstance(name, str) or not re.match(_NETWORK, name):
            raise BadInput(
                f"{where}.swarm_network = {name!r} must be a Docker network name (letters, digits, "
                "'.', '_' or '-')"
            )
        values["swarm_network"] = name
    if "stack_file" in table or "stack_service" in table:
        values.update(_parse_stack(where, table, base, source))
    if "swarm_publish" in table:
        values["swarm_publish"] = _parse_publish(
            where, table["swarm_publish"], kinds, stack="stack_file" in values
        )
    return values


def _per_environment(
    where: str, key: str, raw: object, choices: Sequence[str], envs: Sequence[str], example: str
) -> dict[str, str]:
    """A setting given once (a string: every one of ``envs``) or per environment (a table naming staging,
    prod or both), each value one of ``choices``; only the environments it names."""
    if isinstance(raw, str):
        chosen = dict.fromkeys(envs, raw)
    elif isinstance(raw, dict) and set(raw) <= set(_APPROVAL_ENVIRONMENTS):
        chosen = dict(raw)
    else:
        quoted = ", ".join(f'"{c}"' for c in choices)
        raise BadInput(
            f"{where}.{key} = {raw!r} must be {quoted}, or a table per environment, e.g. {example} "
            "(staging and prod)"
        )
    bad = sorted({v for v in chosen.values() if v not in choices}, key=str)
    if bad:
        raise BadInput(f"{where}.{key}: {', '.join(map(repr, bad))} is not one of {', '.join(choices)}")
    return chosen


def _parse_publish(where: str, raw: object, kinds: Mapping[str, str], *, stack: bool) -> dict[str, str]:
    """``swarm_publish``: "proxy" | "ingress", or a table per swarm environment. Ingress is refused for a
    stack app (its stack file says what its services publish; ours would be a second, conflicting say)
    and for an environment that is not on swarm (nothing there to publish through the mesh)."""
    swarm = [env for env in _APPROVAL_ENVIRONMENTS if kinds.get(env) == "swarm"]
    chosen = _per_environment(where, "swarm_publish", raw, SWARM_PUBLISH, swarm, '{ prod = "ingress" }')
    not_swarm = sorted(env for env in chosen if env not in swarm)
    if not_swarm:
        raise BadInput(
            f"{where}.swarm_publish names {', '.join(not_swarm)}, which does not run on swarm "
            f'(runtime = {{ {not_swarm[0]} = "swarm" }} would make it)'
        )
    if stack and "ingress" in chosen.values():
        raise BadInput(
            f'{where}: swarm_publish = "ingress" cannot be combined with stack_file yet: a stack app\'s '
            "service is published by its proxy (the override that pins it names no ports); leave "
            "swarm_publish out"
        )
    return chosen


def _parse_stack(where: str, table: Mapping[str, Any], base: Path, source: Path) -> dict[str, Any]:
    """``stack_file`` (inside the config's folder or the app's source, like a compose file) and the
    app's ``stack_service`` in it; the override that pins it goes to ``.deploy/`` beside the stack file."""
    raw = table.get("stack_file")
    if not isinstance(raw, str) or not raw:
        raise BadInput(
            f"{where}.stack_file must be a path relative to the config file (stack_service needs it)"
        )
    path = (base / raw).resolve()
    if not (path.is_relative_to(base) or path.is_relative_to(source)):
        raise BadInput(
            f"{where}.stack_file = {raw!r} resolves to {path}, outside both the config file's directory "
            f"({base}) and the app's source ({source}): keep it inside one of them"
        )
    service = table.get("stack_service")
    if not isinstance(service, str) or not re.match(_SERVICE, service):
        raise BadInput(f"{where}.stack_service must name the app's service in the stack file")
    return {
        "stack_file": path,
        "stack_service": service,
        "override_file": path.parent / ".deploy" / "stack.override.deploy.yml",
    }


# Engine keys an app table takes, and the per-environment sub-tables ``[apps.X.staging]``/``[apps.X.prod]``.
_ENGINE_KEYS = ("docker_host", "tls_ca", "tls_cert", "tls_key", "health_host")
_ENGINE_APP_KEYS = frozenset({*_ENGINE_KEYS, "build_host", "staging", "prod"})
_DOCKER_HOST_SCHEMES = ("ssh", "tcp", "unix")
_HOSTNAME = (
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_SSH_USER = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$"


def docker_host_variable(env: str) -> str:
    return f"{ENV_PREFIX}DOCKER_HOST_{env.upper()}"


def _host_overrides(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """``ORCH_DOCKER_HOST_<ENV>`` set (and not empty): (variable, URL) per environment."""
    return {
        e: (docker_host_variable(e), env[docker_host_variable(e)].strip())
        for e in _APPROVAL_ENVIRONMENTS
        if env.get(docker_host_variable(e), "").strip()
    }


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _loopback_host(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_docker_host(name: str, raw: Any, *, tls: bool) -> str:
    """A Docker engine URL the SDK can reach: ``ssh://[user@]host[:port]`` (the system ssh client, with
    its keys and known_hosts), ``tcp://host:port`` (with client certificates unless on loopback) or
    ``unix:///path``. Refused: passwords in the URL (they would end up in logs and records), paths or
    queries ssh would ignore, and plain tcp to another machine (root on that host for anyone on the
    network). The message never repeats the value: it may hold a credential someone pasted there."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadInput(
            f"{name} must be a Docker engine URL: ssh://user@host[:port], tcp://host:port or unix:///path"
        )
    text = raw.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise BadInput(f"{name} is not a valid URL (a port must be a number from 1 to 65535)") from None
    scheme = parts.scheme.lower()
    if scheme not in _DOCKER_HOST_SCHEMES:
        raise BadInput(
            f"{name} must start with ssh://, tcp:// or unix:// "
            f"(got {scheme + '://' if scheme else 'no scheme'})"
        )
    if parts.password is not None:
        raise BadInput(
            f"{name} carries a password: remove it from the URL; ssh:// authenticates with your ssh keys "
            "(ssh-agent or IdentityFile in ~/.ssh/config), tcp:// with tls_cert/tls_key"
        )
    if parts.query or parts.fragment:
        raise BadInput(f"{name} must not have a query or fragment")
    if scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise BadInput(f"{name}: a unix socket URL is unix:///absolute/path/to/docker.sock")
        if tls:
            raise BadInput(f"{name}: tls_ca/tls_cert/tls_key apply to tcp:// engines only")
        return text
    host = parts.hostname or ""
    if not host or not (re.match(_HOSTNAME, host) or _is_ip(host)):
        raise BadInput(f"{name} must name a host: {scheme}://{'user@' if scheme == 'ssh' else ''}host[:port]")
    if parts.path not in ("", "/"):
        raise BadInput(f"{name} must not have a path ({scheme}://host[:port])")
    if port == 0:
        raise BadInput(f"{name}: the port must be a number from 1 to 65535")
    if scheme == "ssh":
        if parts.username is not None and not re.match(_SSH_USER, parts.username):
            raise BadInput(f"{name}: the ssh user must be a plain user name")
        if tls:
            raise BadInput(
                f"{name}: tls_ca/tls_cert/tls_key apply to tcp:// engines only (ssh:// uses ssh keys)"
            )
        return text.rstrip("/")
    if parts.username is not None:
        raise BadInput(f"{name}: a tcp:// URL has no user (the client certificate identifies you)")
    if port is None:
        raise BadInput(f"{name} must give the engine's port, e.g. tcp://{host}:2376")
    if not tls and not _loopback_host(host):
        raise BadInput(
            f"{name} is plain tcp:// to another machine: anyone on the network could run containers as "
            "root there; set tls_ca, tls_cert and tls_key (the engine started with --tlsverify), or use ssh://"
        )
    return text.rstrip("/")


def _parse_tls(where: str, table: Mapping[str, Any], base: Path) -> TlsFiles | None:
    given = [k for k in ("tls_ca", "tls_cert", "tls_key") if k in table]
    if not given:
        return None
    if len(given) != 3:
        missing = sorted({"tls_ca", "tls_cert", "tls_key"} - set(given))
        raise BadInput(f"{where}: tls_ca, tls_cert and tls_key go together (missing {', '.join(missing)})")
    paths: dict[str, Path] = {}
    for key in ("tls_ca", "tls_cert", "tls_key"):
        raw = table[key]
        if not isinstance(raw, str) or not raw.strip():
            raise BadInput(f"{where}.{key} must be a path to a PEM file (relative to the config file)")
        paths[key] = (base / raw.strip()).resolve()
    return TlsFiles(paths["tls_ca"], paths["tls_cert"], paths["tls_key"])


def _parse_health_host(name: str, raw: Any) -> str:
    text = raw.strip() if isinstance(raw, str) else ""
    if not (re.match(_HOSTNAME, text) or _is_ip(text)):
        raise BadInput(f"{name} must be a host name or IP address (where the environment's port answers)")
    return text


def _parse_engines(
    where: str, table: Mapping[str, Any], base: Path, overrides: Mapping[str, tuple[str, str]]
) -> dict[str, Any]:
    """``docker_host`` (and its TLS files and ``health_host``) for the app, overridden per environment
    by ``[apps.X.<env>]`` and then by ORCH_DOCKER_HOST_<ENV>; ``build_host`` names where images are
    built. An environment left on this machine's engine is not listed."""
    for env in _APPROVAL_ENVIRONMENTS:
        sub = table.get(env, {})
        if not isinstance(sub, dict):
            raise BadInput(f"{where[:-1]}.{env}] must be a table ([apps.NAME.{env}] with docker_host, ...)")
        unknown = set(sub) - set(_ENGINE_KEYS)
        if unknown:
            raise BadInput(
                f"{where}.{env}: unknown key(s) {', '.join(sorted(unknown))} (an environment table takes "
                f"{', '.join(_ENGINE_KEYS)})"
            )
    app_tls = _parse_tls(where, table, base)
    engines: dict[str, EngineTarget] = {}
    for env in _APPROVAL_ENVIRONMENTS:
        sub = table.get(env, {})
        here = f"{where[:-1]}.{env}]"
        tls = _parse_tls(here, sub, base) or app_tls
        if env in overrides:
            name, raw = overrides[env]
        elif "docker_host" in sub:
            name, raw = f"{here}.docker_host", sub["docker_host"]
        elif "docker_host" in table:
            name, raw = f"{where}.docker_host", table["docker_host"]
        else:
            name, raw = "", None
        health = sub.get("health_host", table.get("health_host"))
        health_host = _parse_health_host(f"{here}.health_host", health) if health is not None else None
        if raw is None:
            if tls is not None or health_host is not None:
                raise BadInput(
                    f"{here}: tls_*/health_host need a docker_host (this environment runs locally)"
                )
            continue
        url = parse_docker_host(name, raw, tls=tls is not None)
        if tls is not None and not url.startswith("tcp://"):
            raise BadInput(f"{name}: tls_ca/tls_cert/tls_key apply to tcp:// engines only")
        engines[env] = EngineTarget(url, tls, health_host)
    values: dict[str, Any] = {"engines": engines}
    if "build_host" in table:
        url = parse_docker_host(f"{where}.build_host", table["build_host"], tls=app_tls is not None)
        values["build_engine"] = next(
            (e for e in engines.values() if e.url == url),
            EngineTarget(url, app_tls if url.startswith("tcp://") else None),
        )
    return values


def _parse_zero_downtime(where: str, table: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``zero_downtime`` and ``proxy_image``. The release's containers sit on a Docker network behind
    the proxy, so the app must listen on a port of its own namespace (``container_port``): without it
    the app would bind the host's port, which the proxy owns. Refused here rather than on the first
    deploy, when the app would never answer."""
    found: dict[str, Any] = {}
    swarm = "swarm" in dict(values.get("runtime") or {}).values()
    if "zero_downtime" in table:
        found["zero_downtime"] = parse_bool(f"{where}.zero_downtime", table["zero_downtime"])
    if "proxy_image" in table:
        image = table["proxy_image"]
        if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
            raise BadInput(f"{where}.proxy_image must be an image reference, e.g. {DEFAULT_PROXY_IMAGE!r}")
        if not found.get("zero_downtime") and not swarm:
            raise BadInput(f'{where}.proxy_image only applies with zero_downtime = true or runtime = "swarm"')
        found["proxy_image"] = image
    if not found.get("zero_downtime"):
        return found
    if swarm:
        raise BadInput(
            f'{where}: zero_downtime applies to direct containers; runtime = "swarm" environments are '
            "behind their own proxy already: leave zero_downtime out"
        )
    if "compose_file" in values:
        raise BadInput(
            f"{where}: zero_downtime applies to direct containers, not to a compose app (compose_file is "
            "set): leave one of them out"
        )
    if values.get("container_port") is None:
        raise BadInput(
            f"{where}: zero_downtime = true needs container_port (the port the app listens on inside its "
            "container, on 0.0.0.0): its containers run on a Docker network behind a proxy that owns "
            f"127.0.0.1:<env port>; add e.g. container_port = 8080 to {where}"
        )
    return found


def _zero_downtime_engines(where: str, engines: Mapping[str, EngineTarget], settings: Settings) -> None:
    """A new release is checked on a loopback port of the engine's host, and drained through a unix
    socket there (proxy.py): this machine's, or a remote host's reached through the engine's shared ssh
    connection. A tcp:// engine offers no such way in: publishing the unchecked release and the proxy's
    admin API on the host's network instead would put both within reach of anyone who can reach it."""
    for env, target in engines.items():
        url = target.url or ""
        if url.startswith("tcp://"):
            raise BadInput(
                f"{where}: zero_downtime needs the {env} engine's host loopback, which a tcp:// engine "
                "does not reach (a new release is checked there before it takes traffic, and the proxy "
                f"is drained through a socket there): point {env}'s docker_host at "
                "ssh://user@host instead (the same engine, through the host's sshd), or leave "
                "zero_downtime out"
            )
        if url.startswith("ssh://") and not settings.ssh_multiplex:
            raise BadInput(
                f"{where}: zero_downtime on the ssh:// engine of {env} reaches the host's loopback through "
                "the shared ssh connection, which ssh_multiplex = false turns off: set it back to true "
                "(ORCH_SSH_MULTIPLEX), or leave zero_downtime out"
            )


def _parse_approval(name: str, raw: Any) -> frozenset[str]:
    """``true`` (prod waits for a person), ``false``, or the list of environments whose edge waits.
    A misspelt environment is an error: read as "no approval", it would let prod deploy unapproved."""
    if isinstance(raw, bool):
        return frozenset({"prod"}) if raw else frozenset()
    if isinstance(raw, list) and all(isinstance(e, str) for e in raw):
        unknown = [e for e in raw if e not in _APPROVAL_ENVIRONMENTS]
        if not unknown:
            return frozenset(raw)
    raise BadInput(
        f"{name} = {raw!r} must be true (prod waits for 'orchestrator approve'), false, or a list of "
        f'environments from {list(_APPROVAL_ENVIRONMENTS)}, e.g. ["prod"]'
    )


def _parse_dockerfile(name: str, raw: Any, context: str = ".") -> str:
    """The Dockerfile is read from the commit's tree: a path leaving the repository would build from
    a file no commit vouches for (or fail obscurely inside the engine). Relative to the context, as
    Docker reads it, it may leave the context (``../Dockerfile``) but not the repository."""
    if not isinstance(raw, str) or not raw:
        raise BadInput(f"{name} must be a path relative to the build context or the repository root")
    normalized = posixpath.normpath(posixpath.join(context, raw))
    if posixpath.isabs(raw) or normalized == ".." or normalized.startswith("../"):
        raise BadInput(
            f"{name} = {raw!r} leaves the app's repository: give the Dockerfile's path relative to the "
            "repository root (or to the build context), e.g. 'Dockerfile' or 'docker/Dockerfile.prod'"
        )
    if normalized == "." or normalized == posixpath.normpath(context):
        raise BadInput(f"{name} = {raw!r} names the repository itself: give the Dockerfile's path")
    return raw


# Keys of a direct-container app that a compose app's own compose file decides instead: accepting them
# silently would leave the user believing a variable or a port mapping is in effect when it is not.
_DIRECT_ONLY = {
    "container_port": "publish the port in the compose file ('ports:' or 'network_mode: host')",
    "env": "set the service's 'environment:' in the compose file",
}
_COMPOSE_ONLY = ("pin_digests", "staging_project")
STAGING_PROJECTS = ("own", "prod")


_STAGE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_SECRET_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _parse_context(name: str, raw: Any) -> str:
    """A directory of the committed tree: the build sees that directory of ``git archive`` and nothing
    else (never the working tree, never a path outside the repository)."""
    if not isinstance(raw, str) or not raw:
        raise BadInput(f"{name} must be a directory of the repository, relative to its root ('.' for all)")
    normalized = posixpath.normpath(raw)
    if posixpath.isabs(raw) or normalized == ".." or normalized.startswith("../"):
        raise BadInput(
            f"{name} = {raw!r} leaves the app's repository: give a directory relative to the repository "
            "root, e.g. 'app' or 'services/web'"
        )
    return normalized


def _parse_secrets(name: str, raw: Any, base: Path) -> dict[str, BuildSecret]:
    """``{ id = "env:NAME" }`` or ``{ id = "file:PATH" }`` (PATH relative to the config file). Only where
    the value comes from is configured, so the value is never in the config, the database or a log."""
    if not isinstance(raw, dict):
        raise BadInput(f'{name} must be a table of secret ids to sources, e.g. {{ npm = "env:NPM_TOKEN" }}')
    found: dict[str, BuildSecret] = {}
    for key, source in raw.items():
        where = f"{name}.{key}"
        if not re.match(_SECRET_ID, str(key)):
            raise BadInput(f"{where}: secret ids are letters, digits, '.', '_' or '-'")
        kind, _, ref = str(source).partition(":") if isinstance(source, str) else ("", "", "")
        if kind == "env" and re.match(_ENV_NAME, ref):
            found[str(key)] = BuildSecret(str(key), env=ref)
        elif kind == "file" and ref:
            found[str(key)] = BuildSecret(str(key), file=(base / ref).resolve())
        else:
            raise BadInput(
                f"{where} = {source!r} must be 'env:VARIABLE' (an environment variable of the orchestrator) "
                "or 'file:PATH' (relative to the config file)"
            )
    return found


def _parse_compose(where: str, table: Mapping[str, Any], base: Path, source: Path) -> dict[str, Any]:
    keys = ("compose_file", "staging_service", "prod_service", "override_file")
    if not any(k in table for k in keys):
        for key in _COMPOSE_ONLY:
            if key in table:
                raise BadInput(f"{where}.{key} only applies to compose apps (set compose_file)")
        return {}
    if "compose_file" not in table:
        raise BadInput(f"{where}: staging_service/prod_service need compose_file")
    for key, instead in _DIRECT_ONLY.items():
        if key in table:
            raise BadInput(f"{where}.{key} does not apply to a compose app (compose_file is set): {instead}")
    values: dict[str, Any] = {}
    if "staging_project" in table:
        if table["staging_project"] not in STAGING_PROJECTS:
            raise BadInput(
                f'{where}.staging_project must be "own" (staging gets its own compose project: its own '
                'networks, volumes and databases; the default) or "prod" (staging shares prod\'s project '
                f"and its data), not {table['staging_project']!r}"
            )
        values["staging_project"] = table["staging_project"]
    for key in ("compose_file", "override_file"):
        if key in table:
            if not isinstance(table[key], str) or not table[key]:
                raise BadInput(f"{where}.{key} must be a path relative to the config file")
            values[key] = (base / table[key]).resolve()
    for key in ("staging_service", "prod_service"):
        raw = table.get(key)
        if not isinstance(raw, str) or not re.match(_SERVICE, raw):
            raise BadInput(f"{where}.{key} must name the compose service that runs the app's {key[:-8]}")
        values[key] = raw
    if values["staging_service"] == values["prod_service"]:
        raise BadInput(f"{where}: staging_service and prod_service must be different services")
    if "override_file" not in values:
        values["override_file"] = (
            values["compose_file"].parent / ".deploy" / "docker-compose.override.deploy.yml"
        )
    for key in ("compose_file", "override_file"):
        # The orchestrator writes the override and its history beside it, and compose resolves what the
        # compose file names relative to it: neither may reach outside what this config and app own.
        # (The default override sits beside the compose file, so only a given one can stray.)
        path = values[key]
        if key in table and not (path.is_relative_to(base) or path.is_relative_to(source)):
            raise BadInput(
                f"{where}.{key} = {table[key]!r} resolves to {path}, outside both "
                f"the config file's directory ({base}) and the app's source ({source}): keep it inside "
                "one of them"
            )
    compose, override = values["compose_file"], values["override_file"]
    if override == compose or (override.parent == compose.parent and override.name in _COMPOSE_DEFAULTS):
        raise BadInput(
            f"{where}.override_file = {table['override_file']!r} would overwrite "
            f"{'the compose file' if override == compose else 'a compose file compose reads by default'} "
            f"({override}): the orchestrator rewrites the override on every deploy; leave override_file "
            "out (default: .deploy/docker-compose.override.deploy.yml beside the compose file) or name "
            "a file of its own"
        )
    return values


# The files `docker compose` loads by default from a folder: an override written under one of these
# names would replace the user's own compose file.
_COMPOSE_DEFAULTS = frozenset({"compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"})


def check_app_paths(app: AppConfig) -> None:
    """Before a run is recorded or advanced: the app's repository (and compose file) must be there.

    Not done at load time, so history commands work on a machine without the repository; done before
    any work, so a missing checkout is a clear exit 2 instead of a git or compose error halfway through.
    """
    where = f"[apps.{app.name}]"
    if not app.source.exists():
        raise BadInput(
            f"app {app.name!r}: source {app.source} does not exist: clone the app's repository there "
            f"or fix {where}.source"
        )
    if not app.source.is_dir():
        raise BadInput(
            f"app {app.name!r}: source {app.source} is not a directory: point {where}.source at the "
            "app's git repository"
        )
    if app.compose_file is not None:
        if not app.compose_file.exists():
            raise BadInput(
                f"app {app.name!r}: compose file {app.compose_file} does not exist: commit it to the "
                f"app's repository or fix {where}.compose_file"
            )
        if not app.compose_file.is_file():
            raise BadInput(
                f"app {app.name!r}: compose file {app.compose_file} is not a file: fix {where}.compose_file"
            )


def check_registry_transfer(app: AppConfig) -> None:
    """Before anything runs: an environment on another engine than the one that builds gets the image
    through the registry, by digest (never ``docker save | load``, never a rebuild). Without a registry
    it could only run an image that engine built itself, which is not the image staging checked."""
    away = app.remote_environments
    if away and not app.registry:
        where = ", ".join(f"{env} on {app.engine(env).host}" for env in away)
        raise BadInput(
            f"app {app.name!r} builds on {app.builds_on.host} but runs {where}: the image can only get there "
            f"through a registry, by digest; set [apps.{app.name}].registry (or ORCH_REGISTRY) to a "
            "registry every engine can pull from"
        )


def _check_ports_unique(apps: Iterable[AppConfig]) -> None:
    """Two environments on one port of one host would answer each other's health checks (environments
    on different hosts may share a port number)."""
    owners: dict[tuple[str, int], str] = {}
    for app in apps:
        for env, port in (("staging", app.staging_port), ("prod", app.prod_port)):
            where = (app.engine(env).address, port)
            if where in owners:
                raise BadInput(
                    f"[apps.{app.name}].{env}_port = {port} is already used by {owners[where]}; "
                    "every environment needs its own port"
                )
            owners[where] = f"[apps.{app.name}].{env}_port"


def find_config(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> tuple[Path | None, str]:
    """(config file, how it was found): --config, then ORCH_CONFIG,
    then orchestrator.toml in the current directory or the nearest parent that has one (as git and
    compose find theirs, so a command run from a subfolder of the deployment uses its config and its
    history). None when there is none anywhere."""
    if path is not None:
        return Path(path), "--config"
    if env.get("ORCH_CONFIG"):
        return Path(env["ORCH_CONFIG"]), "ORCH_CONFIG"
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        candidate = folder / CONFIG_FILENAME
        if candidate.is_file():
            if folder == cwd:
                return candidate, "found in the current directory"
            _refuse_foreign(candidate)
            return candidate, "found in a parent of the current directory"
    return None, "none found"


def _refuse_foreign(candidate: Path) -> None:
    """A config found above the current directory was not chosen by anyone: in a shared folder such as
    /tmp, another user could have put it there to make our next command build and run their app. Use
    one found that way only if we (or root) own it; naming it explicitly still works."""
    owner = candidate.stat().st_uid
    if owner not in (os.getuid(), 0):
        raise BadInput(
            f"{candidate} (found in a parent of the current directory) belongs to another user "
            f"(uid {owner}): not using a config someone else could have put there; pass "
            f"--config {candidate} (or set ORCH_CONFIG) if it is the one you mean"
        )


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config named by --config or ORCH_CONFIG, else orchestrator.toml found in the current
    directory or its parents (see ``find_config``).

    No config anywhere is not an error: history commands work without one. A file that was asked for by
    name and is missing is.
    """
    env = os.environ if env is None else env
    found, config_source = find_config(path, env)
    data: dict[str, Any] = {}
    if found is None:
        settings, database = _parse_settings({}, env)
        return Config(
            settings=settings,
            warnings=database.warnings,
            config_source=config_source,
            database_source=database.source,
        )
    cfg_path = found
    if cfg_path.is_file():
        try:
            data = _parse_toml(cfg_path, cfg_path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise BadInput(f"{cfg_path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        except OSError as exc:
            raise BadInput(f"cannot read {cfg_path}: {exc.strerror}") from None
    else:
        raise BadInput(f"config file {cfg_path} does not exist")

    unknown = set(data) - {"apps", "orchestrator"}
    if unknown:
        raise BadInput(f"{cfg_path}: unknown table(s) {', '.join(sorted(unknown))}; expected [apps.*]")
    settings_table = data.get("orchestrator", {})
    apps_table = data.get("apps", {})
    if not isinstance(settings_table, dict) or not isinstance(apps_table, dict):
        raise BadInput(f"{cfg_path}: [orchestrator] and [apps] must be tables")
    base = cfg_path.resolve().parent
    try:
        settings, database = _parse_settings(settings_table, env, cfg_path)
        overrides = _host_overrides(env)
        apps = {
            name: _parse_app(name, table, base, settings, overrides) for name, table in apps_table.items()
        }
        _check_ports_unique(apps.values())
    except BadInput as exc:
        raise BadInput(f"{cfg_path}: {exc.message}") from None
    warnings = (
        database.warnings
        + _freshness_scope_warnings(settings, apps, cfg_path, env)
        + _secret_build_arg_warnings(apps)
    )
    return Config(
        settings=settings,
        apps=apps,
        path=cfg_path.resolve(),
        warnings=warnings,
        config_source=config_source,
        database_source=database.source,
    )


def _parse_toml(cfg_path: Path, text: str) -> dict[str, Any]:
    """The file's tables; through the console script's cache when it has one (codecache.py: the parser
    costs more to import than the file to parse)."""
    from orchestrator import codecache

    cache = codecache.installed()
    try:
        if cache is not None:
            return cache.toml(text)
        import tomllib

        return tomllib.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError, without importing tomllib to name it
        raise BadInput(f"{cfg_path} is not valid TOML: {exc}") from None


def _secret_build_arg_warnings(apps: Mapping[str, AppConfig]) -> tuple[str, ...]:
    """Build args are baked into the image's history and pushed with it (``docker history --no-trunc``
    shows them to anyone who can pull): a credential passed that way leaks for the image's lifetime."""
    if not any(app.build_args for app in apps.values()):
        return ()  # nothing to look at: redact.py is not imported
    from orchestrator.redact import looks_secret

    return tuple(
        f"[apps.{app.name}].build_args.{name} looks like a secret: build args are stored in the image "
        f"history and pushed with it; pass it as a build secret instead "
        f'([apps.{app.name}].secrets, e.g. {{ {name.lower()} = "env:{name}" }}, read with '
        f"RUN --mount=type=secret,id={name.lower()})"
        for app in apps.values()
        for name in sorted(app.build_args)
        if looks_secret(name)
    )


def _freshness_scope_warnings(
    settings: Settings, apps: Mapping[str, AppConfig], cfg_path: Path, env: Mapping[str, str]
) -> tuple[str, ...]:
    """CI sets ORCH_IMAGE_FRESHNESS_REPOS once for many repositories, so naming apps this config does
    not define is normal. It is still said out loud: a misspelt name leaves the app it meant outside
    the scope, and that app's freshness check is then skipped."""
    unknown = sorted(settings.image_freshness_repos - set(apps))
    if not unknown:
        return ()
    var = ENV_PREFIX + "IMAGE_FRESHNESS_REPOS"
    source = var if var in env else "[orchestrator].image_freshness_repos"
    left_out = sorted(set(apps) - settings.image_freshness_repos)
    skipped = (
        f"; check_staging_image_fresh is skipped for {', '.join(left_out)}"
        if left_out and settings.image_freshness_enabled
        else ""
    )
    return (
        f"{source} names app(s) {cfg_path} does not define: {', '.join(unknown)} "
        f"(known apps: {', '.join(sorted(apps)) or 'none'}){skipped}",
    )
