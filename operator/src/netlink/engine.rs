//! The engine: the two rtnetlink connections, the observe/plan/apply/verify pass,
//! and the event-driven loop.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use nix::sched::CloneFlags;
use rtnetlink::Handle;
use rtnetlink::sys::AsyncSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::apply::{Applier, WriteCounter};
use super::error::{Error, Operation};
use super::events::{self, EventStream, Interest};
use super::observe::observe;
use super::plan::{Problem, assess, plan};
use super::ports::PortMemory;
use super::types::{DesiredLink, LinkState, reason};

/// Rounds of observe/plan/apply within one pass. A round only follows when the
/// previous one wrote something and the node still differs: a carrier created in
/// the same pass, a bridge MTU the kernel lowered when a port joined, a VXLAN
/// deleted because the kernel refused an in-place change.
const MAX_ROUNDS: usize = 4;
/// After a cue, how long to let a burst of events settle before observing.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// Retry delays while the kernel refuses requests (no retry otherwise).
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What a pass of [`Engine::run`] did: the desired set it applied, and the states.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub desired: Vec<DesiredLink>,
    pub states: Vec<LinkState>,
}

/// Makes the links of one network namespace match a desired set. See the
/// [module documentation](super) for the contract.
pub struct Engine {
    handle: Handle,
    events: EventStream,
    tasks: Vec<JoinHandle<()>>,
    writes: WriteCounter,
    /// Passes woken by a netlink event (not by a desired change) that wrote:
    /// drift repaired.
    repairs: WriteCounter,
    /// The namespace the sockets live in, to subscribe again if the event
    /// socket dies.
    netns: File,
    interest: Interest,
    /// Foreign ports (pods' veths) of the owned bridges, to attach again.
    ports: PortMemory,
}

impl Drop for Engine {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Engine {
    /// Opens both connections in the network namespace of the calling thread.
    /// Must be called within a tokio runtime (the connections are spawned on it).
    pub fn new() -> Result<Self, Error> {
        tokio::runtime::Handle::try_current().map_err(|e| Error::Io {
            op: Operation::Subscribe,
            target: "this network namespace (no tokio runtime)".into(),
            source: std::io::Error::other(e),
        })?;
        let netns = File::open("/proc/thread-self/ns/net").map_err(|source| Error::Io {
            op: Operation::Subscribe,
            target: "/proc/thread-self/ns/net".into(),
            source,
        })?;
        let io = |source| Error::Io {
            op: Operation::Subscribe,
            target: "this network namespace".into(),
            source,
        };
        let (mut conn, handle, _) = rtnetlink::new_connection().map_err(io)?;
        // Errors carry the kernel's reason text ("Cannot change VNI").
        let socket = conn.socket_mut().socket_mut();
        socket.set_cap_ack(true).map_err(io)?;
        socket.set_ext_ack(true).map_err(io)?;
        let mut tasks = vec![tokio::spawn(conn)];
        let (events, task) = events::subscribe()?;
        tasks.push(task);
        Ok(Engine {
            handle,
            events,
            tasks,
            writes: WriteCounter::default(),
            repairs: WriteCounter::default(),
            netns,
            interest: Interest::default(),
            ports: PortMemory::default(),
        })
    }

    /// Opens both connections in the network namespace at `path` (e.g.
    /// `/run/netns/NAME`, or `/proc/PID/ns/net`) without moving the calling
    /// thread: a netlink socket belongs to the namespace of the thread that
    /// creates it, so a short-lived thread enters the namespace to create them.
    /// Must be called within a tokio runtime.
    pub fn in_netns(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let ns = File::open(path).map_err(|source| Error::Io {
            op: Operation::Subscribe,
            target: path.display().to_string(),
            source,
        })?;
        in_namespace(&ns, Engine::new)?
    }

    /// A shared view of the number of drift repairs so far: passes that a netlink
    /// event (not a change of the desired links) started and that had to write.
    pub fn repair_counter(&self) -> WriteCounter {
        self.repairs.clone()
    }

    /// A shared view of the number of netlink write requests made so far.
    pub fn write_counter(&self) -> WriteCounter {
        self.writes.clone()
    }

    /// One pass: observe, plan, apply the minimal writes in dependency order,
    /// observe again to verify (repeating while it still makes progress), and
    /// report one state per desired link, in the order given.
    pub async fn reconcile(&mut self, desired: &[DesiredLink]) -> Vec<LinkState> {
        let span = info_span!("reconcile", links = desired.len());
        self.pass(desired).instrument(span).await
    }

    async fn pass(&mut self, desired: &[DesiredLink]) -> Vec<LinkState> {
        let before = self.writes.get();
        let mut errors: HashMap<String, Error> = HashMap::new();
        for round in 1..=MAX_ROUNDS {
            let observed = match observe(&self.handle, desired).await {
                Ok(o) => o,
                Err(e) => {
                    error!(error = %e, "cannot observe the node");
                    return desired.iter().map(|d| failed(d, &e)).collect();
                }
            };
            self.ports.learn(desired, &observed);
            let mut plan = plan(desired, &observed);
            self.ports.restore(desired, &observed, &mut plan);
            let steps: Vec<_> = plan
                .steps()
                .into_iter()
                .filter(|s| !errors.contains_key(s.name()))
                .collect();
            if steps.is_empty() || round == MAX_ROUNDS {
                self.interest = Interest::new(desired, &observed, &plan);
                self.interest.watch(self.ports.indices());
                let problems = errors
                    .iter()
                    .map(|(name, e)| (name.clone(), problem(e)))
                    .collect();
                let states = assess(desired, &plan, &observed, &problems);
                let writes = self.writes.get() - before;
                let ready = states.iter().filter(|s| s.ready).count();
                if writes > 0 || !errors.is_empty() {
                    info!(writes, rounds = round, ready, "pass done");
                } else {
                    debug!(ready, "no-op pass");
                }
                return states;
            }
            debug!(round, steps = steps.len(), "applying");
            Applier::new(&self.handle, &self.writes, &observed)
                .apply(&steps, &mut errors)
                .await;
        }
        unreachable!("the last round always returns")
    }

