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

/// Every pod of the chart runs under RuntimeDefault seccomp; every container
/// (init containers too) drops every capability it does not need, cannot gain
/// privileges and has a read-only root filesystem; the controller is not root.
#[test]
fn chart_pods_are_hardened() {
    let docs = operator::render_chart(&[]).unwrap();
    for kind in ["Deployment", "DaemonSet"] {
        let pod = &docs.iter().find(|d| d["kind"] == kind).unwrap()["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{kind}"
        );
        let containers = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .chain(pod["initContainers"].as_array().into_iter().flatten());
        for c in containers {
            let sc = &c["securityContext"];
            let name = format!("{kind} container {}", c["name"]);
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}");
            assert!(c["resources"]["requests"].is_object(), "{name} has no requests");
        }
    }
    let controller = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(
        controller["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
}

/// The pieces a platform team expects: a PodDisruptionBudget with more than one
/// controller replica (none with one), the admission policy and its binding, a
/// ServiceMonitor only when asked for and its API exists, the image by digest.
#[test]
fn chart_renders_its_optional_parts_as_asked() {
    let kinds = |extra: &[&str]| -> Vec<String> {
        operator::render_chart(extra)
            .unwrap()
            .iter()
            .filter_map(|d| d["kind"].as_str().map(String::from))
            .collect()
    };
    let default = kinds(&[]);
    for kind in [
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Service",
    ] {
        assert!(
            default.iter().any(|k| k == kind),
            "{kind} missing from {default:?}"
        );
    }
    assert!(!default.iter().any(|k| k == "ServiceMonitor"));
    assert!(
        !kinds(&["--set", "controller.replicas=1"])
            .iter()
            .any(|k| k == "PodDisruptionBudget")
    );
    let monitor = ["--set", "controller.serviceMonitor.enabled=true"];
    assert!(
        !kinds(&monitor).iter().any(|k| k == "ServiceMonitor"),
        "no ServiceMonitor where the cluster does not serve its API"
    );
    let with_api = [
        &monitor[..],
        &["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"],
    ]
    .concat();
    assert!(kinds(&with_api).iter().any(|k| k == "ServiceMonitor"));

    let digest = format!("sha256:{}", "a".repeat(64));
    let docs = operator::render_chart(&["--set", &format!("image.digest={digest}")]).unwrap();
    for kind in ["Deployment", "DaemonSet"] {
        let image = &docs.iter().find(|d| d["kind"] == kind).unwrap()["spec"]["template"]["spec"]["containers"]
            [0]["image"];
        assert_eq!(
            image.as_str().unwrap(),
            format!("ghcr.io/nno-dev/node-network-operator@{digest}")
        );
    }
}

/// values.schema.json refuses values the chart cannot use, naming them.
#[test]
fn chart_values_are_checked_by_its_schema() {
    for (value, field) in [
        ("logFormat=xml", "logFormat"),
        ("controller.cniVersion=2.0.0", "cniVersion"),
        ("controller.replicas=0", "replicas"),
        ("image.digest=latest", "digest"),
        ("agent.socketDir=run/nno", "socketDir"),
        ("controller.replica=2", "replica"),
    ] {
        let err = operator::render_chart(&["--set", value]).expect_err(value);
        let text = format!("{err:#}");
        assert!(text.contains("schema") && text.contains(field), "{value}: {text}");
    }
}
