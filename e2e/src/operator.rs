//! Running the operator's own binaries against a test cluster, the way the Helm chart
//! runs them: with the chart's RBAC and their own ServiceAccount tokens.

use std::path::{Path, PathBuf};
use std::process::Command;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

use crate::cluster::{Cluster, MANAGER};
use crate::process::Process;
use crate::tools::tool;

/// Release name and namespace the tests install the chart's RBAC under.
pub const RELEASE: &str = "nno";
pub const NAMESPACE: &str = "nno-system";
/// `<release>-<chart>` as the chart names its objects.
pub const FULLNAME: &str = "nno-node-network-operator";

/// Path of a binary of this workspace (`node-network-operator`, `nno-cni-shim`),
/// built by `cargo build --workspace --bins` (hack/test.sh does).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    // Tests run from target/<profile>/deps/, nno-local from target/<profile>/.
    let dir = exe.parent().expect("executable in a directory");
    let candidates = [Some(dir), dir.parent()];
    let found = candidates
        .iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} is missing next to {}: run `cargo build --workspace --bins` first (hack/test.sh does)",
            exe.display()
        )
    })
}

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/node-network-operator")
}

/// The chart rendered by the pinned helm (`helm template`), as JSON documents.
pub fn render_chart(extra: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = Command::new(tool("helm"))
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE, "--kube-version", "v1.37.2"])
        .args(extra)
        .output()?;
    if !out.status.success() {
        anyhow::bail!("helm template: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Applies the chart's ServiceAccounts, RBAC and admission policy (not its workloads:
/// the tests run the binaries as processes, nodes as network namespaces).
pub async fn install_rbac(cluster: &Cluster) -> anyhow::Result<()> {
    let client = cluster.client();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    ns.patch(NAMESPACE, &PatchParams::apply(MANAGER), &Patch::Apply(&body))
        .await?;
    let kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    for doc in render_chart(&[])? {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if !kinds.contains(&kind) {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(doc.clone())?;
        let types = obj
            .types
            .clone()
            .ok_or_else(|| anyhow::anyhow!("chart object without apiVersion/kind"))?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let plural = match kind {
            "ServiceAccount" => "serviceaccounts",
            "ClusterRole" => "clusterroles",
            "ClusterRoleBinding" => "clusterrolebindings",
            "Role" => "roles",
            "RoleBinding" => "rolebindings",
            "ValidatingAdmissionPolicy" => "validatingadmissionpolicies",
            _ => "validatingadmissionpolicybindings",
        };
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let name = obj.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None if kind == "ServiceAccount" || kind == "Role" || kind == "RoleBinding" => {
                Api::namespaced_with(client.clone(), NAMESPACE, &resource)
            }
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&obj))
            .await
            .map_err(|e| anyhow::anyhow!("applying chart {kind}/{name}: {e}"))?;
    }
    Ok(())
}

/// A kubeconfig with the token of the chart's ServiceAccount for `component`
/// (`controller` or `agent`).
pub async fn component_kubeconfig(cluster: &Cluster, component: &str) -> anyhow::Result<PathBuf> {
    let (path, _) = cluster
        .service_account(NAMESPACE, &format!("{FULLNAME}-{component}"))
        .await?;
    Ok(path)
}

/// A kubeconfig of the chart's agent ServiceAccount with a token bound to Node
/// `node`, as the agent pod on that node has.
pub async fn agent_kubeconfig(cluster: &Cluster, node: &str) -> anyhow::Result<PathBuf> {
    let (path, _) = cluster
        .service_account_on_node(NAMESPACE, &format!("{FULLNAME}-agent"), node)
        .await?;
    Ok(path)
}

/// Starts a controller replica as a process with the controller's ServiceAccount.
pub fn start_controller(
    cluster: &Cluster,
    kubeconfig: &Path,
    identity: &str,
    extra: &[&str],
) -> anyhow::Result<Process> {
    start_controller_binary(
        cluster,
        &bin("node-network-operator"),
        kubeconfig,
        identity,
        extra,
    )
}

/// Like [`start_controller`], with the `node-network-operator` binary of another
/// build, e.g. to benchmark two builds side by side.
pub fn start_controller_binary(
    cluster: &Cluster,
    binary: &Path,
    kubeconfig: &Path,
    identity: &str,
    extra: &[&str],
) -> anyhow::Result<Process> {
    let mut cmd = Command::new(binary);
    cmd.arg("controller")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--metrics-addr=127.0.0.1:0")
        .arg(format!("--lease-namespace={NAMESPACE}"))
        .arg(format!("--identity={identity}"))
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("NNO_E2E_CONTROLLER_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
        );
    Process::spawn(&format!("controller-{identity}"), cmd, cluster.dir())
}
