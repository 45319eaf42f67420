#!/usr/bin/env python3
"""Benchmark the staged deploy of the sample app, side by side in one run (not a timed test).

Two questions, each answered as a ratio of medians measured in the same run, with repetitions
interleaved so that a slow moment of the machine (page cache, a busy engine) hurts both sides alike:

1. What do the gates cost? The full staged deploy through the real ``orchestrator`` console script
   (``run start``, ``advance --to deploy-staging``, ``advance --to deploy``) against the same steps as a
   plain docker CLI sequence (build, run staging, poll health, inspect the revision label, tag prod, run
   prod, poll health). Ratio: orchestrator / plain.
2. Does promotion stay independent of image size? ``advance --to deploy`` of the ~2 MB sample app against
   the same app plus a ~250 MB layer generated inside the build. The deploy edge rebuilds staging, which
   must come entirely from the cache the deploy-staging build left, and prod must reuse that image id;
   a ratio well above 1 means the promotion started copying or rebuilding bytes. Ratio: large / small.

Everything lives in a temporary directory (git repository, orchestrator.toml, SQLite database) and in
Docker objects named after a random suffix; all of it is removed on exit, Ctrl-C included.

Run: ``.venv/bin/python benchmarks/staged_deploy.py --repeat 3`` (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BUSYBOX,
    GIT_IDENTITY,
    LOOPBACK,
    STEP_TIMEOUT_S,
    BenchmarkError,
    checked,
    free_ports,
    guarded,
    remove_debris,
)

from orchestrator import health
from orchestrator.config import Settings
from orchestrator.verify import REVISION_LABEL

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_APP = ROOT / "examples" / "sample-app"
# The plain sequence polls exactly like the orchestrator does by default, so the ratio measures the gates
# and not a different polling cadence.
HEALTH_INTERVAL_S = Settings.health_interval_s
HEALTH_TIMEOUT_S = Settings.health_timeout_s

FULL_ORCH = "full deploy: orchestrator"
FULL_PLAIN = "full deploy: plain docker"
PROMOTE_SMALL = "promotion: small image"
PROMOTE_LARGE = "promotion: large image"
VARIANTS = (FULL_ORCH, FULL_PLAIN, PROMOTE_SMALL, PROMOTE_LARGE)


@dataclass
class Sample:
    """One timed repetition of one variant, with the parts it is made of (for the breakdown)."""

    variant: str
    seconds: float
    # Wall time of each step as seen from here (CLI subprocess, docker command, health loop).
    steps: dict[str, float] = field(default_factory=dict)
    # Gate durations as the orchestrator recorded them (``duration_s`` in ``runs show --json``).
    checks: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


# processes ----------------------------------------------------------------------------------------


def timed(steps: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        steps[name] = time.perf_counter() - t0


# the app's git repository -------------------------------------------------------------------------


def large_dockerfile(sample: str, megabytes: int) -> str:
    """The sample Dockerfile plus one incompressible layer, generated at build time (a 250 MB file must
    never be committed) and placed after the per-revision steps, so every new commit pays for it once in
    deploy-staging and the deploy edge can only be fast by reusing that build."""
    lines = sample.splitlines()
    cmd = next((i for i, line in enumerate(lines) if line.startswith("CMD")), None)
    if cmd is None:
        raise BenchmarkError(f"{SAMPLE_APP / 'Dockerfile'} has no CMD line to insert the large layer before")
    blob = [
        f"# ~{megabytes} MB of random bytes per revision: the layer promotion must not rebuild or copy.",
        f"RUN dd if=/dev/urandom of=/blob bs=1M count={megabytes} 2>/dev/null",
    ]
    return "\n".join([*lines[:cmd], *blob, *lines[cmd:]]) + "\n"


class AppRepo:
    """A throwaway copy of examples/sample-app as a git repository, one new commit per deploy: each run
    deploys a new revision over the previous one, as it would in real use."""

    def __init__(self, path: Path, large_mb: int) -> None:
        self.path = path
        self._count = 0
        if not BUSYBOX.is_file():
            raise BenchmarkError(f"{BUSYBOX} is missing: install Debian's busybox-static")
        shutil.copytree(SAMPLE_APP, path)
        shutil.copy2(BUSYBOX, path / "busybox")
        sample = (path / "Dockerfile").read_text(encoding="utf-8")
        (path / "Dockerfile.large").write_text(large_dockerfile(sample, large_mb), encoding="utf-8")
        self._git("init", "-q")
        self.new_revision("sample app")

    def _git(self, *args: str) -> str:
        return checked(["git", "-C", str(self.path), *GIT_IDENTITY, *args], what=f"git {args[0]}")

    def new_revision(self, subject: str) -> str:
        self._count += 1
        (self.path / "www" / "build.txt").write_text(f"{subject} #{self._count}\n", encoding="utf-8")
        self._git("add", "-A")
        self._git("commit", "-q", "-m", f"{subject} #{self._count}")
        return self._git("rev-parse", "HEAD").strip()

    def archive(self, sha: str) -> bytes:
        """The committed tree as a tar stream, the build context the orchestrator sends too."""
        proc = subprocess.run(
            ["git", "-C", str(self.path), "archive", "--format=tar", sha],
            capture_output=True,
            timeout=STEP_TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise BenchmarkError(f"git archive {sha} failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout


# the workspace: apps, ports, config, database, and their cleanup ---------------------------------


@dataclass(frozen=True)
class App:
    name: str
    dockerfile: str
    staging_port: int
    prod_port: int

    def container(self, env: str) -> str:
        # The orchestrator's naming (Deployer.container); the plain sequence uses it too.
        return f"{self.name}-{env}"


class Workspace:
    """Temp dir, apps and Docker objects of one benchmark run. ``cleanup`` removes all of it; it is
    called from ``finally`` with interrupts held off so that a second Ctrl-C cannot leave debris."""

    def __init__(self, orchestrator_bin: Path) -> None:
        self.suffix = secrets.token_hex(3)
        self.orchestrator_bin = orchestrator_bin
        self.docker_env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        self.docker_cli = "docker"  # the plain side's CLI (ratios.py --builder buildkit names one)
        ports = free_ports(8)
        self.orch = App(f"bench-{self.suffix}-orch", "Dockerfile", ports[0], ports[1])
        self.plain = App(f"bench-{self.suffix}-plain", "Dockerfile", ports[2], ports[3])
        self.small = App(f"bench-{self.suffix}-small", "Dockerfile", ports[4], ports[5])
        self.large = App(f"bench-{self.suffix}-large", "Dockerfile.large", ports[6], ports[7])
        self.apps = (self.orch, self.plain, self.small, self.large)
        self._repo: AppRepo | None = None
        # Created last: from here on the caller owns a directory that cleanup() must remove.
        self.dir = Path(tempfile.mkdtemp(prefix=f"orch-bench-{self.suffix}-"))
        self.config = self.dir / "orchestrator.toml"
        # Inherited ORCH_* variables (a disabled freshness check, another database) would silently
        # benchmark a different configuration; the CLI gets only the database of this run.
        self.orch_env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        # An installed orchestrator has its bytecode compiled (pip does it at install time). Run from a
        # source tree with PYTHONDONTWRITEBYTECODE set, every CLI process would compile the package from
        # source again (~60 ms each): a cost no installation pays. The first call writes __pycache__.
        self.orch_env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.orch_env["ORCH_DATABASE_URL"] = f"sqlite:///{(self.dir / 'orchestrator.db').as_posix()}"

    def setup(self, large_mb: int) -> None:
        self._repo = AppRepo(self.dir / "repo", large_mb)
        self.config.write_text(self._toml(), encoding="utf-8")

    @property
    def repo(self) -> AppRepo:
        if self._repo is None:
            raise RuntimeError("Workspace.setup() was not called")
        return self._repo

    def _toml(self) -> str:
        tables = []
        for app in (self.orch, self.small, self.large):
            tables.append(
                f'[apps."{app.name}"]\n'
                f'source = "repo"\n'
                f'dockerfile = "{app.dockerfile}"\n'
                f'health_path = "/health"\n'
                f'version_path = "/version"\n'
                f"staging_port = {app.staging_port}\n"
                f"prod_port = {app.prod_port}\n"
            )
        return "\n".join(tables)

    def cli(self, *args: str) -> dict[str, Any]:
        """One orchestrator CLI call with --json; exit code and JSON are both checked."""
        argv = [str(self.orchestrator_bin), "--config", str(self.config), *args, "--json"]
        out = checked(argv, what=f"orchestrator {' '.join(args)}", env=self.orch_env, cwd=self.dir)
        try:
            return json.loads(out)
        except json.JSONDecodeError as exc:
            raise BenchmarkError(
                f"orchestrator {' '.join(args)} printed no JSON object: {out[-2000:]}"
            ) from exc

    def docker(self, *args: str, what: str, stdin: bytes | None = None) -> str:
        return checked([self.docker_cli, *args], what=what, env=self.docker_env, stdin=stdin).strip()

    def cleanup(self) -> list[str]:
        """Remove containers, then image tags, then the temp dir. Returns what could not be removed."""
        # The random suffix is in every name we create (ours and the orchestrator's).
        return remove_debris(f"bench-{self.suffix}-", [app.name for app in self.apps], [self.dir])


# the variants -------------------------------------------------------------------------------------


def _check_advance(result: dict[str, Any], to: str) -> None:
    if result.get("outcome") != "succeeded" or result.get("state") != to:
        raise BenchmarkError(f"advance --to {to} did not succeed: {json.dumps(result, indent=2)[-4000:]}")


def _record_checks(sample: Sample, edge: str, result: dict[str, Any], wall_s: float) -> None:
    """Gate durations as the orchestrator recorded them, the parts of the longest gates we can tell
    apart from their evidence, and what the CLI call spent outside any gate (process start, imports,
    configuration, database), which only the difference with the wall time shows."""
    for check in result["checks"]:
        sample.checks[f"{edge}: {check['name']}"] = float(check["duration_s"])
        details = check.get("details") or {}
        if "build_s" in details:
            sample.checks[f"{edge}: {check['name']} / build"] = float(details["build_s"])
        if isinstance(details.get("health"), dict) and "elapsed_s" in details["health"]:
            sample.checks[f"{edge}: {check['name']} / health wait"] = float(details["health"]["elapsed_s"])
    in_gates = sum(float(c["duration_s"]) for c in result["checks"])
    sample.checks[f"{edge}: outside gates (CLI process, imports, DB)"] = wall_s - in_gates


def orchestrator_full_deploy(ws: Workspace, app: App) -> Sample:
    """The three CLI calls an operator (or CI) makes, each in its own process, timed end to end."""
    sha = ws.repo.new_revision(f"full deploy {app.name}")
    sample = Sample(FULL_ORCH, 0.0)
    t0 = time.perf_counter()
    started = timed(
        sample.steps, "run start", lambda: ws.cli("run", "start", "--app", app.name, "--sha", sha)
    )
    run_id = str(started["run_id"])
    staged = timed(
        sample.steps,
        "advance --to deploy-staging",
        lambda: ws.cli("advance", run_id, "--to", "deploy-staging", "--actor", "benchmark"),
    )
    _check_advance(staged, "deploy-staging")
    deployed = timed(
        sample.steps,
        "advance --to deploy",
        lambda: ws.cli("advance", run_id, "--to", "deploy", "--actor", "benchmark"),
    )
    _check_advance(deployed, "deploy")
    sample.seconds = time.perf_counter() - t0
    _record_checks(sample, "staging", staged, sample.steps["advance --to deploy-staging"])
    _record_checks(sample, "deploy", deployed, sample.steps["advance --to deploy"])
    sample.info = {"run_id": int(run_id), "sha": sha}
    return sample


def _wait_healthy(ws: Workspace, app: App, env: str, port: int) -> None:
    # Same loop, interval and timeout as the orchestrator's health gate (minus its liveness probe), so
    # the plain side is not handicapped by a slower poll.
    report = health.wait_healthy(
        f"http://{LOOPBACK}:{port}/health", timeout=HEALTH_TIMEOUT_S, interval=HEALTH_INTERVAL_S
    )
    if not report.healthy:
        logs = subprocess.run(
            ["docker", "logs", "--tail", "20", app.container(env)], capture_output=True, timeout=60
        )
        raise BenchmarkError(
            f"plain {env} never became healthy: {report.reason}\n"
            f"{(logs.stdout + logs.stderr).decode(errors='replace')}"
        )


def _docker_run(ws: Workspace, app: App, env: str, image_id: str) -> None:
    name = app.container(env)
    port = app.staging_port if env == "staging" else app.prod_port
    ws.docker("rm", "-f", name, what=f"remove {name}")  # exits 0 when the container does not exist
    restart = ["--restart", "unless-stopped"] if env == "prod" else []
    env_vars = ["-e", f"PORT={port}", "-e", f"ORCH_ENVIRONMENT={env}"]
    argv = ["run", "-d", "--name", name, "--network", "host", *restart, *env_vars, image_id]
    ws.docker(*argv, what=f"docker run {name}")


def plain_full_deploy(ws: Workspace, app: App) -> Sample:
    """What a shell script would do for the same deploy: no database, no gates, no rebuild on promotion,
    one revision-label check. The floor the orchestrator's overhead is measured against."""
    repo = ws.repo
    sha = repo.new_revision(f"full deploy {app.name}")
    sample = Sample(FULL_PLAIN, 0.0)
    steps = sample.steps
    t0 = time.perf_counter()

    def build() -> str:
        context = repo.archive(sha)
        argv = ["build", "-q", "--build-arg", f"GIT_SHA={sha}", "-t", f"{app.name}:{sha}"]
        out = ws.docker(*argv, "-f", app.dockerfile, "-", what="docker build", stdin=context)
        return out.splitlines()[-1]  # -q prints the image id last

    image_id = timed(steps, "git archive + docker build", build)
    timed(steps, "run staging", lambda: _docker_run(ws, app, "staging", image_id))
    timed(steps, "staging health", lambda: _wait_healthy(ws, app, "staging", app.staging_port))

    def label() -> str:
        fmt = f'{{{{ index .Config.Labels "{REVISION_LABEL}" }}}}'
        return ws.docker("image", "inspect", "--format", fmt, image_id, what="inspect revision label")

    revision = timed(steps, "inspect revision label", label)
    if revision != sha:
        raise BenchmarkError(f"plain build {image_id} has {REVISION_LABEL}={revision!r}, expected {sha}")
    timed(steps, "tag prod", lambda: ws.docker("tag", image_id, f"{app.name}:prod", what="docker tag"))
    timed(steps, "run prod", lambda: _docker_run(ws, app, "prod", image_id))
    timed(steps, "prod health", lambda: _wait_healthy(ws, app, "prod", app.prod_port))
    sample.seconds = time.perf_counter() - t0
    sample.info = {"sha": sha, "image_id": image_id}
    return sample


