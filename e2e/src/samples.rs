//! The objects under samples/, for tests that apply them.

use std::path::{Path, PathBuf};

/// The repository's samples directory.
pub fn dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples");
    dir.canonicalize().unwrap_or(dir)
}

/// The examples under docs/examples/: objects to adapt before they work anywhere.
pub fn examples_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    dir.canonicalize().unwrap_or(dir)
}

/// Every YAML document under samples/ (the default set, all green on the local
/// cluster) with its file, in a stable order.
pub fn documents() -> anyhow::Result<Vec<(PathBuf, serde_json::Value)>> {
    documents_in(&[dir()])
}

/// The samples and the examples under docs/examples/.
pub fn all_documents() -> anyhow::Result<Vec<(PathBuf, serde_json::Value)>> {
    documents_in(&[dir(), examples_dir()])
}

fn documents_in(dirs: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, serde_json::Value)>> {
    let mut files = Vec::new();
    for dir in dirs {
        collect(dir, &mut files)?;
    }
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    Ok(docs)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}
