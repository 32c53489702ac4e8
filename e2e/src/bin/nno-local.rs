//! `nno-local`: the product on an embedded default. Starts a local control plane
//! (real etcd, kube-apiserver and kube-controller-manager on a 198.18.0.0/15 underlay
//! bridge), installs the CRDs, applies the samples, prints how to reach it, and runs
//! until interrupted; everything is torn down on exit.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use nno_e2e::{Cluster, samples};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.client();
    let params = PatchParams::apply("nno.dev/local").force();
    for (file, doc) in samples::documents()? {
        let obj: DynamicObject = serde_json::from_value(doc.clone())?;
        let gvk = GroupVersionKind::try_from(obj.types.as_ref().ok_or_else(|| anyhow::anyhow!("no kind"))?)?;
        let plural = format!("{}s", gvk.kind.to_lowercase());
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, &plural));
        let name = obj.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&obj))
            .await
            .map_err(|e| anyhow::anyhow!("applying {} {}/{name}: {e}", file.display(), gvk.kind))?;
        println!("applied {} {}/{name}", file.display(), gvk.kind);
    }
    println!();
    println!("control plane ready at {}", cluster.server());
    println!("  export KUBECONFIG={}", cluster.kubeconfig().display());
    println!("  kubectl get networks,links,nodenetworkstates");
    println!("press Ctrl-C to stop and remove everything");
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    Ok(())
}
