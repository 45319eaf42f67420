#!/usr/bin/env python3
"""Promotion to a remote engine vs to the local one, side by side in one run (not a timed test).

Two apps, identical but for where prod runs: ``local`` (staging and prod on this machine's engine) and
``remote`` (prod on a second dockerd behind a key-only sshd on a loopback port, the same set-up as the
tests: tests/integration/remote_support.py). Both push to a loopback registry (Debian's docker-registry).
Per pair, each app gets a new commit, ``run start`` and ``advance --to deploy-staging`` (untimed), then
``advance --to deploy`` is timed as the real CLI process an operator runs; local and remote alternate
within each pair so a slow moment hurts both alike. The remote promotion pushes once, pulls
``repo@sha256:...`` on the second engine and checks the pulled id; every engine call there goes through
``ssh host docker system dial-stdio``.

The remote app runs in three ways, each a variant of its own:

- ``remote``: as shipped, every request of the command over one shared ssh connection
  (orchestrator/ssh.py: one ControlMaster per engine, a local unix socket whose connections run
  ``docker system dial-stdio`` as sessions on it);
- ``remote-sdk``: ``ORCH_SSH_MULTIPLEX=false``, the docker SDK's own transport, one ``ssh`` process and
  handshake per request (what remote promotion did before);
- ``remote-sdk+mux``: the SDK's transport with connection sharing in the operator's ssh config
  (ControlMaster/ControlPersist 60 s): one handshake, but still one ``ssh`` and one remote
  ``docker system dial-stdio`` per request.

Printed: median seconds per variant, the ratios to ``local`` and of ``remote-sdk`` to ``remote``, and the
ssh handshakes per timed promotion (sshd's "Accepted publickey" lines).

Run (root: it starts a second dockerd and sshd): ``.venv/bin/python benchmarks/remote.py --pairs 5``.
Everything it makes is removed at the end (second engine, sshd, registry, containers, images, files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT))

from remote_support import RemoteEngine, remote_engine  # noqa: E402

from orchestrator.docker_engine import DockerEngine  # noqa: E402

BUSYBOX = Path("/usr/bin/busybox")
VARIANTS = ("local", "remote", "remote-sdk", "remote-sdk+mux")
GIT = ("git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false")
SERVE = """\
bb=/bin/busybox
$bb mkdir -p /www
echo ok > /www/health
echo "$APP_REVISION" > /www/version
exec $bb httpd -f -p "127.0.0.1:$PORT" -h /www
"""
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
COPY serve.sh /serve.sh
COPY marker /marker
ARG GIT_SHA
ENV APP_REVISION=$GIT_SHA
LABEL org.opencontainers.image.revision=$GIT_SHA
CMD ["/bin/busybox", "sh", "/serve.sh"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("docker-registry")
    if binary is None:
        sys.exit("docker-registry is not installed (apt-get install -y docker-registry)")
    address = f"127.0.0.1:{free_port()}"
    root.mkdir(parents=True)
    (root / "registry.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: {address}\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(root / "registry.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"http://{address}/v2/", timeout=1):
                return proc, address
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    sys.exit("docker-registry did not answer")


def make_repo(path: Path) -> None:
    path.mkdir()
    subprocess.run([*GIT, "init", "-q", "-b", "main", str(path)], check=True)
    shutil.copyfile(BUSYBOX, path / "busybox")
    (path / "busybox").chmod(0o755)
    (path / "Dockerfile").write_text(DOCKERFILE)
    (path / "serve.sh").write_text(SERVE)


def commit(path: Path, n: int) -> str:
    (path / "marker").write_text(f"{n}\n")
    subprocess.run([*GIT, "-C", str(path), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(path), "commit", "-q", "-m", f"release {n}"], check=True)
    return subprocess.run(
        [*GIT, "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def mux_wrapper(remote: RemoteEngine, root: Path) -> Path:
    """An ssh wrapper like the fixture's, plus connection sharing (one master per host, kept 60 s)."""
    bin_dir = root / "mux-bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    original = (remote.ssh_bin / "ssh").read_text().splitlines()[-1].removeprefix("exec ")
    program, rest = original.split(" ", 1)
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec {program} -o ControlMaster=auto -o ControlPath={root}/cm-%C -o ControlPersist=60 {rest}\n"
    )
    wrapper.chmod(0o755)
    return bin_dir


