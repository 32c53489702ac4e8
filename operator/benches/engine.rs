//! Benchmark (not a test): apply 100 bridges + 100 VXLANs (each VXLAN enslaved to
//! its bridge, with one unicast FDB peer) into a fresh network namespace, then a
//! no-op pass; and the same topology with iproute2 in the same run, one process
//! per command and in `-batch` mode. Run as root: `cargo bench --bench engine`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nno::netlink::{Carrier, DesiredLink, Engine, VxlanConfig, marker};
use support::Netns;

const N: usize = 100;
const OWNER: &str = "Benchmark/engine";

fn desired() -> Vec<DesiredLink> {
    let mut d = Vec::new();
    for i in 0..N {
        d.push(DesiredLink::bridge(format!("nbr{i}"), OWNER, Some(1450)));
        d.push(DesiredLink::vxlan(
            format!("nvx{i}"),
            OWNER,
            VxlanConfig {
                peers: vec!["198.18.0.2".parse().unwrap()],
                master: Some(format!("nbr{i}")),
                ..VxlanConfig::new(1000 + i as u32, Carrier::Named("under0".into()))
            },
        ));
    }
    d
}

/// The same topology as iproute2 commands: (ip commands, bridge commands).
fn commands() -> (Vec<String>, Vec<String>) {
    let alias = marker(OWNER);
    let mut ip = Vec::new();
    let mut bridge = Vec::new();
    for i in 0..N {
        ip.push(format!("link add nbr{i} type bridge stp_state 0"));
        ip.push(format!("link set nbr{i} alias \"{alias}\" mtu 1450 up"));
        ip.push(format!(
            "link add nvx{i} type vxlan id {} dev under0 local 198.18.0.1 dstport 4789",
            1000 + i
        ));
        ip.push(format!(
            "link set nvx{i} alias \"{alias}\" mtu 1450 master nbr{i} up"
        ));
        bridge.push(format!("fdb append 00:00:00:00:00:00 dev nvx{i} dst 198.18.0.2"));
    }
    (ip, bridge)
}

fn fresh(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.veth("under0", "under0p", &["198.18.0.1/24"]);
    ns
}

/// Checks that a namespace ended up with the benchmark topology.
fn verify(ns: &Netns) {
    for i in [0, N / 2, N - 1] {
        let vx = ns.link(&format!("nvx{i}")).expect("vxlan exists");
        assert_eq!(vx["master"], format!("nbr{i}"));
        assert_eq!(vx["mtu"], 1450);
        assert!(support::is_up(&vx));
        assert_eq!(ns.zero_fdb(&format!("nvx{i}")).len(), 1);
        assert_eq!(ns.link(&format!("nbr{i}")).unwrap()["mtu"], 1450);
    }
}

