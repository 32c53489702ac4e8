//! Paced rollout on the node: which generation of each Network and Link this node
//! applies, and what it remembers.
//!
//! An object this node has never applied gets its current generation at once. An
//! object with a generation in force here keeps that one until the controller lets
//! this node apply the current one (`status.rollout`; an object the controller has
//! not taken on, without one, is not held back). Every newly applied generation
//! is probed (see [`super::probe`]); one that fails is rolled back to the last good
//! generation, or, when there is none, undone (owned interfaces removed, an unmanaged
//! interface taken out of its bridge), and not tried again until the spec changes.
//!
//! The last good generation of each object (with its spec) is kept in a file beside
//! the readiness socket, so that a restarted agent keeps the configuration it had.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::desired::Want;
use crate::api::node_state::{NodeNetworkStateStatus, Owner, OwnerKind};
use crate::api::rollout::{AppliedGeneration, RolloutStatus};
use crate::api::{Link, Network};
use crate::netlink::DesiredKind;

/// Reasons of a rolled-back generation.
pub mod reason {
    /// The interfaces were Ready before the change and are not within the probe's time.
    pub const NOT_READY_AFTER_CHANGE: &str = "NotReadyAfterChange";
    /// The API server could not be reached over the node's network after the change.
    pub const API_SERVER_UNREACHABLE: &str = "APIServerUnreachable";
    /// A peer's VTEP could not be reached over the carrier after the change.
    pub const PEER_UNREACHABLE: &str = "PeerUnreachable";
    /// The interface's state while its generation is rolled back.
    pub const ROLLED_BACK: &str = "RolledBack";
}

/// A Network or a Link, as far as pacing is concerned.
pub trait Paced: Resource<DynamicType = ()> + Clone {
    type Spec: Serialize + DeserializeOwned;
    const KIND: OwnerKind;
    fn spec(&self) -> &Self::Spec;
    fn spec_mut(&mut self) -> &mut Self::Spec;
    fn rollout(&self) -> Option<&RolloutStatus>;
    fn node_selector(&self) -> &crate::api::LabelSelector;
}

impl Paced for Network {
    type Spec = crate::api::NetworkSpec;
    const KIND: OwnerKind = OwnerKind::Network;
    fn spec(&self) -> &Self::Spec {
        &self.spec
    }
    fn spec_mut(&mut self) -> &mut Self::Spec {
        &mut self.spec
    }
    fn rollout(&self) -> Option<&RolloutStatus> {
        self.status.as_ref()?.rollout.as_ref()
    }
    fn node_selector(&self) -> &crate::api::LabelSelector {
        &self.spec.node_selector
    }
}

impl Paced for Link {
    type Spec = crate::api::LinkSpec;
    const KIND: OwnerKind = OwnerKind::Link;
    fn spec(&self) -> &Self::Spec {
        &self.spec
    }
    fn spec_mut(&mut self) -> &mut Self::Spec {
        &mut self.spec
    }
    fn rollout(&self) -> Option<&RolloutStatus> {
        self.status.as_ref()?.rollout.as_ref()
    }
    fn node_selector(&self) -> &crate::api::LabelSelector {
        &self.spec.node_selector
    }
}

fn owner_of<K: Paced>(obj: &K) -> Owner {
    Owner {
        kind: K::KIND,
        name: obj.name_any(),
    }
}

fn key(owner: &Owner) -> String {
    format!("{}/{}", owner.kind_str(), owner.name)
}

/// What the node remembers of one object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub uid: String,
    /// The last generation that passed its probe here, with its spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub good: Option<Good>,
    /// A newer generation rolled back here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failed>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Good {
    pub generation: i64,
    pub spec: serde_json::Value,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub generation: i64,
    pub reason: String,
    pub message: String,
}

/// Which configuration of an object the node applies.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// The current generation.
    Current,
    /// The last good one, while the current one waits for the controller or was
    /// rolled back.
    Good(Good),
    /// None: its only generation here was rolled back.
    Released(Failed),
}

