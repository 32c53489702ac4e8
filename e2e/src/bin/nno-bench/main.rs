//! `nno-bench`: node-network-operator at cluster scale (issue 15). One real control
//! plane; simulated nodes (network namespaces on a 198.18.N.0/24 underlay), each
//! with the real agent; the real controller. Prints a table (median, p99, max of
//! repeated runs) and optionally writes JSON with the machine and its load.
//!
//!   nno-bench [--nodes 3,10,30] [--runs 3] [--json out.json] [--steady-secs 60]
//!             [--networks 50] [--compare DIR] [--go-operator BINARY CRD_DIR]
//!
//! Run as root, from a release build: `cargo build --release --workspace --bins`,
//! then `target/release/nno-bench` (or `cargo run --release -p nno-e2e --bin
//! nno-bench -- ...` once the operator binary is built). `--compare DIR` runs the
//! same work with the `node-network-operator` binary in DIR as a second build, on
//! the same nodes and control plane, and prints each figure's ratio to the first.
//!
//! Per node count and build: `--runs` times a Network (bridge + VXLAN with
//! nodePeers) applied, its MTU changed, a node joining and leaving, and the Network
//! deleted; then the footprint and API requests of a steady state (one Network,
//! `--steady-secs`), and `--networks` Networks applied at once and deleted. Once per
//! build: 20 + 20 and 100 + 100 bridge and VXLAN Links on one node created and
//! deleted; once: the kernel's own deletion of 100 + 100 links in a scratch
//! namespace. `--go-operator` runs the same Links work with the Go
//! node-network-operator's manager (built by the user from its source) and CRDs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use nno::api::{Link, Network};
use nno::multus::NetworkAttachmentDefinition;
use nno_e2e::Cluster;
use nno_e2e::bench::report::{Results, machine};
use nno_e2e::bench::{self, ProcSample, RequestCount, clock_ticks, kernel, proc_sample};
use nno_e2e::node::SimNode;
use nno_e2e::operator::{self, NAMESPACE};
use nno_e2e::process::Process;
use serde_json::json;

mod links;
mod network;

const LABEL: &str = "nno-bench";
/// Index of the node that gets the 200 Links (not selected by any Network).
const BULK_INDEX: u8 = 200;
/// Joining nodes take indexes from here down.
const FIRST_JOINER: u8 = 199;
const PAIRS: usize = 100;
const POLL: Duration = Duration::from_millis(5);

struct Args {
    nodes: Vec<usize>,
    runs: usize,
    json: Option<PathBuf>,
    steady: Duration,
    networks: usize,
    compare: Option<PathBuf>,
    /// The Go operator's manager binary and CRD directory.
    go: Option<(PathBuf, PathBuf)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        nodes: vec![3, 10, 30],
        runs: 3,
        json: None,
        steady: Duration::from_secs(60),
        networks: 50,
        compare: None,
        go: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => {
                a.nodes = value()?
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<usize>()
                            .context("--nodes takes numbers, e.g. 3,10,30")
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--runs" => a.runs = value()?.parse().context("--runs takes a number")?,
            "--json" => a.json = Some(value()?.into()),
            "--steady-secs" => a.steady = Duration::from_secs(value()?.parse().context("--steady-secs")?),
            "--networks" => a.networks = value()?.parse().context("--networks takes a number")?,
            "--compare" => a.compare = Some(value()?.into()),
            "--go-operator" => {
                let binary: PathBuf = value()?.into();
                let crds: PathBuf = it
                    .next()
                    .context(
                        "--go-operator BINARY CRD_DIR: the Go operator's manager and its config/crd/bases",
                    )?
                    .into();
                a.go = Some((binary, crds));
            }
            other => {
                anyhow::bail!("unknown argument {other}; see the header of e2e/src/bin/nno-bench/main.rs")
            }
        }
    }
    a.nodes.sort_unstable();
    a.nodes.dedup();
    let most = a.nodes.last().copied().unwrap_or(0);
    let joiners = a.nodes.len() * a.runs;
    anyhow::ensure!(
        most >= 1 && most + joiners < usize::from(FIRST_JOINER),
        "at most {} nodes with {joiners} joining ones: a node's underlay index is 1..=200, {BULK_INDEX} is the Links node",
        usize::from(FIRST_JOINER) - joiners - 1
    );
    anyhow::ensure!(a.runs >= 1 && a.networks <= 200, "--runs >= 1, --networks <= 200");
    Ok(a)
}

