#!/usr/bin/env python3
"""Benchmark: the history commands over 100,000 runs and 1,000,000 gate results (issue 13, "Scale").

A history of that size is seeded into a fresh SQLite file and into a fresh PostgreSQL database (one this
script creates on the server of ORCHESTRATOR_TEST_PG_URL and drops at the end, never the tests' own
databases), with the rows a real history has beside the gate results, in realistic proportions: several
apps of different activity, runs spread over months, most promoted, some failed on either edge (a
failed prod edge with its restore steps), superseded, rejected, some rolled back later, every edge with
its recorded steps and every promotion with its release. Rows go in with bulk Core inserts (SQLite) and
COPY (PostgreSQL), never through the ORM one by one, and the seed time is printed.

Then every read an operator or a dashboard makes is timed, as the median of ``--repeat`` calls after one
untimed call: in-process through the service layer (``RunService``, what the CLI and `serve` call), the
JSON API through the Flask app (``create_app`` with a test client), and each CLI command as a whole
process (``python -m orchestrator ...``, start-up included, next to ``--version`` as the start-up
alone). Targets: 50 ms each, 200 ms for metrics. Nothing asserts them (benchmarks/README.md): the table
prints each median and whether it is within its target.

Run: ``.venv/bin/python benchmarks/scale.py`` (see benchmarks/README.md). ``--runs`` and ``--gates``
scale it down for a quick look; ``--db sqlite`` skips PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from orchestrator.store import models  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://orch:orch@127.0.0.1:55432/orch"
TARGET_MS = 50.0
METRICS_TARGET_MS = 200.0
CHUNK_RUNS = 2_000

# Apps with the share of runs each gets: a busy storefront, a quiet admin tool.
APPS = {
    "shop": 30,
    "api": 20,
    "billing": 12,
    "search": 10,
    "auth": 10,
    "docs": 8,
    "admin": 6,
    "mailer": 4,
}
PEOPLE = [f"dev{n:02d}" for n in range(1, 41)]
CI_BOT = "github-actions[bot]"
RELEASE_MANAGERS = ["alice", "bob", "release-bot"]

STAGING_GATES = (
    "commit_exists",
    "build_image",
    "image_revision",
    "deploy_staging",
    "staging_health",
    "staging_check",
)
PROD_GATES = ("commit_exists", "check_staging_image_fresh", "build_image", "promote_prod", "verify_prod")
STAGING_STEPS = (
    "build",
    "image_guard",
    "staging_tag",
    "staging_stop",
    "staging_start",
    "staging_health",
    "staging_verify",
    "staging_check",
    "record_release",
)
PROD_STEPS = (
    "build",
    "image_guard",
    "prod_tag",
    "prod_stop",
    "prod_start",
    "prod_health",
    "prod_verify",
    "record_release",
)

# What becomes of a run, with its share in a thousand.
FATES = (
    ("promoted", 789),
    ("staged", 50),  # in deploy-staging, never promoted (the next run went instead)
    ("superseded", 50),
    ("staging_failed", 45),
    ("prod_failed", 30),
    ("fresh", 25),  # started, never advanced
    ("rejected", 5),
    ("interrupted", 1),
    ("staging_aborted", 5),
)
ROLLBACK_PER_THOUSAND = 15  # promotions later rolled back by hand

RUN_COLS = ("id", "app", "sha", "state", "actor", "created_at", "updated_at", "ci_url", "committed_at")
TRANSITION_COLS = (
    "id",
    "run_id",
    "from_state",
    "to_state",
    "actor",
    "started_at",
    "finished_at",
    "outcome",
    "reason",
    "result_state",
    "ci_url",
)
GATE_COLS = (
    "id",
    "transition_id",
    "position",
    "name",
    "status",
    "reason",
    "details",
    "duration_s",
    "started_at",
)
STEP_COLS = (
    "id",
    "transition_id",
    "position",
    "name",
    "environment",
    "status",
    "started_at",
    "finished_at",
    "changes",
    "error",
)
RELEASE_COLS = (
    "id",
    "app",
    "environment",
    "image_id",
    "digest",
    "revision",
    "run_id",
    "transition_id",
    "kind",
    "compose_sha256",
    "reason",
    "created_at",
    "ci_url",
)
EVENT_COLS = (
    "id",
    "at",
    "app",
    "environment",
    "kind",
    "actor",
    "message",
    "run_id",
    "transition_id",
    "details",
    "ci_url",
)
APPROVAL_COLS = ("id", "run_id", "environment", "decision", "actor", "reason", "at")
JSON_COLS = {"details", "changes"}

CRASH_LOG = (
    "Traceback (most recent call last):\n"
    '  File "/app/server.py", line 12, in <module>\n'
    "    db.connect(os.environ['DATABASE_URL'])\n"
    "KeyError: 'DATABASE_URL'"
)


# -- seeding -----------------------------------------------------------------------------------------


@dataclass
class Batch:
    runs: list[tuple[Any, ...]] = field(default_factory=list)
    transitions: list[tuple[Any, ...]] = field(default_factory=list)
    gates: list[tuple[Any, ...]] = field(default_factory=list)
    steps: list[tuple[Any, ...]] = field(default_factory=list)
    releases: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    approvals: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass
class Seeded:
    runs: int = 0
    transitions: int = 0
    gates: int = 0
    steps: int = 0
    releases: int = 0
    events: int = 0
    approvals: int = 0
    # Runs the timed reads look at: one promoted and one failed in prod, from the middle of history.
    sample_promoted: int = 0
    sample_failed: int = 0
    sample_sha: str = ""
    rare_actor: str = ""


class SeedHistory:
    """Generates the rows, run by run, with ids assigned here (so rows can refer to each other without
    a round trip) and times that only move forward per app and environment, as a real line does."""

    def __init__(self, runs: int, gates: int, months: int, now: datetime, seed: int) -> None:
        self.total_runs = runs
        self.target_gates = gates
        self.rng = random.Random(seed)
        self.start = now - timedelta(days=30 * months)
        self.span_s = (now - self.start).total_seconds() - 3600
        self.ids = {"t": 0, "g": 0, "s": 0, "r": 0, "e": 0, "a": 0}
        self.seeded = Seeded()
        self.last_prod: dict[str, tuple[int, str, datetime]] = {}  # app -> (release id, sha, at)
        # app -> its last two prod releases (id, image, sha, run): what a rollback goes back to.
        self.prod_releases: dict[str, list[tuple[int, str, str, int]]] = {}
        self.app_names = list(APPS)
        self.app_weights = list(APPS.values())
        self.fates = [f for f, _ in FATES]
        self.fate_weights = [w for _, w in FATES]
        self.rare_actor = PEOPLE[-1]

    def _id(self, kind: str) -> int:
        self.ids[kind] += 1
        return self.ids[kind]

    def _sha(self) -> str:
        return f"{self.rng.getrandbits(160):040x}"

    def _image(self) -> str:
        return f"sha256:{self.rng.getrandbits(256):064x}"

    def _actor(self) -> str:
        roll = self.rng.random()
        if roll < 0.55:
            return CI_BOT
        if roll < 0.5505:
            return self.rare_actor
        return self.rng.choice(PEOPLE[:-1])

    def batches(self, size: int) -> Iterator[Batch]:
        batch = Batch()
        for n in range(1, self.total_runs + 1):
            self._run(batch, n)
            if n % size == 0:
                yield batch
                batch = Batch()
        if batch.runs:
            yield batch

    def _gates_wanted(self, n: int) -> int:
        """Gates so far should track target * runs so far: the prod edge of a promotion gets one gate
        more or fewer to keep it so, which lands the total on the target."""
        return round(self.target_gates * n / self.total_runs) - self.seeded.gates

    def _run(self, b: Batch, n: int) -> None:
        rng = self.rng
        s = self.seeded
        app = rng.choices(self.app_names, self.app_weights)[0]
        sha = self._sha()
        actor = self._actor()
        created = self.start + timedelta(seconds=self.span_s * (n - 1) / self.total_runs + rng.uniform(0, 30))
        committed = created - timedelta(seconds=rng.uniform(120, 2 * 86400))
        ci = f"https://github.example/acme/{app}/actions/runs/{1_000_000 + n}" if actor == CI_BOT else None
        fate = rng.choices(self.fates, self.fate_weights)[0]
        state = "development"
        at = created + timedelta(seconds=rng.uniform(5, 120))
        if fate != "fresh":
            ok = fate not in ("staging_failed", "staging_aborted")
            outcome = "succeeded" if ok else ("failed" if fate == "staging_failed" else "aborted")
            at, tid = self._edge(b, n, app, sha, actor, ci, "staging", outcome, at)
            state = "deploy-staging" if ok else "development"
            if ok and fate != "staged":
                at += timedelta(seconds=rng.uniform(60, 6 * 3600))
                prod_actor = rng.choice(RELEASE_MANAGERS) if rng.random() < 0.3 else actor
                if fate == "promoted":
                    at = max(at, self.last_prod.get(app, (0, "", at))[2] + timedelta(seconds=1))
                    at, tid = self._edge(b, n, app, sha, prod_actor, ci, "prod", "succeeded", at)
                    state = "deploy"
                    if rng.randrange(1000) < ROLLBACK_PER_THOUSAND:
                        self._rollback(b, app, at + timedelta(seconds=rng.uniform(300, 7200)))
                    elif not s.sample_promoted and n >= self.total_runs // 2:
                        s.sample_promoted, s.sample_sha = n, sha
                elif fate == "prod_failed":
                    at = max(at, self.last_prod.get(app, (0, "", at))[2] + timedelta(seconds=1))
                    at, tid = self._edge(b, n, app, sha, prod_actor, ci, "prod", "failed", at)
                    state = "development"
                    if not s.sample_failed and n >= self.total_runs // 2:
                        s.sample_failed = n
                elif fate == "interrupted":
                    at, tid = self._edge(b, n, app, sha, prod_actor, ci, "prod", "interrupted", at)
                else:  # superseded, rejected: an instant transition that ends the run
                    tid = self._id("t")
                    why = (
                        f"superseded by newer run {n + 1}: its release already runs in prod"
                        if fate == "superseded"
                        else f"rejected by {prod_actor}: not during the sale"
                    )
                    b.transitions.append(
                        (tid, n, "deploy-staging", "deploy", prod_actor, at, at, fate, why, fate, ci)
                    )
                    s.transitions += 1
                    state = fate
                    if fate == "rejected":
                        b.approvals.append(
                            (self._id("a"), n, "prod", "rejected", prod_actor, "not during the sale", at)
                        )
                        s.approvals += 1
        b.runs.append((n, app, sha, state, actor, created, at, ci, committed))
        s.runs += 1

    def _edge(
        self,
        b: Batch,
        run_id: int,
        app: str,
        sha: str,
        actor: str,
        ci: str | None,
        env: str,
        outcome: str,
        at: datetime,
    ) -> tuple[datetime, int]:
        """One edge's transition with its gate results, steps and (on success) release."""
        rng, s = self.rng, self.seeded
        tid = self._id("t")
        started = at
        gates = list(STAGING_GATES if env == "staging" else PROD_GATES)
        steps = list(STAGING_STEPS if env == "staging" else PROD_STEPS)
        failing: str | None = None
        if outcome == "failed":
            failing = (
                rng.choices(["staging_check", "build_image", "deploy_staging"], [6, 3, 1])[0]
                if env == "staging"
                else rng.choice(["promote_prod", "verify_prod"])
            )
            gates = gates[: gates.index(failing) + 1]
        elif outcome == "aborted":
            gates, steps = gates[:1], []
        elif outcome == "interrupted":
            gates, steps = gates[:4], steps[:5]
        elif env == "prod":
            wanted = self._gates_wanted(run_id)
            if wanted > len(gates) + 1:
                gates.append("smoke_test")
            elif wanted < len(gates) - 1:
                gates.pop(1)
        image = self._image()
        t = started
        for pos, name in enumerate(gates):
            took = rng.uniform(0.05, 40.0 if name in ("build_image", "staging_check") else 4.0)
            status, reason, details = "pass", f"{name} ok", {}
            if name == "commit_exists":
                reason, details = f"commit {sha[:12]} exists", {"subject": "fix the checkout page"}
            elif name in ("verify_prod", "image_revision", "staging_health"):
                details = {"expected_revision": sha, "found_revision": sha, "image_id": image}
                reason = f"{'prod' if env == 'prod' else 'staging'} runs {sha[:12]}"
            if name == failing:
                status = "fail"
                if name in ("verify_prod",):
                    found = self._sha()
                    details = {"expected_revision": sha, "found_revision": found, "image_id": image}
                    reason = f"prod runs {found[:12]}, expected {sha[:12]}"
                else:
                    reason = f"{name} failed: container exited with code 1\n{CRASH_LOG}"
                    details = {"exit_code": 1, "log_tail": CRASH_LOG.splitlines()}
            b.gates.append((self._id("g"), tid, pos, name, status, reason, details, took, t))
            s.gates += 1
            t += timedelta(seconds=took)
        step_names = list(steps)
        if outcome == "failed" and env == "prod":
            # The failed prod edge put the new container in and took it back out: prod was touched.
            step_names = [*steps[:6], "prod_halt", "prod_start", "prod_verify"]
        elif outcome == "failed":
            step_names = steps[: rng.randrange(1, len(steps))]
        st = started
        for pos, name in enumerate(step_names):
            took = rng.uniform(0.05, 20.0 if name == "build" else 3.0)
            on = name.split("_", 1)[0] if name.startswith(("prod_", "staging_")) else None
            if name == "record_release":
                on = env
            status = "done"
            error = None
            if outcome == "failed" and pos == len(step_names) - 1 and env == "staging":
                status, error = "failed", "container exited with code 1"
            changes = {"image_id": image} if name in ("build", "prod_start", "staging_start") else {}
            b.steps.append(
                (self._id("s"), tid, pos, name, on, status, st, st + timedelta(seconds=took), changes, error)
            )
            s.steps += 1
            st += timedelta(seconds=took)
        finished = max(t, st) + timedelta(seconds=rng.uniform(0.1, 2))
        reason = None
        result = {"staging": "deploy-staging", "prod": "deploy"}[env]
        from_state = "development" if env == "staging" else "deploy-staging"
        if outcome == "failed":
            reason = f"gate {failing} failed" + ("; prod restored" if env == "prod" else "")
            result = "development"
        elif outcome == "aborted":
            reason, result = "staging is locked by another run", from_state
        elif outcome == "interrupted":
            reason, result = "runner died (SIGKILL); recovered", from_state
        to_state = "deploy-staging" if env == "staging" else "deploy"
        b.transitions.append(
            (tid, run_id, from_state, to_state, actor, started, finished, outcome, reason, result, ci)
        )
        s.transitions += 1
        if outcome == "succeeded":
            rid = self._id("r")
            b.releases.append(
                (rid, app, env, image, None, sha, run_id, tid, "deploy", None, None, finished, ci)
            )
            s.releases += 1
            if env == "prod":
                self.last_prod[app] = (rid, sha, finished)
                self.prod_releases.setdefault(app, []).append((rid, image, sha, run_id))
                del self.prod_releases[app][:-2]
        return finished, tid

    def _rollback(self, b: Batch, app: str, at: datetime) -> None:
        """`orchestrator rollback APP`: prod back to the release before the last one, and its event."""
        before = self.prod_releases.get(app, [])
        if len(before) < 2:
            return
        to_id, image, sha, run_id = before[-2]
        rid = self._id("r")
        who = self.rng.choice(RELEASE_MANAGERS)
        reason = "checkout errors after deploy"
        b.releases.append(
            (rid, app, "prod", image, None, sha, run_id, None, "rollback", None, reason, at, None)
        )
        message = f"{app} prod rolled back to release {to_id}: {reason}"
        b.events.append(
            (
                self._id("e"),
                at,
                app,
                "prod",
                "rollback",
                who,
                message,
                run_id,
                None,
                {"release_id": rid},
                None,
            )
        )
        self.seeded.releases += 1
        self.seeded.events += 1
        self.last_prod[app] = (rid, sha, at)
        self.prod_releases[app].append((rid, image, sha, run_id))