fn batch(cmd: &str, ns: &Netns, lines: &[String]) {
    let mut child = Command::new(cmd)
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.join("\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "{cmd} -batch failed");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Measurements are repeated this many times, each into a fresh namespace; the
/// median is reported (the machine is shared, single runs are noisy).
const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn engine_run(
    rt: &tokio::runtime::Runtime,
    desired: &[DesiredLink],
    keep: &mut Vec<Netns>,
) -> (Duration, u64, Duration, u64) {
    let ns = fresh("bench-engine");
    let r = rt.block_on(async {
        let mut engine = Engine::in_netns(ns.path()).unwrap();
        let writes = engine.write_counter();
        let t = Instant::now();
        let states = engine.reconcile(desired).await;
        let apply = t.elapsed();
        let apply_writes = writes.get();
        assert!(states.iter().all(|s| s.ready), "not all ready: {states:?}");
        let t = Instant::now();
        let states = engine.reconcile(desired).await;
        let noop = t.elapsed();
        assert!(states.iter().all(|s| s.ready));
        (apply, apply_writes, noop, writes.get() - apply_writes)
    });
    verify(&ns);
    keep.push(ns);
    r
}

/// The engine removing what it made (nothing desired any more): the time and its
/// writes.
fn engine_removal(
    rt: &tokio::runtime::Runtime,
    desired: &[DesiredLink],
    keep: &mut Vec<Netns>,
) -> (Duration, u64) {
    let ns = fresh("bench-remove");
    let r = rt.block_on(async {
        let mut engine = Engine::in_netns(ns.path()).unwrap();
        let writes = engine.write_counter();
        engine.reconcile(desired).await;
        let before = writes.get();
        let t = Instant::now();
        let states = engine.reconcile(&[]).await;
        assert!(states.is_empty());
        (t.elapsed(), writes.get() - before)
    });
    assert!(ns.link("nbr0").is_none() && ns.link(&format!("nvx{}", N - 1)).is_none());
    keep.push(ns);
    r
}

/// The same links made with `ip -batch`, then deleted with `ip -batch` (one
/// `RTM_DELLINK` each): the time of the deletion.
fn batch_removal(ip_cmds: &[String], keep: &mut Vec<Netns>) -> Duration {
    let ns = fresh("bench-batchdel");
    batch("ip", &ns, ip_cmds);
    let dels: Vec<String> = (0..N)
        .flat_map(|i| [format!("link del nvx{i}"), format!("link del nbr{i}")])
        .collect();
    let t = Instant::now();
    batch("ip", &ns, &dels);
    let took = t.elapsed();
    keep.push(ns);
    took
}

fn per_command_run(ip_cmds: &[String], bridge_cmds: &[String], keep: &mut Vec<Netns>) -> Duration {
    let ns = fresh("bench-ip");
    let t = Instant::now();
    for line in ip_cmds {
        let mut full = vec!["-n".to_string(), ns.name.clone()];
        full.extend(shell_words(line));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        support::run("ip", &full).unwrap();
    }
    for line in bridge_cmds {
        let mut full = vec!["-n", ns.name.as_str()];
        full.extend(line.split(' '));
        support::run("bridge", &full).unwrap();
    }
    let took = t.elapsed();
    verify(&ns);
    keep.push(ns);
    took
}

fn batch_run(ip_cmds: &[String], bridge_cmds: &[String], keep: &mut Vec<Netns>) -> Duration {
    let ns = fresh("bench-batch");
    let t = Instant::now();
    batch("ip", &ns, ip_cmds);
    batch("bridge", &ns, bridge_cmds);
    let took = t.elapsed();
    verify(&ns);
    keep.push(ns);
    took
}

fn main() {
    support::require_root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let desired = desired();
    let (ip_cmds, bridge_cmds) = commands();
    let processes = ip_cmds.len() + bridge_cmds.len();

    let (mut apply, mut noop, mut per_command, mut batched) = (vec![], vec![], vec![], vec![]);
    let (mut removal, mut removal_writes, mut batch_del) = (vec![], 0, vec![]);
    let (mut apply_writes, mut noop_writes) = (0, 0);
    // Namespaces are removed only at the end: the kernel tears a namespace down
    // asynchronously, holding the rtnl lock, which would slow the next run.
    let mut keep = Vec::new();
    // Interleaved, so that load from elsewhere hits all variants alike.
    for _ in 0..RUNS {
        let (a, aw, n, nw) = engine_run(&rt, &desired, &mut keep);
        apply.push(a);
        noop.push(n);
        apply_writes = aw;
        noop_writes = noop_writes.max(nw);
        per_command.push(per_command_run(&ip_cmds, &bridge_cmds, &mut keep));
        batched.push(batch_run(&ip_cmds, &bridge_cmds, &mut keep));
        let (r, rw) = engine_removal(&rt, &desired, &mut keep);
        removal.push(r);
        removal_writes = rw;
        batch_del.push(batch_removal(&ip_cmds, &mut keep));
    }
    let spread = |v: &[Duration]| {
        let min = v.iter().min().unwrap();
        let max = v.iter().max().unwrap();
        format!("{:.1}-{:.1}", ms(*min), ms(*max))
    };

    println!();
    println!("{N} bridges + {N} VXLANs (each enslaved, MTU 1450, 1 FDB peer) into a fresh namespace");
    println!("median of {RUNS} runs, each into a fresh namespace");
    println!("{:<42} {:>10} {:>14} {:>8}", "", "median", "min-max ms", "writes");
    let row = |what: &str, v: &[Duration], writes: u64| {
        println!(
            "{:<42} {:>8.1}ms {:>14} {:>8}",
            what,
            ms(median(v.to_vec())),
            spread(v),
            writes
        );
    };
    row("engine: apply", &apply, apply_writes);
    row("engine: no-op pass", &noop, noop_writes);
    row(
        &format!("iproute2: {processes} commands, one process each"),
        &per_command,
        processes as u64,
    );
    row("iproute2: ip -batch + bridge -batch", &batched, processes as u64);
    row("engine: removal of all of it", &removal, removal_writes);
    row("iproute2: ip -batch link del each", &batch_del, 2 * N as u64);
    let (a, p, b) = (median(apply), median(per_command), median(batched));
    println!(
        "ratio iproute2 per-command / engine apply: {:.1}x",
        p.as_secs_f64() / a.as_secs_f64()
    );
    println!(
        "ratio iproute2 batch / engine apply:       {:.2}x",
        b.as_secs_f64() / a.as_secs_f64()
    );
    println!(
        "ratio ip -batch removal / engine removal:  {:.2}x",
        median(batch_del).as_secs_f64() / median(removal).as_secs_f64()
    );
    drop(keep);
}

/// Splits a command line on spaces, keeping double-quoted words whole.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}
