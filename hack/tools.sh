#!/usr/bin/env bash
# Builds the pinned third-party tools the tests and the local cluster need, from the
# Go module proxy, into $NNO_CACHE/bin (default ~/.cache/node-network-operator/bin):
# the Kubernetes control plane, kubelet and kube-proxy, etcd, the CNI plugins, multus,
# whereabouts and helm.
# Each tool is built once per version and reused afterwards.
#
#   hack/tools.sh            build everything missing
#   hack/tools.sh --print    print the bin directory (after building what is missing)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

command -v go >/dev/null || die "Go is required to build the test tools (go 1.26 or newer)"
mkdir -p "$NNO_BIN" "$NNO_CACHE/src"
export GOFLAGS=-mod=mod CGO_ENABLED=0

# stamp NAME VERSION: true when NAME was already built at VERSION.
built() { [ -x "$NNO_BIN/$1" ] && [ "$(cat "$NNO_BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
mark() { echo "$2" >"$NNO_BIN/.$1.version"; }

# gomod DIR MODULE: a fresh Go module in DIR named MODULE.
gomod() {
  rm -rf "$1" && mkdir -p "$1"
  (cd "$1" && go mod init "$2" >/dev/null 2>&1)
}

build_kubernetes() {
  local tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy) t missing=0
  for t in "${tools[@]}"; do built "$t" "$KUBE_VERSION" || missing=1; done
  [ $missing = 1 ] || { log "kubernetes $KUBE_VERSION: cached"; return; }

  # k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io/*
  # staging modules with local paths. Build it from a module of our own that pins each
  # staging module to the matching v0.x release.
  local dir=$NNO_CACHE/src/kubernetes-$KUBE_VERSION staging=v0.${KUBE_VERSION#v1.}
  gomod "$dir" nno.dev/hack/kubernetes
  cd "$dir"
  local upstream_mod
  upstream_mod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$upstream_mod" ] || die "could not download k8s.io/kubernetes@$KUBE_VERSION"
  go mod edit -require "k8s.io/kubernetes@$KUBE_VERSION"
  local m
  while read -r m; do
    go mod edit -replace "$m=$m@$staging"
  done < <(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$upstream_mod")
  for t in "${tools[@]}"; do go mod edit -tool "k8s.io/kubernetes/cmd/$t"; done
  step "resolve kubernetes $KUBE_VERSION modules" go mod tidy

  # The ldflags the upstream build stamps (hack/lib/version.sh), so that the server
  # reports $KUBE_VERSION and not v0.0.0.
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local commit date ldflags="-s -w" pkg
  commit=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"Hash": "\(.*\)".*/\1/p' | head -n1)
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitCommit=${commit:-unknown} -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  for t in "${tools[@]}"; do
    built "$t" "$KUBE_VERSION" && continue
    step "build $t $KUBE_VERSION" go build -ldflags "$ldflags" -o "$NNO_BIN/$t" "k8s.io/kubernetes/cmd/$t"
    mark "$t" "$KUBE_VERSION"
  done
}

build_etcd() {
  built etcd "$ETCD_VERSION" && { log "etcd $ETCD_VERSION: cached"; return; }
  # etcd's own main package lives in a module that replaces its siblings with local
  # paths, so wrap the published server module in a one-line main.
  local dir=$NNO_CACHE/src/etcd-$ETCD_VERSION
  gomod "$dir" nno.dev/hack/etcd
  cd "$dir"
  cat >main.go <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  go mod edit -require "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  step "resolve etcd $ETCD_VERSION modules" go mod tidy
  step "build etcd $ETCD_VERSION" go build -ldflags "-s -w" -o "$NNO_BIN/etcd" .
  mark etcd "$ETCD_VERSION"
}

# build_go_tools NAME MODULE VERSION PKG=OUT...: builds packages of one module.
build_go_tools() {
  local name=$1 module=$2 version=$3; shift 3
  local spec missing=0
  for spec in "$@"; do built "${spec#*=}" "$version" || missing=1; done
  [ $missing = 1 ] || { log "$name $version: cached"; return; }
  local dir=$NNO_CACHE/src/$name-$version
  gomod "$dir" "nno.dev/hack/$name"
  cd "$dir"
  go mod edit -require "$module@$version"
  for spec in "$@"; do go mod edit -tool "${spec%%=*}"; done
  step "resolve $name $version modules" go mod tidy
  for spec in "$@"; do
    step "build ${spec#*=} ($name $version)" go build -ldflags "-s -w" -o "$NNO_BIN/${spec#*=}" "${spec%%=*}"
    mark "${spec#*=}" "$version"
  done
}

# The reference CNI plugins: what the shim's tests chain behind nno-cni-shim, the NADs
# use (bridge, static, tuning) and the real nodes' primary network runs (ptp,
# host-local, portmap, loopback). Named after their CNI `type`, so that $NNO_BIN works
# as a CNI_PATH.
build_cni_plugins() {
  local p=github.com/containernetworking/plugins/plugins
  build_go_tools cni-plugins github.com/containernetworking/plugins "$CNI_PLUGINS_VERSION" \
    "$p/main/bridge=bridge" "$p/main/loopback=loopback" "$p/main/ptp=ptp" \
    "$p/ipam/host-local=host-local" "$p/ipam/static=static" \
    "$p/meta/portmap=portmap" "$p/meta/tuning=tuning"
}

build_multus() {
  # The thin plugin: what the kubelet's CNI runs; it reads the pod's annotation from
  # the API server and delegates to the NADs' conflists.
  build_go_tools multus gopkg.in/k8snetworkplumbingwg/multus-cni.v4 "$MULTUS_VERSION" \
    "gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus=multus"
}

build_whereabouts() {
  build_go_tools whereabouts github.com/k8snetworkplumbingwg/whereabouts "$WHEREABOUTS_VERSION" \
    "github.com/k8snetworkplumbingwg/whereabouts/cmd=whereabouts"
}

# The whereabouts CRDs (IPPool, OverlappingRangeIPReservation, NodeSlicePool) from the
# pinned module's doc/crds, which the e2e tests install into their clusters. Copied into
# $NNO_BIN/whereabouts-crds, never into the repository.
copy_whereabouts_crds() {
  local out=$NNO_BIN/whereabouts-crds
  [ "$(cat "$out/.version" 2>/dev/null)" = "$WHEREABOUTS_VERSION" ] &&
    { log "whereabouts CRDs $WHEREABOUTS_VERSION: cached"; return; }
  local src
  src=$(go mod download -json "github.com/k8snetworkplumbingwg/whereabouts@$WHEREABOUTS_VERSION" |
    sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$src/doc/crds" ] || die "could not download github.com/k8snetworkplumbingwg/whereabouts@$WHEREABOUTS_VERSION"
  rm -rf "$out" && mkdir -p "$out"
  cp "$src"/doc/crds/whereabouts.cni.cncf.io_*.yaml "$out/"
  chmod u+w "$out"/*.yaml
  echo "$WHEREABOUTS_VERSION" >"$out/.version"
  log "whereabouts CRDs $WHEREABOUTS_VERSION copied into $out"
}

build_helm() {
  build_go_tools helm helm.sh/helm/v3 "$HELM_VERSION" "helm.sh/helm/v3/cmd/helm=helm"
}

start=$SECONDS
log "building pinned tools into $NNO_BIN"
build_kubernetes
build_etcd
build_cni_plugins
build_multus
build_whereabouts
copy_whereabouts_crds
build_helm
log "all tools ready in $NNO_BIN ($((SECONDS - start))s)"
if [ "${1:-}" = --print ]; then echo "$NNO_BIN"; fi