struct Build {
    name: String,
    binary: PathBuf,
}

struct Bench {
    cluster: Cluster,
    nodes: Vec<SimNode>,
    kubeconfigs: Vec<PathBuf>,
    bulk: SimNode,
    bulk_kubeconfig: PathBuf,
    controller: Option<Process>,
    /// The running controller's binary and identity, to start it again when it exits
    /// (as its Deployment would).
    controller_build: Option<(PathBuf, String)>,
    /// Controller exits seen while converging (it steps down when it cannot renew
    /// its Lease in time), with the saved logs.
    controller_exits: Vec<String>,
    networks: Api<Network>,
    net_store: Store<Network>,
    nad_store: Store<NetworkAttachmentDefinition>,
    next_joiner: u8,
    results: Results,
    runs: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    nno_e2e::require_root();
    let args = parse_args()?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut builds = vec![Build {
        name: "this".into(),
        binary: operator::bin("node-network-operator"),
    }];
    if let Some(dir) = &args.compare {
        let binary = dir.join("node-network-operator");
        anyhow::ensure!(
            binary.is_file(),
            "--compare: no node-network-operator in {}",
            dir.display()
        );
        builds.push(Build {
            name: "compare".into(),
            binary,
        });
    }
    let mut results = Results::default();

    println!("kernel baseline: {PAIRS} bridges + {PAIRS} VXLANs deleted in a scratch namespace");
    results.load("kernel baseline");
    for _ in 0..args.runs {
        let [per_process, batch, group] = kernel::removal(PAIRS).context("kernel baseline")?;
        results.add(
            "kernel",
            0,
            "200 links deleted: one `ip link del` each",
            "ms",
            ms(per_process),
        );
        results.add("kernel", 0, "200 links deleted: `ip -batch`", "ms", ms(batch));
        results.add(
            "kernel",
            0,
            "200 links deleted: `ip link del group`",
            "ms",
            ms(group),
        );
    }

