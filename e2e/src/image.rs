//! Container images built from files, for nodes that have no registry and a machine
//! with no container engine: an OCI image layout (uncompressed layers) in a tar,
//! which `ctr images import` takes (see [`crate::kubelet`]).
//!
//! The images the local cluster runs ([`operator`], [`tools`], [`pause`]) come from the
//! root filesystems `hack/images.sh` builds into `$NNO_CACHE/images` and, for the
//! operator image, this workspace's release binaries at the paths `Containerfile`
//! gives them. Archives are cached next to those root filesystems, keyed by what went
//! into them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The operator image as the chart names it by default (`values.yaml` repository,
/// the chart's appVersion).
pub const OPERATOR_REPOSITORY: &str = "ghcr.io/nno-dev/node-network-operator";
/// The sample pods' image (samples/gateway-network/pods.yaml).
pub const TOOLS_IMAGE: &str = "ghcr.io/nno-dev/nno-tools:0.1.0";
/// Every node's pod sandbox image (containerd `sandbox_image`).
pub const PAUSE_IMAGE: &str = "localhost/nno/pause:1";
/// Where the release binaries go in the operator image, and its entrypoint: as in
/// `Containerfile` (a test holds the two equal).
pub const OPERATOR_BINARIES: &[&str] = &["node-network-operator", "nno-cni-shim"];
pub const OPERATOR_BIN_DIR: &str = "/usr/local/bin";
pub const OPERATOR_ENTRYPOINT: &str = "/usr/local/bin/node-network-operator";

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One layer of an image.
#[derive(Clone, Debug)]
pub enum Layer {
    /// A directory tree, as the image's root.
    Tree(PathBuf),
    /// Single files: (source on the host, absolute path in the image), mode 0755.
    Files(Vec<(PathBuf, String)>),
}

/// An image to build: its full reference, layers (bottom first), and run config.
#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub layers: Vec<Layer>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// The image's digest and the archive holding it.
#[derive(Clone, Debug)]
pub struct Archive {
    pub name: String,
    pub path: PathBuf,
    /// `sha256:...` of the manifest, as containerd and the kubelet report it.
    pub digest: String,
}

/// The root filesystems `hack/images.sh` builds.
pub fn images_dir() -> PathBuf {
    crate::tools::bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
        .join("images")
}

fn rootfs(name: &str) -> anyhow::Result<PathBuf> {
    let dir = images_dir().join(name).join("rootfs");
    anyhow::ensure!(
        dir.is_dir(),
        "{} is missing: run hack/images.sh (hack/test.sh and hack/run.sh do)",
        dir.display()
    );
    Ok(dir)
}

/// The pause image: one static binary.
pub fn pause() -> anyhow::Result<Image> {
    Ok(Image {
        name: PAUSE_IMAGE.into(),
        layers: vec![Layer::Tree(rootfs("pause")?)],
        entrypoint: vec!["/pause".into()],
        cmd: vec![],
    })
}

/// The sample pods' image: a shell, iproute2, ping, iptables/nftables, socat.
pub fn tools() -> anyhow::Result<Image> {
    Ok(Image {
        name: TOOLS_IMAGE.into(),
        layers: vec![Layer::Tree(rootfs("tools")?)],
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
    })
}

/// The operator image tagged `tag`: the base root filesystem (libc, a shell,
/// coreutils: what debian:bookworm-slim gives the Containerfile build) and the two
/// release binaries from `release_dir`.
pub fn operator(tag: &str, release_dir: &Path) -> anyhow::Result<Image> {
    let mut files = Vec::new();
    for name in OPERATOR_BINARIES {
        let source = release_dir.join(name);
        anyhow::ensure!(
            source.is_file(),
            "{} is missing: run `cargo build --release -p node-network-operator -p nno-cni-shim` (hack/test.sh does)",
            source.display()
        );
        files.push((source, format!("{OPERATOR_BIN_DIR}/{name}")));
    }
    Ok(Image {
        name: format!("{OPERATOR_REPOSITORY}:{tag}"),
        layers: vec![Layer::Tree(rootfs("base")?), Layer::Files(files)],
        entrypoint: vec![OPERATOR_ENTRYPOINT.into()],
        cmd: vec![],
    })
}

/// This workspace's release directory (`target/release`, or under CARGO_TARGET_DIR).
pub fn release_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release")
}

