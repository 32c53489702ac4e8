//! The CRD YAML the chart ships is exactly what `node-network-operator crds` prints.

const CHART_CRDS: &str = "../charts/node-network-operator/crds/crds.yaml";

#[test]
fn chart_crds_are_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART_CRDS);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = nno::api::crds_yaml().unwrap();
    assert!(
        committed == generated,
        "{} is stale: run `cargo run -p node-network-operator -- crds > charts/node-network-operator/crds/crds.yaml`",
        path.display()
    );
}

#[test]
fn crds_are_cluster_scoped_with_a_status_subresource() {
    for crd in nno::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        assert_eq!(crd.spec.group, "nno.dev", "{name}");
        assert_eq!(crd.spec.scope, "Cluster", "{name}");
        assert_eq!(crd.spec.versions.len(), 1, "{name}");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: no status subresource"
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Ready") && columns.contains(&"Age"),
            "{name}: columns {columns:?}"
        );
    }
}

#[test]
fn only_formats_the_api_server_knows() {
    let yaml = nno::api::crds_yaml().unwrap();
    for line in yaml.lines().filter(|l| l.trim_start().starts_with("format:")) {
        let format = line.trim_start().trim_start_matches("format:").trim();
        assert!(
            ["int32", "int64", "date-time", "byte", "double", "float"].contains(&format),
            "the API server warns about format {format:?} on every apply"
        );
    }
    assert!(yaml.contains("maximum: 65535"), "bounds stay");
}
