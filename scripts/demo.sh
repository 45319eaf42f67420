#!/usr/bin/env bash
# The main job: a full staged deploy of the sample app on the local Docker engine.
#
#   development -> deploy-staging -> deploy, through every gate, then the run history.
#
# Prepares the machine first (scripts/bootstrap.sh). Each invocation commits a new revision of the
# sample app, so running it twice shows a second release replacing the first. Ports default to the
# user-facing 8501 (staging) and 8500 (prod); DEMO_STAGING_PORT / DEMO_PROD_PORT override them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
main

DEMO="$ROOT/.orchestrator/demo"
REPO="$DEMO/sample-app"
ORCH="$VENV/bin/orchestrator"
mkdir -p "$DEMO"

if [ ! -d "$REPO/.git" ]; then
  say "creating the sample app repository in $REPO"
  cp -r "$ROOT/examples/sample-app" "$REPO"
  cp /usr/bin/busybox "$REPO/busybox"
  git -C "$REPO" init -q
  git -C "$REPO" -c user.name=demo -c user.email=demo@localhost add -A
  git -C "$REPO" -c user.name=demo -c user.email=demo@localhost commit -q -m "sample app"
fi
date -u +"deployed revision made at %Y-%m-%dT%H:%M:%SZ" >"$REPO/www/build.txt"
git -C "$REPO" add -A
git -C "$REPO" -c user.name=demo -c user.email=demo@localhost commit -q -m "sample app $(date -u +%H:%M:%S)"
SHA="$(git -C "$REPO" rev-parse HEAD)"

cat >"$DEMO/orchestrator.toml" <<TOML
[apps.sample]
source = "sample-app"
dockerfile = "Dockerfile"
health_path = "/health"
version_path = "/version"
staging_port = ${DEMO_STAGING_PORT:-8501}
prod_port = ${DEMO_PROD_PORT:-8500}
TOML

cd "$DEMO"
export ORCH_LOG_FORMAT="${ORCH_LOG_FORMAT:-console}" ORCH_LOG_LEVEL="${ORCH_LOG_LEVEL:-warning}"
RUN_ID="$("$ORCH" run start --app sample --sha "$SHA" --actor demo --json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')"
echo "== run $RUN_ID: sample @ $SHA"
echo "== advance to deploy-staging"
"$ORCH" advance "$RUN_ID" --to deploy-staging --actor demo
echo "== advance to deploy"
"$ORCH" advance "$RUN_ID" --to deploy --actor demo
echo "== prod serves revision: $("$VENV/bin/python" -c 'import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())' "http://127.0.0.1:${DEMO_PROD_PORT:-8500}/version")"
echo "== run history"
"$ORCH" runs list --app sample --limit 5
echo
"$ORCH" runs show "$RUN_ID"
echo
echo "Containers sample-staging and sample-prod keep running; remove them with: docker rm -f sample-staging sample-prod"
