//! Each node's cgroup trees (cgroup v1 hierarchies), and the sweep of a killed run's leftovers.

use super::*;

/// A cgroup v1 (or v2) hierarchy mounted under /sys/fs/cgroup.
pub(super) struct Hierarchy {
    /// Its directory under /sys/fs/cgroup (`cpu`, `memory`, `systemd`, `unified`).
    pub(super) name: String,
    /// Mount options of a v1 hierarchy (`cpu`, `name=systemd`); None for cgroup2.
    pub(super) options: Option<String>,
}

pub(super) fn hierarchies() -> anyhow::Result<Vec<Hierarchy>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_hierarchies(&mountinfo))
}

pub(super) fn parse_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let Some(name) = point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        let mut fields = right.split_whitespace();
        let (fstype, super_options) = (fields.next(), fields.nth(1));
        match fstype {
            Some("cgroup") => {
                let options: Vec<&str> = super_options
                    .unwrap_or_default()
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro"))
                    .collect();
                out.push(Hierarchy {
                    name: name.to_string(),
                    options: Some(options.join(",")),
                });
            }
            Some("cgroup2") => out.push(Hierarchy {
                name: name.to_string(),
                options: None,
            }),
            _ => {}
        }
    }
    out
}

/// A node's cgroup root (`<hierarchy>/nno-e2e/<id>`) in every hierarchy, with a
/// `system` child for the node's own processes.
pub(super) struct Cgroup {
    /// `nno-e2e/<id>`, relative to each hierarchy's root.
    pub(super) rel: String,
}

impl Cgroup {
    pub(super) fn create(id: &str) -> anyhow::Result<Self> {
        let cgroup = Self {
            rel: format!("{CGROUP_PARENT}/{id}"),
        };
        for h in hierarchies()? {
            let root = Path::new(CGROUP_FS).join(&h.name);
            let mut dir = root.clone();
            for part in cgroup.rel.split('/').chain(["system"]) {
                let parent = dir.clone();
                dir = dir.join(part);
                if !dir.is_dir() {
                    std::fs::create_dir(&dir)
                        .map_err(|e| anyhow::anyhow!("creating cgroup {}: {e}", dir.display()))?;
                }
                // A cpuset cgroup takes no task until it has CPUs and memory nodes.
                if h.name == "cpuset" {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let value = std::fs::read_to_string(parent.join(file))?;
                        if std::fs::read_to_string(dir.join(file))?.trim().is_empty() {
                            std::fs::write(dir.join(file), value.trim())?;
                        }
                    }
                }
            }
        }
        Ok(cgroup)
    }

    /// Makes `cmd` move itself into the node's `system` cgroups before it runs.
    pub(super) fn join_on_exec(&self, cmd: &mut Command) -> anyhow::Result<()> {
        let files: Vec<CString> = hierarchies()?
            .iter()
            .map(|h| {
                let path = Path::new(CGROUP_FS)
                    .join(&h.name)
                    .join(&self.rel)
                    .join("system/cgroup.procs");
                CString::new(path.as_os_str().as_bytes())
            })
            .collect::<Result<_, _>>()?;
        // SAFETY: between fork and exec the closure only calls open, write and close
        // (async-signal-safe) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for file in &files {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0": the writing process itself.
                    let rc = libc::write(fd, c"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if rc != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Every pid in the tree, from the pids hierarchy (or the first one there is).
    pub(super) fn pids(&self) -> Vec<u32> {
        pids_under(&self.tree_root())
    }

    pub(super) fn tree_root(&self) -> PathBuf {
        let hierarchy = hierarchies()
            .ok()
            .and_then(|hs| {
                let names: Vec<String> = hs.into_iter().map(|h| h.name).collect();
                names.iter().find(|n| *n == "pids").or(names.first()).cloned()
            })
            .unwrap_or_else(|| "pids".into());
        Path::new(CGROUP_FS).join(hierarchy).join(&self.rel)
    }

    /// SIGKILLs every process in the tree until none is left (a fork racing the
    /// first pass is caught by the next).
    pub(super) fn kill_all(&self) {
        kill_tree(&self.tree_root());
    }

    /// Removes the tree from every hierarchy (empty cgroups only), and the shared
    /// parent when no other node uses it.
    pub(super) fn remove(&self) {
        for h in hierarchies().unwrap_or_default() {
            let root = Path::new(CGROUP_FS).join(&h.name);
            remove_tree(&root.join(&self.rel));
            let _ = std::fs::remove_dir(root.join(CGROUP_PARENT));
        }
    }
}

pub(super) fn pids_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    pids
}

pub(super) fn kill_tree(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids_under(dir);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: signalling a process id read from the node's own cgroups.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes a cgroup directory tree, children first; retries briefly while the
/// kernel still counts just-killed tasks.
pub(super) fn remove_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                remove_tree(&entry.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes what test processes that were killed left behind: the cgroups of their
/// nodes (killing every process still in them: pods, containerd shims) and their
/// cluster directories. The network namespaces of their slots go with the underlay
/// sweep ([`crate::underlay`]). Runs at every cluster start.
pub fn sweep_stale() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    if let Ok(hs) = hierarchies() {
        for h in &hs {
            let parent = Path::new(CGROUP_FS).join(&h.name).join(CGROUP_PARENT);
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let owner = name.split('-').next().unwrap_or_default();
                if owner.parse::<u32>().is_ok() && !alive(owner) {
                    kill_tree(&entry.path());
                    for h in &hs {
                        remove_tree(&Path::new(CGROUP_FS).join(&h.name).join(CGROUP_PARENT).join(&name));
                    }
                }
            }
        }
        for h in &hs {
            let _ = std::fs::remove_dir(Path::new(CGROUP_FS).join(&h.name).join(CGROUP_PARENT));
        }
    }
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_name().to_string_lossy().starts_with("nno-e2e-") {
                continue;
            }
            if let Ok(owner) = std::fs::read_to_string(path.join("owner"))
                && !alive(owner.trim())
            {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_from_mountinfo() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
22 1 0:21 / /proc rw,relatime - proc proc rw
";
        let hs = parse_hierarchies(mountinfo);
        let got: Vec<(&str, Option<&str>)> = hs
            .iter()
            .map(|h| (h.name.as_str(), h.options.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("cpu", Some("cpu")),
                ("cpu,cpuacct", Some("cpu,cpuacct")),
                ("systemd", Some("xattr,name=systemd")),
                ("unified", None),
            ]
        );
    }
}
