//! The Helm chart: it lints, renders, runs the binaries with arguments they accept,
//! and ships the CRDs the binary generates. (Its RBAC is what every controller and
//! agent test runs with.)

use std::process::Command;

use nno_e2e::operator::{self, bin};
use nno_e2e::tools::tool;
use serde_json::Value;

fn container_args(docs: &[Value], kind: &str) -> Vec<String> {
    let workload = docs
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the chart"));
    let container = &workload["spec"]["template"]["spec"]["containers"][0];
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn chart_lints_and_renders_every_component() {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/node-network-operator");
    let lint = Command::new(tool("helm"))
        .arg("lint")
        .arg(&chart)
        .arg("--kube-version")
        .arg("v1.37.2")
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "helm lint:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let docs = operator::render_chart(&[]).unwrap();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "Deployment",
        "DaemonSet",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let agent = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    assert_eq!(agent["spec"]["template"]["spec"]["hostNetwork"], true);
    let caps = &agent["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"];
    assert_eq!(
        caps,
        &serde_json::json!(["NET_ADMIN"]),
        "the agent needs exactly CAP_NET_ADMIN"
    );
}

/// The chart's arguments parse: with them, each binary gets as far as loading its
/// kubeconfig (which the test points at a missing file) instead of refusing a flag.
#[test]
fn chart_arguments_are_accepted_by_the_binary() {
    let docs = operator::render_chart(&[]).unwrap();
    for kind in ["Deployment", "DaemonSet"] {
        let args = container_args(&docs, kind);
        let out = Command::new(bin("node-network-operator"))
            .args(&args)
            .args(["--kubeconfig", "/nonexistent/kubeconfig"])
            .env("NODE_NAME", "node-a")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            out.status.code(),
            Some(2),
            "{kind} arguments {args:?} refused:\n{stderr}"
        );
        assert!(
            stderr.contains("/nonexistent/kubeconfig"),
            "{kind}: expected to fail on the kubeconfig only:\n{stderr}"
        );
    }
}

#[test]
fn chart_ships_the_generated_crds() {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/node-network-operator/crds/crds.yaml");
    let out = Command::new(bin("node-network-operator"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(chart).unwrap()
    );
}