TABLES: list[tuple[str, str, tuple[str, ...]]] = [
    ("runs", "runs", RUN_COLS),
    ("transitions", "transitions", TRANSITION_COLS),
    ("gates", "gate_results", GATE_COLS),
    ("steps", "transition_steps", STEP_COLS),
    ("releases", "releases", RELEASE_COLS),
    ("events", "events", EVENT_COLS),
    ("approvals", "approvals", APPROVAL_COLS),
]


def _insert(conn: sa.Connection, table: str, cols: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        assert raw is not None
        json_at = [i for i, c in enumerate(cols) if c in JSON_COLS]
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
            for row in rows:
                if json_at:
                    row = tuple(json.dumps(v) if i in json_at else v for i, v in enumerate(row))
                copy.write_row(row)
        return
    conn.execute(models.Base.metadata.tables[table].insert(), [dict(zip(cols, r, strict=True)) for r in rows])


def seed(url: str, runs: int, gates: int, months: int, seed_value: int) -> tuple[Seeded, float]:
    engine = sa.create_engine(url)
    began = time.perf_counter()
    history = SeedHistory(runs, gates, months, datetime.now(UTC), seed_value)
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        for batch in history.batches(CHUNK_RUNS):
            for attr, table, cols in TABLES:
                _insert(conn, table, cols, getattr(batch, attr))
        if conn.dialect.name == "postgresql":
            for _, table, _ in TABLES:
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT coalesce(max(id), 1) FROM {table}))"
                )
    if engine.dialect.name == "postgresql":
        # What autovacuum does on its own within a minute of a bulk load: planner statistics.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    history.seeded.rare_actor = history.rare_actor
    return history.seeded, time.perf_counter() - began


