//! The readiness state the agent owns and the server reads: a [`tokio::sync::watch`]
//! channel, so that a long poll wakes the moment the state changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

/// Reasons the readiness API itself reports. The agent reports its own reasons for
/// bridges it manages; every reason is a CamelCase word.
pub mod reason {
    /// The bridge is up and enslaves what it should.
    pub const READY: &str = "Ready";
    /// No Network or Link selecting this node asks for the bridge.
    pub const NOT_DESIRED: &str = "NotDesired";
    /// The agent has not yet computed this node's desired state since it started.
    pub const AGENT_STARTING: &str = "AgentStarting";
    /// The bridge on this node belongs to another object than the Network the
    /// caller attaches for.
    pub const OWNED_ELSEWHERE: &str = "OwnedElsewhere";
}

/// The object a bridge belongs to on this node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BridgeOwner {
    /// `Network` or `Link`.
    pub kind: String,
    pub name: String,
    /// The object's UID; empty when unknown.
    pub uid: String,
}

/// The Network a caller attaches for (named in the shim's configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForNetwork {
    pub name: String,
    /// When given, the bridge must belong to the Network of this UID (not an older
    /// one of the same name).
    pub uid: Option<String>,
}

/// Readiness of one bridge, as the agent last computed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeReadiness {
    pub ready: bool,
    /// A CamelCase word, e.g. `Ready`, `CarrierMissing`.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
    /// Whose bridge it is; `None` for the API's own answers.
    pub owner: Option<BridgeOwner>,
}

impl BridgeReadiness {
    /// A Ready bridge, with reason [`reason::READY`].
    pub fn ready(message: impl Into<String>) -> Self {
        Self {
            ready: true,
            reason: reason::READY.to_string(),
            message: message.into(),
            owner: None,
        }
    }

    /// A bridge that is not Ready, and why.
    pub fn not_ready(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            ready: false,
            reason: reason.into(),
            message: message.into(),
            owner: None,
        }
    }

    /// The same, belonging to `owner`.
    pub fn owned_by(self, owner: BridgeOwner) -> Self {
        Self {
            owner: Some(owner),
            ..self
        }
    }
}

/// Everything the server answers from, at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Whether the agent has computed the node's desired state at least once since it
    /// started. Until then no bridge is known to be desired or not.
    pub synced: bool,
    /// Every bridge some Network or Link wants on this node, by interface name.
    pub bridges: BTreeMap<String, BridgeReadiness>,
}

impl Snapshot {
    /// The readiness of bridge `name` on `node`, including the answers for a bridge the
    /// agent does not know (yet).
    pub fn bridge(&self, node: &str, name: &str) -> BridgeReadiness {
        if !self.synced {
            return BridgeReadiness::not_ready(
                reason::AGENT_STARTING,
                format!(
                    "the agent on node {node} has not synced its desired state yet, so the readiness of bridge {name} is not known"
                ),
            );
        }
        match self.bridges.get(name) {
            Some(readiness) => readiness.clone(),
            None => BridgeReadiness::not_ready(
                reason::NOT_DESIRED,
                format!("no Network or Link asks for bridge {name} on node {node}"),
            ),
        }
    }
}

impl Snapshot {
    /// The readiness of bridge `name` on `node` for a pod of Network `network`: Ready
    /// only when the bridge is Ready and belongs to that Network (a bridge of the
    /// same name made for another Network or a Link, or no longer wanted by anyone,
    /// is not the one its attachment was made for).
    pub fn bridge_for(&self, node: &str, name: &str, network: Option<&ForNetwork>) -> BridgeReadiness {
        let answer = self.bridge(node, name);
        let Some(network) = network else {
            return answer;
        };
        if !self.synced {
            return answer;
        }
        let Some(owner) = &answer.owner else {
            return BridgeReadiness::not_ready(
                answer.reason,
                format!(
                    "{}; the attachment is for Network {}",
                    answer.message, network.name
                ),
            );
        };
        let same_name = owner.kind == "Network" && owner.name == network.name;
        let same_uid = network
            .uid
            .as_ref()
            .is_none_or(|uid| owner.uid.is_empty() || *uid == owner.uid);
        if same_name && same_uid {
            return answer;
        }
        let whose = if same_name {
            format!(
                "a newer Network {} (UID {}) than the one this attachment was made for (UID {}): the NetworkAttachmentDefinition is stale",
                owner.name,
                owner.uid,
                network.uid.as_deref().unwrap_or_default()
            )
        } else {
            format!("{} {}, not to Network {}", owner.kind, owner.name, network.name)
        };
        BridgeReadiness::not_ready(
            reason::OWNED_ELSEWHERE,
            format!("bridge {name} on node {node} belongs to {whose}"),
        )
        .owned_by(owner.clone())
    }
}

