//! The roles meet only through the API server: the agent's modules never use the
//! controller's, nor the controller's the agent's (what both need lives in `api`,
//! `model`, `cache` or `telemetry`).

use std::path::Path;

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    out
}

#[test]
fn agent_and_controller_never_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for (role, other) in [("agent", "controller"), ("controller", "agent")] {
        for (file, text) in sources(&src.join(role)) {
            for (n, line) in text.lines().enumerate() {
                if line.contains(&format!("crate::{other}"))
                    || line.contains(&format!("super::super::{other}"))
                {
                    found.push(format!("{file}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "roles importing each other:\n{}",
        found.join("\n")
    );
}
