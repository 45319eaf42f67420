#!/usr/bin/env python3
"""Benchmark: what a client of prod sees during a promotion and a rollback, plain runtime vs proxied.

The scenario (issue 14, "Zero-downtime promotion"): a client asks prod's port every 20 ms (loopback) while
``orchestrator advance --to deploy`` promotes a new commit, and again while ``orchestrator rollback``
returns prod to the previous release. Counted: failed requests (refused, reset, timed out, non-2xx) and
the longest gap between two successful answers; and, for slow requests (1.5 s each, three kept in flight
through the swap, so the old release is answering some when it is stopped), how many were cut or failed.
Timed: the promotion (``advance --to deploy``, a separate process, as an operator runs it) and the
rollback.

Two apps side by side, the same busybox image recipe, repetitions interleaved so that a slow moment of
the machine hurts both alike:
- **plain**: the direct runtime (one container per environment, stopped and then replaced), host
  networking on 127.0.0.1 (this engine's default bridge is unusable, so no ``container_port`` here);
- **proxied**: ``zero_downtime = true`` with ``container_port``: a kept haproxy container owns the port,
  the new release starts beside the old one, is checked on its own port and takes traffic first.

With ``--remote``, a third side:
- **remote**: proxied, with prod on a second dockerd behind a key-only sshd on a loopback port (the tests'
  set-up, tests/integration/remote_support.py; root), reached as ``ssh://`` with forwarding allowed:
  the new release is checked and the old one drained through the engine's ssh connection. Images go
  there through a loopback docker-registry by digest. The client asks the remote host's prod port
  (the host is this machine). Also printed: ssh handshakes per promotion.

The proxy image is built from Debian's /usr/sbin/haproxy and the libraries it links (no Docker Hub here),
as the tests do; ``--proxy-image`` names another. Nothing here asserts a threshold: it prints counts,
seconds and the ratio proxied / plain of the promotion time.

Run: ``.venv/bin/python benchmarks/zero_downtime.py --repeat 3``. Needs a local Docker engine, git,
Debian's static busybox at /usr/bin/busybox and haproxy at /usr/sbin/haproxy. Containers, networks,
images and temp dirs are named ``bench-zdt-<random>`` and removed at the end, on failure and on Ctrl-C
or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from _common import BUSYBOX, GIT_IDENTITY, LOOPBACK, BenchmarkError, checked, free_ports

ROOT = Path(__file__).resolve().parents[1]
# The client the zero-downtime tests assert with, so what they assert and what this reports are measured
# the same way.
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT))
from client_loop import INTERVAL_S, SLOW_CGI, SLOW_S, Loop, client_loop, slow_client_loop  # noqa: E402

from orchestrator.proxy import forget_admin_dirs  # noqa: E402

HAPROXY = Path("/usr/sbin/haproxy")
CONTAINER_PORT = 8080

DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
ARG GIT_SHA
LABEL org.opencontainers.image.revision=$GIT_SHA
COPY rootfs /
RUN ["/bin/busybox", "sh", "-c", "echo $GIT_SHA > /www/version"]
CMD ["/bin/busybox", "sh", "/serve.sh"]
"""
# Stops when asked (SIGTERM), as a real app does; PID 1 would otherwise ignore it.
SERVE = """\
/bin/busybox chmod +x /www/cgi-bin/slow
trap "exit 0" TERM
/bin/busybox httpd -f -p "{bind}:$PORT" -h /www &
wait
"""
HAPROXY_DOCKERFILE = 'FROM scratch\nCOPY . /\nENTRYPOINT ["/usr/sbin/haproxy"]\n'


def build_haproxy_image(tag: str) -> None:
    """Debian's haproxy and the libraries ldd names, in a FROM scratch image (the tests' recipe)."""
    import docker

    out = checked(["ldd", str(HAPROXY)], what="ldd haproxy")
    files = [HAPROXY, *(Path(p) for p in re.findall(r"(/\S+)\s+\(0x", out))]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(HAPROXY_DOCKERFILE)
        tar.addfile(info, io.BytesIO(HAPROXY_DOCKERFILE.encode()))
        for path in files:
            tar.add(str(path.resolve()), arcname=str(path).lstrip("/"))
    buf.seek(0)
    client = docker.from_env(timeout=300)
    try:
        client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)
    finally:
        client.close()