/// A cheap-to-clone handle on the node's readiness state. The agent updates it; the
/// server and its long polls read it. Updates that change nothing wake nobody.
#[derive(Clone, Debug)]
pub struct Readiness {
    node: Arc<str>,
    tx: Arc<watch::Sender<Snapshot>>,
}

impl Readiness {
    /// A state for `node` that is not synced yet and knows no bridge.
    pub fn new(node: impl Into<String>) -> Self {
        let (tx, _) = watch::channel(Snapshot::default());
        Self {
            node: Arc::from(node.into()),
            tx: Arc::new(tx),
        }
    }

    /// The node this agent runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    /// Whether the agent has synced at least once.
    pub fn is_synced(&self) -> bool {
        self.tx.borrow().synced
    }

    /// The current readiness of bridge `name`.
    pub fn bridge(&self, name: &str) -> BridgeReadiness {
        self.tx.borrow().bridge(&self.node, name)
    }

    /// The current readiness of bridge `name` for a pod of `network`.
    pub fn bridge_for(&self, name: &str, network: Option<&ForNetwork>) -> BridgeReadiness {
        self.tx.borrow().bridge_for(&self.node, name, network)
    }

    /// Replaces the whole set of desired bridges and their readiness. Returns whether
    /// anything changed.
    pub fn update(&self, bridges: impl IntoIterator<Item = (String, BridgeReadiness)>) -> bool {
        let bridges: BTreeMap<_, _> = bridges.into_iter().collect();
        self.tx.send_if_modified(|state| {
            if state.bridges == bridges {
                return false;
            }
            state.bridges = bridges;
            true
        })
    }

    /// Sets the readiness of one bridge, leaving the others alone. Returns whether it
    /// changed.
    pub fn set_bridge(&self, name: impl Into<String>, readiness: BridgeReadiness) -> bool {
        let name = name.into();
        self.tx.send_if_modified(|state| {
            if state.bridges.get(&name) == Some(&readiness) {
                return false;
            }
            state.bridges.insert(name, readiness);
            true
        })
    }

    /// Forgets a bridge (it is no longer desired). Returns whether it was known.
    pub fn remove_bridge(&self, name: &str) -> bool {
        self.tx
            .send_if_modified(|state| state.bridges.remove(name).is_some())
    }

    /// Marks whether the agent has synced its desired state. Returns whether it
    /// changed.
    pub fn set_synced(&self, synced: bool) -> bool {
        self.tx.send_if_modified(|state| {
            let changed = state.synced != synced;
            state.synced = synced;
            changed
        })
    }

    /// How many long polls are waiting on this state right now (each holds one
    /// receiver; the handle itself holds none).
    pub fn waiting(&self) -> usize {
        self.tx.receiver_count()
    }

