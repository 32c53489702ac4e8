#!/usr/bin/env bash
# Installs the Debian packages the tests and the local cluster use, when missing:
# iproute2 (ip), iputils-ping, iptables and nftables (router pod NAT), procps.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

packages=(iproute2 iputils-ping iptables nftables procps ca-certificates)
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
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
log "installed: ${missing[*]}"
