//! The benchmark's figures: samples per (build, node count, figure), printed as a
//! table (median, p99 and max, count) with the ratios of a second build, and
//! written as JSON with the machine they were taken on.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{median, quantile};

/// Where a figure belongs: the build it measures and the cluster's node count
/// (0: independent of the node count).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub nodes: usize,
    pub figure: String,
    pub build: String,
}

#[derive(Clone, Debug, Default)]
pub struct Series {
    pub unit: String,
    pub samples: Vec<f64>,
}

/// Every figure of a benchmark run, and notes (where it stopped, and why).
#[derive(Debug, Default)]
pub struct Results {
    pub series: BTreeMap<Key, Series>,
    /// In the order they were added.
    pub order: Vec<Key>,
    pub notes: Vec<String>,
    /// `/proc/loadavg` when each part started.
    pub load: Vec<(String, String)>,
}

impl Results {
    pub fn add(&mut self, build: &str, nodes: usize, figure: &str, unit: &str, value: f64) {
        let key = Key {
            nodes,
            figure: figure.to_string(),
            build: build.to_string(),
        };
        if !self.series.contains_key(&key) {
            self.order.push(key.clone());
        }
        let s = self.series.entry(key).or_default();
        s.unit = unit.to_string();
        s.samples.push(value);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("note: {note}");
        self.notes.push(note);
    }

    /// Records the machine's load average under `when`.
    pub fn load(&mut self, when: &str) {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        self.load.push((when.to_string(), load.trim().to_string()));
    }

    /// The table: one row per figure and build, and, with two builds, the ratio of
    /// the second's median to the first's.
    pub fn table(&self, builds: &[String]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| nodes | figure | build | median | p99 | max | n | unit |{}",
            if builds.len() > 1 { " ratio |" } else { "" }
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | --- | --- | --- | --- | --- |{}",
            if builds.len() > 1 { " --- |" } else { "" }
        );
        let mut keys = self.order.clone();
        keys.sort_by(|a, b| {
            let pos = |k: &Key| {
                self.order
                    .iter()
                    .position(|o| o.figure == k.figure && o.nodes == k.nodes)
            };
            (a.nodes, pos(a), builds.iter().position(|x| *x == a.build)).cmp(&(
                b.nodes,
                pos(b),
                builds.iter().position(|x| *x == b.build),
            ))
        });
        for key in keys {
            let s = &self.series[&key];
            let ratio = if builds.len() > 1 && key.build != builds[0] {
                let base = Key {
                    build: builds[0].clone(),
                    ..key.clone()
                };
                match (
                    self.series.get(&base).and_then(|b| median(&b.samples)),
                    median(&s.samples),
                ) {
                    (Some(b), Some(m)) if b != 0.0 => format!(" {:.2} |", m / b),
                    _ => " - |".into(),
                }
            } else if builds.len() > 1 {
                " |".into()
            } else {
                String::new()
            };
            let f = |v: Option<f64>| v.map(fmt).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |{ratio}",
                if key.nodes == 0 {
                    "-".to_string()
                } else {
                    key.nodes.to_string()
                },
                key.figure,
                key.build,
                f(median(&s.samples)),
                f(quantile(&s.samples, 0.99)),
                f(quantile(&s.samples, 1.0)),
                s.samples.len(),
                s.unit,
            );
        }
        out
    }

    pub fn json(&self, machine: Value, command: &str, builds: &[(String, String)], runs: usize) -> Value {
        let figures: Vec<Value> = self
            .order
            .iter()
            .map(|k| {
                let s = &self.series[k];
                json!({
                    "build": k.build, "nodes": k.nodes, "figure": k.figure, "unit": s.unit,
                    "median": median(&s.samples), "p99": quantile(&s.samples, 0.99),
                    "max": quantile(&s.samples, 1.0), "samples": s.samples,
                })
            })
            .collect();
        json!({
            "machine": machine,
            "command": command,
            "runs": runs,
            "builds": builds.iter().map(|(n, p)| json!({"name": n, "binary": p})).collect::<Vec<_>>(),
            "load": self.load.iter().map(|(w, l)| json!({"when": w, "loadavg": l})).collect::<Vec<_>>(),
            "figures": figures,
            "notes": self.notes,
        })
    }
}

/// A figure with three significant digits at most (and no exponent).
fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The machine: cores, memory, kernel, and the date.
pub fn machine() -> Value {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    json!({
        "cores": cores,
        "cpu": cpu,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": kernel.trim(),
        "date": jiff::Timestamp::now().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_with_ratios() {
        let mut r = Results::default();
        for v in [1.0, 2.0, 3.0] {
            r.add("a", 3, "ready", "ms", v);
            r.add("b", 3, "ready", "ms", v * 2.0);
        }
        let t = r.table(&["a".into(), "b".into()]);
        assert!(t.contains("| 3 | ready | a | 2 | 3 | 3 | 3 | ms | |"), "{t}");
        assert!(t.contains("| 3 | ready | b | 4 | 6 | 6 | 3 | ms | 2.00 |"), "{t}");
        assert_eq!(fmt(12.345), "12.3");
        assert_eq!(fmt(0.1234), "0.12");
    }
}