    /// A receiver that sees every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_sync_every_bridge_is_agent_starting() {
        let readiness = Readiness::new("node-a");
        readiness.set_bridge("br0", BridgeReadiness::ready("up"));
        let b = readiness.bridge("br0");
        assert!(!b.ready);
        assert_eq!(b.reason, reason::AGENT_STARTING);
        assert!(
            b.message.contains("node-a") && b.message.contains("br0"),
            "{}",
            b.message
        );
    }

    #[test]
    fn unknown_bridge_after_sync_is_not_desired_naming_node_and_bridge() {
        let readiness = Readiness::new("node-a");
        readiness.set_synced(true);
        let b = readiness.bridge("br-x");
        assert_eq!(
            b,
            BridgeReadiness::not_ready(
                reason::NOT_DESIRED,
                "no Network or Link asks for bridge br-x on node node-a"
            )
        );
    }

    #[test]
    fn known_bridge_reports_what_the_agent_set() {
        let readiness = Readiness::new("n");
        readiness.set_synced(true);
        readiness.set_bridge("br0", BridgeReadiness::not_ready("CarrierMissing", "no eth1"));
        assert_eq!(readiness.bridge("br0").reason, "CarrierMissing");
        readiness.set_bridge("br0", BridgeReadiness::ready("up"));
        assert!(readiness.bridge("br0").ready);
        assert!(readiness.remove_bridge("br0"));
        assert_eq!(readiness.bridge("br0").reason, reason::NOT_DESIRED);
        assert!(!readiness.remove_bridge("br0"));
    }

    #[test]
    fn update_replaces_the_whole_set() {
        let readiness = Readiness::new("n");
        readiness.set_synced(true);
        readiness.set_bridge("old", BridgeReadiness::ready("up"));
        assert!(readiness.update([("new".to_string(), BridgeReadiness::ready("up"))]));
        assert_eq!(readiness.bridge("old").reason, reason::NOT_DESIRED);
        assert!(readiness.bridge("new").ready);
        assert_eq!(readiness.snapshot().bridges.len(), 1);
    }

    #[test]
    fn updates_that_change_nothing_wake_nobody() {
        let readiness = Readiness::new("n");
        let mut rx = readiness.subscribe();
        assert!(readiness.set_synced(true));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(!readiness.set_synced(true));
        assert!(readiness.set_bridge("br0", BridgeReadiness::ready("up")));
        rx.borrow_and_update();
        assert!(!readiness.set_bridge("br0", BridgeReadiness::ready("up")));
        assert!(!readiness.update([("br0".to_string(), BridgeReadiness::ready("up"))]));
        assert!(!rx.has_changed().unwrap());
    }

    fn owner(kind: &str, name: &str, uid: &str) -> BridgeOwner {
        BridgeOwner {
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn a_bridge_is_ready_only_for_the_network_it_belongs_to() {
        let readiness = Readiness::new("node-b");
        readiness.set_synced(true);
        readiness.set_bridge(
            "br-a",
            BridgeReadiness::ready("up").owned_by(owner("Network", "a", "u-a")),
        );
        readiness.set_bridge(
            "br-l",
            BridgeReadiness::ready("up").owned_by(owner("Link", "l", "u-l")),
        );
        let for_net = |name: &str, uid: Option<&str>| ForNetwork {
            name: name.into(),
            uid: uid.map(String::from),
        };
        // Its own Network, by name, or by name and UID; and callers that name none.
        assert!(readiness.bridge_for("br-a", Some(&for_net("a", None))).ready);
        assert!(
            readiness
                .bridge_for("br-a", Some(&for_net("a", Some("u-a"))))
                .ready
        );
        assert!(readiness.bridge_for("br-a", None).ready);
        // Another Network's bridge of that name, a Link's, an older Network's.
        let other = readiness.bridge_for("br-a", Some(&for_net("b", None)));
        assert_eq!(
            (other.ready, other.reason.as_str(), other.message.as_str()),
            (
                false,
                reason::OWNED_ELSEWHERE,
                "bridge br-a on node node-b belongs to Network a, not to Network b"
            )
        );
        let link = readiness.bridge_for("br-l", Some(&for_net("b", None)));
        assert_eq!(
            link.message,
            "bridge br-l on node node-b belongs to Link l, not to Network b"
        );
        let stale = readiness.bridge_for("br-a", Some(&for_net("a", Some("u-old"))));
        assert!(!stale.ready);
        assert!(stale.message.contains("stale"), "{}", stale.message);
        // Nobody's: not desired, for the Network asked about too.
        let none = readiness.bridge_for("br-x", Some(&for_net("b", None)));
        assert_eq!(none.reason, reason::NOT_DESIRED);
        assert!(
            none.message.ends_with("the attachment is for Network b"),
            "{}",
            none.message
        );
    }

    #[test]
    fn clones_share_one_state() {
        let a = Readiness::new("n");
        let b = a.clone();
        a.set_synced(true);
        assert!(b.is_synced());
        assert_eq!(b.node(), "n");
    }
}