    println!("starting the control plane");
    let cluster = Cluster::start().await.context("starting the control plane")?;
    operator::install_rbac(&cluster)
        .await
        .context("installing the chart's RBAC")?;
    let client = cluster.client();
    let (net_store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<Network>::all(client.clone()), Default::default()),
    );
    tokio::spawn(stream.for_each(|_| async {}));
    let (nad_store, writer) = reflector::store();
    let nads = Api::<NetworkAttachmentDefinition>::namespaced(client.clone(), "default");
    tokio::spawn(reflector::reflector(writer, watcher(nads, Default::default())).for_each(|_| async {}));
    net_store.wait_until_ready().await.context("Network watch")?;
    nad_store.wait_until_ready().await.context("NAD watch")?;

    let bulk = SimNode::create(&cluster, "bulk", BULK_INDEX, 1500, &[])
        .await
        .context("creating the Links node")?;
    let bulk_kubeconfig = operator::agent_kubeconfig(&cluster, "bulk").await?;
    let mut b = Bench {
        networks: Api::all(client.clone()),
        cluster,
        nodes: Vec::new(),
        kubeconfigs: Vec::new(),
        bulk,
        bulk_kubeconfig,
        controller: None,
        controller_build: None,
        controller_exits: Vec::new(),
        net_store,
        nad_store,
        next_joiner: FIRST_JOINER,
        results,
        runs: args.runs,
    };

    // What the control plane writes by itself (kube-apiserver renews its identity
    // Lease every 10 s): the operator's share of a steady state is the difference.
    println!("control plane alone ({:?})", args.steady);
    let api0 = b.api_snapshot().await?;
    let t = Instant::now();
    tokio::time::sleep(args.steady).await;
    let delta = bench::request_delta(&api0, &b.api_snapshot().await?);
    let per_min = 60.0 / t.elapsed().as_secs_f64();
    b.results.add(
        "control plane",
        0,
        "API writes per minute, nothing but the control plane",
        "writes/min",
        bench::writes(&delta) * per_min,
    );

    'counts: for (round, &n) in args.nodes.iter().enumerate() {
        b.results.load(&format!("{n} nodes: creating nodes"));
        while b.nodes.len() < n {
            let index = b.nodes.len() as u8 + 1;
            let t = Instant::now();
            if let Err(e) = b.add_node(index).await {
                b.results.note(format!(
                    "stopped at {} nodes: node {index} could not be created: {e:#}",
                    b.nodes.len()
                ));
                break 'counts;
            }
            b.results.add(
                "harness",
                n,
                "node set up (netns, Node, token)",
                "ms",
                ms(t.elapsed()),
            );
        }
        for build in &builds {
            println!("== {n} nodes, build {} ({})", build.name, build.binary.display());
            b.results.load(&format!("{n} nodes, build {}", build.name));
            let outcome = b.round(build, n, round == 0, args.steady, args.networks).await;
            b.stop_components().await;
            if let Err(e) = outcome {
                let saved = b.save_logs();
                b.results.note(format!(
                    "{n} nodes, build {}: stopped: {e:#} (every component's log: {saved})",
                    build.name
                ));
                break 'counts;
            }
            println!("{}", b.results.table(&names(&builds)));
        }
    }

    if let Some((binary, crds)) = &args.go {
        b.stop_components().await;
        if let Err(e) = b.go_operator(binary, crds, args.runs, args.steady).await {
            let saved = b.save_logs();
            b.results
                .note(format!("Go operator: stopped: {e:#} (logs: {saved})"));
        }
    }
    let mut names = names(&builds);
    if args.go.is_some() {
        names.push("go".into());
    }
    let table = b.results.table(&names);
    println!("\n{table}");
    if let Some(path) = &args.json {
        let builds: Vec<(String, String)> = builds
            .iter()
            .map(|x| (x.name.clone(), x.binary.display().to_string()))
            .collect();
        let doc = b.results.json(machine(), &command, &builds, args.runs);
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn names(builds: &[Build]) -> Vec<String> {
    builds.iter().map(|b| b.name.clone()).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn bench_network(name: &str, bridge: &str, vni: u32, range: &str) -> anyhow::Result<Network> {
    serde_json::from_value(json!({
        "apiVersion": "nno.dev/v1alpha1", "kind": "Network", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"matchLabels": {LABEL: "true"}},
            "bridge": {"name": bridge},
            "vxlan": {"vni": vni, "nodePeers": {}},
            "ipam": {"range": range},
            "attachments": {"namespaces": ["default"]}
        }
    }))
    .context("a benchmark Network")
}

/// The all-zero FDB destinations (unicast peers) of `dev` in `netns`.
fn fdb_peers(netns: &str, dev: &str) -> Vec<String> {
    let Ok(out) = std::process::Command::new("bridge")
        .args(["-n", netns, "-j", "fdb", "show", "dev", dev])
        .output()
    else {
        return Vec::new();
    };
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    entries
        .iter()
        .filter(|e| e["mac"] == "00:00:00:00:00:00")
        .filter_map(|e| e["dst"].as_str().map(String::from))
        .collect()
}