@dataclass
class Phase:
    seconds: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    # Slow requests (SLOW_S each) kept in flight through the swap: cut (or refused), and all of them.
    slow_failed: list[int] = field(default_factory=list)
    slow_requests: list[int] = field(default_factory=list)
    # What each recorded prod_drain step found (proxied promotions): in_flight, left, waited_s.
    drains: list[dict[str, Any]] = field(default_factory=list)

    def add(self, seconds: float, loop: Loop, slow: Loop) -> None:
        self.seconds.append(seconds)
        self.failed.append(len(loop.failed))
        self.requests.append(loop.ok + len(loop.failed))
        self.gaps.append(loop.longest_gap_s)
        self.slow_failed.append(len(slow.failed))
        self.slow_requests.append(slow.ok + len(slow.failed))

    def as_dict(self) -> dict[str, Any]:
        return {
            "median_s": round(statistics.median(self.seconds), 3),
            "seconds": [round(x, 3) for x in self.seconds],
            "failed_requests": self.failed,
            "requests": self.requests,
            "longest_gap_s": round(max(self.gaps), 3),
            "gaps_s": [round(x, 3) for x in self.gaps],
            "slow_failed_requests": self.slow_failed,
            "slow_requests": self.slow_requests,
            "drains": [{k: d.get(k) for k in ("in_flight", "left", "waited_s")} for d in self.drains],
        }


@dataclass
class Side:
    label: str
    app: str
    dir: Path
    staging_port: int
    prod_port: int
    proxy_image: str | None  # None: the plain runtime
    # Remote side: extra app keys (registry), prod's docker_host, PATH first (the private ssh wrapper),
    # and the sshd log whose "Accepted publickey" lines count handshakes.
    extra: str = ""
    prod_host: str | None = None
    path_first: str | None = None
    sshd_log: Path | None = None
    handshakes: list[int] = field(default_factory=list)
    promotion: Phase = field(default_factory=Phase)
    rollback: Phase = field(default_factory=Phase)
    count: int = 0

    @property
    def repo(self) -> Path:
        return self.dir / "repo"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env["ORCH_DATABASE_URL"] = f"sqlite:///{(self.dir / 'orchestrator.db').as_posix()}"
        env["PYTHONPATH"] = str(ROOT)
        if self.path_first:
            env["PATH"] = f"{self.path_first}:{env['PATH']}"
        return env

    def setup(self) -> None:
        rootfs = self.repo / "rootfs"
        (rootfs / "www").mkdir(parents=True)
        shutil.copy2(BUSYBOX, self.repo / "busybox")
        (self.repo / "Dockerfile").write_text(DOCKERFILE, encoding="utf-8")
        bind = LOOPBACK if self.proxy_image is None else "0.0.0.0"
        (rootfs / "serve.sh").write_text(SERVE.format(bind=bind), encoding="utf-8")
        (rootfs / "www" / "health").write_text("ok\n", encoding="utf-8")
        (rootfs / "www" / "cgi-bin").mkdir()
        (rootfs / "www" / "cgi-bin" / "slow").write_text(SLOW_CGI, encoding="utf-8")
        self.git("init", "-q")
        proxied = ""
        if self.proxy_image is not None:
            proxied = (
                f"container_port = {CONTAINER_PORT}\nzero_downtime = true\n"
                f'proxy_image = "{self.proxy_image}"\n'
            )
        (self.dir / "orchestrator.toml").write_text(
            f'[apps."{self.app}"]\nsource = "repo"\nhealth_path = "/health"\nversion_path = "/version"\n'
            f"staging_port = {self.staging_port}\nprod_port = {self.prod_port}\n{proxied}{self.extra}"
            + (f'[apps."{self.app}".prod]\ndocker_host = "{self.prod_host}"\n' if self.prod_host else ""),
            encoding="utf-8",
        )

    def git(self, *args: str) -> str:
        return checked(["git", "-C", str(self.repo), *GIT_IDENTITY, *args], what=f"git {args[0]}").strip()

    def commit(self) -> str:
        self.count += 1
        (self.repo / "rootfs" / "www" / "index.html").write_text(f"release #{self.count}\n", encoding="utf-8")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", f"release #{self.count}")
        return self.git("rev-parse", "HEAD")

    def cli(self, *args: str) -> dict[str, Any]:
        argv = [sys.executable, "-m", "orchestrator", "--config", str(self.dir / "orchestrator.toml"), *args]
        out = checked(
            [*argv, "--json"],
            what=f"{self.label}: orchestrator {' '.join(args)}",
            env=self.env(),
            cwd=self.dir,
        )
        return json.loads(out)  # type: ignore[no-any-return]

    def start(self) -> str:
        run_id = str(self.cli("run", "start", "--app", self.app, "--sha", self.commit())["run_id"])
        self.cli("advance", run_id, "--to", "deploy-staging")
        return run_id

    def warmup(self) -> None:
        self.cli("advance", self.start(), "--to", "deploy")

    def once(self) -> None:
        """Promote a new commit over the current one, then roll back to it, each under the client loop."""
        run_id = self.start()
        before = self.accepted()
        with self.clients() as (loop, slow):
            t0 = time.perf_counter()
            self.cli("advance", run_id, "--to", "deploy")
            seconds = time.perf_counter() - t0
        if self.sshd_log is not None:
            self.handshakes.append(self.accepted() - before)
        self.promotion.add(seconds, loop, slow)
        steps = self.cli("runs", "show", run_id)["transitions"][-1]["steps"]
        self.promotion.drains.extend(s["changes"] for s in steps if s["name"] == "prod_drain")
        with self.clients() as (loop, slow):
            t0 = time.perf_counter()
            self.cli("rollback", self.app, "--env", "prod")
            seconds = time.perf_counter() - t0
        self.rollback.add(seconds, loop, slow)

    def accepted(self) -> int:
        """ssh connections (handshakes) the remote engine's sshd has accepted so far (0: no remote)."""
        if self.sshd_log is None:
            return 0
        return self.sshd_log.read_text(errors="replace").count("Accepted publickey")

    @contextlib.contextmanager
    def clients(self) -> Iterator[tuple[Loop, Loop]]:
        """The fast loop on /version and slow requests in flight on /cgi-bin/slow, both on prod's port."""
        base = f"http://{LOOPBACK}:{self.prod_port}"
        fast = client_loop(f"{base}/version", before_s=0.3)
        with fast as loop, slow_client_loop(f"{base}/cgi-bin/slow") as slow:
            yield loop, slow


