#!/usr/bin/env python3
"""Benchmark: a promotion on the swarm backend against `docker service update --image repo@sha256:...`
by hand, the same image, in one run (issue 14). Not a timed test: it prints seconds and the ratio.

Both sides update a 2-replica service on an overlay network of this machine's single-node swarm, with
the same update settings (start-first, monitor window, failure action rollback) and the same image by
the same registry digest:

- ours: ``orchestrator advance RUN --to deploy`` (one process), prod on ``runtime = "swarm"``: the
  freshness check of staging, tag and push (the digest is already in the registry), the service update,
  waiting for every task to converge, the health check through the proxy, verification of every task,
  the recorded release;
- by hand: ``docker service update --image repo@sha256:... --detach=false`` on a service of its own,
  which also waits for convergence and for the monitor window (the CLI's own "verify" phase).

Each pair gets a new commit, taken to deploy-staging untimed (staging runs as a plain container, pushed
to the registry: that push is where the digest comes from); then both sides are timed on that digest,
who goes first alternating. Medians over ``--pairs`` (default 5) and the ratio ours / by hand.

Run: ``.venv/bin/python benchmarks/swarm.py --pairs 5`` (see benchmarks/README.md). Needs the local
engine in swarm mode (``docker swarm init --advertise-addr 127.0.0.1``), Debian's docker-registry and
haproxy (for the proxy image, built FROM scratch here) and static busybox. Everything is named
``bench-swarm-<random>`` and removed at the end, on failure and on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BenchmarkError,
    _sigterm_as_interrupt,
    free_ports,
    interrupts_deferred,
)
from _common import checked as run_cmd

ROOT = Path(__file__).resolve().parents[1]
BUSYBOX = Path("/usr/bin/busybox")
HAPROXY = Path("/usr/sbin/haproxy")
GIT = (
    "git",
    "-c",
    "user.name=benchmark",
    "-c",
    "user.email=benchmark@localhost",
    "-c",
    "commit.gpgsign=false",
)
TASK_PORT = 8080
SERVE = """\
bb=/bin/busybox
echo "$APP_REVISION" > /www/version
exec $bb httpd -f -p "0.0.0.0:$PORT" -h /www
"""
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY rootfs /
ARG GIT_SHA
ENV APP_REVISION=$GIT_SHA
LABEL org.opencontainers.image.revision=$GIT_SHA
CMD ["/bin/busybox", "sh", "/serve.sh"]
"""


