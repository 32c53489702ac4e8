//! The cluster-wide controller: Network -> NetworkAttachmentDefinitions, effective
//! MTU, status aggregation, conflicts and cleanup.

pub mod nad;
pub mod status;