impl Image {
    /// The archive of this image, built into `images_dir()/archives` unless an
    /// archive of the same inputs is there already.
    pub fn archive(&self) -> anyhow::Result<Archive> {
        let key = self.key()?;
        let dir = images_dir().join("archives");
        std::fs::create_dir_all(&dir)?;
        let file = self.name.replace(['/', ':'], "_");
        let path = dir.join(format!("{file}-{key}.tar"));
        let digest_file = path.with_extension("digest");
        if let (true, Ok(digest)) = (path.is_file(), std::fs::read_to_string(&digest_file)) {
            return Ok(Archive {
                name: self.name.clone(),
                path,
                digest: digest.trim().to_string(),
            });
        }
        // Stale archives of this image go: one per image stays.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let stale = entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{file}-"));
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let tmp = tempfile::Builder::new().prefix(".build-").tempdir_in(&dir)?;
        let digest = self.write_archive(tmp.path(), &tmp.path().join("image.tar"))?;
        std::fs::rename(tmp.path().join("image.tar"), &path)?;
        std::fs::write(&digest_file, &digest)?;
        Ok(Archive {
            name: self.name.clone(),
            path,
            digest,
        })
    }

    /// A short key over everything the archive is made of: names, modes, sizes and
    /// modification times of trees; contents of single files; the config.
    fn key(&self) -> anyhow::Result<String> {
        let mut h = Sha256::new();
        h.update(self.config(&[]).to_string());
        h.update(&self.name);
        for layer in &self.layers {
            match layer {
                Layer::Tree(dir) => {
                    let mut entries = Vec::new();
                    walk(dir, Path::new(""), &mut entries)?;
                    for (rel, meta) in entries {
                        use std::os::unix::fs::MetadataExt;
                        h.update(format!(
                            "{}\0{}\0{}\0{}\n",
                            rel.display(),
                            meta.mode(),
                            meta.size(),
                            meta.mtime()
                        ));
                    }
                }
                Layer::Files(files) => {
                    for (source, dest) in files {
                        h.update(dest);
                        let mut f = std::fs::File::open(source)?;
                        std::io::copy(&mut f, &mut h)?;
                    }
                }
            }
        }
        Ok(hex(&h.finalize())[..16].to_string())
    }

    fn config(&self, diff_ids: &[String]) -> Value {
        let mut config = json!({"Env": [PATH_ENV], "WorkingDir": "/"});
        if !self.entrypoint.is_empty() {
            config["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            config["Cmd"] = json!(self.cmd);
        }
        json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
    }

    /// Writes the OCI archive to `out`, using `scratch` for the layer blobs; the
    /// manifest's digest.
    pub fn write_archive(&self, scratch: &Path, out: &Path) -> anyhow::Result<String> {
        let mut blobs: Vec<(String, PathBuf)> = Vec::new();
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            let path = scratch.join(format!("layer-{i}.tar"));
            let (digest, size) = write_layer(layer, &path)
                .map_err(|e| anyhow::anyhow!("image {}: layer {i}: {e}", self.name))?;
            layers.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}));
            diff_ids.push(digest.clone());
            blobs.push((digest, path));
        }
        let config = serde_json::to_vec(&self.config(&diff_ids))?;
        let config_digest = sha256(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": layers,
        }))?;
        let manifest_digest = sha256(&manifest);
        let tag = self.name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": self.name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }))?;

        let mut tar = tar::Builder::new(std::fs::File::create(out)?);
        append_bytes(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        append_bytes(&mut tar, "index.json", &index)?;
        append_bytes(&mut tar, &blob_path(&config_digest), &config)?;
        append_bytes(&mut tar, &blob_path(&manifest_digest), &manifest)?;
        for (digest, path) in &blobs {
            let mut header = tar::Header::new_gnu();
            header.set_size(std::fs::metadata(path)?.len());
            header.set_mode(0o644);
            header.set_mtime(0);
            tar.append_data(&mut header, blob_path(digest), std::fs::File::open(path)?)?;
        }
        tar.into_inner()?.sync_all()?;
        Ok(manifest_digest)
    }
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8]) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    tar.append_data(&mut header, path, data)?;
    Ok(())
}

/// Writes one layer as an uncompressed tar (its digest is also its diff ID).
fn write_layer(layer: &Layer, path: &Path) -> anyhow::Result<(String, u64)> {
    let file = HashingWriter::new(std::fs::File::create(path)?);
    let mut tar = tar::Builder::new(file);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    match layer {
        Layer::Tree(dir) => {
            let mut entries = Vec::new();
            walk(dir, Path::new(""), &mut entries)?;
            for (rel, _) in entries {
                tar.append_path_with_name(dir.join(&rel), &rel)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(&rel).display()))?;
            }
        }
        Layer::Files(files) => {
            let mut dirs: Vec<String> = Vec::new();
            for (_, dest) in files {
                let mut parent = Path::new(dest.trim_start_matches('/')).parent();
                while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                    dirs.push(format!("{}/", p.display()));
                    parent = p.parent();
                }
            }
            dirs.sort();
            dirs.dedup();
            for dir in dirs {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                header.set_mtime(0);
                tar.append_data(&mut header, dir, std::io::empty())?;
            }
            for (source, dest) in files {
                let mut f = std::fs::File::open(source)?;
                let mut header = tar::Header::new_gnu();
                header.set_size(f.metadata()?.len());
                header.set_mode(0o755);
                header.set_mtime(0);
                tar.append_data(&mut header, dest.trim_start_matches('/'), &mut f)?;
            }
        }
    }
    let file = tar.into_inner()?;
    let (digest, size, f) = file.finish();
    f.sync_all()?;
    Ok((digest, size))
}

