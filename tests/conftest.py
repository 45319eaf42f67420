"""Shared fixtures: a real git repository, an isolated workspace (config + database), the real CLI.

Everything here is real (git, SQLite or PostgreSQL, click, Alembic); only the machine's environment is
fenced off so that an ORCH_* variable exported on a developer's shell or a CI runner can never change
what a test sees.

``--db=postgresql`` runs the suite against a real PostgreSQL server (ORCHESTRATOR_TEST_PG_URL, default
the cluster scripts/bootstrap.sh starts): every ``workspace`` then gets a database of its own, created
from a template migrated once per session. Tests that build their own ``sqlite:///`` URLs stay on SQLite;
``--only-db-dependent`` leaves them (and every test that opens no database) out.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from orchestrator import gates
from orchestrator import logging as orch_logging
from orchestrator.cli import cli as orchestrator_cli
from orchestrator.config import CONFIG_FILENAME, ENV_PREFIX
from orchestrator.gates import Gate, GateContext, Verdict
from orchestrator.machine import Edge
from orchestrator.store import db
from orchestrator.store.repository import Store

# --------------------------------------------------------------------------------------------------
# environment hygiene


CI_VARIABLES = (
    "GITHUB_ACTIONS",
    "GITHUB_RUN_ID",
    "GITLAB_CI",
    "CI_JOB_URL",
    "BUILDKITE",
    "JENKINS_URL",
    "BUILD_URL",
    "CIRCLECI",
    "TF_BUILD",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The config layer rejects unknown ORCH_* variables and honours known ones, so a stray export on
    the host would either break or silently steer every test. Scrub them all."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    # Run inside a CI job, the default actor and the recorded job link would come from the CI's own
    # variables (orchestrator/identity.py); tests that want them set them.
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    """The CLI points its logs at the stderr it was invoked with (CliRunner's capture buffer); without
    a reset, later tests' logs would vanish into a finished invocation's buffer instead of pytest's."""
    yield
    orch_logging.reset()


@pytest.fixture(autouse=True)
def gate_registry_guard() -> Iterator[None]:
    """The gate registry is process-global: a test gate left behind would run on every later test's
    edge. Fail the leaking test (and repair the registry) instead of some innocent later one."""
    gates._load_builtin_gates()
    registry = gates._REGISTRY  # the real one, even if a test swaps in a throw-away registry
    before = {edge: list(registered) for edge, registered in registry.items()}
    yield
    after = {edge: list(registered) for edge, registered in registry.items()}
    if after != before:
        registry.clear()
        registry.update(before)
        pytest.fail(f"test changed the global gate registry: {before} -> {after}")


# --------------------------------------------------------------------------------------------------
# git


_GIT_ENV = {
    # Neither the host's ~/.gitconfig nor /etc/gitconfig (signing, hooks, templates) may shape the repo.
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **_GIT_ENV},
        check=False,
    )
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout.strip()


@dataclass(frozen=True)
class GitRepo:
    """A real repository on disk with at least one commit; ``sha`` is the HEAD at creation time."""

    path: Path
    sha: str

    def commit(self, message: str, files: Mapping[str, str]) -> str:
        """Add or overwrite ``files`` (relative path -> text) and commit them; returns the new sha."""
        for rel, text in files.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        _git(self.path, "add", "--all")
        _git(self.path, "commit", "--quiet", "--no-verify", "-m", message)
        return _git(self.path, "rev-parse", "HEAD")


def _init_repo(path: Path, files: Mapping[str, str]) -> GitRepo:
    path.mkdir(parents=True)
    _git(path, "init", "--quiet", "--initial-branch=main")
    _git(path, "config", "user.name", "Orchestrator Tests")
    _git(path, "config", "user.email", "tests@orchestrator.invalid")
    _git(path, "config", "commit.gpgsign", "false")
    sha = GitRepo(path, "").commit("initial commit", files)
    return GitRepo(path, sha)


