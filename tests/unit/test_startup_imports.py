"""Start-up stays light: CI runs the orchestrator in every pipeline of every commit, and `--help`,
`--version` or a mistyped option must not pay for SQLAlchemy's ORM, the docker SDK, transitions, Alembic or
structlog (issue 12); a command reading the store pays for SQLAlchemy alone once the schema is current.
Each case runs the real entry point in a fresh interpreter and reads ``sys.modules`` as the process ends,
so an import added anywhere on the way (orchestrator/cli/, or a module it pulls in) fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from probe_support import LOADED_PROBE, run_probe

from orchestrator.entry import YOUNG_THRESHOLD
from orchestrator.store.repository import Store

if TYPE_CHECKING:
    from conftest import Workspace

# importlib.metadata: the installed package's metadata (with email, csv and zipfile), which `--version`
# asked for its version until it read the package's own.
HEAVY = (
    "sqlalchemy",
    "docker",
    "transitions",
    "alembic",
    "structlog",
    "rich",
    "paramiko",
    "importlib.metadata",
)


def loaded_heavy_modules(args: list[str], cwd: Path) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    return run_probe(LOADED_PROBE.replace("{heavy}", repr(HEAVY)), args, cwd, "LOADED")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--help"], id="help"),
        pytest.param(["--version"], id="version"),
        pytest.param(["-h"], id="h"),
        pytest.param(["advance", "--help"], id="advance-help"),
        pytest.param(["deploy", "--help"], id="deploy-help"),
        pytest.param(["run", "start", "--help"], id="run-start-help"),
        pytest.param(["no-such-command"], id="usage-error"),
    ],
)
def test_help_and_version_import_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    heavy, proc = loaded_heavy_modules(args, tmp_path)
    assert heavy == [], f"orchestrator {' '.join(args)} imported {heavy}"
    if args[-1] in ("--help", "-h"):
        assert "Usage:" in proc.stdout, proc.stdout + proc.stderr
    if args == ["--version"]:
        assert "version" in proc.stdout, proc.stdout + proc.stderr


def test_the_probe_sees_heavy_imports(tmp_path: Path) -> None:
    """The checks here cannot pass vacuously: a command that creates the database migrates it, and
    the very same probe sees Alembic and SQLAlchemy loaded."""
    (tmp_path / "orchestrator.toml").write_text("")
    heavy, proc = loaded_heavy_modules(["runs", "list", "--json"], tmp_path)
    assert {"alembic", "sqlalchemy"} <= set(heavy), proc.stderr[-2000:]


def test_store_command_imports_no_sqlalchemy_once_the_schema_is_current(tmp_path: Path) -> None:
    """``runs list`` (import + config + database open) on a current schema: one query checks the
    revision over DB-API (store/sql.py), so neither SQLAlchemy nor Alembic is imported; JSON logs need
    no structlog; no Docker."""
    (tmp_path / "orchestrator.toml").write_text("")
    first, proc = loaded_heavy_modules(["runs", "list", "--json"], tmp_path)
    assert "alembic" in first, f"creating the database migrates it: {proc.stderr[-2000:]}"
    heavy, proc = loaded_heavy_modules(["runs", "list", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert heavy == [], proc.stderr[-2000:]


# What reading the history has no use for, each 1-3 ms to load on a 2-core runner: signal handling (edges
# only), the socket module (the holder's host name comes from uname), git's subprocess, a traceback
# formatter with nothing to format, and the edges' step and engine modules; and the other commands'
# definitions (the root group imports the module of the command it runs, orchestrator/cli/base.py). And
# the TOML parser (4-8 ms): the first call parsed this config and the console script kept its tables
# (codecache.py). Nor what only runs and the operator actions use: the history commands read through
# service/reads.py, not the whole run service (its notifier, its heartbeat, the staging builds); the
# signals' module (its exception is errors.py's), the machine without a --state to parse, the secret
# detector without build args to look at, shlex without a misplaced database to explain.
NOT_FOR_HISTORY = (
    "tomllib",
    "signal",
    "socket",
    "subprocess",
    "traceback",
    "orchestrator.gitrepo",
    "orchestrator.steps",
    "orchestrator.engines",
    "orchestrator.cli.edges",
    "orchestrator.cli.operations",
    "orchestrator.cli.environments",
    "orchestrator.cli.admin",
    "orchestrator.service.run_service",
    "orchestrator.service.operations",
    "orchestrator.service.common",
    "orchestrator.service.builds",
    "orchestrator.notify",
    "orchestrator.lifecycle",
    "orchestrator.machine",
    "orchestrator.redact",
    "shlex",
)


def test_reading_the_history_loads_only_what_it_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the first call fills a cache of its own
    (tmp_path / "orchestrator.toml").write_text("")
    probe = LOADED_PROBE.replace("{heavy}", repr(NOT_FOR_HISTORY))
    run_probe(probe, ["runs", "list", "--json"], tmp_path, "LOADED")  # creates the database
    loaded, proc = run_probe(probe, ["runs", "list", "--json"], tmp_path, "LOADED")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert loaded == [], f"runs list loaded {loaded}"
    # The same probe sees them where they are used: a run start parses its sha with gitrepo, and its
    # command is defined with the edges', and it goes through the run service.
    loaded, proc = run_probe(
        probe, ["run", "start", "--app", "nope", "--sha", "0" * 40, "--json"], tmp_path, "LOADED"
    )
    seen = {"orchestrator.gitrepo", "orchestrator.cli.edges", "orchestrator.service.run_service"}
    assert seen <= set(loaded), proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(
            ["runs", "list", "--json", "--app", "demo", "--outcome", "failed", "--actor", "ci"],
            id="runs-list",
        ),
        pytest.param(["run", "start", "--app", "demo", "--sha", "{sha}", "--json"], id="run-start"),
        pytest.param(["deploy", "--app", "demo", "--sha", "{sha}", "--json"], id="deploy"),
        pytest.param(["audit", "--json"], id="audit"),
        pytest.param(["releases", "demo", "--json"], id="releases"),
        pytest.param(["lock", "demo", "--env", "prod", "--json"], id="lock"),
        pytest.param(["freeze", "demo", "--reason", "incident", "--json"], id="freeze"),
        pytest.param(["status", "--json"], id="status"),
    ],
)
def test_the_ci_commands_import_neither_sqlalchemy_nor_alembic(
    args: list[str], workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands CI runs on every commit read and write the store over DB-API (issue 12): against
    a real SQLite file at the head revision, whatever they do (a deploy of an app without a Dockerfile
    fails its gates, and records that), SQLAlchemy and Alembic stay unimported."""
    database = f"sqlite:///{(tmp_path / 'ci.db').as_posix()}"
    Store(database).close()
    monkeypatch.setenv("ORCH_DATABASE_URL", database)
    argv = [a.replace("{sha}", workspace.repo.sha) for a in args]
    heavy, proc = loaded_heavy_modules(argv, workspace.path)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not {"sqlalchemy", "alembic"} & set(heavy), f"{' '.join(args)}: {heavy}\n{proc.stderr[-2000:]}"
    if args[0] == "run":
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_engine_adapter_imports_paramiko_only_for_an_ssh_engine() -> None:
    """The adapter imports the SDK when a call first needs it (a local deploy never does); docker-py
    imports paramiko (and invoke) with the SDK whenever it is installed, and the adapter defers that
    to the first ssh:// connection, which must still reach the real paramiko."""
    code = """
import sys
import orchestrator.docker_engine
print("adapter alone", "docker" in sys.modules)
docker = orchestrator.docker_engine._sdk()
print("before", "paramiko.transport" in sys.modules)
try:
    docker.APIClient(base_url="ssh://nobody@127.0.0.1:1", use_ssh_client=False, timeout=2)
except Exception as exc:
    print("error", type(exc).__module__)
print("after", "paramiko.transport" in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = proc.stdout.split("\n")
    assert lines[0] == "adapter alone False", proc.stdout + proc.stderr  # the SDK loads on first use
    assert lines[1] == "before False", proc.stdout + proc.stderr
    assert lines[2].startswith("error paramiko"), proc.stdout + proc.stderr  # paramiko's refused connection
    assert lines[3] == "after True", proc.stdout + proc.stderr


def test_the_console_script_collects_less_often_and_freezes_the_heap_at_exit(tmp_path: Path) -> None:
    """The console script (and ``python -m orchestrator``) go through entry.main, which sets the young
    generation's threshold for a short-lived process and freezes the heap as the last exit handler
    (orchestrator/entry.py); a test importing orchestrator.cli keeps the interpreter's defaults."""
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["orchestrator"] == "orchestrator.entry:main"
    code = """
import atexit, gc, sys
atexit.register(
    lambda: print("at exit", gc.get_threshold()[0], "frozen", gc.get_freeze_count() > 0, file=sys.stderr)
)
print("default", gc.get_threshold()[0], file=sys.stderr)
sys.argv = ["orchestrator", "--version"]
import runpy
runpy.run_module("orchestrator", run_name="__main__")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert "default 700" in proc.stderr, proc.stderr
    assert "version" in proc.stdout, proc.stdout + proc.stderr
    # The probe's handler was registered before entry.main's, so it runs after it (last in, first out).
    assert f"at exit {YOUNG_THRESHOLD} frozen True" in proc.stderr, proc.stderr


_SEND_PROBE = """
import json, sys
from orchestrator.service.builds import StagingBuilds
EDGE_MODULES = {edge_modules}
seen = {}
for name in ("send", "park"):
    def wrapped(self, *args, _orig=getattr(StagingBuilds, name), _name=name, **kwargs):
        seen[_name] = sorted(m for m in EDGE_MODULES if m in sys.modules)
        return _orig(self, *args, **kwargs)
    setattr(StagingBuilds, name, wrapped)
