//! The Network parts of a run: the lifecycle of one Network, the steady state, many
//! Networks at once.

use super::*;

impl Bench {
    /// Apply, MTU change, a node joining and leaving, delete.
    pub(super) async fn lifecycle(&mut self, b: &Build, n: usize, run: usize) -> anyhow::Result<()> {
        let build = b.name.as_str();
        let name = format!("bench-{run}");
        let bridge = format!("bb{run}");
        let vni = 100 + run as u32;
        let vxlan = format!("vxlan{vni}");
        let wait = Self::timeout(n);
        println!("  run {run}: apply");

        let before = self.api_snapshot().await?;
        let t = Instant::now();
        self.networks
            .create(
                &PostParams::default(),
                &bench_network(&name, &bridge, vni, "192.168.50.0/24")?,
            )
            .await
            .context("creating the Network")?;
        until(&format!("{name} Ready on {n} nodes"), wait, || {
            self.converged(&name, n, None)
        })
        .await?;
        self.results.add(
            build,
            n,
            "apply → Ready on all nodes, NAD written",
            "ms",
            ms(t.elapsed()),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let delta = bench::request_delta(&before, &self.api_snapshot().await?);
        let w = bench::writes(&delta) - 1.0; // less the benchmark's own create
        self.results
            .add(build, n, "API writes per apply (+1 s)", "writes", w);
        self.results
            .add(build, n, "API writes per apply per node", "writes", w / n as f64);

        println!("  run {run}: MTU change");
        let before = self.api_snapshot().await?;
        let t = Instant::now();
        self.networks
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"mtu": 1400}})),
            )
            .await
            .context("changing the MTU")?;
        until(&format!("{name} MTU 1400 on {n} nodes"), wait, || {
            self.converged(&name, n, Some(1400))
        })
        .await?;
        self.results.add(
            build,
            n,
            "MTU change → all Ready at the new generation",
            "ms",
            ms(t.elapsed()),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let delta = bench::request_delta(&before, &self.api_snapshot().await?);
        let w = bench::writes(&delta) - 1.0;
        self.results
            .add(build, n, "API writes per MTU change (+1 s)", "writes", w);
        self.results.add(
            build,
            n,
            "API writes per MTU change per node",
            "writes",
            w / n as f64,
        );

        println!("  run {run}: node joining");
        let index = self.next_joiner;
        self.next_joiner -= 1;
        let jname = format!("j{index}");
        let t = Instant::now();
        let mut joiner = SimNode::create(&self.cluster, &jname, index, 1500, &[(LABEL, "true")]).await?;
        let kubeconfig = operator::agent_kubeconfig(&self.cluster, &jname).await?;
        joiner.start_agent_binary(&kubeconfig, &b.binary)?;
        let addr = joiner.address.to_string();
        for node in self.nodes.iter().take(n) {
            until(&format!("{jname} in {}'s FDB", node.name), wait, || {
                fdb_peers(&node.netns, &vxlan).contains(&addr)
            })
            .await?;
        }
        until(&format!("{jname} peers with all {n}"), wait, || {
            fdb_peers(&joiner.netns, &vxlan).len() == n
        })
        .await?;
        self.results.add(
            build,
            n,
            "node joins → in every peer's FDB, peers in its",
            "ms",
            ms(t.elapsed()),
        );
        until(&format!("{name} Ready on {} nodes", n + 1), wait, || {
            self.converged(&name, n + 1, Some(1400))
        })
        .await?;
        self.results.add(
            build,
            n,
            "node joins → Network Ready on n+1",
            "ms",
            ms(t.elapsed()),
        );

        let t = Instant::now();
        joiner.deregister(&self.cluster).await?;
        for node in self.nodes.iter().take(n) {
            until(&format!("{jname} out of {}'s FDB", node.name), wait, || {
                !fdb_peers(&node.netns, &vxlan).contains(&addr)
            })
            .await?;
        }
        self.results.add(
            build,
            n,
            "Node deleted → out of every peer's FDB",
            "ms",
            ms(t.elapsed()),
        );
        joiner.stop_agent();
        drop(joiner);
        until(&format!("{name} back to {n} nodes"), wait, || {
            self.converged(&name, n, Some(1400))
        })
        .await?;

        println!("  run {run}: delete");
        let t = Instant::now();
        self.networks
            .delete(&name, &DeleteParams::default())
            .await
            .context("deleting the Network")?;
        for node in self.nodes.iter().take(n) {
            until(&format!("{bridge} gone from {}", node.name), wait, || {
                node.ifindex(&bridge).is_none() && node.ifindex(&vxlan).is_none()
            })
            .await?;
        }
        self.results.add(
            build,
            n,
            "delete → links gone from every node",
            "ms",
            ms(t.elapsed()),
        );
        until(&format!("{name} deleted"), wait, || {
            self.net_store.get(&ObjectRef::new(&name)).is_none()
        })
        .await?;
        self.results.add(
            build,
            n,
            "delete → Network object gone (finalizer)",
            "ms",
            ms(t.elapsed()),
        );
        Ok(())
    }

    /// One Network Ready; then memory, CPU and API requests over `window`.
    pub(super) async fn steady_state(
        &mut self,
        build: &str,
        n: usize,
        window: Duration,
    ) -> anyhow::Result<()> {
        println!("  steady state ({window:?})");
        self.networks
            .create(
                &PostParams::default(),
                &bench_network("idle", "bidle", 4000, "192.168.60.0/24")?,
            )
            .await
            .context("creating the idle Network")?;
        until("idle Ready", Self::timeout(n), || self.converged("idle", n, None)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (controller, agents) = self.pids(n)?;
        let c0 = self.sample(controller)?;
        let a0: Vec<ProcSample> = agents
            .iter()
            .map(|p| proc_sample(*p))
            .collect::<anyhow::Result<_>>()?;
        let api0 = self.api_snapshot().await?;
        let t = Instant::now();
        tokio::time::sleep(window).await;
        let api1 = self.api_snapshot().await?;
        let secs = t.elapsed().as_secs_f64();
        let c1 = self.sample(controller)?;
        let pct = |a: &ProcSample, b: &ProcSample| {
            (b.cpu_ticks - a.cpu_ticks) as f64 / clock_ticks() / secs * 100.0
        };
        self.results
            .add(build, n, "controller RSS idle", "MiB", mib(c1.rss_kib));
        self.results
            .add(build, n, "controller CPU idle", "% of a core", pct(&c0, &c1));
        for (pid, a0) in agents.iter().zip(&a0) {
            let a1 = self.sample(*pid)?;
            self.results
                .add(build, n, "agent RSS idle (each agent)", "MiB", mib(a1.rss_kib));
            self.results.add(
                build,
                n,
                "agent CPU idle (each agent)",
                "% of a core",
                pct(a0, &a1),
            );
        }
        let delta = bench::request_delta(&api0, &api1);
        let per_min = 60.0 / secs;
        self.results.add(
            build,
            n,
            "API writes per minute, steady state",
            "writes/min",
            bench::writes(&delta) * per_min,
        );
        let reads: f64 = delta
            .iter()
            .filter(|((verb, target), _)| {
                matches!(verb.as_str(), "GET" | "LIST") && !target.starts_with(bench::NON_RESOURCE)
            })
            .map(|(_, v)| v)
            .sum();
        self.results.add(
            build,
            n,
            "API GET+LIST per minute, steady state",
            "requests/min",
            reads * per_min,
        );
        let detail: Vec<String> = delta
            .iter()
            .filter(|((verb, _), _)| !matches!(verb.as_str(), "WATCH" | "WATCHLIST"))
            .map(|((verb, target), v)| format!("{verb} {target}: {v}"))
            .collect();
        self.results.note(format!(
            "{n} nodes, build {build}: requests in a {secs:.0} s steady state (the benchmark's own: GET /metrics): {}",
            detail.join(", ")
        ));
        self.networks.delete("idle", &DeleteParams::default()).await?;
        until("idle deleted", Self::timeout(n), || {
            self.net_store.get(&ObjectRef::new("idle")).is_none()
        })
        .await?;
        Ok(())
    }

    /// `many` Networks applied at once: time to all Ready, CPU and peak memory; then
    /// deleted: time to their links gone from every node.
    pub(super) async fn many_networks(&mut self, build: &str, n: usize, many: usize) -> anyhow::Result<()> {
        if many == 0 {
            return Ok(());
        }
        println!("  {many} Networks at once");
        let (mut controller, agents) = self.pids(n)?;
        let mut c0 = self.sample(controller)?;
        let a0: Vec<ProcSample> = agents
            .iter()
            .map(|p| proc_sample(*p))
            .collect::<anyhow::Result<_>>()?;
        let mut peak_c = c0.rss_kib;
        let mut peak_a: Vec<u64> = a0.iter().map(|s| s.rss_kib).collect();
        let ip = self.cluster.underlay.host_addr();
        let apiserver = bench::find_process("kube-apiserver", &format!("--bind-address={ip}"));
        let etcd = bench::find_process("etcd", &format!("--listen-client-urls=http://{ip}:2379"));
        let cpu = |pid: Option<u32>| pid.and_then(|p| proc_sample(p).ok()).map(|s| s.cpu_ticks);
        let (apiserver0, etcd0) = (cpu(apiserver), cpu(etcd));
        let machine0 = bench::machine_ticks();
        let api0 = self.api_snapshot().await?;
        let names: Vec<String> = (0..many).map(|i| format!("many-{i}")).collect();
        let t = Instant::now();
        for (i, name) in names.iter().enumerate() {
            let net = bench_network(
                name,
                &format!("bm{i}"),
                5000 + i as u32,
                &format!("10.{i}.0.0/24"),
            )?;
            self.networks.create(&PostParams::default(), &net).await?;
        }
        let deadline = Instant::now() + Self::timeout(n) * 2;
        let mut last_sample = Instant::now();
        let mut restarts = 0;
        while !names.iter().all(|name| self.converged(name, n, None)) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{many} Networks not Ready on {n} nodes in time"
            );
            if self.revive_controller().await? {
                restarts += 1;
                // Its CPU so far is lost with it; the figure counts the new one's.
                controller = self.controller.as_ref().context("no controller")?.pid();
                c0 = ProcSample { cpu_ticks: 0, ..c0 };
            }
            if last_sample.elapsed() > Duration::from_millis(100) {
                peak_c = peak_c.max(self.sample(controller)?.rss_kib);
                for (peak, pid) in peak_a.iter_mut().zip(&agents) {
                    *peak = (*peak).max(self.sample(*pid)?.rss_kib);
                }
                last_sample = Instant::now();
            }
            tokio::time::sleep(POLL).await;
        }
        let elapsed = t.elapsed();
        let figure = |what: &str| format!("{many} Networks {what}");
        self.results.add(
            build,
            n,
            &figure("converging: controller exits (Lease not renewed)"),
            "exits",
            restarts as f64,
        );
        self.results.add(
            build,
            n,
            &figure("applied → all Ready, NADs written"),
            "ms",
            ms(elapsed),
        );
        let c1 = self.sample(controller)?;
        let tck = clock_ticks();
        if let (Some((b0, t0)), Some((b1, t1))) = (machine0, bench::machine_ticks()) {
            let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * 100.0;
            self.results.add(
                build,
                n,
                &figure("converging: machine CPU busy (all processes)"),
                "%",
                busy,
            );
        }
        for (what, pid, before) in [("kube-apiserver", apiserver, apiserver0), ("etcd", etcd, etcd0)] {
            if let (Some(b), Some(a)) = (before, cpu(pid)) {
                self.results.add(
                    build,
                    n,
                    &figure(&format!("converging: {what} CPU")),
                    "s",
                    (a - b) as f64 / tck,
                );
            }
        }
        self.results.add(
            build,
            n,
            &figure("converging: controller CPU"),
            "s",
            (c1.cpu_ticks - c0.cpu_ticks) as f64 / tck,
        );
        self.results.add(
            build,
            n,
            &figure("converging: controller peak RSS"),
            "MiB",
            mib(peak_c.max(c1.rss_kib)),
        );
        for ((pid, a0), peak) in agents.iter().zip(&a0).zip(&peak_a) {
            let a1 = self.sample(*pid)?;
            self.results.add(
                build,
                n,
                &figure("converging: agent CPU (each)"),
                "s",
                (a1.cpu_ticks - a0.cpu_ticks) as f64 / tck,
            );
            self.results.add(
                build,
                n,
                &figure("converging: agent peak RSS (each)"),
                "MiB",
                mib((*peak).max(a1.rss_kib)),
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let delta = bench::request_delta(&api0, &self.api_snapshot().await?);
        let w = bench::writes(&delta) - many as f64;
        self.results.add(
            build,
            n,
            &figure("API writes per Network per node"),
            "writes",
            w / (many * n) as f64,
        );

        let t = Instant::now();
        for name in &names {
            self.networks.delete(name, &DeleteParams::default()).await?;
        }
        for node in self.nodes.iter().take(n) {
            until(
                &format!("{many} bridges gone from {}", node.name),
                Self::timeout(n),
                || count_links(&node.netns, &["bm", "vxlan5"]).0 == 0,
            )
            .await?;
        }
        self.results.add(
            build,
            n,
            &figure("deleted → links gone from every node"),
            "ms",
            ms(t.elapsed()),
        );
        until("Networks deleted", Self::timeout(n), || {
            names
                .iter()
                .all(|name| self.net_store.get(&ObjectRef::new(name)).is_none())
        })
        .await?;
        Ok(())
    }
}
