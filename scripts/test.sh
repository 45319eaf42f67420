#!/usr/bin/env bash
# The test command: prepares the machine (scripts/bootstrap.sh), checks style, runs the whole suite
# against the real Docker engine. Extra arguments go to pytest (e.g. -k, -x, tests/unit).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
main
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
exec "$VENV/bin/pytest" "$@"
