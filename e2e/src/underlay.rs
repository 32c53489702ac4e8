//! Host-side underlay bridges in 198.18.0.0/15, one /24 per test cluster. The API
//! server binds to the bridge's first address, so network namespaces acting as nodes
//! reach it over veth ports of the bridge.
//!
//! Allocation is race-free between parallel tests and processes: creating the bridge
//! is the claim, and the kernel refuses a second bridge of the same name. Bridges left
//! behind by a killed test process (its pid is in the alias) are swept on the next
//! allocation.

use std::net::Ipv4Addr;
use std::process::Command;

const PREFIX: &str = "nno-ul";
/// 198.18.0.0/15 holds 512 /24s.
const SLOTS: u16 = 512;

/// Runs an `ip` command, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    crate::process::run(Command::new("ip").args(args), &format!("ip {}", args.join(" ")))
}

/// `ip -n netns args`.
pub fn ip_in(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Runs `program` in network namespace `netns`, failing with its output, which
/// names it as running in `place` (a node, a pod, the outside host).
pub fn exec_in(netns: &str, place: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    crate::process::run(
        Command::new("ip")
            .args(["netns", "exec", netns, program])
            .args(args),
        &format!("{program} {} in {place}", args.join(" ")),
    )
}

/// One claimed underlay bridge and its /24.
#[derive(Debug)]
pub struct Underlay {
    pub bridge: String,
    slot: u16,
}

impl Underlay {
    pub fn allocate() -> anyhow::Result<Self> {
        Self::allocate_in(0..SLOTS)
    }

    /// Allocates a slot in `slots` (0..256 is 198.18.0.0/16, 256..512 198.19.0.0/16).
    pub fn allocate_in(slots: std::ops::Range<u16>) -> anyhow::Result<Self> {
        crate::require_root();
        assert!(slots.end <= SLOTS && !slots.is_empty(), "slots within 0..{SLOTS}");
        sweep_stale();
        // Spread allocations so that a slot just freed (whose namespaces the kernel
        // may still be tearing down) is not the next one taken.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seed = std::process::id() ^ nanos ^ NEXT.fetch_add(97, std::sync::atomic::Ordering::Relaxed);
        let count = slots.end - slots.start;
        let start = (seed % count as u32) as u16;
        for i in 0..count {
            let slot = slots.start + (start + i) % count;
            let bridge = format!("{PREFIX}{slot}");
            if ip(&["link", "add", "name", &bridge, "type", "bridge"]).is_err() {
                continue; // taken
            }
            let underlay = Self { bridge, slot };
            let alias = format!("nno-e2e pid={}", std::process::id());
            ip(&["link", "set", "dev", &underlay.bridge, "alias", &alias])?;
            // No IGMP querier here: without snooping, multicast (VXLAN groups) floods.
            ip(&[
                "link",
                "set",
                "dev",
                &underlay.bridge,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/24", underlay.addr(1)),
                "dev",
                &underlay.bridge,
            ])?;
            ip(&["link", "set", "dev", &underlay.bridge, "up"])?;
            return Ok(underlay);
        }
        anyhow::bail!("no free underlay slot in {slots:?} of 198.18.0.0/15 (bridges {PREFIX}* exist)")
    }

    /// Address `.host` of this underlay's /24. `.1` is the host (API server) side.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        let (b, c) = (18 + (self.slot / 256) as u8, (self.slot % 256) as u8);
        Ipv4Addr::new(198, b, c, host)
    }

    /// The host side's address.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.addr(1)
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", "dev", &self.bridge]);
    }
}

/// Deletes underlay bridges whose creating process is gone, and the network
/// namespaces (`nno<slot>-*`) of slots whose bridge is gone: a namespace is created
/// only after its slot's bridge and deleted before it.
fn sweep_stale() {
    sweep_stale_bridges();
    let Ok(out) = ip(&["netns", "list"]) else {
        return;
    };
    let bridges = ip(&["-o", "link", "show", "type", "bridge"]).unwrap_or_default();
    for netns in out.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(slot) = netns
            .strip_prefix("nno")
            .and_then(|rest| rest.split_once('-'))
            .map(|(slot, _)| slot)
            .filter(|slot| slot.parse::<u16>().is_ok())
        else {
            continue;
        };
        if !bridges.contains(&format!(": {PREFIX}{slot}: ")) {
            let _ = ip(&["netns", "del", netns]);
        }
    }
}

fn sweep_stale_bridges() {
    let Ok(out) = ip(&["-o", "link", "show", "type", "bridge"]) else {
        return;
    };
    for line in out.lines() {
        let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else {
            continue;
        };
        if !name.starts_with(PREFIX) {
            continue;
        }
        let Some(pid) = line
            .split("alias nno-e2e pid=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["link", "del", "dev", name]);
        }
    }
}