def promotion(ws: Workspace, app: App, variant: str) -> Sample:
    """Bring a new revision to deploy-staging (not timed), then time only ``advance --to deploy``."""
    sha = ws.repo.new_revision(f"promotion {app.name}")
    run_id = str(ws.cli("run", "start", "--app", app.name, "--sha", sha)["run_id"])
    staged = ws.cli("advance", run_id, "--to", "deploy-staging", "--actor", "benchmark")
    _check_advance(staged, "deploy-staging")
    built = next(c for c in staged["checks"] if c["name"] == "build_image")["details"]
    sample = Sample(variant, 0.0)
    deployed = timed(
        sample.steps,
        "advance --to deploy",
        lambda: ws.cli("advance", run_id, "--to", "deploy", "--actor", "benchmark"),
    )
    _check_advance(deployed, "deploy")
    sample.seconds = sample.steps["advance --to deploy"]
    _record_checks(sample, "deploy", deployed, sample.seconds)
    fresh = next(c for c in deployed["checks"] if c["name"] == "check_staging_image_fresh")["details"]
    promoted = next(c for c in deployed["checks"] if c["name"] == "promote_prod")["details"]
    sample.info = {
        "run_id": int(run_id),
        "sha": sha,
        "image_size_bytes": int(built.get("size_bytes") or 0),
        "deploy_staging_build_s": float(built.get("build_s") or 0.0),
        # Build once: the deploy edge's rebuild must hit the cache and prod must run that very image.
        "rebuild_reused_image": fresh.get("image_id") == built.get("image_id"),
        "prod_reused_image": promoted.get("image_id") == built.get("image_id"),
    }
    return sample