@pytest.fixture(scope="session")
def _template_repo(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    return _init_repo(tmp_path_factory.mktemp("template") / "repo", {"README.md": "demo app\n"})


@pytest.fixture
def git_repo(tmp_path: Path, _template_repo: GitRepo) -> Callable[..., GitRepo]:
    """Factory: ``git_repo(name="app-src", files={...})`` -> GitRepo with one commit.

    Without ``files`` it is a private copy of a session-wide template (same sha every time, and a
    file copy instead of five git processes), so tests may delete or rewrite it freely.
    """

    def make(name: str = "app-src", files: Mapping[str, str] | None = None) -> GitRepo:
        path = tmp_path / name
        if files is not None:
            return _init_repo(path, files)
        shutil.copytree(_template_repo.path, path, symlinks=True)
        return GitRepo(path, _template_repo.sha)

    return make


# --------------------------------------------------------------------------------------------------
# databases: SQLite files, or databases of their own on a real PostgreSQL server

BACKENDS = ("sqlite", "postgresql")
# Not ORCH_*: orchestrator refuses unknown ORCH_* variables, so a developer exporting this would break it.
PG_URL_VARIABLE = "ORCHESTRATOR_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql+psycopg://orch:orch@127.0.0.1:55432/orch"  # scripts/bootstrap.sh's cluster


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        choices=BACKENDS,
        default="sqlite",
        help=f"database backend for workspaces and fresh_db_url (postgresql: ${PG_URL_VARIABLE}, "
        f"default {DEFAULT_PG_URL})",
    )
    parser.addoption(
        "--only-db-dependent",
        action="store_true",
        help="run only the tests whose outcome can depend on --db (those using db_backend, directly or "
        "through fixtures such as workspace, store and fresh_db_url): scripts/test.sh's second pass, "
        "after the first ran everything",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that never asks for ``db_backend`` runs the same on every backend (a test making its own
    ``sqlite:///`` URL stays on SQLite whatever --db says), so a second pass on PostgreSQL would only
    repeat it. The fixture closure decides, so a new database fixture is covered by depending on
    ``db_backend``, as every one does today."""
    if not config.getoption("--only-db-dependent"):
        return
    kept: list[pytest.Item] = []
    same_everywhere: list[pytest.Item] = []
    for item in items:
        uses_db = "db_backend" in getattr(item, "fixturenames", ())
        (kept if uses_db else same_everywhere).append(item)
    if same_everywhere:
        config.hook.pytest_deselected(items=same_everywhere)
        items[:] = kept


def _unavailable(reason: str) -> None:
    """A PostgreSQL pass that silently skips proves nothing: fail under CI, skip on a developer machine."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Databases:
    """Hands out databases on the session's backend: ``empty()`` (no tables) and ``migrated()`` (at
    head, copied from a template migrated once per session, because migrating every test's database
    would cost more than most tests). ``drop(url)`` removes one; the session drops whatever is left."""

    backend: str
    scratch: pytest.TempPathFactory
    server_url: str | None = None  # PostgreSQL: a database the role can connect to, to create others
    _admin: sa.Engine | None = None
    _template: str | None = None  # SQLite: a file path; PostgreSQL: a database name
    _created: list[str] = field(default_factory=list)

    @classmethod
    def connect(cls, backend: str, scratch: pytest.TempPathFactory) -> Databases:
        if backend == "sqlite":
            return cls(backend, scratch)
        server_url = os.environ.get(PG_URL_VARIABLE) or DEFAULT_PG_URL
        try:
            # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction.
            admin = sa.create_engine(
                server_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
            )
            with admin.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except (ImportError, sa.exc.SQLAlchemyError) as exc:
            why = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            _unavailable(
                f"PostgreSQL at {db.safe_url(server_url)} does not answer ({why}): run "
                f"scripts/bootstrap.sh, or set {PG_URL_VARIABLE}"
            )
            raise AssertionError("unreachable") from None
        return cls(backend, scratch, server_url, admin)

    def _pg_url(self, name: str) -> str:
        assert self.server_url is not None
        return sa.make_url(self.server_url).set(database=name).render_as_string(hide_password=False)

    def _pg_create(self, template: str) -> str:
        assert self._admin is not None
        name = f"orch_test_{uuid.uuid4().hex}"
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        self._created.append(name)
        return name

    def empty(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{(self.scratch.mktemp('db') / 'orch.db').as_posix()}"
        return self._pg_url(self._pg_create("template0"))

    def migrated(self, sqlite_path: Path | None = None) -> str:
        """A database at head; on SQLite at ``sqlite_path`` if given (a workspace keeps its file)."""
        if self.backend == "sqlite":
            if self._template is None:
                self._template = sa.make_url(self.empty()).database
                Store(f"sqlite:///{self._template}").close()
            path = sqlite_path or self.scratch.mktemp("db") / "orch.db"
            shutil.copyfile(self._template, path)
            return f"sqlite:///{path.as_posix()}"
        if self._template is None:
            template_url = self.empty()
            Store(template_url).close()  # closes its connections: a template must have none
            self._template = sa.make_url(template_url).database
        return self._pg_url(self._pg_create(self._template))

    def drop(self, url: str) -> None:
        """Drop a PostgreSQL database this session created (connections a test left open included);
        SQLite files go with pytest's temporary directories."""
        name = sa.make_url(url).database
        if self._admin is None or name not in self._created:
            return
        for attempt in range(50):
            try:
                with self._admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except sa.exc.DBAPIError:
                # PostgreSQL 15 refuses FORCE while an autovacuum worker is in the database (a
                # non-superuser may not signal it); the worker is gone a moment later.
                if attempt == 49:
                    raise
                time.sleep(0.1)
        self._created.remove(name)

    def close(self) -> None:
        if self._admin is None:
            return
        for name in reversed(list(self._created)):
            self.drop(self._pg_url(name))
        self._admin.dispose()


@pytest.fixture(scope="session")
def db_backend(request: pytest.FixtureRequest) -> str:
    """The backend this session runs on: ``sqlite`` or ``postgresql`` (``--db``)."""
    return str(request.config.getoption("--db"))


@pytest.fixture(scope="session")
def _databases(db_backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    databases = Databases.connect(db_backend, tmp_path_factory)
    yield databases
    databases.close()


@pytest.fixture
def fresh_db_url(_databases: Databases) -> Iterator[str]:
    """The URL of a new, empty database (no tables, not even alembic_version) on the session's backend;
    dropped afterwards."""
    url = _databases.empty()
    yield url
    _databases.drop(url)


# --------------------------------------------------------------------------------------------------
# workspace: orchestrator.toml + database, cwd


@dataclass(frozen=True)
class Workspace:
    """A directory the CLI runs in: its orchestrator.toml names app ``demo`` at ``repo``, and
    ORCH_DATABASE_URL points at ``db_url``, already migrated: ``orch.db`` there on SQLite, a database
    of the test's own on PostgreSQL."""

    path: Path
    config_path: Path
    db_url: str
    repo: GitRepo
    app: str = "demo"

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text, encoding="utf-8")

    def set_apps(self, apps: Mapping[str, Path | str], extra: str = "") -> None:
        """Rewrite the config with one ``[apps.<name>]`` table per entry (plus raw ``extra`` TOML)."""
        # Every environment needs its own port (config rejects clashes); these tests never bind them.
        tables = "".join(
            f'[apps.{name}]\nsource = "{Path(src).as_posix()}"\n'
            f"staging_port = {20000 + 2 * i}\nprod_port = {20001 + 2 * i}\n\n"
            for i, (name, src) in enumerate(apps.items())
        )
        self.write_config(extra + tables)


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file already at the head revision (for tests that want one whatever the backend)."""
    path = tmp_path_factory.mktemp("template") / "orch.db"
    Store(f"sqlite:///{path.as_posix()}").close()
    return path


@pytest.fixture
def workspace(
    tmp_path: Path,
    git_repo: Callable[..., GitRepo],
    _databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
    clean_env: None,  # autouse anyway; named so the contract survives a change to autouse
) -> Iterator[Workspace]:
    repo = git_repo("demo-src")
    root = tmp_path / "workspace"
    root.mkdir()
    db_url = _databases.migrated(sqlite_path=root / "orch.db")
    ws = Workspace(path=root, config_path=root / CONFIG_FILENAME, db_url=db_url, repo=repo)
    ws.set_apps({"demo": repo.path})
    monkeypatch.setenv("ORCH_DATABASE_URL", db_url)
    monkeypatch.chdir(root)
    yield ws
    _databases.drop(db_url)


@pytest.fixture
def store(workspace: Workspace) -> Iterator[Store]:
    """The workspace's store, for arranging state the CLI cannot create and for checking what it wrote."""
    s = Store(workspace.db_url)
    yield s
    s.close()


# --------------------------------------------------------------------------------------------------
# CLI


@dataclass(frozen=True)
class CliResult:
    args: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    payload: Any = None  # the parsed stdout when --json was passed

    @property
    def as_json(self) -> bool:
        return "--json" in self.args

    def describe(self) -> str:
        return (
            f"orchestrator {' '.join(self.args)} -> exit {self.exit_code}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def ok(self) -> Any:
        """Assert exit 0; return the JSON payload (or None without --json)."""
        assert self.exit_code == 0, self.describe()
        return self.payload

    def error(self, exit_code: int, kind: str) -> str:
        """Assert an error exit in either output mode and return its message.

        With --json the error must be the one object on stdout; without, stdout stays empty (a script
        capturing it must not mistake an error for a result) and the message is on stderr.
        """
        assert self.exit_code == exit_code, self.describe()
        if self.as_json:
            assert isinstance(self.payload, dict), self.describe()
            assert self.payload.get("error") == kind, self.describe()
            assert self.payload.get("exit_code") == exit_code, self.describe()
            message = self.payload.get("message")
            assert isinstance(message, str) and message, self.describe()
            return message
        assert self.stdout == "", self.describe()
        lines = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, self.describe()
        return lines[0].removeprefix("error: ")


Cli = Callable[..., CliResult]


@pytest.fixture
def cli() -> Cli:
    """``cli("run", "start", "--app", "demo", ..., as_json=True)`` runs the real click app in-process.

    Exceptions other than SystemExit propagate (catch_exceptions=False): a traceback is never an
    acceptable answer from the CLI, so it must fail the test loudly rather than look like exit 1.
    """
    runner = CliRunner()

    def invoke(*args: str | int, as_json: bool = False) -> CliResult:
        argv = tuple(str(a) for a in args) + (("--json",) if as_json else ())
        result = runner.invoke(orchestrator_cli, list(argv), catch_exceptions=False)
        payload = None
        if "--json" in argv:
            payload = parse_single_json_object(result.stdout, context=f"orchestrator {' '.join(argv)}")
        return CliResult(argv, result.exit_code, result.stdout, result.stderr, payload)

    return invoke


def parse_single_json_object(stdout: str, *, context: str) -> dict[str, Any]:
    """--json promises exactly one JSON object on stdout: no log line, no banner, no second object."""
    try:
        payload = json.loads(stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"{context}: --json stdout is not exactly one JSON object ({exc}):\n{stdout!r}")
    if not isinstance(payload, dict):
        pytest.fail(f"{context}: --json stdout is {type(payload).__name__}, not an object:\n{stdout!r}")
    return payload


# --------------------------------------------------------------------------------------------------
# network


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Factory for a localhost TCP port that nothing listens on (bound to :0, then released)."""

    def pick() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    return pick


# --------------------------------------------------------------------------------------------------
# gates


GateBehaviour = Verdict | BaseException | Callable[[GateContext], Verdict]


@pytest.fixture
def gate_factory() -> Callable[..., type[Gate]]:
    """Factory for *unregistered* Gate subclasses: ``gate_factory("name", edge, behaviour)``.

    ``behaviour`` is the Verdict to return, an exception to raise, or a callable(ctx) -> Verdict.
    Every call is appended to the class's ``calls`` list so tests can prove a gate did (not) run.
    """

    def make(name: str, edge: Edge, behaviour: GateBehaviour, order: int = 1000) -> type[Gate]:
        calls: list[GateContext] = []

        def run(self: Gate, ctx: GateContext) -> Verdict:
            calls.append(ctx)
            if isinstance(behaviour, BaseException):
                raise behaviour
            if isinstance(behaviour, Verdict):
                return behaviour
            return behaviour(ctx)

        attrs = {"name": name, "edge": edge, "order": order, "calls": calls, "run": run}
        return type(f"TestGate_{name}", (Gate,), attrs)

    return make


@pytest.fixture
def docker_free_gates(monkeypatch: pytest.MonkeyPatch) -> dict[Edge, list[type[Gate]]]:
    """Swap in a registry holding only the built-in gates that need no Docker engine (commit_exists).

    For tests of the run contract (CLI, service, store): they must not build images or bind ports,
    and ``advance`` only connects to Docker when one of the edge's gates needs it. The Docker gates
    are exercised against the real engine in tests/integration.
    """
    gates._load_builtin_gates()
    subset = {
        edge: [g for g in registered if not g.needs_docker] for edge, registered in gates._REGISTRY.items()
    }
    monkeypatch.setattr(gates, "_REGISTRY", subset)
    return subset


@pytest.fixture
def register_gate(gate_factory: Callable[..., type[Gate]]) -> Iterator[Callable[..., type[Gate]]]:
    """Factory that registers a gate on its edge for this test only (in whichever registry is current,
    so it composes with ``docker_free_gates``).

    The registry is process-global; a test gate left in it would run on every later test's edge.
    """
    gates._load_builtin_gates()  # so built-ins never register *after* a test gate and reorder things
    added: list[tuple[dict[Edge, list[type[Gate]]], type[Gate]]] = []

    def register(name: str, edge: Edge, behaviour: GateBehaviour, order: int = 1000) -> type[Gate]:
        gate = gates.register(gate_factory(name, edge, behaviour, order))
        added.append((gates._REGISTRY, gate))
        return gate

    yield register
    for registry, gate in reversed(added):
        registered = registry.get(gate.edge, [])
        if gate in registered:
            registered.remove(gate)
        if not registered:
            registry.pop(gate.edge, None)


# --------------------------------------------------------------------------------------------------
# the dashboard's browser tests

CHROMIUM = os.environ.get("ORCHESTRATOR_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless chromium (Debian's, driven by Playwright; no browser download) for the session."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: 'apt-get install -y chromium' (scripts/bootstrap.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()
