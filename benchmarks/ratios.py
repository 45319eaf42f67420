#!/usr/bin/env python3
"""The ratios issue 12 sets targets for, measured side by side in one run (not a timed test).

Printed with medians of interleaved pairs (orchestrator side and plain side alternate who goes first):

- start-up: ``orchestrator --help`` and ``--version`` as whole processes, the bare interpreter, and the
  fixed start-up of a command (``runs list``: import + config + database open) beyond the interpreter,
  split into what a process importing the same libraries alone takes and what the orchestrator adds;
- gates of both edges inside one process (``RunService.deploy`` called in-process, so no interpreter
  start, imports or config are in the figure) against the raw docker CLI sequence doing the same steps
  (staged_deploy.py's plain sequence: git archive | docker build, run staging, poll health, inspect the
  label, tag, run prod, poll health);
- ``orchestrator deploy`` (one process) and the three-call CI path (``run start``, ``advance --to
  deploy-staging``, ``advance --to deploy``) against that raw sequence; for the latter, who sent each
  staging build (``run start`` parks it for the advance by default, parking.py), read from the records
  after the timing;
- the import time of each command (``python -X importtime``, the top-level modules summed), and how many
  Docker API requests one deploy makes (the SDK's HTTP session and docker_wire.EngineApi wrapped in a
  counter, benchmark only).

Both sides build with the legacy builder (the plain side with DOCKER_BUILDKIT=0, the orchestrator with
ORCH_BUILDER=legacy) so that the same build is compared; ``--builder buildkit`` compares BuildKit builds
instead (both sides through the same docker CLI that builds with BuildKit, the plain one with
DOCKER_BUILDKIT=1), what ``ORCH_BUILDER=auto`` picks where such a CLI exists. The machine may be shared:
the load average is printed before and after; compare ratios, not absolute times.

Run: ``.venv/bin/python benchmarks/ratios.py --pairs 5 [--builder buildkit]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchmarkError, checked, guarded, median
from staged_deploy import Workspace, _check_advance, find_orchestrator, plain_full_deploy

from orchestrator.entry import YOUNG_THRESHOLD

PLAIN = "raw docker CLI sequence"
GATES = "gates of both edges, in one process"
ONE_SHOT = "orchestrator deploy (one process)"
THREE_CALLS = "run start + 2 x advance (three processes)"
TARGETS = {GATES: 1.0, ONE_SHOT: 1.10, THREE_CALLS: 1.25}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def wall(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# start-up ----------------------------------------------------------------------------------------


# Prints the modules a `runs list` process imported that a bare interpreter does not have, other than the
# orchestrator's own, as the process exits (entry.py runs exit handlers before its os._exit).
_PROBE = """
import atexit, sys
bare = set(sys.modules)
def show():
    found = sorted(m for m in set(sys.modules) - bare if not m.startswith(("orchestrator", "_")))
    print("MODULES=" + ",".join(found), file=sys.stderr)
