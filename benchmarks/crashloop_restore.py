#!/usr/bin/env python3
"""Benchmark: how long prod is down when a release crash-loops there, before and after fail-fast waits.

The scenario (issue 11, "Failing fast, and saying why"): release A runs in prod; release B passes staging
but exits with code 3 as soon as it starts in prod. Prod runs with restart policy ``unless-stopped``, so
the engine restarts B again and again while the promotion waits for its health check. The promotion
fails and restores A. What is measured is the time from B's prod container being started to A being
back in prod and verified: from the ``started_at`` of the recorded step ``prod_start`` to the
``finished_at`` of ``restore_prod_verify`` (``runs show --json``), as the orchestrator recorded them.

How "before" is obtained: the source tree of an older commit (``--before``, by default the last commit
before the fail-fast waits) is exported with ``git archive`` into a temporary directory, and the very same
scenario is run through its CLI (``python -m orchestrator`` with PYTHONPATH at that tree), side by side
with this checkout's CLI, repetitions interleaved so that a slow moment of the machine hurts both alike.
Both sides use their own default health timeout (``health_timeout_s``, 30 s in both) unless
``--health-timeout`` sets the same value for both. Nothing here asserts a threshold: it prints seconds
and the ratio before / after.

Run: ``.venv/bin/python benchmarks/crashloop_restore.py --repeat 3`` (see benchmarks/README.md). Needs a
local Docker engine, git, and Debian's static busybox at /usr/bin/busybox. All traffic is on 127.0.0.1
with host networking; containers, images and temp dirs are named ``bench-crash-<random>`` and removed at
the end, on failure and on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (
    BUSYBOX,
    GIT_IDENTITY,
    BenchmarkError,
    checked,
    free_ports,
    guarded,
    remove_debris,
    run,
)

ROOT = Path(__file__).resolve().parents[1]
# The last commit before the fail-fast health waits: what "before" means unless --before says otherwise.
BEFORE_DEFAULT = "778bf95"

DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
ARG GIT_SHA
LABEL org.opencontainers.image.revision=$GIT_SHA
COPY rootfs /
RUN ["/bin/busybox", "sh", "-c", "echo $GIT_SHA > /www/version"]
CMD ["/bin/busybox", "sh", "/serve.sh"]
"""

# Release B carries /crash-in-prod: in prod it logs a line and exits 3 at once, every time it is started.
SERVE = """\
if [ "$ORCH_ENVIRONMENT" = prod ] && [ -e /crash-in-prod ]; then
  echo "fatal: cannot connect to the prod database"
  exit 3
fi
exec /bin/busybox httpd -f -p "127.0.0.1:$PORT" -h /www
"""


SCENARIO = "prod crash-loops (exit 3, restart unless-stopped): from step prod_start to restore_prod_verify"


def export_tree(rev: str, into: Path) -> str:
    """``git archive`` of ``rev`` of this repository into ``into``: the older code, exactly as committed,
    without touching this checkout or registering a worktree. Returns the full sha."""
    sha = checked(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"], what="git rev-parse"
    )
    tar = run(["git", "-C", str(ROOT), "archive", "--format=tar", sha.strip()], what="git archive")
    if tar.returncode != 0:
        raise BenchmarkError(f"git archive {rev} failed: {tar.stderr.decode(errors='replace')}")
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(into, filter="data")
    return sha.strip()


