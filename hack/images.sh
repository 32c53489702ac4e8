#!/usr/bin/env bash
# Builds the root filesystems of the container images the local cluster's nodes run,
# without a container engine or a registry, into $NNO_CACHE/images/<image>/rootfs:
#
#   pause  the sandbox holder of every pod: one static binary from hack/images/pause.c
#   base   what the operator image stands on (Containerfile: debian:bookworm-slim):
#          libc, a shell and coreutils, from Debian packages
#   tools  the sample pods' image: a shell, iproute2, ping, iptables/nftables, socat
#          (TCP/HTTP responder), conntrack, procps, keepalived (VRRP for the HA
#          routers), from Debian packages
#
# The e2e harness (e2e/src/image.rs) packs each rootfs (and, for the operator image,
# the release binaries) into an OCI archive and imports it into every node's
# containerd. Packages are downloaded once into $NNO_CACHE/debs; each rootfs is
# rebuilt only when its package list or a package version changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

images=$NNO_CACHE/images
debs=$NNO_CACHE/debs
mkdir -p "$images" "$debs"

# usr-is-merged satisfies init-system-helpers without pulling usrmerge (and perl).
base_packages=(dash coreutils libgcc-s1 usr-is-merged)
tools_packages=("${base_packages[@]}" bash sed grep iproute2 iputils-ping iptables nftables procps socat conntrack keepalived)

# apt_closure ARCHIVES ARGS...: apt-get install ARGS as on an empty system (nothing
# installed, nothing downloaded but what is in ARCHIVES), so that it resolves the whole
# closure of the packages (Depends, Pre-Depends, first alternatives).
apt_closure() {
  local archives=$1 status; shift
  status=$(mktemp)
  mkdir -p "$archives/partial"
  apt-get -o "Dir::State::status=$status" -o "Dir::Cache::archives=$archives" \
    install -qq -y --no-install-recommends "$@"
  rm -f "$status"
}

# closure PACKAGES...: one .deb file name per line (name_version_arch.deb, ':' as %3a).
closure() {
  local empty
  empty=$(mktemp -d)
  apt_closure "$empty" --print-uris "$@" | cut -d' ' -f2
  rm -rf "$empty"
}

# rootfs NAME PACKAGES...: unpacks the closure of PACKAGES into $images/NAME/rootfs.
rootfs() {
  local name=$1; shift
  local dir=$images/$name list
  list=$(closure "$@")
  if [ -z "$list" ]; then
    log "apt knows no packages for image $name: updating its package lists"
    apt-get update -qq
    list=$(closure "$@")
  fi
  [ -n "$list" ] || die "apt-get could not resolve the packages of image $name: $*"
  local stamp
  stamp=$(printf '%s\n' "$list" | sha256sum | cut -c1-16)
  if [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "image rootfs $name: cached ($(printf '%s\n' "$list" | wc -l) packages)"
    return
  fi
  local file missing=0
  while read -r file; do [ -s "$debs/$file" ] || missing=1; done <<<"$list"
  if [ $missing = 1 ]; then
    step "download the Debian packages of image $name" apt_closure "$debs" --download-only "$@"
  fi
  rm -rf "$dir" && mkdir -p "$dir/rootfs"
  local root=$dir/rootfs
  # A merged /usr, as Debian 12 has: packages that ship /bin or /lib files land in /usr.
  mkdir -p "$root"/usr/{bin,sbin,lib,lib64}
  ln -s usr/bin "$root/bin" && ln -s usr/sbin "$root/sbin"
  ln -s usr/lib "$root/lib" && ln -s usr/lib64 "$root/lib64"
  while read -r file; do
    dpkg-deb --fsys-tarfile "$debs/$file" | tar -x --keep-directory-symlink -C "$root"
  done <<<"$list"
  # What maintainer scripts and update-alternatives would have done.
  [ -e "$root/usr/bin/sh" ] || ln -s dash "$root/usr/bin/sh"
  if [ -e "$root/usr/sbin/xtables-nft-multi" ]; then
    local t
    for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
      ln -sf xtables-nft-multi "$root/usr/sbin/$t"
    done
  fi
  [ -e "$root/usr/bin/mawk" ] && ln -sf mawk "$root/usr/bin/awk"
  mkdir -p "$root"/{etc,tmp,root,run,proc,sys,dev,var/tmp}
  chmod 1777 "$root/tmp" "$root/var/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
  rm -rf "$root"/usr/share/{doc,man,info,locale} "$root"/var/cache/* "$root"/var/lib/dpkg
  printf '%s\n' "$list" >"$dir/packages"
  echo "$stamp" >"$dir/.stamp"
  log "image rootfs $name: $(wc -l <"$dir/packages") packages, $(du -sh "$root" | cut -f1)"
}

pause() {
  local dir=$images/pause src=$here/images/pause.c stamp
  stamp=$(sha256sum "$src" | cut -c1-16)
  if [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "image rootfs pause: cached"
    return
  fi
  command -v gcc >/dev/null || die "gcc is required to build the pause image"
  rm -rf "$dir" && mkdir -p "$dir/rootfs"
  gcc -static -Os -s -Wall -Wextra -Werror -o "$dir/rootfs/pause" "$src"
  echo "$stamp" >"$dir/.stamp"
  log "image rootfs pause: built from $src"
}

start=$SECONDS
pause
rootfs base "${base_packages[@]}"
rootfs tools "${tools_packages[@]}"
log "image root filesystems ready in $images ($((SECONDS - start))s)"
