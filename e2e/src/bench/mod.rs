//! Pieces of `nno-bench` (the cluster-scale benchmark, `src/bin/nno-bench/`) that
//! need no cluster: statistics over repeated runs, a process's memory and CPU from
//! `/proc`, the API server's request counters from its `/metrics` text, and the
//! kernel's own speed at deleting links ([`kernel`]).

pub mod kernel;
pub mod report;

use std::collections::BTreeMap;

use anyhow::Context;

/// The `q`-quantile (0..=1) of `samples` by the nearest-rank method; None when empty.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median (the lower one of an even count).
pub fn median(samples: &[f64]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted[(sorted.len() - 1) / 2])
}

/// Memory and CPU of one process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcSample {
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
pub fn proc_sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(ProcSample {
        rss_kib: parse_vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))?,
        cpu_ticks: parse_cpu_ticks(&stat).with_context(|| format!("unreadable /proc/{pid}/stat"))?,
    })
}

/// `VmRSS` of a `/proc/PID/status` text, in KiB.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime of a `/proc/PID/stat` line. The command name (field 2) may hold
/// spaces and parentheses: fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The process whose command line has `program` as its first word's file name and
/// `arg` as one of its words (e.g. this cluster's kube-apiserver by its address).
pub fn find_process(program: &str, arg: &str) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let words: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
            let first = words
                .first()
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .unwrap_or_default();
            first.rsplit('/').next() == Some(program) && words.contains(&arg.as_bytes())
        })
}

/// (busy, total) clock ticks of all CPUs from the first line of `/proc/stat`
/// (busy: all but idle and iowait).
pub fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// [`parse_machine_ticks`] of this machine now.
pub fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// How [`RequestCount::target`] begins for a request for no resource.
pub const NON_RESOURCE: &str = "(non-resource)";

/// One `apiserver_request_total` counter: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestCount {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub value: f64,
}

impl RequestCount {
    /// A request that changes something (everything but GET, LIST, WATCH).
    pub fn is_write(&self) -> bool {
        !matches!(
            self.verb.as_str(),
            "GET" | "LIST" | "WATCH" | "WATCHLIST" | "CONNECT"
        )
    }

    /// `resource[/subresource][.group]`, e.g. `networks/status.nno.dev`; requests
    /// for no resource (`/openapi/v3`, `/metrics`) are `(non-resource) PATH`.
    pub fn target(&self) -> String {
        if self.resource.is_empty() {
            return format!("{NON_RESOURCE} {}", self.subresource)
                .trim_end()
                .to_string();
        }
        let mut t = self.resource.clone();
        if !self.subresource.is_empty() {
            t = format!("{t}/{}", self.subresource);
        }
        if !self.group.is_empty() {
            t = format!("{t}.{}", self.group);
        }
        t
    }
}

/// The `apiserver_request_total` samples of a Prometheus text exposition.
pub fn parse_request_totals(text: &str) -> Vec<RequestCount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        out.push(RequestCount {
            verb: get("verb"),
            group: get("group"),
            resource: get("resource"),
            subresource: get("subresource"),
            value,
        });
    }
    out
}

/// `a="x",b="y"` into a map; values keep escaped characters as written.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        map.insert(
            key.trim_start_matches(',').trim().to_string(),
            after[..end].to_string(),
        );
        rest = &after[end + 1..];
    }
    map
}

/// Request counts between two snapshots, summed by (verb, target); zero rows left out.
pub fn request_delta(before: &[RequestCount], after: &[RequestCount]) -> BTreeMap<(String, String), f64> {
    let mut sums: BTreeMap<(String, String), f64> = BTreeMap::new();
    for c in after {
        *sums.entry((c.verb.clone(), c.target())).or_default() += c.value;
    }
    for c in before {
        *sums.entry((c.verb.clone(), c.target())).or_default() -= c.value;
    }
    sums.retain(|_, v| v.abs() > 0.5);
    sums
}

/// Writes in a delta of [`request_delta`].
pub fn writes(delta: &BTreeMap<(String, String), f64>) -> f64 {
    delta
        .iter()
        .filter(|((verb, _), _)| !matches!(verb.as_str(), "GET" | "LIST" | "WATCH" | "WATCHLIST" | "CONNECT"))
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&v), Some(3.0));
        assert_eq!(quantile(&v, 0.99), Some(5.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(median(&[2.0, 1.0]), Some(1.0));
        assert_eq!(median(&[]), None);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&hundred, 0.99), Some(99.0));
    }

    #[test]
    fn proc_files() {
        let status = "Name:\tnode-network-op\nVmHWM:\t   20000 kB\nVmRSS:\t   18944 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(18944));
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 1000 0 0 0 37 12 0 0 20 0 3 0 100 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(49));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let stat = "cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_machine_ticks(stat), Some((155, 1000)));
    }

    #[test]
    fn request_totals_and_deltas() {
        let before = parse_request_totals(concat!(
            "# HELP apiserver_request_total x\n",
            "apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"nno.dev\",resource=\"networks\",scope=\"resource\",subresource=\"status\",verb=\"PATCH\",version=\"v1alpha1\"} 3\n",
            "apiserver_request_total{code=\"200\",component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"nodes\",scope=\"cluster\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 7\n",
        ));
        assert_eq!(before.len(), 2);
        assert_eq!(before[0].target(), "networks/status.nno.dev");
        assert!(before[0].is_write() && !before[1].is_write());
        let after = parse_request_totals(concat!(
            "apiserver_request_total{code=\"200\",group=\"nno.dev\",resource=\"networks\",subresource=\"status\",verb=\"PATCH\"} 5\n",
            "apiserver_request_total{code=\"409\",group=\"nno.dev\",resource=\"networks\",subresource=\"status\",verb=\"PATCH\"} 1\n",
            "apiserver_request_total{code=\"200\",group=\"\",resource=\"nodes\",subresource=\"\",verb=\"LIST\"} 7\n",
        ));
        let d = request_delta(&before, &after);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[&("PATCH".into(), "networks/status.nno.dev".into())], 3.0);
        assert_eq!(writes(&d), 3.0);
    }
}