@dataclass
class Bench:
    """The temp dir, registry, app and services of one run; ``cleanup`` removes all of it."""

    monitor_s: float
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    dir: Path = field(init=False)
    registry_proc: subprocess.Popen[bytes] | None = None
    registry: str = ""
    proxy_image: str = ""
    parts: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-swarm-{self.suffix}-"))
        self.app = f"bench-swarm-{self.suffix}"
        self.hand = f"bench-swarm-{self.suffix}-hand"
        self.network = f"bench-swarm-{self.suffix}-net"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        self.env.update(
            ORCH_DATABASE_URL=f"sqlite:///{(self.dir / 'orch.db').as_posix()}",
            PYTHONPATH=str(ROOT),
            DOCKER_BUILDKIT="0",
        )

    # setup ----------------------------------------------------------------------------------------

    def start_registry(self) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise BenchmarkError("docker-registry is not installed (apt-get install -y docker-registry)")
        (port,) = free_ports(1)
        self.registry = f"127.0.0.1:{port}"
        config = self.dir / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n"
            f"  filesystem:\n    rootdirectory: {json.dumps(str(self.dir / 'registry'))}\n"
            f"http:\n  addr: {self.registry}\n",
            encoding="utf-8",
        )
        self.registry_proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.registry}/v2/", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise BenchmarkError(f"docker-registry on {self.registry} did not answer")

    def build_proxy_image(self) -> None:
        """haproxy FROM scratch: Debian's binary and the libraries ldd lists (no Docker Hub here)."""
        libs = re.findall(r"(/\S+)\s+\(0x", run_cmd(["ldd", str(HAPROXY)], what="ldd haproxy"))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            dockerfile = b'FROM scratch\nCOPY . /\nENTRYPOINT ["/usr/sbin/haproxy"]\n'
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile))
            for path in [str(HAPROXY), *libs]:
                tar.add(str(Path(path).resolve()), arcname=path.lstrip("/"))
        self.proxy_image = f"{self.app}-haproxy:bench"
        run_cmd(
            ["docker", "build", "-q", "-t", self.proxy_image, "-"],
            what="build haproxy",
            stdin=buf.getvalue(),
            env=self.env,
        )

    def make_repo(self) -> None:
        repo = self.dir / "repo"
        (repo / "rootfs" / "www").mkdir(parents=True)
        shutil.copyfile(BUSYBOX, repo / "busybox")
        (repo / "busybox").chmod(0o755)
        (repo / "Dockerfile").write_text(DOCKERFILE, encoding="utf-8")
        (repo / "rootfs" / "serve.sh").write_text(SERVE, encoding="utf-8")
        (repo / "rootfs" / "www" / "health").write_text("ok\n", encoding="utf-8")
        run_cmd([*GIT, "init", "-q", "-b", "main", str(repo)], what="git init")
        self.commit("initial")
        staging, prod = free_ports(2)
        (self.dir / "orchestrator.toml").write_text(
            "[orchestrator]\nhealth_timeout_s = 60\nswarm_timeout_s = 300\n"
            "\n"
            f'[apps."{self.app}"]\nsource = "repo"\nhealth_path = "/health"\nversion_path = "/version"\n'
            f"proxy_image = {json.dumps(self.proxy_image)}\n"
            f"staging_port = {staging}\nprod_port = {prod}\ncontainer_port = {TASK_PORT}\n"
            f'registry = "{self.registry}"\nruntime = {{ prod = "swarm" }}\nreplicas = 2\n'
            f"update_monitor_s = {self.monitor_s:g}\nswarm_network = {json.dumps(self.network)}\n",
            encoding="utf-8",
        )

    def commit(self, subject: str) -> str:
        repo = self.dir / "repo"
        (repo / "rootfs" / "www" / "index.html").write_text(f"{subject}\n", encoding="utf-8")
        run_cmd([*GIT, "-C", str(repo), "add", "-A"], what="git add")
        run_cmd([*GIT, "-C", str(repo), "commit", "-q", "-m", subject], what="git commit")
        return run_cmd([*GIT, "-C", str(repo), "rev-parse", "HEAD"], what="git rev-parse").strip()

    def create_hand_service(self, digest: str) -> None:
        """The by-hand side's service: same replicas, network and update settings as ours."""
        run_cmd(
            [
                "docker", "service", "create", "--quiet", "--detach=false", "--name", self.hand,
                "--replicas", "2", "--network", self.network, "--env", f"PORT={TASK_PORT}",
                "--update-order", "start-first", "--update-failure-action", "rollback",
                "--update-monitor", f"{self.monitor_s:g}s", "--update-parallelism", "1",
                "--rollback-order", "start-first", "--stop-grace-period", "1s", digest,
            ],
            what="docker service create",
        )  # fmt: skip

    # the two sides --------------------------------------------------------------------------------

    def cli(self, *args: str | int) -> dict[str, Any]:
        argv = [sys.executable, "-m", "orchestrator", "--config", str(self.dir / "orchestrator.toml")]
        out = run_cmd(
            [*argv, *map(str, args), "--json"], what=f"orchestrator {args[0]}", env=self.env, cwd=self.dir
        )
        return dict(json.loads(out))

    def to_staging(self, subject: str) -> tuple[int, str]:
        """A new commit at deploy-staging (untimed); returns its run and the digest staging pushed."""
        sha = self.commit(subject)
        run_id = int(self.cli("run", "start", "--app", self.app, "--sha", sha)["run_id"])
        self.cli("advance", run_id, "--to", "deploy-staging")
        releases = self.cli("runs", "show", run_id)["releases"]
        (staging,) = [r for r in releases if r["environment"] == "staging"]
        return run_id, str(staging["digest"])

    def ours(self, run_id: int) -> float:
        started = time.perf_counter()
        result = self.cli("advance", run_id, "--to", "deploy")
        seconds = time.perf_counter() - started
        if result.get("outcome") != "succeeded":
            raise BenchmarkError(f"advance --to deploy: {json.dumps(result)[:2000]}")
        self.record_parts(run_id, seconds)
        return seconds

    def record_parts(self, run_id: int, wall_s: float) -> None:
        """Where our promotion's time went, as the orchestrator recorded it: each step (started_at to
        finished_at of ``runs show``), and the rest of the process (start-up, gates' bookkeeping)."""
        transition = self.cli("runs", "show", run_id)["transitions"][-1]
        total = 0.0
        for step in transition.get("steps", []):
            if step.get("started_at") and step.get("finished_at"):
                took = (
                    datetime.fromisoformat(step["finished_at"]) - datetime.fromisoformat(step["started_at"])
                ).total_seconds()
                self.parts.setdefault(step["name"], []).append(took)
                total += took
        self.parts.setdefault("(outside steps)", []).append(wall_s - total)

    def by_hand(self, digest: str) -> tuple[float, float]:
        """(until `docker service update` returns, until no container of the service runs another
        image). The CLI returns once the new tasks run and the monitor window passed, while the old
        tasks are still stopping (Docker keeps a task told to stop up ~2 s for requests in flight, then
        its stop grace period); our promotion waits for them too, because until then an answer through
        the proxy may still come from the old digest."""
        started = time.perf_counter()
        run_cmd(
            ["docker", "service", "update", "--quiet", "--detach=false", "--image", digest, self.hand],
            what="docker service update",
        )
        returned = time.perf_counter() - started
        while True:
            rows = run_cmd(
                ["docker", "service", "ps", self.hand, "--format", "{{.Image}} {{.CurrentState}}"],
                what="docker service ps",
            ).splitlines()
            if not [r for r in rows if r.split()[1:2] == ["Running"] and r.split()[0] != digest]:
                return returned, time.perf_counter() - started
            time.sleep(0.05)

    # cleanup --------------------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        problems: list[str] = []

        def attempt(what: str, argv: list[str]) -> str:
            proc = subprocess.run(argv, capture_output=True, timeout=120, check=False)
            if proc.returncode != 0:
                problems.append(f"{what}: {proc.stderr.decode(errors='replace').strip()}")
            return proc.stdout.decode(errors="replace")

        services = attempt("list services", ["docker", "service", "ls", "-q", "--filter", f"name={self.app}"])
        if ids := services.split():
            attempt("remove services", ["docker", "service", "rm", *ids])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = attempt("list containers", ["docker", "ps", "-aq", "--filter", f"name={self.app}"]).split()
            if not left:
                break
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True, timeout=120, check=False)
            time.sleep(0.5)
        while time.monotonic() < deadline:
            proc = subprocess.run(["docker", "network", "rm", self.network], capture_output=True, check=False)
            if proc.returncode == 0 or b"not found" in proc.stderr:
                break
            time.sleep(0.5)
        images = attempt("list images", ["docker", "images", "-q", "--filter", f"reference={self.app}*"])
        images += attempt("list images", ["docker", "images", "-q", "--filter", f"reference=*/{self.app}*"])
        if ids := sorted(set(images.split())):
            attempt("remove images", ["docker", "rmi", "-f", *ids])
        if self.registry_proc is not None:
            self.registry_proc.terminate()
            self.registry_proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="interleaved pairs (default 5)")
    parser.add_argument("--monitor", type=float, default=1.0, help="update monitor window, s (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON summary on stdout")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be >= 1")
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    bench: Bench | None = None
    ours: list[float] = []
    hand: list[float] = []
    hand_settled: list[float] = []
    try:
        swarm = run_cmd(["docker", "info", "--format", "{{.Swarm.ControlAvailable}}"], what="docker info")
        if swarm.strip() != "true":
            raise BenchmarkError(
                "the engine is not a swarm manager: docker swarm init --advertise-addr 127.0.0.1"
            )
        bench = Bench(args.monitor)
        bench.start_registry()
        bench.build_proxy_image()
        bench.make_repo()
        print(f"workspace {bench.dir}, registry {bench.registry}", file=sys.stderr)
        # Warm-up (untimed): the first promotion creates prod's service and proxy; the by-hand service
        # is created on the same first digest.
        run_id, digest = bench.to_staging("warm-up")
        bench.ours(run_id)
        bench.create_hand_service(digest)
        for i in range(args.pairs):
            run_id, digest = bench.to_staging(f"pair {i + 1}")
            sides: list[tuple[str, Callable[[], Any]]] = [
                ("ours", lambda run_id=run_id: bench.ours(run_id)),
                ("hand", lambda digest=digest: bench.by_hand(digest)),
            ]
            if i % 2:
                sides.reverse()
            got = {name: fn() for name, fn in sides}
            ours.append(got["ours"])
            hand.append(got["hand"][0])
            hand_settled.append(got["hand"][1])
            first = sides[0][0]
            print(
                f"pair {i + 1}/{args.pairs} ({first} first): ours {got['ours']:.2f}s, by hand "
                f"{got['hand'][0]:.2f}s (old tasks stopped after {got['hand'][1]:.2f}s)",
                file=sys.stderr,
            )
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if bench is not None:
            with interrupts_deferred():
                for problem in bench.cleanup():
                    print(f"cleanup: {problem}", file=sys.stderr)
    # The warm-up's parts (the service's creation) are not a promotion over a running service.
    parts = {name: values[-args.pairs :] for name, values in (bench.parts if bench else {}).items()}
    summary = {
        "pairs": args.pairs,
        "ours_parts_median_s": {name: median(values) for name, values in parts.items()},
        "monitor_s": args.monitor,
        "ours_s": ours,
        "by_hand_s": hand,
        "ours_median_s": median(ours),
        "by_hand_median_s": median(hand),
        "by_hand_settled_s": hand_settled,
        "by_hand_settled_median_s": median(hand_settled),
        "ratio_ours_by_hand": median(ours) / median(hand),
        "ratio_ours_by_hand_settled": median(ours) / median(hand_settled),
        "load_average": os.getloadavg(),
    }
    table = (
        f"promotion on swarm, {args.pairs} interleaved pairs, monitor {args.monitor:g}s, 2 replicas\n"
        f"  ours (advance --to deploy)            median {summary['ours_median_s']:.2f}s\n"
        f"  by hand (docker service update)       median {summary['by_hand_median_s']:.2f}s\n"
        f"  by hand, until old tasks stopped      median {summary['by_hand_settled_median_s']:.2f}s\n"
        f"  ratio ours / by hand                  {summary['ratio_ours_by_hand']:.2f}\n"
        f"  ratio ours / by hand, old stopped     {summary['ratio_ours_by_hand_settled']:.2f}\n"
        "  our promotion's parts (medians, as recorded by the orchestrator):\n"
        + "\n".join(f"    {name:<34} {value:.2f}s" for name, value in summary["ours_parts_median_s"].items())
    )
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(summary, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
