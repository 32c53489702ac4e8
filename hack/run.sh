#!/usr/bin/env bash
# Runs node-network-operator on its embedded default: a local simulated cluster with a
# real control plane, from a fresh machine (installs Debian packages, builds the pinned
# tools into a cache). Needs root: it creates network interfaces. Ctrl-C stops it and
# removes everything it made.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/lib.sh
source "$here/lib.sh"
cd "$here/.."

[ "$(id -u)" = 0 ] || die "the local cluster creates network interfaces: run as root (sudo -E hack/run.sh)"
command -v cargo >/dev/null || die "cargo is required (Rust 1.90 or newer, e.g. from rustup)"
step "Debian packages" "$here/deps.sh"
step "pinned tools (hack/tools.sh)" "$here/tools.sh"
step "build" cargo build --locked --workspace --bins
log "starting the local cluster"
exec target/debug/nno-local