def cleanup(prefix: str, dirs: Sequence[Path], image: str | None) -> list[str]:
    problems: list[str] = []

    def attempt(what: str, argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, timeout=120)
        if proc.returncode != 0:
            problems.append(f"{what}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace")

    if ids := sorted(
        set(attempt("list containers", ["docker", "ps", "-aq", "--filter", f"name={prefix}"]).split())
    ):
        attempt("remove containers", ["docker", "rm", "-f", "-v", *ids])
    listed = attempt(
        "list networks", ["docker", "network", "ls", "--format", "{{.Name}}", "--filter", f"name={prefix}"]
    )
    if nets := [n for n in listed.split() if n.startswith(prefix)]:
        attempt("remove networks", ["docker", "network", "rm", *nets])
    listed = attempt("list images", ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
    refs = [r for r in listed.split() if r.startswith(prefix) and not r.endswith(":<none>")]
    if refs:
        attempt("remove images", ["docker", "rmi", *refs])
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
    forget_admin_dirs(prefix)
    return problems


@contextlib.contextmanager
def remote_side(prefix: str, base: Path, staging_port: int, prod_port: int, image: str) -> Iterator[Side]:
    """The proxied side with prod on a second engine over ssh: a loopback registry, the second engine
    and its sshd (remote_support), the proxy image copied there, prod's serving network routable on
    this host (remote_support.routed_network); all of it stopped and removed after."""
    from remote import start_registry
    from remote_support import copy_image, remote_engine, routed_network

    app = f"{prefix}-remote"
    registry, address = start_registry(base / "registry")
    undo: Any = None
    try:
        with remote_engine(base / "engine") as remote:
            copy_image(remote, image)
            undo = routed_network(remote, f"{app}-prod", {"orchestrator.role": "app-network"})
            yield Side(
                "remote",
                app,
                base / "remote",
                staging_port,
                prod_port,
                image,
                extra=f'registry = "{address}"\n',
                prod_host=remote.forwarding_url,
                path_first=str(remote.ssh_bin),
                sshd_log=remote.sshd_log,
            )
    finally:
        if undo is not None:
            undo()
        registry.terminate()
        registry.wait(timeout=10)
        # What the registry pushes left on this engine: <registry>/<app>:<tag>.
        listed = subprocess.run(
            ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True
        ).stdout.split()
        if refs := [r for r in listed if r.startswith(f"{address}/{app}")]:
            subprocess.run(["docker", "rmi", "-f", *refs], capture_output=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def summary(plain: Side, proxied: Side, *others: Side) -> dict[str, Any]:
    a, b = statistics.median(plain.promotion.seconds), statistics.median(proxied.promotion.seconds)
    ra, rb = statistics.median(plain.rollback.seconds), statistics.median(proxied.rollback.seconds)
    return {
        "client": f"GET /version every {INTERVAL_S * 1000:.0f} ms on 127.0.0.1:<prod port>, and GET "
        f"/cgi-bin/slow ({SLOW_S:g} s each, 3 kept in flight)",
        "sides": {
            s.label: {"promotion": s.promotion.as_dict(), "rollback": s.rollback.as_dict()}
            for s in (plain, proxied, *others)
        },
        "ssh_handshakes_per_promotion": {s.label: s.handshakes for s in others if s.sshd_log is not None},
        "promotion_ratio_proxied_over_plain": round(b / a, 2) if a > 0 else None,
        "rollback_ratio_proxied_over_plain": round(rb / ra, 2) if ra > 0 else None,
    }


def print_table(result: dict[str, Any], out: Any) -> None:
    print(f"client: {result['client']}", file=out)
    print(
        f"{'side':<8} {'phase':<10} {'median s':>9} {'failed/requests':>18} {'longest gap s':>14} "
        f"{'slow failed/requests':>21}",
        file=out,
    )
    for label, side in result["sides"].items():
        for phase in ("promotion", "rollback"):
            p = side[phase]
            failed = f"{sum(p['failed_requests'])}/{sum(p['requests'])}"
            slow = f"{sum(p['slow_failed_requests'])}/{sum(p['slow_requests'])}"
            print(
                f"{label:<8} {phase:<10} {p['median_s']:>9.3f} {failed:>18} {p['longest_gap_s']:>14.3f} "
                f"{slow:>21}",
                file=out,
            )
    for label, side in result["sides"].items():
        if drains := side["promotion"]["drains"]:
            found = ", ".join(f"{d['in_flight']} in flight, {d['waited_s']} s" for d in drains)
            print(f"{label} promotions drained the old release: {found}", file=out)
    for label, shakes in result.get("ssh_handshakes_per_promotion", {}).items():
        print(f"{label} promotions: ssh handshakes each {shakes}", file=out)
    print(f"promotion time proxied / plain: {result['promotion_ratio_proxied_over_plain']}", file=out)
    print(f"rollback time proxied / plain:  {result['rollback_ratio_proxied_over_plain']}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="promotion+rollback pairs per side (default 3)")
    parser.add_argument("--proxy-image", default=None, help="haproxy image (default: built from Debian's)")
    parser.add_argument("--json", action="store_true", help="one JSON summary on stdout, the table on stderr")
    parser.add_argument(
        "--remote", action="store_true", help="a third side: prod on a second engine over ssh (root)"
    )
    args = parser.parse_args(argv)
    for needed in (BUSYBOX, HAPROXY):
        if not needed.is_file() and not (needed == HAPROXY and args.proxy_image):
            print(f"{needed} is missing", file=sys.stderr)
            return 2
    prefix = f"bench-zdt-{secrets.token_hex(3)}"
    image = args.proxy_image or f"{prefix}-haproxy:bench"
    base = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    ports = free_ports(6)
    plain = Side("plain", f"{prefix}-plain", base / "plain", ports[0], ports[1], None)
    proxied = Side("proxied", f"{prefix}-proxied", base / "proxied", ports[2], ports[3], image)
    sides = [plain, proxied]
    code = 0
    with sigterm_as_interrupt():
        try:
            # Closed before the clean-up below: the second engine lives under ``base``.
            with contextlib.ExitStack() as stack:
                if args.proxy_image is None:
                    build_haproxy_image(image)
                if args.remote:
                    sides.append(stack.enter_context(remote_side(prefix, base, ports[4], ports[5], image)))
                for side in sides:
                    side.dir.mkdir(parents=True, exist_ok=True)
                    side.setup()
                    side.warmup()  # builds the cache, and a release in prod to promote over
                for _ in range(args.repeat):
                    for side in sides:
                        side.once()
                result = summary(*sides)
                print_table(result, sys.stderr if args.json else sys.stdout)
                if args.json:
                    print(json.dumps(result, indent=2))
        except BenchmarkError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            code = 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            code = 130
        finally:
            for problem in cleanup(prefix, [base], image):
                print(f"cleanup: {problem}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
