#!/usr/bin/env bash
# The whole test suite, from a fresh machine: Debian packages, the pinned Go tools
# (cached), formatting, lints, unit tests and the integration tests against real
# kube-apiserver/etcd/kube-controller-manager and real netlink in network namespaces.
# Needs root: the tests create network interfaces and namespaces.
#
#   hack/test.sh                 everything
#   hack/test.sh -p nno-e2e      extra arguments go to `cargo test`
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/lib.sh
source "$here/lib.sh"
cd "$here/.."

[ "$(id -u)" = 0 ] || die "the tests create network interfaces and namespaces: run as root (sudo -E hack/test.sh)"
command -v cargo >/dev/null || die "cargo is required (Rust 1.90 or newer, e.g. from rustup)"

start=$SECONDS
step "Debian packages" "$here/deps.sh"
step "pinned tools (hack/tools.sh)" "$here/tools.sh"
step "image root filesystems (hack/images.sh)" "$here/images.sh"
step "shellcheck hack/" shellcheck hack/*.sh .ci/run
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo build (the tests run the binaries)" cargo build --workspace --bins --locked
step "cargo build --release (the operator image of the real nodes)" \
  cargo build --release --locked -p node-network-operator -p nno-cni-shim
step "cargo test" cargo test --workspace --locked "$@"
log "all tests passed in $((SECONDS - start))s"
