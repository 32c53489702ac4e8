use nno_e2e::Cluster;

#[tokio::test]
async fn cluster_starts() {
    let cluster = Cluster::start().await.unwrap();
    let out = cluster.kubectl_ok(&["get", "crd", "-o", "name"]).unwrap();
    println!("{out}");
}