# -- timing ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    name: str
    how: str  # service | api | cli
    median_ms: float
    min_ms: float
    target_ms: float
    rows: int | None = None

    @property
    def ok(self) -> bool:
        return self.median_ms <= self.target_ms


def _measure(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    result = fn()  # untimed: first touch (imports, connection pool, caches)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), min(times), result


def _count(result: Any) -> int | None:
    if isinstance(result, list):
        return len(result)
    if isinstance(result, dict) and "runs" in result:
        return len(result["runs"])
    return None


def reads(seeded: Seeded, since_range: tuple[datetime, datetime]) -> list[tuple[str, dict[str, Any], float]]:
    """Each read as (name, what to ask, target): the CLI's arguments and the service's filter."""
    lo, hi = since_range
    return [
        ("runs list (first page)", {"args": []}, TARGET_MS),
        (
            "runs list --app shop --outcome failed",
            {"args": ["--app", "shop", "--outcome", "failed"]},
            TARGET_MS,
        ),
        (
            "runs list --app admin --outcome rejected",
            {"args": ["--app", "admin", "--outcome", "rejected"]},
            TARGET_MS,
        ),
        ("runs list --outcome interrupted (0.1%)", {"args": ["--outcome", "interrupted"]}, TARGET_MS),
        ("runs list --sha <6 hex>", {"args": ["--sha", seeded.sample_sha[:6]]}, TARGET_MS),
        (f"runs list --actor {CI_BOT}", {"args": ["--actor", CI_BOT]}, TARGET_MS),
        (
            f"runs list --actor {seeded.rare_actor} (rare)",
            {"args": ["--actor", seeded.rare_actor]},
            TARGET_MS,
        ),
        (
            "runs list --since/--until (3 days)",
            {"args": ["--since", lo.isoformat(), "--until", hi.isoformat()]},
            TARGET_MS,
        ),
        ("runs list --page 100", {"args": ["--page", "100"]}, TARGET_MS),
        ("runs list --app docs --page 50", {"args": ["--app", "docs", "--page", "50"]}, TARGET_MS),
    ]


def time_service(
    url: str, seeded: Seeded, repeat: int, since_range: tuple[datetime, datetime], workdir: Path
) -> list[Timing]:
    from orchestrator.config import load_config
    from orchestrator.metrics import load
    from orchestrator.service import RunService
    from orchestrator.store.history import RunFilter, parse_when
    from orchestrator.store.repository import Store
    from orchestrator.web.app import Backend, create_app

    config = load_config(workdir / "orchestrator.toml", env={"ORCH_DATABASE_URL": url})
    store = Store(url)
    service = RunService(config, store)
    out: list[Timing] = []

    def list_call(args: list[str]) -> Callable[[], Any]:
        opts = dict(zip(args[::2], args[1::2], strict=True))
        page = int(opts.get("--page", 1))
        found = RunFilter(
            app=opts.get("--app"),
            outcome=opts.get("--outcome"),
            sha_prefix=opts.get("--sha"),
            actor=opts.get("--actor"),
            since=parse_when(opts["--since"]) if "--since" in opts else None,
            until=parse_when(opts["--until"]) if "--until" in opts else None,
        )

        def call() -> Any:
            # What `runs list` does for a person: the page, then each run's last transition.
            history = service.history()
            records = history.runs(found, limit=20, offset=(page - 1) * 20)
            return history.summaries(records)

        return call

    for name, ask, target in reads(seeded, since_range):
        med, low, result = _measure(list_call(ask["args"]), repeat)
        out.append(Timing(name, "service", med, low, target, _count(result)))
    for label, run_id in (("promoted", seeded.sample_promoted), ("failed in prod", seeded.sample_failed)):
        med, low, _ = _measure(lambda run_id=run_id: service.run_history(run_id), repeat)
        out.append(Timing(f"runs show ({label})", "service", med, low, TARGET_MS))
    for label, app in (("all apps", None), ("shop", "shop")):
        med, low, _ = _measure(lambda app=app: service.metrics(app, "30d"), repeat)
        out.append(Timing(f"metrics --since 30d ({label})", "service", med, low, METRICS_TARGET_MS))
    med, low, _ = _measure(lambda: service.metrics(None, "180d"), repeat)
    out.append(Timing("metrics --since 180d (all apps)", "service", med, low, METRICS_TARGET_MS))

    def charts() -> Any:
        # What the dashboard draws: the keys per app and day of the window, for every app.
        dora = load(config, store, None, "30d", by_day=True)
        return [dora.daily(a) for a in dora.apps]

    med, low, _ = _measure(charts, repeat)
    out.append(
        Timing("metrics per day, every app (dashboard charts)", "service", med, low, METRICS_TARGET_MS)
    )

    client = create_app(Backend(_config=config, _store=store)).test_client()

    def scrape() -> Any:
        response = client.get("/metrics")
        assert response.status_code == 200, (response.status_code, response.get_data(as_text=True))
        return response.get_data()

    med, low, _ = _measure(scrape, repeat)
    out.append(Timing("GET /metrics (scrape: DORA keys and counts)", "api", med, low, METRICS_TARGET_MS))
    for path in (
        "/api/runs",
        "/api/runs?app=shop&outcome=failed",
        f"/api/runs?sha={seeded.sample_sha[:6]}",
        "/api/runs?page=100",
        f"/api/runs/{seeded.sample_promoted}",
    ):

        def get(path: str = path) -> Any:
            response = client.get(path)
            assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True))
            return response.get_json()

        med, low, result = _measure(get, repeat)
        out.append(Timing(f"GET {path}", "api", med, low, TARGET_MS, _count(result)))
    store.close()
    return out