# statistics and output ----------------------------------------------------------------------------


def summarize(samples: list[Sample]) -> dict[str, Any]:
    by_variant: dict[str, list[Sample]] = {v: [s for s in samples if s.variant == v] for v in VARIANTS}

    def stats(values: list[float]) -> dict[str, float]:
        return {"median_s": statistics.median(values), "min_s": min(values)} if values else {}

    def parts(group: list[Sample], attr: str) -> dict[str, dict[str, float]]:
        keys = list(dict.fromkeys(k for s in group for k in getattr(s, attr)))
        return {k: stats([getattr(s, attr)[k] for s in group if k in getattr(s, attr)]) for k in keys}

    variants = {
        v: {
            "n": len(group),
            **stats([s.seconds for s in group]),
            "samples_s": [round(s.seconds, 4) for s in group],
            "steps": parts(group, "steps"),
            "checks": parts(group, "checks"),
        }
        for v, group in by_variant.items()
    }

    def ratio(a: str, b: str) -> float | None:
        num, den = variants[a].get("median_s"), variants[b].get("median_s")
        return num / den if num is not None and den else None

    sizes = {v: max((s.info.get("image_size_bytes", 0) for s in g), default=0) for v, g in by_variant.items()}
    reuse = {
        v: all(s.info.get("rebuild_reused_image") and s.info.get("prod_reused_image") for s in g)
        for v, g in by_variant.items()
        if v in (PROMOTE_SMALL, PROMOTE_LARGE)
    }
    return {
        "variants": variants,
        "ratios": {
            "orchestrator_over_plain": ratio(FULL_ORCH, FULL_PLAIN),
            "large_over_small_promotion": ratio(PROMOTE_LARGE, PROMOTE_SMALL),
        },
        "image_size_bytes": {"small": sizes[PROMOTE_SMALL], "large": sizes[PROMOTE_LARGE]},
        "promotion_reused_built_image": reuse,
    }


