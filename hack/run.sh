#!/usr/bin/env bash
# Runs node-network-operator on its embedded default, from a fresh machine: a local
# cluster of real nodes (a control plane, three network-namespace nodes running
# containerd, the kubelet and kube-proxy), the chart installed with helm, the samples
# applied and the sample gateway pods running. Installs the Debian packages it needs,
# builds the pinned tools and the images into a cache. Needs root: it creates network
# interfaces, namespaces, mounts and cgroups. Ctrl-C stops it and removes everything
# it made.
#
#   hack/run.sh                 everything
#   hack/run.sh --no-samples    the cluster and the chart only
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/lib.sh
source "$here/lib.sh"
cd "$here/.."

[ "$(id -u)" = 0 ] || die "the local cluster creates network interfaces, namespaces and cgroups: run as root (sudo -E hack/run.sh)"
command -v cargo >/dev/null || die "cargo is required (Rust 1.90 or newer, e.g. from rustup)"
step "Debian packages" "$here/deps.sh"
step "pinned tools (hack/tools.sh)" "$here/tools.sh"
step "image root filesystems (hack/images.sh)" "$here/images.sh"
step "build" cargo build --locked -p nno-e2e --bin nno-local
step "build the operator image's binaries (release)" \
  cargo build --release --locked -p node-network-operator -p nno-cni-shim
log "starting the local cluster"
exec target/debug/nno-local "$@"
