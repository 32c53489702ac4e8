//! The kernel's own speed at removing links, beside which the agent's removal is
//! read: the same 100 bridges + 100 VXLANs (each VXLAN on a carrier, enslaved to
//! its bridge) as the benchmark's Links, built in a scratch network namespace with
//! `ip -batch` and deleted three ways: one `ip link del` process per link, one
//! `ip -batch` process deleting them one at a time, and one `ip link del group N`
//! (a single batched unregister in the kernel).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::underlay::{ip, ip_in};

/// The interface group the grouped variant puts the links in.
const GROUP: u32 = 77;

/// A scratch network namespace, deleted on drop. Its only carrier is a veth pair
/// inside it; nothing in it is connected to anything.
pub struct Scratch {
    pub netns: String,
}

impl Scratch {
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let netns = format!("nnobench-{tag}-{}", std::process::id());
        ip(&["netns", "add", &netns])?;
        let s = Self { netns };
        s.batch(&[
            "link add under0 type veth peer name under0p".into(),
            "addr add 198.18.255.1/24 dev under0".into(),
            "link set under0p up".into(),
            "link set under0 up".into(),
        ])?;
        Ok(s)
    }

    /// `ip -n NETNS -batch -` with `lines`.
    pub fn batch(&self, lines: &[String]) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.netns, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ip -batch")?;
        child
            .stdin
            .take()
            .context("ip -batch stdin")?
            .write_all(lines.join("\n").as_bytes())
            .context("writing to ip -batch")?;
        let out = child.wait_with_output().context("waiting for ip -batch")?;
        if !out.status.success() {
            anyhow::bail!(
                "ip -n {} -batch: {}",
                self.netns,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Builds `pairs` bridges `kbrI` (MTU 1450) and VXLANs `kvxI` enslaved to them;
    /// with `group`, every one of them in [`GROUP`].
    pub fn build(&self, pairs: usize, group: bool) -> anyhow::Result<()> {
        let mut lines = Vec::new();
        for i in 0..pairs {
            lines.push(format!("link add kbr{i} mtu 1450 type bridge stp_state 0"));
            lines.push(format!(
                "link add kvx{i} mtu 1450 type vxlan id {} group 239.1.1.1 dev under0 dstport 4789",
                1000 + i
            ));
            lines.push(format!("link set kvx{i} master kbr{i} up"));
            lines.push(format!("link set kbr{i} up"));
            if group {
                lines.push(format!("link set kbr{i} group {GROUP}"));
                lines.push(format!("link set kvx{i} group {GROUP}"));
            }
        }
        self.batch(&lines)
    }

    /// How many links other than `lo` and the carrier pair are left.
    pub fn left(&self) -> anyhow::Result<usize> {
        let out = ip_in(&self.netns, &["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter(|l| l.contains(": kbr") || l.contains(": kvx"))
            .count())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// The three ways' times for `pairs` bridge + VXLAN pairs, in that order: one
/// process per link, `ip -batch`, `ip link del group`.
pub fn removal(pairs: usize) -> anyhow::Result<[Duration; 3]> {
    let all: Vec<String> = (0..pairs)
        .map(|i| format!("kvx{i}"))
        .chain((0..pairs).map(|i| format!("kbr{i}")))
        .collect();

    let s = Scratch::create("proc")?;
    s.build(pairs, false)?;
    let t = Instant::now();
    for name in &all {
        ip_in(&s.netns, &["link", "del", "dev", name])?;
    }
    let per_process = t.elapsed();
    anyhow::ensure!(s.left()? == 0, "links left after deleting one by one");
    drop(s);

    let s = Scratch::create("batch")?;
    s.build(pairs, false)?;
    let lines: Vec<String> = all.iter().map(|n| format!("link del dev {n}")).collect();
    let t = Instant::now();
    s.batch(&lines)?;
    let batch = t.elapsed();
    anyhow::ensure!(s.left()? == 0, "links left after ip -batch");
    drop(s);

    let s = Scratch::create("group")?;
    s.build(pairs, true)?;
    let t = Instant::now();
    ip_in(&s.netns, &["link", "del", "group", &GROUP.to_string()])?;
    let group = t.elapsed();
    anyhow::ensure!(s.left()? == 0, "links left after ip link del group");
    Ok([per_process, batch, group])
}