@dataclass
class Side:
    """One version of the orchestrator and its own app, repository, config and database."""

    label: str
    tree: Path
    revision: str  # of the orchestrator code this side runs
    app: str
    dir: Path
    staging_port: int
    prod_port: int
    health_timeout_s: float | None
    seconds: list[float] = field(default_factory=list)
    advance_s: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    count: int = 0

    @property
    def repo(self) -> Path:
        return self.dir / "repo"

    def env(self) -> dict[str, str]:
        # Inherited ORCH_* variables would benchmark another configuration; only this side's database.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env["ORCH_DATABASE_URL"] = f"sqlite:///{(self.dir / 'orchestrator.db').as_posix()}"
        env["PYTHONPATH"] = str(self.tree)
        return env

    def setup(self) -> None:
        rootfs = self.repo / "rootfs"
        (rootfs / "www").mkdir(parents=True)
        shutil.copy2(BUSYBOX, self.repo / "busybox")
        (self.repo / "Dockerfile").write_text(DOCKERFILE, encoding="utf-8")
        (rootfs / "serve.sh").write_text(SERVE, encoding="utf-8")
        (rootfs / "www" / "health").write_text("ok\n", encoding="utf-8")
        self.git("init", "-q")
        settings = "" if self.health_timeout_s is None else f"health_timeout_s = {self.health_timeout_s}\n"
        (self.dir / "orchestrator.toml").write_text(
            (f"[orchestrator]\n{settings}\n" if settings else "")
            + f'[apps."{self.app}"]\nsource = "repo"\nhealth_path = "/health"\nversion_path = "/version"\n'
            f"staging_port = {self.staging_port}\nprod_port = {self.prod_port}\n",
            encoding="utf-8",
        )

    def check_code(self) -> None:
        """Prove that this side's CLI imports this side's tree, not another one on the path."""
        where = checked(
            [sys.executable, "-c", "import orchestrator; print(orchestrator.__file__)"],
            what=f"{self.label}: import orchestrator",
            env=self.env(),
            cwd=self.dir,
        ).strip()
        if not Path(where).resolve().is_relative_to(self.tree.resolve()):
            raise BenchmarkError(f"{self.label}: orchestrator imports from {where}, not from {self.tree}")

    def git(self, *args: str) -> str:
        return checked(["git", "-C", str(self.repo), *GIT_IDENTITY, *args], what=f"git {args[0]}").strip()

    def commit(self, *, crash_in_prod: bool) -> str:
        self.count += 1
        marker = self.repo / "rootfs" / "crash-in-prod"
        if crash_in_prod:
            marker.write_text("1\n", encoding="utf-8")
        else:
            marker.unlink(missing_ok=True)
        (self.repo / "rootfs" / "www" / "index.html").write_text(
            f"revision #{self.count}\n", encoding="utf-8"
        )
        self.git("add", "-A")
        self.git(
            "commit", "-q", "-m", f"release #{self.count}" + (" (crashes in prod)" if crash_in_prod else "")
        )
        return self.git("rev-parse", "HEAD")

    def cli(self, *args: str, expect: int = 0) -> dict[str, Any]:
        argv = [sys.executable, "-m", "orchestrator", "--config", str(self.dir / "orchestrator.toml"), *args]
        # cwd is this side's own directory: ``python -m`` puts the cwd first on sys.path, and a cwd holding
        # another orchestrator tree would silently run that code instead of this side's.
        proc = run(
            [*argv, "--json"],
            what=f"{self.label}: orchestrator {' '.join(args)}",
            env=self.env(),
            cwd=self.dir,
        )
        out = proc.stdout.decode(errors="replace")
        if proc.returncode != expect:
            raise BenchmarkError(
                f"{self.label}: orchestrator {' '.join(args)} exited {proc.returncode}, expected {expect}:\n"
                f"{out[-3000:]}\n{proc.stderr.decode(errors='replace')[-3000:]}"
            )
        return json.loads(out)

    def deploy(self, sha: str) -> int:
        run_id = int(self.cli("run", "start", "--app", self.app, "--sha", sha)["run_id"])
        self.cli("advance", str(run_id), "--to", "deploy-staging")
        self.cli("advance", str(run_id), "--to", "deploy")
        return run_id

    def crash_loop_once(self) -> None:
        """Release A in prod, then B that crash-loops in prod: time B's prod start -> A verified again."""
        self.deploy(self.commit(crash_in_prod=False))
        run_id = str(
            self.cli("run", "start", "--app", self.app, "--sha", self.commit(crash_in_prod=True))["run_id"]
        )
        self.cli("advance", run_id, "--to", "deploy-staging")
        t0 = time.perf_counter()
        failed = self.cli("advance", run_id, "--to", "deploy", expect=1)
        self.advance_s.append(time.perf_counter() - t0)
        verdicts = [(c["name"], c["status"]) for c in failed["checks"]]
        if ("promote_prod", "fail") not in verdicts or ("rollback_prod", "pass") not in verdicts:
            raise BenchmarkError(
                f"{self.label}: not the scenario (B must fail in prod, A be restored): {verdicts}"
            )
        steps = {s["name"]: s for s in self.cli("runs", "show", run_id)["transitions"][-1]["steps"]}
        start, restored = steps.get("prod_start"), steps.get("restore_prod_verify")
        if start is None or restored is None or restored["status"] != "done":
            raise BenchmarkError(
                f"{self.label}: steps prod_start / restore_prod_verify not recorded: {list(steps)}"
            )
        seconds = (
            datetime.fromisoformat(restored["finished_at"]) - datetime.fromisoformat(start["started_at"])
        ).total_seconds()
        self.seconds.append(seconds)
        promote = next(c for c in failed["checks"] if c["name"] == "promote_prod")
        self.reasons.append(promote["reason"].splitlines()[0])