/// Every entry under `dir` (relative paths, parents before children, sorted), without
/// following symbolic links.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = rel.join(entry.file_name());
        let meta = entry.path().symlink_metadata()?;
        let is_dir = meta.is_dir();
        out.push((path.clone(), meta));
        if is_dir {
            walk(dir, &path, out)?;
        }
    }
    Ok(())
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (String, u64, W) {
        (
            format!("sha256:{}", hex(&self.hash.finalize())),
            self.size,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The paths `Containerfile` copies the binaries to and its ENTRYPOINT, as
/// (destination directory of each `COPY --from=build`ed binary, entrypoint).
pub fn containerfile_layout(containerfile: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut copies = Vec::new();
    let mut entrypoint = Vec::new();
    for line in containerfile.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("COPY --from=build ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [source, dest] = words.as_slice() {
                let name = source.rsplit('/').next().unwrap_or(source).to_string();
                copies.push((name, dest.trim_end_matches('/').to_string()));
            }
        } else if let Some(rest) = line.strip_prefix("ENTRYPOINT ") {
            entrypoint = serde_json::from_str(rest).unwrap_or_default();
        }
    }
    (copies, entrypoint)
}

/// Reads a whole archive member (for tests).
pub fn read_member(archive: &Path, member: &str) -> anyhow::Result<Vec<u8>> {
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    for entry in tar.entries()? {
        let mut entry = entry?;
        if entry.path()?.as_ref() == Path::new(member) {
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            return Ok(data);
        }
    }
    anyhow::bail!("{}: no member {member}", archive.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_oci_layouts_whose_digests_hold() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/hello"), "#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        let extra = dir.path().join("tool");
        std::fs::write(&extra, "binary").unwrap();
        let image = Image {
            name: "example.test/a/b:1.2".into(),
            layers: vec![
                Layer::Tree(root.clone()),
                Layer::Files(vec![(extra, "/usr/local/bin/tool".into())]),
            ],
            entrypoint: vec!["/usr/local/bin/tool".into()],
            cmd: vec![],
        };
        let out = dir.path().join("image.tar");
        let digest = image.write_archive(dir.path(), &out).unwrap();

        let index: Value = serde_json::from_slice(&read_member(&out, "index.json").unwrap()).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], digest);
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "example.test/a/b:1.2"
        );
        assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], "1.2");
        let manifest_bytes = read_member(&out, &blob_path(&digest)).unwrap();
        assert_eq!(sha256(&manifest_bytes), digest);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config_bytes = read_member(&out, &blob_path(config_digest)).unwrap();
        assert_eq!(sha256(&config_bytes), config_digest);
        let config: Value = serde_json::from_slice(&config_bytes).unwrap();
        assert_eq!(config["config"]["Entrypoint"], json!(["/usr/local/bin/tool"]));
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        for (i, layer) in layers.iter().enumerate() {
            let d = layer["digest"].as_str().unwrap();
            let blob = read_member(&out, &blob_path(d)).unwrap();
            assert_eq!(sha256(&blob), d);
            assert_eq!(blob.len() as u64, layer["size"].as_u64().unwrap());
            assert_eq!(config["rootfs"]["diff_ids"][i], d);
        }
        // The tree layer keeps the symlink as a symlink, and paths are relative.
        let tree = read_member(&out, &blob_path(layers[0]["digest"].as_str().unwrap())).unwrap();
        let mut names = Vec::new();
        for e in tar::Archive::new(tree.as_slice()).entries().unwrap() {
            let e = e.unwrap();
            names.push((e.path().unwrap().display().to_string(), e.header().entry_type()));
        }
        assert!(
            names.contains(&("bin".into(), tar::EntryType::Symlink)),
            "{names:?}"
        );
        assert!(names.iter().any(|(n, _)| n == "usr/bin/hello"), "{names:?}");

        // Same inputs, same archive.
        let again = dir.path().join("again.tar");
        assert_eq!(image.write_archive(dir.path(), &again).unwrap(), digest);
    }

    #[test]
    fn containerfile_layout_reads_copies_and_entrypoint() {
        let text = "FROM x AS build\nRUN cargo build\nFROM y\nCOPY --from=build /src/target/release/a /usr/local/bin/\nCOPY --from=build /src/target/release/b /usr/local/bin/\nENTRYPOINT [\"/usr/local/bin/a\"]\n";
        let (copies, entrypoint) = containerfile_layout(text);
        assert_eq!(
            copies,
            vec![
                ("a".to_string(), "/usr/local/bin".to_string()),
                ("b".to_string(), "/usr/local/bin".to_string())
            ]
        );
        assert_eq!(entrypoint, vec!["/usr/local/bin/a".to_string()]);
    }
}