atexit.register(show)
sys.argv = ["orchestrator", *sys.argv[1:]]
from orchestrator.entry import main
main()
"""

LIBRARIES = "the same libraries alone (no orchestrator code)"


def libraries_alone(ws: Workspace, argv: list[str]) -> list[str]:
    """A process importing the libraries the ``argv`` command imports and nothing of the orchestrator's,
    with the console script's garbage-collector setting and exit (entry.py): the floor the orchestrator's
    own modules, config and database open are measured above. Its modules are read from a real run, the
    second one: the first may create and migrate the database, or parse a config it has not seen."""
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=ws.orch_env, cwd=ws.dir
        )
    found = proc.stderr.rpartition("MODULES=")[2].split("\n")[0].strip()
    if proc.returncode != 0 or not found:
        raise BenchmarkError(f"the module probe failed: {proc.stderr[-2000:]}")
    code = (
        "import gc, os\n"
        f"gc.set_threshold({YOUNG_THRESHOLD}, *gc.get_threshold()[1:])\n"
        + "".join(f"import {name}\n" for name in found.split(","))
        + "os._exit(0)\n"
    )
    return [sys.executable, "-c", code]


def startup(ws: Workspace, pairs: int) -> dict[str, float]:
    script = str(ws.orchestrator_bin)
    env = ws.orch_env
    runs_list = ["--config", str(ws.config), "runs", "list", "--json"]
    cases: dict[str, list[str]] = {
        "python -c pass (bare interpreter)": [sys.executable, "-c", "pass"],
        "orchestrator --help": [script, "--help"],
        "orchestrator --version": [script, "--version"],
        "orchestrator runs list (import + config + DB open)": [script, *runs_list],
        LIBRARIES: libraries_alone(ws, runs_list),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for name, argv in cases.items():  # untimed: the first call compiles and caches the bytecode
        checked(argv, what=name, env=env, cwd=ws.dir)
    for i in range(max(pairs, 5) * 2):
        order = list(cases.items()) if i % 2 == 0 else list(reversed(cases.items()))
        for name, argv in order:
            times[name].append(wall(lambda a=argv, n=name: checked(a, what=n, env=env, cwd=ws.dir)))
    return {k: median(v) for k, v in times.items()}


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_seconds(stderr: str) -> float:
    """Sum of the cumulative times of the top-level imports (``-X importtime`` lines of depth 0)."""
    total = 0
    for line in stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match and len(match.group(3)) == 1:
            total += int(match.group(2))
    return total / 1e6


def import_time(ws: Workspace, *args: str) -> float:
    argv = [sys.executable, "-X", "importtime", "-m", "orchestrator", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=ws.orch_env, cwd=ws.dir, timeout=600)
    if proc.returncode != 0:
        raise BenchmarkError(f"{' '.join(args)} failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return import_seconds(proc.stderr)


# counting Docker API requests -------------------------------------------------------------------


@contextmanager
def counting_api_calls() -> Iterator[collections.Counter[str]]:
    """Every HTTP request the docker SDK sends, by method and path with ids and names folded."""
    import requests

    counts: collections.Counter[str] = collections.Counter()
    original = requests.Session.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        path = re.sub(r"^.*?/v\d+\.\d+", "", str(url)).split("?")[0]
        path = re.sub(r"/(containers|images)/[^/]+(?=/|$)", r"/\1/{id}", path)
        counts[f"{method} {path}"] += 1
        return original(self, method, url, *args, **kwargs)

    from orchestrator.docker_wire import EngineApi

    original_wire = EngineApi._request

    def wire_request(self: Any, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        # A local engine's calls go over its socket without the SDK (docker_wire.EngineApi).
        counts[f"{method} " + re.sub(r"/(containers|images)/[^/]+(?=/|$)", r"/\1/{id}", path)] += 1
        return original_wire(self, method, path, *args, **kwargs)

    requests.Session.request = request  # type: ignore[method-assign]
    EngineApi._request = wire_request  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        requests.Session.request = original  # type: ignore[method-assign]
        EngineApi._request = original_wire  # type: ignore[method-assign]


# deploys ------------------------------------------------------------------------------------------


class InProcess:
    """The service layer called directly: what the gates of both edges cost without any process start,
    import or config load (those are measured by the start-up figures)."""

    def __init__(self, ws: Workspace) -> None:
        os.environ.update({k: v for k, v in ws.orch_env.items() if k.startswith("ORCH_")})
        from orchestrator import logging as orch_logging
        from orchestrator.config import load_config
        from orchestrator.service import RunService
        from orchestrator.store.repository import Store

        config = load_config(str(ws.config))
        orch_logging.configure("json", "warning")
        self.store = Store(config.settings.database_url)
        self.service = RunService(config, self.store)

    def deploy(self, app: str, sha: str) -> dict[str, Any]:
        from orchestrator import views

        payload = views.deploy(self.service.deploy(app, sha, "benchmark"))
        if payload["outcome"] != "succeeded":
            raise BenchmarkError(f"in-process deploy failed: {json.dumps(payload)[-3000:]}")
        return payload

    def close(self) -> None:
        self.store.close()


def one_shot(ws: Workspace, app: str, sha: str) -> None:
    payload = ws.cli("deploy", "--app", app, "--sha", sha, "--actor", "benchmark")
    if payload.get("outcome") != "succeeded":
        raise BenchmarkError(f"deploy failed: {json.dumps(payload)[-3000:]}")


def three_calls(ws: Workspace, app: str, sha: str) -> str:
    run_id = str(ws.cli("run", "start", "--app", app, "--sha", sha)["run_id"])
    for to in ("deploy-staging", "deploy"):
        _check_advance(ws.cli("advance", run_id, "--to", to, "--actor", "benchmark"), to)
    return run_id


def staging_builds(ws: Workspace, run_ids: list[str]) -> dict[str, int]:
    """Who sent each three-call run's staging build (its build step's record, read after the timing):
    ``run start`` (parked for the advance), ``this process`` (the advance), or nobody; and how many parks
    were lost and built again. Shows that the figure measured the path it names."""
    counts: collections.Counter[str] = collections.Counter()
    for run_id in run_ids:
        shown = ws.cli("runs", "show", run_id)
        for transition in shown["transitions"]:
            for step in transition["steps"]:
                if step["name"] == "build":
                    changes = step.get("changes") or {}
                    counts[str(changes.get("sent_by", "nobody ahead"))] += 1
                    counts["lost and built again"] += bool(changes.get("ahead_lost"))
    return dict(counts)


def use_builder(ws: Workspace, builder: str) -> None:
    """Both sides build with ``builder``: the same engine builder, so that the same build is compared."""
    ws.orch_env["ORCH_BUILDER"] = builder
    if builder == "buildkit":
        from orchestrator.builders import find_buildkit_cli

        cli = find_buildkit_cli()
        if cli is None or cli.buildx:
            raise BenchmarkError("--builder buildkit needs a docker CLI that builds with DOCKER_BUILDKIT=1")
        ws.orch_env["ORCH_DOCKER_CLI"] = cli.path
        ws.docker_cli = cli.path
        ws.docker_env["DOCKER_BUILDKIT"] = "1"


def run(ws: Workspace, pairs: int, warmup: int) -> dict[str, Any]:
    inproc = InProcess(ws)
    app = ws.orch.name
    three_call_runs: list[str] = []
    sides: dict[str, Callable[[str], None]] = {
        GATES: lambda sha: inproc.deploy(app, sha),
        ONE_SHOT: lambda sha: one_shot(ws, app, sha),
        THREE_CALLS: lambda sha: three_call_runs.append(three_calls(ws, app, sha)),
    }
    times: dict[str, list[float]] = {k: [] for k in (*sides, PLAIN)}
    ratios: dict[str, list[float]] = {k: [] for k in sides}
    try:
        for i in range(warmup + pairs):
            for name, fn in sides.items():
                # One pair: the orchestrator side and the raw sequence, alternating who goes first.
                sha = ws.repo.new_revision(f"{name} {i}")
                orch = lambda fn=fn, sha=sha: fn(sha)  # noqa: E731
                plain = lambda: plain_full_deploy(ws, ws.plain)  # noqa: E731
                if (i + list(sides).index(name)) % 2:
                    t_plain, t_orch = wall(plain), wall(orch)
                else:
                    t_orch, t_plain = wall(orch), wall(plain)
                if i >= warmup:
                    times[name].append(t_orch)
                    times[PLAIN].append(t_plain)
                    ratios[name].append(t_orch / t_plain)
            print(f"pair {i + 1 - warmup}/{pairs}" if i >= warmup else "warm-up", file=sys.stderr)
        with counting_api_calls() as counts:
            inproc.deploy(app, ws.repo.new_revision("counted"))
    finally:
        inproc.close()
    return {
        "times": times,
        "ratios": ratios,
        "api_calls": dict(counts),
        "three_call_staging_builds": staging_builds(ws, three_call_runs[warmup:]),
    }


def render(
    start: dict[str, float], deploys: dict[str, Any], imports: dict[str, float], loads: list[str]
) -> str:
    bare = start["python -c pass (bare interpreter)"]
    lines = [f"load average (1, 5, 15 min): before {loads[0]}, after {loads[1]}", "", "start-up (median s):"]
    for name, value in start.items():
        lines.append(f"  {name:<55} {value:7.3f}")
    fixed = start["orchestrator runs list (import + config + DB open)"] - bare
    lines.append(f"  {'fixed start-up beyond the interpreter (target <= 0.120)':<55} {fixed:7.3f}")
    floor = start[LIBRARIES] - bare
    lines.append(f"  {'  of which the libraries alone':<55} {floor:7.3f}")
    lines.append(f"  {'  of which the orchestrator (its modules, config, DB)':<55} {fixed - floor:7.3f}")
    lines += ["", "import time per command (s, -X importtime, top-level modules summed):"]
    for name, value in imports.items():
        lines.append(f"  {name:<55} {value:7.3f}")
    times, ratios = deploys["times"], deploys["ratios"]
    lines += ["", f"deploy of a new commit, median of {len(times[PLAIN]) // 3} interleaved pairs each:"]
    lines.append(f"  {PLAIN:<45} {median(times[PLAIN]):7.3f} s")
    for name, target in TARGETS.items():
        r = median(ratios[name])
        verdict = "met" if r <= target else "NOT met"
        lines.append(
            f"  {name:<45} {median(times[name]):7.3f} s   ratio {r:5.2f} (target <= {target:.2f}: {verdict})"
        )
    sent = ", ".join(f"{who}: {n}" for who, n in deploys["three_call_staging_builds"].items())
    lines.append(f"  three-call staging builds sent by: {sent}")
    calls = deploys["api_calls"]
    lines += ["", f"Docker API requests of one deploy (in process): {sum(calls.values())}"]
    for key, n in sorted(calls.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {n:4d}  {key}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs per ratio (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed pairs first (default 1)")
    parser.add_argument("--orchestrator", default=None, help="console script (default: next to python)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on stdout too")
    parser.add_argument(
        "--builder", choices=("legacy", "buildkit"), default="legacy", help="what both sides build with"
    )
    args = parser.parse_args(argv)
    workspaces: list[Workspace] = []

    def body() -> int:
        loads = [load()]
        ws = Workspace(find_orchestrator(args.orchestrator))
        workspaces.append(ws)
        ws.setup(1)
        use_builder(ws, args.builder)
        print(f"workspace {ws.dir}, apps bench-{ws.suffix}-*, builder {args.builder}", file=sys.stderr)
        start = startup(ws, args.pairs)
        deploys = run(ws, args.pairs, args.warmup)
        config = ("--config", str(ws.config))
        imports = {
            "--help": import_time(ws, "--help"),
            "--version": import_time(ws, "--version"),
            "runs list": import_time(ws, *config, "runs", "list"),
            "run start": import_time(
                ws, *config, "run", "start", "--app", ws.orch.name, "--sha", ws.repo.new_revision("imports")
            ),
            "deploy": import_time(
                ws, *config, "deploy", "--app", ws.orch.name, "--sha", ws.repo.new_revision("imports deploy")
            ),
        }
        loads.append(load())
        print(render(start, deploys, imports, loads))
        if args.json:
            print(json.dumps({"startup": start, "imports": imports, "loads": loads, **deploys}, indent=2))
        return 0

    return guarded(body, lambda: [p for ws in workspaces for p in ws.cleanup()])


if __name__ == "__main__":
    sys.exit(main())
