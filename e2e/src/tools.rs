//! Where the pinned third-party tools are: `$NNO_BIN`, or the cache `hack/tools.sh`
//! builds into.

use std::path::PathBuf;

/// The directory holding the tools.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NNO_BIN") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("NNO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
                });
            base.join("node-network-operator")
        });
    cache.join("bin")
}

/// Path of tool `name`. Panics, naming the command that builds it, when it is missing:
/// a test that cannot find its tools fails, it never skips.
pub fn tool(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run hack/tools.sh (or hack/test.sh, which runs it) to build the pinned test tools",
        path.display()
    );
    path
}
