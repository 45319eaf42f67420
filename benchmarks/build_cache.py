#!/usr/bin/env python3
"""What the poisoned-cache fix costs: build times side by side in one run (not a timed test).

A small multi-step app (a ``RUN`` that does a second or two of work, like installing dependencies, then
a ``COPY`` of the app's own files) is built from ``git archive`` of a commit, the way the orchestrator
builds it, with each cache policy in turn, repetitions interleaved so a slow moment hurts all alike:

- ``unconstrained``: the legacy builder's default (any matching local layer is reused: the hole);
- ``recorded only``: the fix (``cache_from`` = the image this app's previous release was built as);
- ``no cache``: what the fix does for an app with no recorded release yet;
- ``buildkit``: BuildKit's own cache (where a docker CLI here drives BuildKit).

Two builds are timed per repetition and policy: a **new commit** (only the app's files changed: the
deploy-staging build) and a **rebuild** of that same commit (the prod edge's freshness check). Printed:
median seconds and the ratio to ``unconstrained``.

Run: ``.venv/bin/python benchmarks/build_cache.py --repeat 5`` (needs a Docker engine, git and Debian's
busybox-static; every image it makes carries a label unique to the run and is removed at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
from _common import BUSYBOX, GIT_IDENTITY

from orchestrator import builders, gitrepo
from orchestrator.docker_engine import DockerEngine
from orchestrator.steps.build import CachePolicy

GIT = ("git", *GIT_IDENTITY)


def dockerfile(label: str, work_mb: int) -> str:
    # The RUN hashes work_mb MiB of zeros in 16 MiB chunks: CPU work standing in for a dependency install.
    chunks = max(1, work_mb // 16)
    work = (
        f"i=0; while [ $i -lt {chunks} ]; do /bin/busybox dd if=/dev/zero bs=1M count=16 2>/dev/null "
        "| /bin/busybox sha256sum >> /deps; i=$((i+1)); done"
    )
    return (
        "FROM scratch\n"
        f"LABEL orchestrator.benchmark={label}\n"
        "COPY busybox /bin/busybox\n"
        f'RUN ["/bin/busybox", "sh", "-c", "{work}"]\n'
        "COPY site /site\n"
        "ARG GIT_SHA\n"
        "LABEL org.opencontainers.image.revision=$GIT_SHA\n"
    )


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        [*GIT, "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def commit(repo: Path, n: int) -> str:
    (repo / "site").mkdir(exist_ok=True)
    (repo / "site" / "index.html").write_text(f"release {n}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"release {n}")
    return git(repo, "rev-parse", "HEAD")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions per policy (default 5)")
    parser.add_argument("--work-mb", type=int, default=512, help="MiB the RUN step hashes (default 512)")
    args = parser.parse_args()
    if not BUSYBOX.is_file():
        print(f"{BUSYBOX} is missing (apt-get install busybox-static)", file=sys.stderr)
        return 2

    label = f"bench-{secrets.token_hex(4)}"
    engine = DockerEngine.connect()
    client = docker.from_env()
    cli = builders.find_buildkit_cli()
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    repo = workdir / "repo"
    repo.mkdir()
    shutil.copy(BUSYBOX, repo / "busybox")
    (repo / "Dockerfile").write_text(dockerfile(label, args.work_mb))
    git(repo, "init", "-q")
    try:
        n = 0

        # A build: (context, tag, sha, images this orchestrator recorded for the app) -> image id.
        Build = Callable[[Path, str, str, list[str]], str]

        def legacy(policy: Callable[[list[str]], dict[str, Any]]) -> Build:
            def run(context: Path, tag: str, sha: str, recorded: list[str]) -> str:
                return engine.build(context, tag=tag, buildargs={"GIT_SHA": sha}, **policy(recorded)).id

            return run

        def fix(recorded: list[str]) -> dict[str, Any]:
            policy = CachePolicy.trusting(recorded)
            return {"cache_from": policy.cache_from, "nocache": policy.nocache}

        def buildkit(context: Path, tag: str, sha: str, recorded: list[str]) -> str:
            assert cli is not None
            return builders.buildkit_build(
                cli,
                context_dir=context,
                dockerfile=context / "Dockerfile",
                tag=tag,
                build_args={"GIT_SHA": sha},
            )

        # The "previous release": built once, the image the fix trusts for the new commit's build.
        n += 1
        sha = commit(repo, n)
        with gitrepo.extracted(repo, sha) as context:
            release = legacy(lambda _: {"nocache": True})(context, f"{label}:release", sha, [])
            if cli is not None:
                buildkit(context, f"{label}:release-bk", sha, [])
        policies: dict[str, Build] = {
            "unconstrained": legacy(lambda _: {}),
            "recorded only (fix)": legacy(fix),
            "no cache": legacy(lambda _: {"nocache": True}),
        }
        if cli is not None:
            policies["buildkit"] = buildkit
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeat):
            n += 1
            sha = commit(repo, n)
            with gitrepo.extracted(repo, sha) as context:
                for name, build in policies.items():
                    # The rebuild trusts the new commit's image too: the run's staging release, recorded
                    # by the deploy-staging edge before the prod edge rebuilds.
                    recorded = [release]
                    for scenario in ("new commit", "rebuild"):
                        t0 = time.perf_counter()
                        built = build(context, f"{label}:{n}", sha, recorded)
                        times.setdefault((scenario, name), []).append(time.perf_counter() - t0)
                        recorded = [built, release]

        print(
            f"legacy builder and BuildKit ({cli.describe() if cli else 'absent'}); RUN hashes "
            f"{args.work_mb} MiB; {args.repeat} repetitions, medians"
        )
        for scenario in ("new commit", "rebuild"):
            base = statistics.median(times[(scenario, "unconstrained")])
            print(f"\n{scenario}:")
            for name in policies:
                median = statistics.median(times[(scenario, name)])
                print(f"  {name:<22} {median:7.2f} s   x{median / base:5.2f}")
        return 0
    finally:
        for _ in range(5):
            images = client.images.list(all=True, filters={"label": f"orchestrator.benchmark={label}"})
            if not images:
                break
            for image in images:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(image.id, force=True)
        shutil.rmtree(workdir, ignore_errors=True)
        engine.close()
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