import atexit
atexit.register(lambda: print("\\nSENT=" + json.dumps(seen), file=sys.stderr))
from orchestrator.entry import main
sys.argv = ["orchestrator", *json.loads(sys.argv[1])]
main()
"""

# What `deploy` and `run start` load only after their staging build is on its way (issue 12).
EDGE_MODULES = (
    "orchestrator.service.advance",
    "orchestrator.service.claims",
    "orchestrator.service.recover",
    "orchestrator.gates",
    "orchestrator.records",
    "orchestrator.docker_engine",
    "transitions",
)


@pytest.mark.parametrize(
    ("args", "sent_by"),
    [
        pytest.param(["deploy", "--app", "demo", "--sha", "{sha}", "--json"], "send", id="deploy"),
        pytest.param(["run", "start", "--app", "demo", "--sha", "{sha}", "--json"], "park", id="run-start"),
    ],
)
def test_the_staging_build_is_decided_before_the_edges_modules_are_imported(
    args: list[str], sent_by: str, workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build is the critical path of `deploy` and of the three-call path: it goes to the engine
    before the gates, records, claims and the docker SDK are imported (service/builds.py), which then
    load while the engine builds. Whether it is sent needs only the config and the store."""
    database = f"sqlite:///{(tmp_path / 'ci.db').as_posix()}"
    Store(database).close()
    monkeypatch.setenv("ORCH_DATABASE_URL", database)
    argv = [a.replace("{sha}", workspace.repo.sha) for a in args]
    code = _SEND_PROBE.replace("{edge_modules}", repr(EDGE_MODULES))
    seen, proc = run_probe(code, argv, workspace.path, "SENT")
    assert sent_by in seen, f"{args[0]} never asked whether to send its build: {proc.stderr[-2000:]}"
    assert seen[sent_by] == [], f"{args[0]} imported {seen[sent_by]} before sending its build"


