//! The cluster-wide controller: Network -> NetworkAttachmentDefinitions, effective
//! MTU, status aggregation, conflicts and cleanup; Link status. Runs once per cluster,
//! leader-elected through a coordination Lease so that two replicas are safe.

pub mod context;
pub mod lease;
pub mod link;
pub mod metrics;
pub mod nad;
pub mod network;
pub mod rollout;
pub mod run;
pub mod status;

/// Field manager of everything the controller writes.
pub const MANAGER: &str = "nno.dev/controller";
/// Finalizer that holds a Network until its links are gone from every node.
pub const FINALIZER: &str = "nno.dev/cleanup";
/// Labels on the NADs the controller writes.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "node-network-operator";
pub const LABEL_NETWORK: &str = "nno.dev/network";
pub const LABEL_ROLE: &str = "nno.dev/role";

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {object}: {source}")]
    Kube {
        op: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// A short label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { op, .. } => op,
            Error::Serialize { .. } => "serialize",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps a kube error with the operation and object.
pub(crate) fn kube_err(op: &'static str, object: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let object = object.into();
    move |source| Error::Kube { op, object, source }
}