    /// Reconciles `desired` now and again whenever it changes or a relevant
    /// netlink event arrives, publishing on `applied` the states together with the
    /// desired set they reflect (only when either changed), so a caller can tell
    /// when the engine has caught up with what it asked. Events are cues to observe
    /// again, never trusted as state; there is no periodic resync, only a backed-off
    /// retry while the kernel refuses requests. Returns when the sender of
    /// `desired` is dropped.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Vec<DesiredLink>>,
        applied: watch::Sender<Applied>,
    ) {
        let mut retry = RETRY_MIN;
        let mut woken_by_event = false;
        loop {
            let want = desired.borrow_and_update().clone();
            let before = self.writes.get();
            let new = self.reconcile(&want).await;
            if woken_by_event && self.writes.get() > before {
                self.repairs.add();
                info!(writes = self.writes.get() - before, "repaired drift");
            }
            let failing = new.iter().any(|s| s.reason == reason::NETLINK_ERROR);
            applied.send_if_modified(|cur| {
                let changed = cur.states != new || cur.desired != want;
                if changed {
                    *cur = Applied {
                        desired: want,
                        states: new,
                    };
                }
                changed
            });
            let retry_in = if failing {
                let r = retry;
                retry = (retry * 2).min(RETRY_MAX);
                r
            } else {
                retry = RETRY_MIN;
                Duration::MAX
            };
            woken_by_event = false;
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() {
                        info!("desired links channel closed; engine stops");
                        return;
                    }
                }
                () = self.next_cue() => woken_by_event = true,
                () = tokio::time::sleep(retry_in), if failing => {
                    debug!("retrying after kernel errors");
                }
            }
        }
    }

    /// Waits for a relevant event, then lets the burst settle and drops what is
    /// queued: the coming observation covers it.
    async fn next_cue(&mut self) {
        loop {
            match self.events.next().await {
                // The receive buffer overflowed (the agent was starved or stopped
                // while links churned): events were lost. A fresh subscription
                // starts from a clean socket; the pass that follows observes all.
                Some((msg, _)) if matches!(msg.payload, NetlinkPayload::Overrun(_)) => {
                    warn!("netlink events lost (receive buffer overflowed); subscribing again");
                    self.resubscribe().await;
                    break;
                }
                Some((msg, _)) if self.interest.is_relevant(&msg) => break,
                Some(_) => {}
                None => {
                    warn!("netlink event subscription ended; subscribing again");
                    self.resubscribe().await;
                    break; // events may have been lost: observe again
                }
            }
        }
        tokio::time::sleep(DEBOUNCE).await;
        while self.events.try_recv().is_ok() {}
    }

    async fn resubscribe(&mut self) {
        loop {
            match in_namespace(&self.netns, events::subscribe).and_then(|r| r) {
                Ok((events, task)) => {
                    self.events = events;
                    self.tasks.push(task);
                    return;
                }
                Err(e) => {
                    error!(error = %e, "cannot subscribe to netlink events; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Runs `f` on a short-lived thread that has entered the network namespace
/// `ns`, with the current tokio runtime entered (so `f` may spawn tasks). A thread
/// already in `ns` does not call setns, which needs CAP_SYS_ADMIN: the agent, with
/// only CAP_NET_ADMIN, subscribes again in its own namespace.
fn in_namespace<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| Error::Io {
        op: Operation::Subscribe,
        target: "a network namespace".into(),
        source: std::io::Error::other(e),
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            if !same_namespace(ns) {
                nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(|errno| Error::Io {
                    op: Operation::Subscribe,
                    target: "a network namespace (setns)".into(),
                    source: errno.into(),
                })?;
            }
            let _entered = runtime.enter();
            Ok(f())
        })
        .join()
        .expect("namespace thread panicked")
    })
}

/// Whether the calling thread is in the network namespace `ns` (same device and
/// inode as its own `/proc/thread-self/ns/net`).
fn same_namespace(ns: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (ns.metadata(), std::fs::metadata("/proc/thread-self/ns/net")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn problem(e: &Error) -> Problem {
    match e {
        Error::MasterMissing { .. } => Problem::new(reason::MASTER_MISSING, e.to_string()),
        _ => Problem::new(reason::NETLINK_ERROR, e.to_string()),
    }
}

fn failed(d: &DesiredLink, e: &Error) -> LinkState {
    LinkState {
        name: d.name.clone(),
        ready: false,
        reason: reason::NETLINK_ERROR.into(),
        message: e.to_string(),
        mtu: None,
        carrier: None,
        carrier_mtu: None,
        local_address: None,
    }
}