def summary(sides: Sequence[Side], before_label: str, after_label: str) -> dict[str, Any]:
    by = {s.label: s for s in sides}
    before, after = statistics.median(by[before_label].seconds), statistics.median(by[after_label].seconds)
    return {
        "scenario": SCENARIO,
        "sides": {
            s.label: {
                "commit": s.revision,
                "tree": str(s.tree),
                "health_timeout_s": s.health_timeout_s,
                "seconds": [round(x, 3) for x in s.seconds],
                "median_s": round(statistics.median(s.seconds), 3),
                "advance_deploy_median_s": round(statistics.median(s.advance_s), 3),
                "promote_prod_reason": s.reasons[-1],
            }
            for s in sides
        },
        "ratio_before_over_after": round(before / after, 1) if after > 0 else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--before", default=BEFORE_DEFAULT, help=f"commit to compare against (default {BEFORE_DEFAULT})"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per side (default 3)")
    parser.add_argument(
        "--health-timeout",
        type=float,
        default=None,
        help="health_timeout_s for both sides (default: each side's own)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON summary on stdout")
    args = parser.parse_args(argv)
    if not BUSYBOX.is_file():
        print(f"{BUSYBOX} is missing: install Debian's busybox-static", file=sys.stderr)
        return 2

    suffix = secrets.token_hex(3)
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-crash-{suffix}-"))
    sides: list[Side] = []

    def body() -> int:
        before_commit = export_tree(args.before, scratch / "before-tree")
        after_commit = checked(["git", "-C", str(ROOT), "rev-parse", "HEAD"], what="git rev-parse").strip()
        dirty = checked(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], what="git status"
        )
        ports = free_ports(4)
        for i, (label, tree, commit) in enumerate(
            [
                (f"before ({args.before})", scratch / "before-tree", before_commit),
                (
                    "after (this checkout)",
                    ROOT,
                    after_commit + (" + uncommitted changes" if dirty.strip() else ""),
                ),
            ]
        ):
            side = Side(
                label,
                tree,
                commit,
                f"bench-crash-{suffix}-{i}",
                scratch / f"side-{i}",
                ports[2 * i],
                ports[2 * i + 1],
                args.health_timeout,
            )
            side.dir.mkdir()
            side.setup()
            side.check_code()
            sides.append(side)
        for rep in range(args.repeat):
            for side in sides if rep % 2 == 0 else reversed(sides):
                print(f"[{rep + 1}/{args.repeat}] {side.label} ...", file=sys.stderr, flush=True)
                side.crash_loop_once()
                print(f"    {side.seconds[-1]:.2f} s: {side.reasons[-1][:150]}", file=sys.stderr, flush=True)
        print_summary(summary(sides, sides[0].label, sides[1].label), as_json=args.json)
        return 0

    return guarded(body, lambda: remove_debris(f"bench-crash-{suffix}-", [s.app for s in sides], [scratch]))


def print_summary(result: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print("crash-looping prod release: time from its start to the previous release restored and verified")
    print(f"{'side':<28} {'median s':>9} {'runs (s)':<30} {'advance --to deploy (median s)':>30}")
    for label, side in result["sides"].items():
        runs = ", ".join(f"{x:.2f}" for x in side["seconds"])
        print(f"{label:<28} {side['median_s']:>9.2f} {runs:<30} {side['advance_deploy_median_s']:>30.2f}")
    print(f"ratio before / after: {result['ratio_before_over_after']}x")
    for label, side in result["sides"].items():
        print(f"  {label}: promote_prod said: {side['promote_prod_reason'][:200]}")


if __name__ == "__main__":
    sys.exit(main())