def time_cli(
    url: str, seeded: Seeded, repeat: int, since_range: tuple[datetime, datetime], workdir: Path
) -> list[Timing]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_DATABASE_URL=url, PYTHONPATH=str(ROOT), ORCH_LOG_FORMAT="json")
    out: list[Timing] = []

    def proc(args: list[str]) -> Callable[[], Any]:
        argv = [sys.executable, "-m", "orchestrator", *args]

        def call() -> Any:
            done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
            return done.stdout

        return call

    med, low, _ = _measure(proc(["--version"]), repeat)
    out.append(Timing("--version (start-up alone)", "cli", med, low, TARGET_MS))
    cases: list[tuple[str, list[str], float]] = [
        (name, ["runs", "list", *ask["args"]], target) for name, ask, target in reads(seeded, since_range)
    ]
    cases += [
        ("runs show (promoted)", ["runs", "show", str(seeded.sample_promoted)], TARGET_MS),
        ("runs show --json (promoted)", ["runs", "show", str(seeded.sample_promoted), "--json"], TARGET_MS),
        ("metrics --since 30d (all apps)", ["metrics"], METRICS_TARGET_MS),
    ]
    for name, args, target in cases:
        med, low, _ = _measure(proc(args), repeat)
        out.append(Timing(name, "cli", med, low, target))
    return out