/// The configuration `node` applies of an object at `generation` with `uid`;
/// `leaving` when the object is being deleted or no longer selects the node (its
/// removal is not paced: the controller no longer counts the node).
pub fn choose(
    entry: Option<&Entry>,
    uid: &str,
    generation: i64,
    rollout: Option<&RolloutStatus>,
    node: &str,
    leaving: bool,
) -> Choice {
    let Some(entry) = entry.filter(|e| e.uid == uid) else {
        return Choice::Current; // never applied here: nothing to keep
    };
    if leaving {
        return Choice::Current;
    }
    match (&entry.good, &entry.failed) {
        (Some(good), Some(f)) if f.generation == generation => Choice::Good(good.clone()),
        (None, Some(f)) if f.generation == generation => Choice::Released(f.clone()),
        (Some(good), _) if good.generation == generation => Choice::Current,
        // Paced once the controller has taken the object on (`status.rollout`); one
        // it has never seen (no controller, or just created) is not held back.
        (Some(good), _) if rollout.is_some_and(|r| !r.admits(generation, node)) => Choice::Good(good.clone()),
        _ => Choice::Current,
    }
}

/// A generation applied and not yet probed.
#[derive(Clone, Debug)]
struct Probing {
    generation: i64,
    uid: String,
    spec: serde_json::Value,
    since: Instant,
    /// Every interface of the object was Ready before: then it must be again.
    was_ready: bool,
}

/// A probe to run now.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub owner: Owner,
    pub generation: i64,
    /// Peers' VTEPs to reach over the carrier (address, VXLAN port).
    pub peers: Vec<std::net::SocketAddr>,
}

/// The outcome of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail { reason: String, message: String },
}

/// The node's pacing state: the remembered generations and the probes under way.
pub struct Pacer {
    node: String,
    path: Option<PathBuf>,
    memory: BTreeMap<String, Entry>,
    probing: BTreeMap<Owner, Probing>,
    /// The choice made for each object at the last view.
    choices: BTreeMap<Owner, Choice>,
    timeout: Duration,
}

