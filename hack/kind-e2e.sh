#!/usr/bin/env bash
# The end-to-end scenarios (e2e/src/scenarios.rs) on a kind cluster, for machines with
# Docker, kind and internet access. CI does not run this: it runs the same scenarios
# on the local cluster of real nodes (hack/test.sh, e2e/tests/real_nodes.rs).
#
# It creates a kind cluster (one control plane, three workers), installs multus (thin
# plugin DaemonSet) and whereabouts from their published manifests at the pinned
# versions, the reference CNI plugins the NADs use at the pinned version, builds the
# operator image (Containerfile) and the sample pods' image and loads them into kind,
# then runs the scenarios, which install the chart with helm.
#
#   hack/kind-e2e.sh [SCENARIO...]     NNO_KIND_CLUSTER=name (default nno-e2e),
#                                      NNO_KIND_KEEP=1 keeps the cluster afterwards
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=hack/lib.sh
source "$here/lib.sh"
cd "$here/.."

cluster=${NNO_KIND_CLUSTER:-nno-e2e}
for tool in docker kind cargo go; do
  command -v "$tool" >/dev/null || die "$tool is required for the kind e2e (see README: Testing on kind)"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers: kind needs one"

step "pinned tools (hack/tools.sh)" "$here/tools.sh"
kubeconfig=$(mktemp)
cleanup() {
  rm -f "$kubeconfig"
  if [ "${NNO_KIND_KEEP:-0}" != 1 ]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
step "kind cluster $cluster" kind create cluster --name "$cluster" --kubeconfig "$kubeconfig" --wait 120s --config - <<'EOF'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
  - role: worker
EOF
kubectl() { "$NNO_BIN/kubectl" --kubeconfig "$kubeconfig" "$@"; }

operator_image=ghcr.io/nno-dev/node-network-operator
tools_image=ghcr.io/nno-dev/nno-tools:0.1.0
step "build the operator image" docker build -f Containerfile -t "$operator_image:0.1.0" .
docker tag "$operator_image:0.1.0" "$operator_image:0.1.0-upgrade"
step "build the tools image" docker build -f hack/images/tools.Containerfile -t "$tools_image" hack/images
for image in "$operator_image:0.1.0" "$operator_image:0.1.0-upgrade" "$tools_image"; do
  step "kind load $image" kind load docker-image --name "$cluster" "$image"
done

# The reference plugins the NADs and the samples use, at the pinned version (kind's
# node image ships only some of them).
mapfile -t workers < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o name | sed 's#node/##')
for node in "${workers[@]}"; do
  for plugin in bridge static tuning host-local loopback portmap; do
    docker cp "$NNO_BIN/$plugin" "$node:/opt/cni/bin/$plugin"
  done
done

# multus and whereabouts manifests from the pinned modules' sources.
moddir() { GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'; }
multus=$(moddir "gopkg.in/k8snetworkplumbingwg/multus-cni.v4@$MULTUS_VERSION")
whereabouts=$(moddir "github.com/k8snetworkplumbingwg/whereabouts@$WHEREABOUTS_VERSION")
sed "s#ghcr.io/k8snetworkplumbingwg/multus-cni:snapshot#ghcr.io/k8snetworkplumbingwg/multus-cni:$MULTUS_VERSION#" \
  "$multus/deployments/multus-daemonset.yml" | kubectl apply -f -
for crd in "$whereabouts"/doc/crds/whereabouts.cni.cncf.io_*.yaml; do kubectl apply -f "$crd"; done
sed "s#ghcr.io/k8snetworkplumbingwg/whereabouts:latest#ghcr.io/k8snetworkplumbingwg/whereabouts:$WHEREABOUTS_VERSION#" \
  "$whereabouts/doc/crds/daemonset-install.yaml" | kubectl apply -f -
step "multus and whereabouts ready" kubectl rollout status -n kube-system daemonset/kube-multus-ds daemonset/whereabouts --timeout=300s

# The sample gateway Network selects labelled nodes: the first two workers (the third
# hosts the cluster scenario's Service backend).
kubectl label nodes "${workers[0]}" "${workers[1]}" nno.dev/gateway-network=true --overwrite

step "build the scenarios" cargo build --locked -p nno-e2e --bin nno-scenarios
step "scenarios on kind" target/debug/nno-scenarios --kubeconfig "$kubeconfig" "$@"
