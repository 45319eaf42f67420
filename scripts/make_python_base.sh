#!/usr/bin/env bash
# Make a local Python base image for building the orchestrator's own Dockerfile where no public
# registry can be reached (tests, air-gapped builders): Debian bookworm minbase + python3 + pip,
# carrying a wheelhouse of the orchestrator's dependencies and its build backend, with pip pointed at
# it (PIP_NO_INDEX, PIP_FIND_LINKS) so `pip install` inside a build needs no network.
#
# Usage: bash scripts/make_python_base.sh [IMAGE]   (default orchestrator-python-base:bookworm)
# Cached by image name: an existing image is reused (so name it after the dependencies it carries, as
# tests/integration/test_self_deploy.py does). About a minute the first time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${1:-orchestrator-python-base:bookworm}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

say() { printf '[python-base] %s\n' "$*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  say "$IMAGE exists; reusing it"
  exit 0
fi
[ "$(id -u)" = 0 ] || { say "ERROR: debootstrap needs root"; exit 1; }
command -v debootstrap >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

# Use the mirror this machine's apt already uses, so the script works wherever apt does.
mirror="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)"
[ -n "$mirror" ] || mirror="$(awk '$1=="deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
[ -n "$mirror" ] || { say "ERROR: no Debian mirror found in /etc/apt sources"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
say "debootstrap bookworm (minbase + python3, pip) from the apt mirror"
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv bookworm "$work/rootfs" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*

say "building the wheelhouse on the host (pip wheel)"
"$PY" -m pip wheel -q --disable-pip-version-check -c "$ROOT/constraints.txt" -w "$work/rootfs/wheels" \
  "$ROOT" hatchling "psycopg[binary]"
rm -f "$work/rootfs/wheels/"orchestrator-*.whl  # the image under test builds the project itself

say "importing $IMAGE"
tar -C "$work/rootfs" -c . | docker import \
  --change 'ENV PIP_NO_INDEX=1' \
  --change 'ENV PIP_FIND_LINKS=/wheels' \
  --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$IMAGE" >/dev/null
say "done: $IMAGE"