def render(summary: dict[str, Any], repeat: int, warmup: int) -> str:
    v = summary["variants"]
    sizes = summary["image_size_bytes"]
    labels = {
        FULL_ORCH: FULL_ORCH,
        FULL_PLAIN: FULL_PLAIN,
        PROMOTE_SMALL: f"{PROMOTE_SMALL} ({sizes['small'] / 1e6:.1f} MB)",
        PROMOTE_LARGE: f"{PROMOTE_LARGE} ({sizes['large'] / 1e6:.1f} MB)",
    }
    width = max(len(x) for x in labels.values())
    lines = [f"staged deploy benchmark: {repeat} interleaved repetitions after {warmup} warm-up", ""]
    lines.append(f"{'variant':<{width}}  {'n':>2}  {'median s':>9}  {'min s':>9}")
    for name in VARIANTS:
        row = v[name]
        lines.append(f"{labels[name]:<{width}}  {row['n']:>2}  {row['median_s']:>9.3f}  {row['min_s']:>9.3f}")
    r = summary["ratios"]
    lines += [
        "",
        f"ratio orchestrator / plain docker (medians, full deploy): {r['orchestrator_over_plain']:.2f}",
        f"ratio large / small (medians, advance --to deploy):      {r['large_over_small_promotion']:.2f}",
    ]
    reuse = summary["promotion_reused_built_image"]
    if not all(reuse.values()):
        lines.append(f"WARNING: promotion did not reuse the deploy-staging image: {reuse}")

    def breakdown(title: str, parts: dict[str, dict[str, float]]) -> None:
        if not parts:
            return
        w = max(len(k) for k in parts)
        lines.extend(["", title])
        lines.extend(f"  {k:<{w}}  {p['median_s']:>8.3f}  {p['min_s']:>8.3f}" for k, p in parts.items())

    breakdown("orchestrator full deploy, CLI calls (median s, min s):", v[FULL_ORCH]["steps"])
    breakdown("orchestrator full deploy, gates as recorded (median s, min s):", v[FULL_ORCH]["checks"])
    breakdown("plain docker full deploy, steps (median s, min s):", v[FULL_PLAIN]["steps"])
    for name in (PROMOTE_SMALL, PROMOTE_LARGE):
        breakdown(f"{name}, gates as recorded (median s, min s):", v[name]["checks"])
    return "\n".join(lines)


