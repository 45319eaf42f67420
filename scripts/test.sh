#!/usr/bin/env bash
# The test command: prepares the machine (scripts/bootstrap.sh, including the tests' PostgreSQL), checks
# style, then runs the suite against the real Docker engine: all of it on SQLite, then on PostgreSQL the
# tests that open the database under test (--only-db-dependent: the others would run exactly as they did).
# Both must pass. Extra arguments go to both pytest runs (e.g. -k, -x, tests/unit).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
main
ensure_postgres
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

header() { printf '\n======== %s ========\n' "$*"; }

# Each database gets the whole suite even if the other failed: a red PostgreSQL run says nothing about
# SQLite, and the reader should see both verdicts.
declare -A verdict
for db in sqlite postgresql; do
  if [ "$db" = sqlite ]; then
    header "pytest on sqlite (a file per test)"
    only=()
  else
    header "pytest on ${db} ($ORCHESTRATOR_TEST_PG_URL), the tests that open the database"
    only=(--only-db-dependent)
  fi
  started=$SECONDS
  rc=0
  # The slowest tests are listed so that the suite's time (CI allows 90 minutes for both passes) is
  # watched where it grows, not guessed at.
  "$VENV/bin/pytest" --db="$db" "${only[@]}" --durations=20 "$@" || rc=$?
  verdict[$db]="exit $rc in $((SECONDS - started)) s"
  [ "$rc" = 0 ] || failed=1
done

header "summary"
printf 'sqlite:     %s\npostgresql: %s\n' "${verdict[sqlite]}" "${verdict[postgresql]}"
exit "${failed:-0}"