impl Pacer {
    /// Loads the memory from `path` (none yet, or unreadable: empty, with a warning).
    pub fn load(node: &str, path: Option<PathBuf>, timeout: Duration) -> Self {
        let memory = path
            .as_deref()
            .and_then(|p| match std::fs::read(p) {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        warn!(file = %p.display(), error = %e, "cannot read the remembered generations; starting without them");
                        None
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    warn!(file = %p.display(), error = %e, "cannot read the remembered generations; starting without them");
                    None
                }
            })
            .unwrap_or_default();
        Self {
            node: node.to_string(),
            path,
            memory,
            probing: BTreeMap::new(),
            choices: BTreeMap::new(),
            timeout,
        }
    }

    /// How long a probe may wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        if let Err(e) = write_atomically(path, &self.memory) {
            warn!(file = %path.display(), error = %e, "cannot keep the remembered generations; a restart would apply current generations");
        }
    }

    /// The objects as this node applies them: each with the spec and generation it
    /// chose. Forgets objects that are gone.
    pub fn view(
        &mut self,
        networks: &[Arc<Network>],
        links: &[Arc<Link>],
        labels: &BTreeMap<String, String>,
    ) -> (Vec<Arc<Network>>, Vec<Arc<Link>>) {
        self.choices.clear();
        let networks = networks.iter().map(|n| self.view_one(n, labels)).collect();
        let links = links.iter().map(|l| self.view_one(l, labels)).collect();
        let present: BTreeSet<String> = self.choices.keys().map(key).collect();
        let before = self.memory.len();
        self.memory.retain(|k, _| present.contains(k));
        self.probing.retain(|o, _| present.contains(&key(o)));
        if self.memory.len() != before {
            self.save();
        }
        (networks, links)
    }

    fn view_one<K: Paced>(&mut self, obj: &Arc<K>, labels: &BTreeMap<String, String>) -> Arc<K> {
        let owner = owner_of(obj.as_ref());
        let uid = obj.meta().uid.clone().unwrap_or_default();
        let generation = obj.meta().generation.unwrap_or_default();
        let choice = choose(
            self.memory.get(&key(&owner)),
            &uid,
            generation,
            obj.rollout(),
            &self.node,
            obj.meta().deletion_timestamp.is_some() || !obj.node_selector().matches(labels),
        );
        let viewed = match &choice {
            Choice::Good(good) => match serde_json::from_value(good.spec.clone()) {
                Ok(spec) => {
                    let mut old = obj.as_ref().clone();
                    *old.spec_mut() = spec;
                    old.meta_mut().generation = Some(good.generation);
                    Arc::new(old)
                }
                Err(e) => {
                    warn!(object = %key(&owner), error = %e, "the remembered spec no longer reads; applying the current generation");
                    obj.clone()
                }
            },
            _ => obj.clone(),
        };
        self.choices.insert(owner, choice);
        viewed
    }

    /// Applies what the choices mean to the wants: interfaces of a rolled-back first
    /// generation are undone, and rolled-back generations are named.
    pub fn adjust(&self, wants: &mut [Want]) {
        for want in wants {
            let Some(entry) = self.memory.get(&key(&want.owner)) else {
                continue;
            };
            let Some(failed) = &entry.failed else { continue };
            let rolled_back = format!(
                "generation {} was rolled back on this node ({}: {}); it is not applied again until the spec changes",
                failed.generation, failed.reason, failed.message
            );
            match self.choices.get(&want.owner) {
                Some(Choice::Released(_)) => {
                    match want.link.as_mut() {
                        Some(link) if matches!(link.kind, DesiredKind::Unmanaged { .. }) => {
                            link.kind = DesiredKind::Unmanaged {
                                master: None,
                                allow_uplink: false,
                                release: true,
                            };
                        }
                        _ => want.link = None,
                    }
                    want.hold = Some((reason::ROLLED_BACK.to_string(), rolled_back));
                }
                Some(Choice::Good(_)) => {
                    if let Some(link) = want.link.as_mut()
                        && let DesiredKind::Unmanaged {
                            master: None,
                            release,
                            ..
                        } = &mut link.kind
                    {
                        *release = true;
                    }
                    want.notes.push(rolled_back);
                }
                _ => {}
            }
        }
    }

    /// Starts probing what was newly applied and returns the probes due now, given
    /// the wants the engine has applied and the report they make.
    pub fn due(
        &mut self,
        networks: &[Arc<Network>],
        links: &[Arc<Link>],
        wants: &[Want],
        status: &NodeNetworkStateStatus,
        last: Option<&NodeNetworkStateStatus>,
        now: Instant,
    ) -> (Vec<Job>, Vec<(Owner, Outcome)>) {
        let mut current: Vec<(Owner, String, i64, serde_json::Value)> = Vec::new();
        collect(networks, &mut current);
        collect(links, &mut current);
        let mut jobs = Vec::new();
        let mut failed = Vec::new();
        for (owner, uid, generation, spec) in current {
            if self.choices.get(&owner) != Some(&Choice::Current) {
                self.probing.remove(&owner);
                continue;
            }
            let entry = self.memory.get(&key(&owner)).filter(|e| e.uid == uid);
            if entry
                .and_then(|e| e.good.as_ref())
                .is_some_and(|g| g.generation == generation)
            {
                self.probing.remove(&owner);
                continue;
            }
            let mine: Vec<&Want> = wants.iter().filter(|w| w.owner == owner).collect();
            if mine.is_empty() {
                continue; // not wanted on this node (not selected, or lost a conflict)
            }
            let probing = self
                .probing
                .entry(owner.clone())
                .and_modify(|p| {
                    if p.generation != generation || p.uid != uid {
                        *p = Probing {
                            generation,
                            uid: uid.clone(),
                            spec: spec.clone(),
                            since: now,
                            was_ready: false,
                        };
                    }
                })
                .or_insert_with(|| Probing {
                    generation,
                    uid: uid.clone(),
                    spec: spec.clone(),
                    since: now,
                    // A change from a Ready configuration must be Ready again.
                    was_ready: entry.is_some_and(|e| e.good.is_some())
                        && all_ready(last, &owner).unwrap_or(false),
                });
            let ready = all_ready(Some(status), &owner).unwrap_or(false);
            if probing.was_ready && !ready {
                if now.duration_since(probing.since) >= self.timeout {
                    let (r, m) = first_problem(status, &owner);
                    failed.push((
                        owner.clone(),
                        Outcome::Fail {
                            reason: reason::NOT_READY_AFTER_CHANGE.to_string(),
                            message: format!("not Ready {:?} after the change: {r}: {m}", self.timeout),
                        },
                    ));
                }
                continue;
            }
            jobs.push(Job {
                owner: owner.clone(),
                generation,
                peers: mine.iter().flat_map(|w| peers(w)).collect(),
            });
        }
        (jobs, failed)
    }

    /// When a probe waiting for readiness gives up, to wake the agent.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.probing
            .values()
            .filter(|p| p.was_ready)
            .map(|p| p.since + self.timeout)
            .min()
    }

    /// Records a probe's outcome; true when the configuration to apply changes.
    pub fn record(&mut self, owner: &Owner, outcome: Outcome) -> bool {
        let Some(p) = self.probing.remove(owner) else {
            return false;
        };
        let entry = self.memory.entry(key(owner)).or_insert_with(|| Entry {
            uid: p.uid.clone(),
            good: None,
            failed: None,
        });
        if entry.uid != p.uid {
            *entry = Entry {
                uid: p.uid.clone(),
                good: None,
                failed: None,
            };
        }
        let revert = match outcome {
            Outcome::Pass => {
                info!(object = %key(owner), generation = p.generation, "generation in force and probed");
                entry.good = Some(Good {
                    generation: p.generation,
                    spec: p.spec,
                });
                entry.failed = None;
                false
            }
            Outcome::Fail { reason, message } => {
                warn!(object = %key(owner), generation = p.generation, %reason, %message, "probe failed: rolling the generation back");
                entry.failed = Some(Failed {
                    generation: p.generation,
                    reason,
                    message,
                });
                true
            }
        };
        self.save();
        revert
    }

    /// The generations in force, for the NodeNetworkState.
    pub fn generations(&self) -> Vec<AppliedGeneration> {
        self.choices
            .keys()
            .filter_map(|owner| {
                let e = self.memory.get(&key(owner))?;
                Some(AppliedGeneration {
                    kind: owner.kind,
                    name: owner.name.clone(),
                    generation: e.good.as_ref().map(|g| g.generation),
                    failed_generation: e.failed.as_ref().map(|f| f.generation),
                    reason: e.failed.as_ref().map(|f| f.reason.clone()).unwrap_or_default(),
                    message: e.failed.as_ref().map(|f| f.message.clone()).unwrap_or_default(),
                })
            })
            .collect()
    }
}