# main ---------------------------------------------------------------------------------------------


def find_orchestrator(explicit: str | None) -> Path:
    candidates = [Path(explicit)] if explicit else [Path(sys.executable).parent / "orchestrator"]
    if not explicit and (found := shutil.which("orchestrator")):
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BenchmarkError(
        f"no orchestrator console script at {', '.join(map(str, candidates))}: "
        "run with the project's venv (.venv/bin/python) or pass --orchestrator PATH"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per variant (default 3)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed repetitions first (default 1): the first one creates the database, fills the "
        "build cache and has no prod container to swap",
    )
    parser.add_argument(
        "--large-mb", type=int, default=250, help="size of the large layer in MB (default 250)"
    )
    parser.add_argument(
        "--orchestrator", default=None, help="console script to time (default: next to python)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON summary on stdout (table on stderr)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.large_mb < 1:
        parser.error("--repeat must be >= 1, --warmup >= 0 and --large-mb >= 1")
    return args


def benchmark(ws: Workspace, repeat: int, warmup: int) -> list[Sample]:
    samples: list[Sample] = []
    for i in range(warmup + repeat):
        label = f"warm-up {i + 1}/{warmup}" if i < warmup else f"rep {i - warmup + 1}/{repeat}"
        # Alternate who goes first, so neither side always inherits a warm (or busy) engine.
        full: list[Callable[[], Sample]] = [
            lambda: orchestrator_full_deploy(ws, ws.orch),
            lambda: plain_full_deploy(ws, ws.plain),
        ]
        promote: list[Callable[[], Sample]] = [
            lambda: promotion(ws, ws.small, PROMOTE_SMALL),
            lambda: promotion(ws, ws.large, PROMOTE_LARGE),
        ]
        if i % 2:
            full.reverse()
            promote.reverse()
        got = [fn() for fn in (*full, *promote)]
        print(f"{label}: " + ", ".join(f"{s.variant} {s.seconds:.3f}s" for s in got), file=sys.stderr)
        if i >= warmup:
            samples.extend(got)
    return samples


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workspaces: list[Workspace] = []

    def body() -> int:
        orchestrator_bin = find_orchestrator(args.orchestrator)
        checked(["docker", "version", "--format", "{{.Server.Version}}"], what="docker engine check")
        ws = Workspace(orchestrator_bin)
        workspaces.append(ws)
        ws.setup(args.large_mb)
        print(f"workspace {ws.dir}, apps bench-{ws.suffix}-*", file=sys.stderr)
        samples = benchmark(ws, args.repeat, args.warmup)
        summary = summarize(samples)
        table = render(summary, args.repeat, args.warmup)
        if args.json:
            print(table, file=sys.stderr)
            print(json.dumps({"repeat": args.repeat, "warmup": args.warmup, **summary}, indent=2))
        else:
            print(table)
        return 0

    return guarded(body, lambda: [p for ws in workspaces for p in ws.cleanup()])


if __name__ == "__main__":
    sys.exit(main())
