//! Test harness for node-network-operator: a real etcd, kube-apiserver and
//! kube-controller-manager per test, reachable over a host underlay bridge in
//! 198.18.0.0/15, so that network namespaces acting as nodes can reach them too.
//!
//! Everything a test starts is torn down when its handle drops, also when the test
//! panics. The tools come from `hack/tools.sh` (see [`tools`]).

pub mod bench;
pub mod cluster;
pub mod fake;
pub mod image;
pub mod kind;
pub mod kubelet;
pub mod local;
pub mod node;
pub mod operator;
pub mod outside;
pub mod pki;
pub mod pod;
pub mod process;
pub mod samples;
pub mod scenarios;
pub mod testbed;
pub mod tools;
pub mod underlay;

pub use cluster::Cluster;

/// Fails the test loudly when it cannot run as root: these tests create network
/// interfaces and namespaces, and CI runs them as root. They never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (it creates network interfaces and namespaces); run it with `sudo -E hack/test.sh`"
    );
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout`
/// naming `what` and the last value seen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// Waits until Network `name` has condition `type_` with status `status`; its message.
pub async fn network_condition(
    networks: &kube::Api<nno::api::Network>,
    name: &str,
    type_: &str,
    status: &str,
    timeout: std::time::Duration,
) -> String {
    eventually(&format!("Network {name} {type_}={status}"), timeout, || async {
        let net = networks.get(name).await.map_err(|e| e.to_string())?;
        let conditions = net.status.map(|s| s.conditions).unwrap_or_default();
        let c = nno::api::common::find_condition(&conditions, type_).ok_or("no such condition yet")?;
        if c.status == status {
            Ok(c.message.clone())
        } else {
            Err(format!("{}: {}", c.status, c.message))
        }
    })
    .await
}

/// Waits until Network `name` has condition `type_` with reason `reason`; its message.
pub async fn network_reason(
    networks: &kube::Api<nno::api::Network>,
    name: &str,
    type_: &str,
    reason: &str,
    timeout: std::time::Duration,
) -> String {
    eventually(
        &format!("Network {name} {type_} reason {reason}"),
        timeout,
        || async {
            let net = networks.get(name).await.map_err(|e| e.to_string())?;
            let conditions = net.status.map(|s| s.conditions).unwrap_or_default();
            let c = nno::api::common::find_condition(&conditions, type_).ok_or("no such condition yet")?;
            if c.reason == reason {
                Ok(c.message.clone())
            } else {
                Err(format!("{}: {}", c.reason, c.message))
            }
        },
    )
    .await
}
