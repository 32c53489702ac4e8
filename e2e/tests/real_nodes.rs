//! The product on real nodes: a control plane, three kubelet nodes (containerd,
//! kubelet, kube-proxy in network namespaces), multus and whereabouts, the chart
//! installed with helm, and the scenarios of `nno_e2e::scenarios` run in order on
//! that one cluster, as a user would drive it with helm and kubectl.

use nno_e2e::local::{LocalCluster, NodeSpec};
use nno_e2e::scenarios;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scenarios_on_real_nodes() {
    nno_e2e::require_root();
    let gateway = [("nno.dev/gateway-network", "true")];
    let cluster = LocalCluster::start(&[
        NodeSpec {
            name: "node-a",
            labels: &gateway,
        },
        NodeSpec {
            name: "node-b",
            labels: &gateway,
        },
        NodeSpec {
            name: "node-c",
            labels: &[],
        },
    ])
    .await
    .expect("local cluster with real nodes");
    let only: Vec<String> = std::env::var("NNO_E2E_SCENARIOS")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let outcomes = scenarios::run(&cluster, &only).await;
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| format!("{}: {e:#}", o.name)))
        .collect();
    assert!(failed.is_empty(), "scenarios failed:\n{}", failed.join("\n"));
}

/// A run that was killed (SIGKILL: no teardown) leaves its node processes behind, the
/// containerd shims and pods among them (they outlive their parents by design); the
/// next cluster start removes all of it: processes, cgroups, network namespaces, the
/// underlay bridge and the cluster directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_is_swept_at_the_next_start() {
    use std::io::BufRead;
    nno_e2e::require_root();
    let mut local = std::process::Command::new(nno_e2e::operator::bin("nno-local"))
        .args(["--nodes", "1", "--no-chart"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = local.id();
    let mut kubeconfig = None;
    for line in std::io::BufReader::new(local.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(path) = line.trim().strip_prefix("export KUBECONFIG=") {
            kubeconfig = Some(path.to_string());
        }
        if line.contains("press Ctrl-C") {
            break;
        }
    }
    let kubeconfig = kubeconfig.expect("nno-local printed its kubeconfig");
    let kubectl = |args: &[&str]| {
        std::process::Command::new(nno_e2e::tools::tool("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .output()
            .unwrap()
    };
    let run = kubectl(&[
        "run",
        "survivor",
        "--image",
        nno_e2e::image::TOOLS_IMAGE,
        "--image-pull-policy=Never",
        "--",
        "sleep",
        "infinity",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let ready = kubectl(&["wait", "--for=condition=Ready", "pod/survivor", "--timeout=120s"]);
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );

    local.kill().unwrap();
    local.wait().unwrap();
    let cgroups = || -> Vec<String> {
        std::fs::read_dir("/sys/fs/cgroup/pids/nno-e2e")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{pid}-")))
            .collect()
    };
    let left = cgroups();
    assert_eq!(left.len(), 1, "the killed run's node cgroup: {left:?}");
    let procs = |name: &str| {
        let mut pids = Vec::new();
        let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup/pids/nno-e2e").join(name)];
        while let Some(dir) = stack.pop() {
            let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(text.lines().map(str::to_string));
            stack.extend(
                std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir()),
            );
        }
        pids
    };
    let survivors = procs(&left[0]);
    assert!(!survivors.is_empty(), "shims and the pod outlive a killed run");
    let dirs = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| std::fs::read_to_string(p.join("owner")).is_ok_and(|o| o.trim() == pid.to_string()))
            .collect()
    };
    assert_eq!(dirs().len(), 1, "the killed run's cluster directory");

    // The next start sweeps.
    let next = nno_e2e::Cluster::start().await.unwrap();
    assert!(cgroups().is_empty(), "cgroups left: {:?}", cgroups());
    for p in &survivors {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "process {p} of the killed run still runs"
        );
    }
    assert!(dirs().is_empty(), "cluster directory left: {:?}", dirs());
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let bridges = std::process::Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
        .unwrap();
    let bridges = String::from_utf8_lossy(&bridges.stdout);
    let stale: Vec<&str> = bridges
        .lines()
        .filter(|l| l.contains(&format!("pid={pid}")))
        .collect();
    assert!(
        stale.is_empty(),
        "underlay bridge of the killed run left: {stale:?}"
    );
    let own = next.underlay.bridge.trim_start_matches("nno-ul").to_string();
    for ns in String::from_utf8_lossy(&netns.stdout).lines() {
        let slot = ns
            .strip_prefix("nno")
            .and_then(|r| r.split_once('-'))
            .map(|(s, _)| s.to_string());
        if let Some(slot) = slot {
            assert!(
                slot == own || bridges.contains(&format!("nno-ul{slot}:")),
                "network namespace {ns} has no underlay"
            );
        }
    }
}
