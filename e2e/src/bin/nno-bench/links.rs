//! The Links parts of a run: Links on one node, ours and the Go operator's.

use super::*;

impl Bench {
    /// `pairs` bridge + `pairs` VXLAN Links of `flavour` (and an unmanaged `eth0`
    /// Link) on the Links node: created one POST at a time, all up, deleted with one
    /// DELETE of the collection, gone. With `idle`, the footprint of the given
    /// controller and agent over that window while the Links are up. A part that
    /// does not finish within `limit` is a note, and the next part goes on.
    pub(super) async fn links_work(
        &mut self,
        build: &str,
        flavour: &Flavour,
        pairs: usize,
        idle: Option<(u32, u32, Duration)>,
    ) -> anyhow::Result<()> {
        println!("  {pairs} + {pairs} Links on one node ({})", flavour.api_version);
        let limit = Duration::from_secs(90);
        let links: Api<DynamicObject> = Api::all_with(self.cluster.client(), &flavour.resource);
        let selector = json!({"matchLabels": {"kubernetes.io/hostname": "bulk"}});
        let labels = json!({LABEL: "bulk"});
        let link = |name: String, spec: serde_json::Value| {
            json!({
                "apiVersion": flavour.api_version, "kind": "Link",
                "metadata": {"name": name, "labels": labels},
                "spec": spec,
            })
        };
        let mut objects = vec![link(
            "bulk-eth0".into(),
            json!({"interfaceName": "eth0", "nodeSelector": selector, "unmanaged": {}}),
        )];
        for i in 0..pairs {
            objects.push(link(
                format!("bulk-br-{i}"),
                json!({"interfaceName": format!("lbr{i}"), "nodeSelector": selector, "bridge": {"mtu": 1450}}),
            ));
            objects.push(link(
                format!("bulk-vx-{i}"),
                json!({"interfaceName": format!("lvx{i}"), "nodeSelector": selector, "vxlan": {
                    "vnid": 1000 + i, "remoteIPAddress": "239.1.1.1", "port": 4789, "mtu": 1450,
                    "device": {"name": "bulk-eth0"}, "master": {"name": format!("bulk-br-{i}")}
                }}),
            ));
        }
        let what = |w: &str| format!("{pairs}+{pairs} Links: {w}");
        let api0 = self.api_snapshot().await?;
        let t = Instant::now();
        for o in &objects {
            let obj: DynamicObject = serde_json::from_value(o.clone()).context("a benchmark Link")?;
            links
                .create(&PostParams::default(), &obj)
                .await
                .context("creating a Link")?;
        }
        self.results
            .add(build, 0, &what("created, one POST each"), "ms", ms(t.elapsed()));
        let netns = self.bulk.netns.clone();
        let all = 2 * pairs;
        match until("links up", limit, || {
            count_links(&netns, &["lbr", "lvx"]) == (all, all)
        })
        .await
        {
            Ok(()) => self.results.add(
                build,
                0,
                &what("first create → all up on the node"),
                "ms",
                ms(t.elapsed()),
            ),
            Err(_) => {
                let (exist, up) = count_links(&netns, &["lbr", "lvx"]);
                self.results.note(format!(
                    "{build}: {pairs}+{pairs} Links not all up within {limit:?}: {exist} of {all} exist, {up} up"
                ));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let delta = bench::request_delta(&api0, &self.api_snapshot().await?);
        let status: f64 = delta
            .iter()
            .filter(|((verb, target), _)| {
                !matches!(verb.as_str(), "GET" | "LIST" | "WATCH") && *target == flavour.status_target
            })
            .map(|(_, v)| v)
            .sum();
        let count = objects.len() as f64;
        self.results.add(
            build,
            0,
            &what("Link status writes per Link"),
            "writes",
            status / count,
        );
        let others = bench::writes(&delta) - count; // less the benchmark's POSTs
        self.results.add(
            build,
            0,
            &what("all API writes per Link"),
            "writes",
            others / count,
        );

        if let Some((controller, agent, window)) = idle {
            let (c0, a0) = (self.sample(controller)?, self.sample(agent)?);
            let api0 = self.api_snapshot().await?;
            let t = Instant::now();
            tokio::time::sleep(window).await;
            let delta = bench::request_delta(&api0, &self.api_snapshot().await?);
            let secs = t.elapsed().as_secs_f64();
            let (c1, a1) = (self.sample(controller)?, self.sample(agent)?);
            let pct = |a: &ProcSample, b: &ProcSample| {
                (b.cpu_ticks - a.cpu_ticks) as f64 / clock_ticks() / secs * 100.0
            };
            self.results
                .add(build, 0, &what("idle: agent RSS"), "MiB", mib(a1.rss_kib));
            self.results
                .add(build, 0, &what("idle: agent CPU"), "% of a core", pct(&a0, &a1));
            self.results
                .add(build, 0, &what("idle: controller RSS"), "MiB", mib(c1.rss_kib));
            self.results.add(
                build,
                0,
                &what("idle: controller CPU"),
                "% of a core",
                pct(&c0, &c1),
            );
            self.results.add(
                build,
                0,
                &what("idle: API writes per minute (control plane's own included)"),
                "writes/min",
                bench::writes(&delta) * 60.0 / secs,
            );
        }

        let t = Instant::now();
        let list = ListParams::default().labels(&format!("{LABEL}=bulk"));
        links
            .delete_collection(&DeleteParams::default(), &list)
            .await
            .context("deleting the Links")?;
        match until("links gone", limit, || {
            count_links(&netns, &["lbr", "lvx"]).0 == 0
        })
        .await
        {
            Ok(()) => self.results.add(
                build,
                0,
                &what("deleted → gone from the node"),
                "ms",
                ms(t.elapsed()),
            ),
            Err(_) => {
                let left = count_links(&netns, &["lbr", "lvx"]).0;
                self.results.note(format!(
                    "{build}: {pairs}+{pairs} Links deleted: {left} of {all} interfaces still on the node after {limit:?}"
                ));
            }
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = links.list(&list).await?.items;
            if left.is_empty() {
                self.results
                    .add(build, 0, &what("deleted → objects gone"), "ms", ms(t.elapsed()));
                break;
            }
            if Instant::now() > deadline {
                self.results.note(format!(
                    "{build}: {pairs}+{pairs} Links deleted: {} of {} objects still there after {limit:?} (finalizers removed by the benchmark to go on)",
                    left.len(),
                    objects.len()
                ));
                for obj in left {
                    let name = obj.metadata.name.unwrap_or_default();
                    let _ = links
                        .patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
                        )
                        .await;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Whatever is left goes, so that the next part starts from nothing.
        for prefix in ["lvx", "lbr"] {
            for i in 0..pairs {
                let _ = self.bulk.ip(&["link", "del", "dev", &format!("{prefix}{i}")]);
            }
        }
        Ok(())
    }

    /// The Go node-network-operator (built by the user from its source) on the
    /// Links node: its CRDs, its controller and its node agent (admin credentials),
    /// the same Links work as ours.
    pub(super) async fn go_operator(
        &mut self,
        binary: &Path,
        crds: &Path,
        runs: usize,
        window: Duration,
    ) -> anyhow::Result<()> {
        println!("== the Go node-network-operator ({})", binary.display());
        self.results.load("Go operator");
        self.cluster
            .kubectl_ok(&["apply", "--server-side", "-f", &crds.display().to_string()])
            .context("installing the Go operator's CRDs")?;
        self.cluster.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/links.nodenetworkoperator.soliddowant.dev",
            "crd/nodelinks.nodenetworkoperator.soliddowant.dev",
            "--timeout=60s",
        ])?;
        let kubeconfig = self.cluster.kubeconfig().display().to_string();
        let common = [
            "--kubeconfig",
            kubeconfig.as_str(),
            "--metrics-bind-address=0",
            "--health-probe-bind-address=0",
            "--leader-elect=false",
        ];
        let mut cmd = std::process::Command::new(binary);
        cmd.args(common)
            .arg("--enable-node-specific-controllers=false")
            .env("ENABLE_WEBHOOKS", "false");
        let controller = Process::spawn("go-controller", cmd, self.cluster.dir())?;
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.bulk.netns])
            .arg(binary)
            .args(common)
            .args(["--node-name", "bulk", "--enable-cluster-wide-controllers=false"])
            .env("ENABLE_WEBHOOKS", "false");
        let agent = Process::spawn("go-agent", cmd, self.cluster.dir())?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let resource = ApiResource {
            group: "nodenetworkoperator.soliddowant.dev".into(),
            version: "v1alpha1".into(),
            api_version: "nodenetworkoperator.soliddowant.dev/v1alpha1".into(),
            kind: "Link".into(),
            plural: "links".into(),
        };
        let go = Flavour {
            api_version: "nodenetworkoperator.soliddowant.dev/v1alpha1",
            resource,
            status_target: "links/status.nodenetworkoperator.soliddowant.dev",
        };
        let mut outcome = Ok(());
        'parts: for pairs in [20, PAIRS] {
            for run in 0..runs {
                let idle = (pairs == 20 && run == 0).then(|| (controller.pid(), agent.pid(), window));
                outcome = self.links_work("go", &go, pairs, idle).await;
                if outcome.is_err() {
                    break 'parts;
                }
            }
        }
        let tail = |p: &Process| p.log_tail(5).replace('\n', " | ");
        self.results
            .note(format!("Go controller log ends: {}", tail(&controller)));
        self.results.note(format!("Go agent log ends: {}", tail(&agent)));
        outcome
    }
}