class Bench:
    def __init__(self, root: Path, remote: RemoteEngine, registry: str) -> None:
        self.root = root
        self.remote = remote
        self.suffix = uuid.uuid4().hex[:6]
        self.apps = {v: f"bench-{self.suffix}-{v.replace('+', '-')}" for v in VARIANTS}
        self.repos = {v: root / name for v, name in self.apps.items()}
        for repo in self.repos.values():
            make_repo(repo)
        remote_path = f"{remote.ssh_bin}:{os.environ['PATH']}"
        self.paths = {
            "local": os.environ["PATH"],
            "remote": remote_path,
            "remote-sdk": remote_path,
            "remote-sdk+mux": f"{mux_wrapper(remote, root)}:{os.environ['PATH']}",
        }
        self.multiplex = {v: "false" if v.startswith("remote-sdk") else "true" for v in VARIANTS}
        self.sshd_log = remote.sshd_log
        tables = []
        for variant, name in self.apps.items():
            table = (
                f'[apps.{name}]\nsource = "{self.repos[variant]}"\nregistry = "{registry}"\n'
                f'health_path = "/health"\nversion_path = "/version"\n'
                f"staging_port = {free_port()}\nprod_port = {free_port()}\n"
            )
            if variant != "local":
                table += f'[apps.{name}.prod]\ndocker_host = "{remote.url}"\n'
            tables.append(table)
        (root / "orchestrator.toml").write_text(
            "[orchestrator]\nprune_after_deploy = false\n\n" + "\n".join(tables)
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        self.env.update(
            ORCH_CONFIG=str(root / "orchestrator.toml"),
            ORCH_DATABASE_URL=f"sqlite:///{root / 'orch.db'}",
            ORCH_LOG_LEVEL="warning",
            PYTHONPATH=str(ROOT),
        )
        self.n = 0
        self.tracebacks = 0  # CLI calls that printed a traceback on stderr (and still succeeded)

    def cli(self, variant: str, *args: str) -> dict[str, Any]:
        env = {**self.env, "PATH": self.paths[variant], "ORCH_SSH_MULTIPLEX": self.multiplex[variant]}
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator", *args, "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=600,
        )
        if proc.returncode != 0:
            sys.exit(
                f"orchestrator {' '.join(args)} ({variant}) exit {proc.returncode}:\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        if "Traceback" in proc.stderr:
            self.tracebacks += 1
        return dict(json.loads(proc.stdout))

    def handshakes(self) -> int:
        return self.sshd_log.read_text(errors="replace").count("Accepted publickey")

    def promote(self, variant: str) -> tuple[float, int]:
        """A new commit to staging (untimed), then the timed promotion to prod: (seconds, handshakes)."""
        self.n += 1
        sha = commit(self.repos[variant], self.n)
        run_id = str(self.cli(variant, "run", "start", "--app", self.apps[variant], "--sha", sha)["run_id"])
        self.cli(variant, "advance", run_id, "--to", "deploy-staging", "--actor", "bench")
        before = self.handshakes()
        t0 = time.perf_counter()
        result = self.cli(variant, "advance", run_id, "--to", "deploy", "--actor", "bench")
        elapsed = time.perf_counter() - t0
        if result.get("state") != "deploy":
            sys.exit(f"promotion of {variant} did not reach deploy: {result}")
        return elapsed, self.handshakes() - before

    def cleanup(self, local: DockerEngine) -> list[str]:
        """Containers first (an image in use cannot go), then every image named after an app; returns
        what could not be removed instead of stopping half-way."""
        errors: list[str] = []
        for name in self.apps.values():
            for env in ("staging", "prod"):
                local.remove_container(f"{name}-{env}")
        for image in local.images():
            refs = (*image.tags, *image.repo_digests)
            if any(
                f"/{name}" in ref or ref.startswith(f"{name}:") for name in self.apps.values() for ref in refs
            ):
                try:
                    local.remove_image(image.id, force=True)
                except Exception as exc:  # keep going: report what is left
                    errors.append(f"{image.id[:19]}: {exc}")
        return errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=5, help="timed rounds (each variant once per round)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--json", action="store_true", help="one JSON summary on stdout")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="orch-bench-remote-", dir="/tmp"))
    local = DockerEngine.connect()
    registry_proc = None
    bench: Bench | None = None
    try:
        registry_proc, registry = start_registry(root / "registry")
        with remote_engine(root / "engine") as remote:
            (root / "work").mkdir()
            bench = Bench(root / "work", remote, registry)
            samples: dict[str, list[float]] = {v: [] for v in bench.apps}
            handshakes: dict[str, list[int]] = {v: [] for v in bench.apps}
            order = list(bench.apps)
            for i in range(args.warmup + args.pairs):
                # Alternate which variant goes first, so neither always follows the other.
                for variant in order if i % 2 == 0 else order[::-1]:
                    elapsed, shakes = bench.promote(variant)
                    if i >= args.warmup:
                        samples[variant].append(elapsed)
                        handshakes[variant].append(shakes)
                print(f"round {i + 1}/{args.warmup + args.pairs} done", file=sys.stderr)
            medians = {v: statistics.median(s) for v, s in samples.items()}
            summary = {
                "pairs": args.pairs,
                "median_s": {v: round(m, 3) for v, m in medians.items()},
                "samples_s": {v: [round(x, 3) for x in s] for v, s in samples.items()},
                "ratio_to_local": {
                    v: round(m / medians["local"], 2) for v, m in medians.items() if v != "local"
                },
                "ratio_remote_sdk_to_remote": round(medians["remote-sdk"] / medians["remote"], 2),
                "ssh_handshakes_per_promotion": {
                    v: statistics.median(h) for v, h in handshakes.items() if v != "local"
                },
                "cli_calls_with_traceback": bench.tracebacks,
            }
            out = sys.stderr if args.json else sys.stdout
            print(f"promotion (advance --to deploy), median of {args.pairs}:", file=out)
            for variant, median in medians.items():
                shakes = summary["ssh_handshakes_per_promotion"].get(variant)
                extra = "" if shakes is None else f"   {shakes:g} ssh handshakes"
                print(f"  {variant:<15} {median:7.2f} s{extra}", file=out)
            for variant, ratio in summary["ratio_to_local"].items():
                print(f"  {variant + ' / local':<24} {ratio:.2f}", file=out)
            print(f"  {'remote-sdk / remote':<24} {summary['ratio_remote_sdk_to_remote']:.2f}", file=out)
            if bench.tracebacks:
                print(f"  ({bench.tracebacks} CLI calls printed a traceback on stderr)", file=out)
            if args.json:
                print(json.dumps(summary))
    finally:
        left = bench.cleanup(local) if bench is not None else []
        local.close()
        if registry_proc is not None:
            registry_proc.terminate()
            registry_proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
        if left:
            print("could not remove: " + "; ".join(left), file=sys.stderr)


if __name__ == "__main__":
    main()
