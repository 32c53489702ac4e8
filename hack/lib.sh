# Shared helpers for the hack/ scripts. Source it; do not run it.
# shellcheck shell=bash
# The pinned versions are used by the scripts that source this file.
# shellcheck disable=SC2034

# Where built tools live between runs. Outside the repository so that a clean clone
# (CI) and every worktree share one cache.
NNO_CACHE=${NNO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/node-network-operator}
NNO_BIN=$NNO_CACHE/bin
export NNO_CACHE NNO_BIN

# Pinned versions. Kubernetes is the newest minor that k8s-openapi supports
# (k8s-openapi 0.29, feature v1_37).
KUBE_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
CNI_PLUGINS_VERSION=v1.9.1
MULTUS_VERSION=v4.2.3
WHEREABOUTS_VERSION=v0.9.2
HELM_VERSION=v3.22.0

log() { printf '\033[1m[%s] %s\033[0m\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '\033[31m[%s] error: %s\033[0m\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# step NAME COMMAND...: runs COMMAND, printing what it does and how long it took.
step() {
  local name=$1; shift
  local start=$SECONDS
  log "$name ..."
  "$@" || die "$name failed"
  log "$name done in $((SECONDS - start))s"
}