fn collect<K: Paced>(objs: &[Arc<K>], out: &mut Vec<(Owner, String, i64, serde_json::Value)>) {
    for obj in objs {
        if obj.meta().deletion_timestamp.is_some() {
            continue;
        }
        let Ok(spec) = serde_json::to_value(obj.spec()) else {
            continue;
        };
        out.push((
            owner_of(obj.as_ref()),
            obj.meta().uid.clone().unwrap_or_default(),
            obj.meta().generation.unwrap_or_default(),
            spec,
        ));
    }
}

/// Whether every interface of `owner` is Ready in `status`; `None` without any.
fn all_ready(status: Option<&NodeNetworkStateStatus>, owner: &Owner) -> Option<bool> {
    let mut mine = status?.owned_by(owner).peekable();
    mine.peek()?;
    Some(mine.all(|i| i.ready))
}

fn first_problem(status: &NodeNetworkStateStatus, owner: &Owner) -> (String, String) {
    status
        .owned_by(owner)
        .find(|i| !i.ready)
        .map(|i| (i.reason.clone(), format!("{}: {}", i.name, i.message)))
        .unwrap_or_default()
}

fn peers(want: &Want) -> Vec<std::net::SocketAddr> {
    match want.link.as_ref().map(|l| &l.kind) {
        Some(DesiredKind::Vxlan(cfg)) => cfg
            .remote
            .iter()
            .chain(&cfg.peers)
            .map(|ip| std::net::SocketAddr::new(*ip, cfg.port))
            .collect(),
        _ => Vec::new(),
    }
}

fn write_atomically(path: &Path, memory: &BTreeMap<String, Entry>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(memory)?)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests;
