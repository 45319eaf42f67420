"""The PostgreSQL pass of scripts/test.sh runs only the tests that open the database under test: a test
left out there must be one whose outcome cannot depend on ``--db``, and one that can must stay in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _collected(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {line for line in done.stdout.splitlines() if "::" in line}


def test_the_second_pass_keeps_exactly_the_tests_that_reach_the_backend() -> None:
    everything = _collected("--db=postgresql", "tests/unit/test_sql.py")
    second = _collected("--db=postgresql", "--only-db-dependent", "tests/unit/test_sql.py")

    def named(tests: set[str], name: str) -> bool:
        return any(t.split("::")[1].split("[")[0] == name for t in tests)

    # Kept: through the ci_store fixture (a store on the backend under test).
    assert named(second, "test_every_row_the_store_writes_reads_back_through_the_orm"), second
    assert named(second, "test_a_non_utc_time_is_stored_as_utc"), second
    # Left out: URL parsing and a database of the test's own on sqlite:///, the same on both passes.
    for name in (
        "test_postgresql_urls_are_read_like_sqlalchemy_reads_them",
        "test_sqlite_urls_are_read_like_sqlalchemy_reads_them",
        "test_urls_the_store_cannot_use_are_bad_input",
    ):
        assert named(everything, name) and not named(second, name), name
    assert second < everything