_EXIT_PROBE = """
import atexit, sys, threading, time
from pathlib import Path
out = Path(sys.argv[1])
atexit.register(lambda: out.with_suffix(".atexit").write_text("ran"))
if sys.argv[2] == "worker":
    def work():
        time.sleep(0.3)
        out.write_text("finished")
    threading.Thread(target=work, daemon=False).start()
sys.argv = ["orchestrator", *sys.argv[3:]]
from orchestrator.entry import main
main()
"""


@pytest.mark.parametrize("worker", ["worker", "alone"])
@pytest.mark.parametrize(
    ("args", "code"), [(["--version"], 0), (["runs", "show", "999999"], 2)], ids=["ok", "error"]
)
def test_the_console_scripts_fast_exit_keeps_the_exit_code_the_handlers_and_the_threads(
    tmp_path: Path, worker: str, args: list[str], code: int
) -> None:
    """The console script leaves by os._exit, skipping the interpreter's teardown (entry.py): its exit
    code, its output and every exit handler are as before, and a thread Python would wait for is waited
    for (then by the ordinary exit)."""
    (tmp_path / "orchestrator.toml").write_text("")
    out = tmp_path / "thread"
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_PROBE, str(out), worker, *args],
        cwd=tmp_path,
        env={**os.environ, "ORCH_DATABASE_URL": f"sqlite:///{tmp_path / 'o.db'}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert (tmp_path / "thread.atexit").read_text() == "ran"
    if code == 0:
        assert proc.stdout.startswith("orchestrator, version"), proc.stdout
    else:
        assert "unknown run 999999" in proc.stderr, proc.stderr
    assert (out.read_text() == "finished") if worker == "worker" else not out.exists()


# An edge's imports of what it needs only after its gates, done ahead in a thread (service/advance.py).
_LOAD_AHEAD = """
import json, sys
from orchestrator.config import Settings
from orchestrator.machine import TO_PROD, TO_STAGING, RunMachine, State
from orchestrator.service.advance import load_ahead

args = json.loads(sys.argv[1])
edge = {"staging": TO_STAGING, "prod": TO_PROD}[args[0]]
machine = RunMachine(State(edge.source))
before = "transitions" in sys.modules
load_ahead(edge, Settings("sqlite://", prune_after_deploy=args[1] == "prune")).join(30)
from orchestrator.steps import staging_check

loaded = {m: m in sys.modules for m in ("transitions", "http.client", "orchestrator.prune")}
loaded["staging check stub"] = staging_check._load_stub.cache_info().currsize == 1
moved = machine.succeed(edge).value
print("LOADED=" + json.dumps({"before": before, **loaded, "moved": moved}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("edge", "prune", "expected"),
    [
        ("staging", "prune", {"transitions", "staging check stub", "http.client"}),
        ("prod", "prune", {"transitions", "orchestrator.prune"}),
        ("prod", "keep", {"transitions"}),
    ],
)
def test_an_edge_loads_what_it_needs_after_its_gates_while_they_run(
    edge: str, prune: str, expected: set[str], tmp_path: Path
) -> None:
    """Making the run's machine imports nothing (an edge fires it only when its gates are done); the
    thread loads the library for that, the staging check's stub on the staging edge, prune on a prod
    edge that prunes after the deploy, and nothing else; the move then fires as before."""
    found, proc = run_probe(_LOAD_AHEAD, [edge, prune], tmp_path, "LOADED")
    assert found.pop("before") is False, proc.stderr[-2000:]
    assert found.pop("moved") == ("deploy-staging" if edge == "staging" else "deploy")
    assert {m for m, present in found.items() if present} == expected, proc.stderr[-2000:]
