//! The daemon's side of the registries: publish this node's record at start and then every
//! interval, read the registries and dial the peers found, and remove the record on a clean
//! stop.
//!
//! One task per registry, each on that registry's interval ([`super::interval_of`]): a `dir:`
//! registry every 30 s, an `issue:` registry every 30 min. Between heartbeats a task only looks
//! (every few seconds, for free) whether the node's dialable addresses changed, and publishes
//! at once when they did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{PeerRecord, Registry, dialable_addrs, interval_of, record_ttl};
use crate::p2p::Handle;

/// Time for the listeners to report every interface's address before the first publish.
const SETTLE: Duration = Duration::from_millis(300);
/// How often a task looks for changed listen addresses between heartbeats.
const ADDR_CHECK: Duration = Duration::from_secs(5);
/// A peer that was dialed and did not become a verified member is not dialed again sooner.
const REDIAL_GAP: Duration = Duration::from_secs(10);
/// Addresses dialed per peer at a time.
const MAX_DIALS_PER_PEER: usize = 4;
/// How long a stop waits for a task, and for each registry's removal.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The running heartbeat tasks.
pub struct Heartbeat {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    registries: Vec<Arc<dyn Registry>>,
    peer_id: PeerId,
}

/// Starts one heartbeat task per registry.
pub fn spawn(
    registries: Vec<Arc<dyn Registry>>,
    node: Handle,
    interval_override: Option<Duration>,
) -> Heartbeat {
    let (stop, stopped) = watch::channel(false);
    let dialed = Arc::new(Mutex::new(HashMap::new()));
    let peer_id = node.peer_id();
    let tasks = registries
        .iter()
        .map(|registry| {
            let interval = interval_of(registry.as_ref(), interval_override);
            tracing::info!(
                "registry {}: publishing this node every {} (records live {} s)",
                registry.name(),
                describe(interval),
                record_ttl(interval).as_secs()
            );
            let task = Task {
                registry: registry.clone(),
                node: node.clone(),
                interval,
                dialed: dialed.clone(),
                published: None,
                warned_no_addrs: false,
            };
            tokio::spawn(task.run(stopped.clone()))
        })
        .collect();
    Heartbeat {
        stop,
        tasks,
        registries,
        peer_id,
    }
}

impl Heartbeat {
    /// Stops every task, then removes this node's record from every registry.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
                task.abort();
            }
        }
        let peer_id = self.peer_id.to_string();
        let removals = self.registries.iter().map(|registry| {
            let peer_id = peer_id.clone();
            async move {
                match tokio::time::timeout(STOP_TIMEOUT, registry.remove(&peer_id)).await {
                    Ok(Ok(())) => {
                        tracing::info!("removed this node's record from {}", registry.name())
                    }
                    Ok(Err(e)) => tracing::warn!(
                        "could not remove this node's record from {}: {e:#}",
                        registry.name()
                    ),
                    Err(_) => tracing::warn!(
                        "removing this node's record from {} took too long; it expires on its own",
                        registry.name()
                    ),
                }
            }
        });
        futures::future::join_all(removals).await;
    }
}

struct Task {
    registry: Arc<dyn Registry>,
    node: Handle,
    interval: Duration,
    /// When each peer was last dialed, shared by the tasks of every registry.
    dialed: Arc<Mutex<HashMap<PeerId, Instant>>>,
    /// The addresses last published.
    published: Option<Vec<String>>,
    warned_no_addrs: bool,
}

impl Task {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(SETTLE) => {}
            _ = stopped.changed() => return,
        }
        let mut next_beat = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= next_beat {
                self.beat().await;
                next_beat = tokio::time::Instant::now() + self.interval;
            } else if self.published.is_some() && self.published != Some(self.addrs()) {
                tracing::info!(
                    "the node's addresses changed; publishing them to {}",
                    self.registry.name()
                );
                self.publish().await;
            }
            let wake = next_beat.min(tokio::time::Instant::now() + ADDR_CHECK);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stopped.changed() => return,
            }
            if *stopped.borrow() {
                return;
            }
        }
    }

    /// The addresses of this node that readers of the registry could dial.
    fn addrs(&self) -> Vec<String> {
        dialable_addrs(
            &self.node.listen_addrs(),
            &self.node.peer_id(),
            self.registry.is_host_local(),
        )
    }

    async fn beat(&mut self) {
        let calls_before = self.registry.api_calls();
        self.publish().await;
        match self.registry.list().await {
            Ok(records) => self.dial(records),
            Err(e) => tracing::warn!("cannot read the registry {}: {e:#}", self.registry.name()),
        }
        let calls = self.registry.api_calls() - calls_before;
        if calls > 0 {
            tracing::debug!(
                "registry {}: this heartbeat cost {calls} API call(s)",
                self.registry.name()
            );
        }
    }

    async fn publish(&mut self) {
        let addrs = self.addrs();
        if addrs.is_empty() {
            if !self.warned_no_addrs {
                self.warned_no_addrs = true;
                tracing::warn!(
                    "not publishing to {}: the node has no address other hosts could dial (it listens on {}); listen on a routable address with --listen or --port",
                    self.registry.name(),
                    list(&self.node.listen_addrs())
                );
            }
            return;
        }
        let record = PeerRecord::new(
            &self.node.peer_id(),
            addrs.clone(),
            record_ttl(self.interval),
        );
        match self.registry.publish(&record).await {
            Ok(()) => {
                tracing::debug!(
                    "published this node to {}: {}",
                    self.registry.name(),
                    addrs.join(", ")
                );
                self.published = Some(addrs);
            }
            Err(e) => tracing::warn!(
                "cannot publish this node to {}: {e:#}",
                self.registry.name()
            ),
        }
    }

    /// Dials the peers of `records` that are neither this node nor verified members already.
    fn dial(&self, records: Vec<PeerRecord>) {
        let me = self.node.peer_id();
        let members: Vec<String> = self.node.peers().into_iter().map(|p| p.peer_id).collect();
        let now = Instant::now();
        let mut dialed = self.dialed.lock().unwrap_or_else(|e| e.into_inner());
        dialed.retain(|_, at| now.duration_since(*at) < REDIAL_GAP);
        for record in records {
            let Ok(peer) = record.peer_id.parse::<PeerId>() else {
                continue;
            };
            if peer == me || members.contains(&record.peer_id) || dialed.contains_key(&peer) {
                continue;
            }
            let addrs: Vec<Multiaddr> = record
                .multiaddrs
                .iter()
                .filter_map(|a| a.parse().ok())
                .take(MAX_DIALS_PER_PEER)
                .collect();
            if addrs.is_empty() {
                continue;
            }
            tracing::info!(
                "dialing peer {peer}{} found in {}",
                record
                    .runner_name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                self.registry.name()
            );
            // One dial with every address; the node skips peers connected or being dialed.
            self.node.dial_peer(peer, addrs);
            dialed.insert(peer, now);
        }
    }
}

fn describe(interval: Duration) -> String {
    let secs = interval.as_secs_f64();
    if secs >= 60.0 && secs % 60.0 == 0.0 {
        format!("{} min", secs / 60.0)
    } else {
        format!("{secs} s")
    }
}

fn list(addrs: &[Multiaddr]) -> String {
    if addrs.is_empty() {
        return "nothing".into();
    }
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
