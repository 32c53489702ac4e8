//! ADD latency of the gateway network's conflist with and without the shim, the
//! bridge already Ready: what the shim costs every pod attachment. Not a test: it
//! prints p50/p99 (`cargo bench -p nno-cni-shim --bench add`; needs root).
//!
//! Both conflists run interleaved in one process, in network namespaces it creates,
//! against the agent's real readiness server; each ADD is followed by an untimed DEL.
//! NNO_BENCH_ITERATIONS sets the sample count (default 500). The machine's load
//! average is printed with the figures: on a shared machine it moves them.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

fn main() {
    require_root();
    let iterations: usize = std::env::var("NNO_BENCH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let node = Netns::new("bench-node");
    let agent = Agent::start(&node.name);
    agent.build_bridge(&node, "br-gw");
    let runtime = Runtime::new(&node);
    let pod = Netns::new("bench-pod");
    let att = Attachment::new(&pod);

    let mut with_shim = conflist("1.0.0", &agent, 30.0, static_ipam(50));
    // As deployed by default: no log file.
    with_shim["plugins"][0].as_object_mut().unwrap().remove("logFile");
    let without_shim = conflist_without_shim("1.0.0", static_ipam(50));
    let shim = with_shim["plugins"][0].clone();

    let add = |list: &serde_json::Value| -> Duration {
        let start = Instant::now();
        let result = runtime
            .add(list, &att)
            .unwrap_or_else(|e| panic!("ADD failed: {e:?}"));
        let took = start.elapsed();
        runtime.del(list, &att, Some(&result)).unwrap();
        took
    };
    for _ in 0..10 {
        add(&with_shim);
        add(&without_shim);
    }
    let load_before = loadavg();
    let (mut with, mut without, mut alone, mut noop) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..iterations {
        // Alternate the order so that neither side always runs right after a DEL of
        // the same kind.
        if i % 2 == 0 {
            with.push(add(&with_shim));
            without.push(add(&without_shim));
        } else {
            without.push(add(&without_shim));
            with.push(add(&with_shim));
        }
        let start = Instant::now();
        runtime.exec("ADD", &with_shim, &shim, None, &att).unwrap();
        alone.push(start.elapsed());
        // The floor: spawning a process that does nothing, the same way.
        let start = Instant::now();
        let status = std::process::Command::new("/bin/true")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap()
            .status;
        assert!(status.success());
        noop.push(start.elapsed());
    }

    // Per iteration, with minus without: pairs share the machine's momentary load.
    let mut diffs: Vec<f64> = with
        .iter()
        .zip(&without)
        .map(|(w, o)| w.as_secs_f64() * 1e3 - o.as_secs_f64() * 1e3)
        .collect();
    diffs.sort_by(f64::total_cmp);
    let paired = diffs[diffs.len() / 2];

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (w50, w99) = (percentile(&mut with, 0.50), percentile(&mut with, 0.99));
    let (o50, o99) = (percentile(&mut without, 0.50), percentile(&mut without, 0.99));
    let (a50, a99) = (percentile(&mut alone, 0.50), percentile(&mut alone, 0.99));
    let (n50, n99) = (percentile(&mut noop, 0.50), percentile(&mut noop, 0.99));
    println!(
        "ADD of the conflist (bridge plugin + static IPAM, CNI 1.0.0), bridge Ready, {iterations} samples each, interleaved"
    );
    println!("load average before: {load_before}, after: {}", loadavg());
    println!("{:<32} {:>9} {:>9}", "", "p50 ms", "p99 ms");
    println!("{:<32} {:>9.2} {:>9.2}", "without the shim", ms(o50), ms(o99));
    println!("{:<32} {:>9.2} {:>9.2}", "with the shim first", ms(w50), ms(w99));
    println!(
        "{:<32} {:>9.2} {:>9.2}",
        "the shim alone (one process)",
        ms(a50),
        ms(a99)
    );
    println!(
        "{:<32} {:>9.2} {:>9.2}",
        "/bin/true (spawn floor)",
        ms(n50),
        ms(n99)
    );
    let added = ms(w50) - ms(o50);
    println!(
        "the shim adds {added:.2} ms at p50 (ratio {:.3}; median of paired differences {paired:.2} ms); target < 2 ms: {}",
        ms(w50) / ms(o50),
        if added < 2.0 { "met" } else { "MISSED" }
    );
}

/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The `p` quantile (nearest rank).
fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}
