//! whereabouts for the test cluster: its CRDs, ServiceAccount and kubeconfig, the
//! IPAM object a NAD names, and the allocations it made.

use super::*;

/// Where whereabouts keeps its IPPools, OverlappingRangeIPReservations and leader
/// Lease: the namespace of its kubeconfig's context (kube-system is also its default).
pub const WHEREABOUTS_NAMESPACE: &str = "kube-system";
/// The ServiceAccount whereabouts authenticates as.
pub const WHEREABOUTS_ACCOUNT: &str = "whereabouts";
/// The whereabouts CRD files `hack/tools.sh` copies from the pinned module.
const WHEREABOUTS_CRDS: &[&str] = &[
    "whereabouts.cni.cncf.io_ippools.yaml",
    "whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml",
    "whereabouts.cni.cncf.io_nodeslicepools.yaml",
];

impl Cni {
    /// A whereabouts `ipam` object with this cluster's kubeconfig, merged with `extra`
    /// (`range`, `exclude`, `gateway`, `network_name`, ...).
    pub fn whereabouts_ipam(&self, extra: Value) -> Value {
        let mut ipam = json!({
            "type": "whereabouts",
            "kubernetes": {"kubeconfig": self.whereabouts_kubeconfig.display().to_string()},
        });
        if let (Some(ipam), Some(extra)) = (ipam.as_object_mut(), extra.as_object()) {
            ipam.extend(extra.clone());
        }
        ipam
    }

    /// Every whereabouts allocation in [`WHEREABOUTS_NAMESPACE`], from the IPPools.
    pub async fn allocations(&self) -> anyhow::Result<Vec<Allocation>> {
        let pools = self.whereabouts_objects("IPPool", "ippools").await?;
        let mut out = Vec::new();
        for pool in pools {
            let name = pool.metadata.name.clone().unwrap_or_default();
            let range = pool.data["spec"]["range"].as_str().unwrap_or_default();
            let first: IpAddr = range
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|e| anyhow::anyhow!("IPPool {name}: range {range:?}: {e}"))?;
            let empty = serde_json::Map::new();
            let allocations = pool.data["spec"]["allocations"].as_object().unwrap_or(&empty);
            for (offset, a) in allocations {
                let offset: u128 = offset
                    .parse()
                    .map_err(|e| anyhow::anyhow!("IPPool {name}: offset {offset:?}: {e}"))?;
                out.push(Allocation {
                    pool: name.clone(),
                    ip: add(first, offset),
                    pod_ref: a["podref"].as_str().unwrap_or_default().to_string(),
                    ifname: a["ifname"].as_str().unwrap_or_default().to_string(),
                    container_id: a["id"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// Every whereabouts OverlappingRangeIPReservation (`name`, `spec.podref`).
    pub async fn reservations(&self) -> anyhow::Result<Vec<(String, String)>> {
        let list = self
            .whereabouts_objects("OverlappingRangeIPReservation", "overlappingrangeipreservations")
            .await?;
        let mut out: Vec<(String, String)> = list
            .into_iter()
            .map(|r| {
                let podref = r.data["spec"]["podref"].as_str().unwrap_or_default().to_string();
                (r.metadata.name.unwrap_or_default(), podref)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn whereabouts_objects(&self, kind: &str, plural: &str) -> anyhow::Result<Vec<DynamicObject>> {
        let gvk = GroupVersionKind::gvk("whereabouts.cni.cncf.io", "v1alpha1", kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), WHEREABOUTS_NAMESPACE, &resource);
        Ok(api.list(&ListParams::default()).await?.items)
    }
}

/// One address whereabouts handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub pool: String,
    pub ip: IpAddr,
    /// `namespace/name` of the pod.
    pub pod_ref: String,
    pub ifname: String,
    pub container_id: String,
}

fn add(ip: IpAddr, offset: u128) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from((u32::from(v4) as u128 + offset) as u32)),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) + offset).into()),
    }
}

/// Installs the whereabouts CRDs (from the pinned module, copied by `hack/tools.sh`),
/// a ServiceAccount in [`WHEREABOUTS_NAMESPACE`] with only what the IPAM plugin calls,
/// and a kubeconfig for it whose context names that namespace. Returns its path.
pub async fn install_whereabouts(cluster: &Cluster) -> anyhow::Result<PathBuf> {
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client());
    let params = PatchParams::apply(MANAGER).force();
    let mut names = Vec::new();
    for file in WHEREABOUTS_CRDS {
        let path = tool(&format!("whereabouts-crds/{file}"));
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|e| anyhow::anyhow!("installing CRD {name}: {e}"))?;
        names.push(name);
    }
    for name in &names {
        let established = await_condition(crds.clone(), name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .map_err(|_| anyhow::anyhow!("CRD {name} not established after 30s"))??;
    }

    // What the IPAM plugin calls on ADD and DEL (read from its sources, v0.9.2):
    // IPPools get/list (a connectivity check)/create/patch; with
    // enable_overlapping_ranges (its default) OverlappingRangeIPReservations
    // get/create/delete; and a leader-election Lease named "whereabouts" that
    // serialises allocations (get/create/update). All namespaced.
    let ns = WHEREABOUTS_NAMESPACE;
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "nno-e2e-whereabouts", "namespace": ns},
        "rules": [
            {"apiGroups": ["whereabouts.cni.cncf.io"], "resources": ["ippools"],
             "verbs": ["get", "list", "create", "patch"]},
            {"apiGroups": ["whereabouts.cni.cncf.io"], "resources": ["overlappingrangeipreservations"],
             "verbs": ["get", "create", "delete"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "verbs": ["get", "create", "update"]},
        ],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "nno-e2e-whereabouts", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "nno-e2e-whereabouts"},
        "subjects": [{"kind": "ServiceAccount", "name": WHEREABOUTS_ACCOUNT, "namespace": ns}],
    });
    let roles: Api<Role> = Api::namespaced(cluster.client(), ns);
    roles
        .patch("nno-e2e-whereabouts", &params, &Patch::Apply(&role))
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(cluster.client(), ns);
    bindings
        .patch("nno-e2e-whereabouts", &params, &Patch::Apply(&binding))
        .await?;

    let (token_kubeconfig, _) = cluster.service_account(ns, WHEREABOUTS_ACCOUNT).await?;
    // whereabouts takes its namespace from the current context (NewKubernetesIPAM).
    let mut config: Value = serde_yaml::from_str(&std::fs::read_to_string(&token_kubeconfig)?)?;
    for context in config["contexts"].as_array_mut().into_iter().flatten() {
        context["context"]["namespace"] = json!(ns);
    }
    let path = cluster.dir().join("whereabouts.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_offsets_count_from_the_range_address() {
        let v4: IpAddr = "192.168.50.0".parse().unwrap();
        assert_eq!(add(v4, 5), "192.168.50.5".parse::<IpAddr>().unwrap());
        assert_eq!(add(v4, 300), "192.168.51.44".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "fd00::".parse().unwrap();
        assert_eq!(add(v6, 0x1_0001), "fd00::1:1".parse::<IpAddr>().unwrap());
    }
}
