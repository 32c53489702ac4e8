#!/usr/bin/env bash
# Installs the Debian packages the tests and the local cluster use, when missing:
# iproute2 (ip), iputils-ping, iptables and nftables (router pod NAT), procps;
# containerd, runc and conntrack for the real kubelet nodes (the kubelet, kube-proxy
# and the CNI plugins come from hack/tools.sh). The container images are built by
# hack/images.sh from Debian packages it downloads itself.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

packages=(iproute2 iputils-ping iptables nftables procps ca-certificates containerd runc conntrack util-linux gcc libc6-dev shellcheck)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "Debian packages: all present (${packages[*]})"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "missing Debian packages ${missing[*]}: run as root (or install them) first"
log "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian's containerd package would start a host-wide containerd where an init system
# runs: every node runs its own, so keep the packages' services from starting.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added_policy=1
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ $added_policy = 0 ] || rm -f "$policy"
log "installed: ${missing[*]}"
