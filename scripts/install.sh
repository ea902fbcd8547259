#!/usr/bin/env bash
# Builds dso in release mode and installs its three programs.
#
#   scripts/install.sh              install (as a user: ~/.local/bin + ~/.docker/cli-plugins;
#                                    as root: /usr/local/bin + /usr/local/lib/docker/cli-plugins)
#   scripts/install.sh --uninstall  remove what install put there
#   scripts/install.sh --prefix DIR install the binaries into DIR/bin instead
#
# Idempotent: running it again rebuilds if the sources changed and replaces the files in place.
# Nothing is downloaded except crates from the crate registry (through cargo).
set -euo pipefail

MIN_RUST="1.95"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
action=install
prefix=""

usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) action=uninstall ;;
    --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
              prefix="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

# Where things go: system-wide for root, per user otherwise.
if [ "$(id -u)" -eq 0 ]; then
  bin_dir="${prefix:-/usr/local}/bin"
  plugin_dir="/usr/local/lib/docker/cli-plugins"
else
  bin_dir="${prefix:-$HOME/.local}/bin"
  plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
fi

if [ "$action" = uninstall ]; then
  for f in "$bin_dir/dso-agent" "$bin_dir/dso-proxy" "$bin_dir/docker-dso" \
           "$plugin_dir/docker-dso"; do
    if [ -e "$f" ] || [ -L "$f" ]; then rm -f "$f"; echo "removed $f"; fi
  done
  echo "dso uninstalled (your vault and configuration in ~/.dso and /etc/dso are kept)"
  exit 0
fi

# The toolchain must be new enough for edition 2024 and the pinned dependencies.
if ! command -v cargo >/dev/null 2>&1; then
  echo "install.sh: cargo not found" >&2
  echo "hint: install Rust $MIN_RUST or newer with rustup, then run this again" >&2
  exit 1
fi
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$MIN_RUST" "$have" | sort -V | head -n1)" != "$MIN_RUST" ]; then
  echo "install.sh: rustc $have is older than $MIN_RUST" >&2
  echo "hint: rustup update stable" >&2
  exit 1
fi

# Build once for all three programs; the lock file pins every dependency.
cargo build --release --locked --manifest-path "$repo/Cargo.toml" \
  -p dataplane -p controlplane -p docker-dso
target="${CARGO_TARGET_DIR:-$repo/target}/release"

# install(1) writes a new file and renames it, so a running program keeps its old inode.
mkdir -p "$bin_dir" "$plugin_dir"
for b in dso-proxy dso-agent docker-dso; do
  install -m 0755 "$target/$b" "$bin_dir/$b"
  echo "installed $bin_dir/$b"
done
install -m 0755 "$target/docker-dso" "$plugin_dir/docker-dso"
echo "installed $plugin_dir/docker-dso (use it as: docker dso --help)"

case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) echo "note: $bin_dir is not on your PATH; add it to run dso-agent and dso-proxy directly" ;;
esac