# -- databases ---------------------------------------------------------------------------------------


class PgDatabase:
    """A database of its own on the tests' server, created here and dropped at the end."""

    def __init__(self, server_url: str) -> None:
        self.admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
        self.name = f"orch_bench_scale_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        self.url = sa.make_url(server_url).set(database=self.name).render_as_string(hide_password=False)

    def drop(self) -> None:
        for attempt in range(50):
            try:
                with self.admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
                break
            except sa.exc.DBAPIError:
                if attempt == 49:
                    raise
                time.sleep(0.2)
        self.admin.dispose()


def _migrate(url: str) -> None:
    from orchestrator.store.repository import Store

    Store(url).close()


def _schema_revision(url: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    engine.dispose()
    return str(found)


def bench(label: str, url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    _migrate(url)
    seeded, seed_s = seed(url, args.runs, args.gates, args.months, args.seed)
    print(
        f"\n== {label}: schema {_schema_revision(url)}; seeded {seeded.runs:,} runs, {seeded.transitions:,} "
        f"transitions, {seeded.gates:,} gate results, {seeded.steps:,} steps, {seeded.releases:,} releases, "
        f"{seeded.events:,} events in {seed_s:.1f} s",
        file=args.out,
        flush=True,
    )
    middle = datetime.now(UTC) - timedelta(days=30 * args.months / 2)
    since_range = (middle, middle + timedelta(days=3))
    timings = time_service(url, seeded, args.repeat, since_range, workdir)
    if not args.no_cli:
        timings += time_cli(url, seeded, args.cli_repeat, since_range, workdir)
    _print_table(timings, args.out)
    return {
        "backend": label,
        "seed_s": round(seed_s, 2),
        "seeded": seeded.__dict__,
        "timings": [{**t.__dict__, "ok": t.ok} for t in timings],
    }


def _print_table(timings: Sequence[Timing], out: Any) -> None:
    print(f"  {'how':<8}{'read':<52}{'median ms':>10}{'min ms':>9}{'target':>8}  rows", file=out)
    for t in timings:
        mark = "ok" if t.ok else "OVER"
        rows = "" if t.rows is None else str(t.rows)
        print(
            f"  {t.how:<8}{t.name[:51]:<52}{t.median_ms:>10.1f}{t.min_ms:>9.1f}"
            f"{t.target_ms:>6.0f} {mark:<4} {rows}",
            file=out,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--gates", type=int, default=1_000_000, help="gate results in all (about 10 a run)")
    parser.add_argument("--months", type=int, default=6, help="how far back the history goes")
    parser.add_argument("--repeat", type=int, default=9, help="timed calls per in-process read")
    parser.add_argument("--cli-repeat", type=int, default=3, help="timed processes per CLI read")
    parser.add_argument("--db", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--no-cli", action="store_true", help="skip the whole-process CLI timings")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", action="store_true", help="one JSON summary on stdout (tables on stderr)")
    args = parser.parse_args()
    args.out = sys.stderr if args.json else sys.stdout
    backends = [b.strip() for b in args.db.split(",") if b.strip()]
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    # The apps' sources are not here (history reads need none), so `metrics` asks git for nothing.
    (workdir / "orchestrator.toml").write_text(
        "".join(
            f'[apps.{name}]\nsource = "src/{name}"\nstaging_port = {20000 + 2 * i}\n'
            f"prod_port = {20001 + 2 * i}\n\n"
            for i, name in enumerate(APPS)
        ),
        encoding="utf-8",
    )
    try:
        for backend in backends:
            if backend == "sqlite":
                results.append(bench("sqlite", f"sqlite:///{workdir / 'orch.db'}", args, workdir))
            elif backend == "postgresql":
                pg = PgDatabase(os.environ.get("ORCHESTRATOR_TEST_PG_URL") or DEFAULT_PG_URL)
                try:
                    results.append(bench("postgresql", pg.url, args, workdir))
                finally:
                    pg.drop()
            else:
                raise SystemExit(f"unknown --db {backend!r}: sqlite or postgresql")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"results": results}, indent=2, default=str))


if __name__ == "__main__":
    main()
