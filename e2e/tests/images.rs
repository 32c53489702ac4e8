//! The images the local cluster builds from files agree with what users build and
//! run: the operator image has the binaries at the paths and the entrypoint that
//! `Containerfile` gives them, under the name and tag the chart uses; the sample pods
//! name the tools image the nodes have.

use nno_e2e::image::{self, OPERATOR_BIN_DIR, OPERATOR_BINARIES, OPERATOR_ENTRYPOINT, read_member};
use nno_e2e::local::OPERATOR_TAG;
use serde_json::Value;

fn repo_file(path: &str) -> String {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

#[test]
fn the_operator_image_matches_the_containerfile() {
    let (copies, entrypoint) = image::containerfile_layout(&repo_file("Containerfile"));
    let want: Vec<(String, String)> = OPERATOR_BINARIES
        .iter()
        .map(|b| (b.to_string(), OPERATOR_BIN_DIR.to_string()))
        .collect();
    assert_eq!(copies, want, "binaries and their directory in Containerfile");
    assert_eq!(entrypoint, vec![OPERATOR_ENTRYPOINT.to_string()]);

    let archive = image::operator(OPERATOR_TAG, &image::release_dir())
        .unwrap()
        .archive()
        .unwrap();
    let index: Value = serde_json::from_slice(&read_member(&archive.path, "index.json").unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |digest: &str| {
        read_member(
            &archive.path,
            &format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let manifest: Value = serde_json::from_slice(&blob(manifest_digest)).unwrap();
    let config: Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!([OPERATOR_ENTRYPOINT])
    );
    let top = blob(manifest["layers"][1]["digest"].as_str().unwrap());
    let mut files = Vec::new();
    for entry in tar::Archive::new(top.as_slice()).entries().unwrap() {
        files.push(format!("/{}", entry.unwrap().path().unwrap().display()));
    }
    for binary in OPERATOR_BINARIES {
        assert!(
            files.contains(&format!("{OPERATOR_BIN_DIR}/{binary}")),
            "{binary} in the image: {files:?}"
        );
    }
    // The base layer has what the chart's init container runs (/bin/sh, cp, mv).
    let base = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let mut names = Vec::new();
    for entry in tar::Archive::new(base.as_slice()).entries().unwrap() {
        names.push(entry.unwrap().path().unwrap().display().to_string());
    }
    for needed in ["usr/bin/sh", "usr/bin/cp", "usr/bin/mv"] {
        assert!(names.iter().any(|n| n == needed), "{needed} in the base layer");
    }
}

#[test]
fn the_chart_and_the_samples_name_the_images_the_nodes_have() {
    let values: Value = serde_yaml::from_str(&repo_file("charts/node-network-operator/values.yaml")).unwrap();
    assert_eq!(values["image"]["repository"], image::OPERATOR_REPOSITORY);
    let chart: Value = serde_yaml::from_str(&repo_file("charts/node-network-operator/Chart.yaml")).unwrap();
    assert_eq!(
        chart["appVersion"], OPERATOR_TAG,
        "the chart's default tag is the one imported"
    );
    let mut images = Vec::new();
    for file in ["pods.yaml", "ha-pods.yaml"] {
        let pods = repo_file(&format!("samples/gateway-network/{file}"));
        for doc in serde_yaml::Deserializer::from_str(&pods) {
            let doc: Value = serde::Deserialize::deserialize(doc).unwrap();
            let spec = match doc["kind"].as_str() {
                Some("Pod") => &doc["spec"],
                _ => &doc["spec"]["template"]["spec"],
            };
            for c in spec["containers"].as_array().into_iter().flatten() {
                images.push(c["image"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(!images.is_empty());
    assert!(
        images.iter().all(|i| i == image::TOOLS_IMAGE),
        "sample pods use the tools image: {images:?}"
    );
}