/// Interfaces of `netns` whose name starts with one of `prefixes`: (all, up).
fn count_links(netns: &str, prefixes: &[&str]) -> (usize, usize) {
    let Ok(out) = nno_e2e::underlay::ip_in(netns, &["-j", "link", "show"]) else {
        return (0, 0);
    };
    let links: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    let ours: Vec<&serde_json::Value> = links
        .iter()
        .filter(|l| {
            l["ifname"]
                .as_str()
                .is_some_and(|n| prefixes.iter().any(|p| n.starts_with(p)))
        })
        .collect();
    let up = ours
        .iter()
        .filter(|l| l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP")))
        .count();
    (ours.len(), up)
}

/// Polls `check` every 5 ms until it holds; fails after `timeout` naming `what`.
async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

impl Bench {
    async fn add_node(&mut self, index: u8) -> anyhow::Result<()> {
        let name = format!("n{index}");
        let node = SimNode::create(&self.cluster, &name, index, 1500, &[(LABEL, "true")]).await?;
        let kubeconfig = operator::agent_kubeconfig(&self.cluster, &name).await?;
        self.nodes.push(node);
        self.kubeconfigs.push(kubeconfig);
        Ok(())
    }

    async fn start_components(&mut self, build: &Build, n: usize) -> anyhow::Result<()> {
        self.controller_build = Some((build.binary.clone(), format!("bench-{}", build.name)));
        self.start_controller().await?;
        for (node, kubeconfig) in self.nodes.iter_mut().zip(&self.kubeconfigs).take(n) {
            node.start_agent_binary(kubeconfig, &build.binary)?;
        }
        self.bulk
            .start_agent_binary(&self.bulk_kubeconfig, &build.binary)?;
        // Every agent serves its metrics once it runs; then a moment to report.
        for node in self.nodes.iter().take(n).chain([&self.bulk]) {
            let deadline = Instant::now() + Duration::from_secs(60);
            while node.agent_http("/metrics").await.is_err() {
                anyhow::ensure!(Instant::now() < deadline, "agent on {} not serving", node.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok(())
    }

    async fn start_controller(&mut self) -> anyhow::Result<()> {
        let (binary, identity) = self.controller_build.clone().context("no build")?;
        let kubeconfig = operator::component_kubeconfig(&self.cluster, "controller").await?;
        self.controller = Some(operator::start_controller_binary(
            &self.cluster,
            &binary,
            &kubeconfig,
            &identity,
            &[],
        )?);
        Ok(())
    }

    /// Starts the controller again if it exited; whether it did.
    async fn revive_controller(&mut self) -> anyhow::Result<bool> {
        let Some(c) = self.controller.as_mut() else {
            return Ok(false);
        };
        if c.exited().is_none() {
            return Ok(false);
        }
        let pid = c.pid();
        let why = self.post_mortem(pid);
        self.results
            .note(format!("controller exited and was started again: {why}"));
        self.controller_exits.push(why);
        self.start_controller().await?;
        Ok(true)
    }

    async fn stop_components(&mut self) {
        for node in self.nodes.iter_mut().chain([&mut self.bulk]) {
            node.stop_agent();
        }
        if let Some(mut c) = self.controller.take() {
            c.stop(Duration::from_secs(5));
        }
        // The next build's controller need not wait for this one's Lease to expire.
        let leases: Api<Lease> = Api::namespaced(self.cluster.client(), NAMESPACE);
        let _ = leases
            .delete("node-network-operator-controller", &DeleteParams::default())
            .await;
    }

    async fn api_snapshot(&self) -> anyhow::Result<Vec<RequestCount>> {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        let text = self
            .cluster
            .client()
            .request_text(req)
            .await
            .context("GET /metrics from the API server")?;
        Ok(bench::parse_request_totals(&text))
    }

    /// Network `name` Ready on `n` nodes at its generation (and with `mtu`), its
    /// NAD written (with `mtu`).
    fn converged(&self, name: &str, n: usize, mtu: Option<u32>) -> bool {
        let Some(net) = self.net_store.get(&ObjectRef::new(name)) else {
            return false;
        };
        let Some(s) = &net.status else { return false };
        let ready =
            nno::api::common::find_condition(&s.conditions, "Ready").is_some_and(|c| c.status == "True");
        let status_ok = ready
            && s.observed_generation == net.metadata.generation
            && s.desired_nodes as usize == n
            && s.ready_nodes as usize == n
            && mtu.is_none_or(|m| s.mtu == Some(m));
        status_ok && self.nad_ok(name, mtu)
    }

    fn nad_ok(&self, name: &str, mtu: Option<u32>) -> bool {
        let Some(nad) = self.nad_store.get(&ObjectRef::new(name).within("default")) else {
            return false;
        };
        let Some(want) = mtu else { return true };
        let config: serde_json::Value = serde_json::from_str(&nad.spec.config).unwrap_or_default();
        config["plugins"][1]["mtu"].as_u64() == Some(u64::from(want))
    }

    fn timeout(n: usize) -> Duration {
        Duration::from_secs(60 + n as u64)
    }

    fn pids(&self, n: usize) -> anyhow::Result<(u32, Vec<u32>)> {
        let controller = self.controller.as_ref().context("no controller")?.pid();
        let agents = self
            .nodes
            .iter()
            .take(n)
            .map(|node| node.agent_pid().context("agent not running"))
            .collect::<anyhow::Result<_>>()?;
        Ok((controller, agents))
    }

    /// Which of our processes `pid` is, whether it exited, and its log's tail (also
    /// saved to /tmp, as the cluster's directory goes with it).
    fn post_mortem(&mut self, pid: u32) -> String {
        let (who, log) = if let Some(c) = self.controller.as_mut().filter(|c| c.pid() == pid) {
            let status = c
                .exited()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "running".into());
            (format!("the controller ({status})"), c.log_tail(400))
        } else if let Some(node) = self.nodes.iter().find(|n| n.agent_pid() == Some(pid)) {
            (format!("the agent on {}", node.name), node.agent_log())
        } else {
            return format!("pid {pid}");
        };
        let saved = format!("/tmp/nno-bench-{}-{pid}.log", std::process::id());
        let _ = std::fs::write(&saved, &log);
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        format!(
            "{who}, log in {saved}, ending: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }

    /// Copies every log of the cluster's directory (control plane, controller,
    /// agents, also of nodes gone) to a directory under /tmp that outlives it.
    fn save_logs(&self) -> String {
        let dir = PathBuf::from(format!("/tmp/nno-bench-logs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(entries) = std::fs::read_dir(self.cluster.dir()) {
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().is_some_and(|x| x == "log") {
                    let _ = std::fs::copy(&path, dir.join(e.file_name()));
                }
            }
        }
        dir.display().to_string()
    }

    /// [`proc_sample`], naming the process and why when it is gone.
    fn sample(&mut self, pid: u32) -> anyhow::Result<ProcSample> {
        match proc_sample(pid) {
            Ok(s) => Ok(s),
            Err(e) => Err(e.context(format!("process gone: {}", self.post_mortem(pid)))),
        }
    }

    async fn round(
        &mut self,
        build: &Build,
        n: usize,
        first: bool,
        steady: Duration,
        many: usize,
    ) -> anyhow::Result<()> {
        self.start_components(build, n).await?;
        for run in 0..self.runs {
            self.lifecycle(build, n, run).await?;
        }
        self.steady_state(&build.name, n, steady).await?;
        self.many_networks(&build.name, n, many).await?;
        if first {
            let ours = Flavour::ours();
            let (controller, _) = self.pids(0)?;
            let agent = self.bulk.agent_pid().context("no agent on the Links node")?;
            for pairs in [20, PAIRS] {
                for run in 0..self.runs {
                    let idle = (pairs == 20 && run == 0).then_some((controller, agent, steady));
                    self.links_work(&build.name, &ours, pairs, idle).await?;
                }
            }
        }
        Ok(())
    }
}

/// Whose Links: ours (`nno.dev`) or the Go operator's.
struct Flavour {
    api_version: &'static str,
    resource: ApiResource,
    status_target: &'static str,
}

impl Flavour {
    fn ours() -> Self {
        Self {
            api_version: "nno.dev/v1alpha1",
            resource: ApiResource::erase::<Link>(&()),
            status_target: "links/status.nno.dev",
        }
    }
}
