//! The libp2p node: one swarm driven by one `tokio::select!` loop, and a [`Handle`] through which
//! request handlers ask the swarm for entries.
//!
//! The loop owns the [`Swarm`]; everything else talks to it through [`Command`]s. What the loop
//! learns (which peers are verified, who holds which key, who claimed which key) is kept in a
//! small shared [`State`] so that handlers can read it without a round trip.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, gossipsub, identify, kad, mdns,
    noise, ping, tcp, yamux,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::TestFault;
use super::crypto::{KeyId, SwarmKeys};
use super::protocol::{
    EXCHANGE_PROTOCOL, GOSSIP_AAD, Gossip, HELLO_AAD, IDENTIFY_PROTOCOL, MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES, PeerMeta, Request, Response, open_entry, seal_entry,
};
use crate::cache::{Cache, CacheKey, Entry, Lookup, now_ms};
use crate::secret::Secret;

/// How long a pull may take before the requester tries elsewhere.
const PULL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long "have you got it?" may take when asking members that announced nothing.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a claim may wait for the coordinator. Generous: a busy coordinator must not turn
/// into a second upstream call; a dead one fails fast (its connection closes).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// Peers asked at once when nobody announced the key.
const ASK_FANOUT: usize = 8;
/// Holders tried, newest first, before asking the others.
const MAX_HOLDERS_TRIED: usize = 3;
/// How long a claim stays valid at its coordinator.
const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How long to wait for a claimant's announcement before going upstream ourselves.
const CLAIM_WAIT: Duration = Duration::from_secs(20);
/// Verification failures after which a peer is disconnected and banned.
const MAX_FAILURES: u32 = 3;
/// How long a banned peer stays banned.
const BAN_TIME: Duration = Duration::from_secs(600);
/// Longest wait between two dials of a lost bootstrap peer.
const MAX_REDIAL_BACKOFF: Duration = Duration::from_secs(60);
/// The Kademlia protocol name: a DHT of peercache nodes only, never the public IPFS one.
const KAD_PROTOCOL: &str = "/peercache/kad/1";
/// How often the routing table is refreshed. Kademlia also looks the swarm up by itself each
/// time a member enters the table, which is how a node that knows one member finds the rest.
const KAD_REFRESH: Duration = Duration::from_secs(60);
/// Keys tracked in the holder table before old ones are dropped.
const MAX_TRACKED_KEYS: usize = 200_000;

/// What the node needs to start.
pub struct NodeConfig {
    /// The persistent identity.
    pub keypair: Keypair,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and re-dial when lost (each ends in `/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// The swarm secret.
    pub secret: Secret,
    /// The local cache, to serve and store entries.
    pub cache: Cache,
    /// `RUNNER_NAME`, told to verified peers.
    pub runner_name: Option<String>,
    /// Test-only misbehaviour.
    pub test_fault: Option<TestFault>,
    /// Whether to discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// libp2p's own metrics (connections, identify, ping, gossipsub, Kademlia), recorded from
    /// the swarm's events when given.
    pub metrics: Option<libp2p::metrics::Metrics>,
}

/// A verified swarm member, as `/api/peers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer_id: String,
    /// Its `RUNNER_NAME`.
    pub runner_name: Option<String>,
    /// Its p2p port.
    pub listen_port: Option<u16>,
    /// Last sign of life, epoch seconds.
    pub last_seen: u64,
    /// The addresses it listens on (from identify).
    pub multiaddrs: Vec<String>,
}

/// Swarm figures since start.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct P2pStats {
    /// Entries received from peers that passed every check and were stored.
    pub entries_received: u64,
    /// Entries received from peers that failed a check (seal, key, digest, size, freshness).
    pub entries_rejected: u64,
    /// Entries sent to peers.
    pub entries_served: u64,
    /// Peers that could not prove they hold the secret.
    pub auth_failures: u64,
    /// Announcements received.
    pub announcements_received: u64,
    /// Claims this node won (it then called upstream).
    pub claims_won: u64,
    /// Times this node waited for another node's claim.
    pub claims_waited: u64,
}

#[derive(Default)]
struct Counters {
    entries_received: AtomicU64,
    entries_rejected: AtomicU64,
    entries_served: AtomicU64,
    auth_failures: AtomicU64,
    announcements_received: AtomicU64,
    claims_won: AtomicU64,
    claims_waited: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, Clone)]
struct Holder {
    peer: PeerId,
    fetched_at_ms: u64,
}

#[derive(Debug, Default)]
struct PeerState {
    verified: bool,
    meta: PeerMeta,
    addrs: Vec<Multiaddr>,
    last_seen_ms: u64,
    failures: u32,
}

/// An entry this node can serve.
#[derive(Debug, Clone)]
struct Held {
    /// Its local cache key id.
    local_id: String,
    /// When it was fetched or revalidated.
    fetched_at_ms: u64,
}

/// A coordinator's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// Fetch it from GitHub; others asking meanwhile are told to wait for you.
    Granted,
    /// This node is fetching it: wait for its announcement.
    Wait(PeerId),
    /// These nodes hold a fresh copy: pull it.
    Holders(Vec<PeerId>),
}

/// What the loop has learnt, readable by handlers.
#[derive(Default)]
struct State {
    listen_addrs: Vec<Multiaddr>,
    peers: HashMap<PeerId, PeerState>,
    banned: HashMap<PeerId, Instant>,
    holders: HashMap<KeyId, Vec<Holder>>,
    /// As coordinator: the one node fetching each key, and until when its claim holds.
    claims: HashMap<KeyId, (PeerId, u64)>,
    waiters: HashMap<KeyId, Vec<oneshot::Sender<()>>>,
    /// Every entry this node can serve, by wire key id.
    served: HashMap<KeyId, Held>,
}

impl State {
    fn wake(&mut self, key_id: &KeyId) {
        for waiter in self.waiters.remove(key_id).unwrap_or_default() {
            let _ = waiter.send(());
        }
    }

    fn verified(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.verified)
    }

    /// Verified holders whose copy is fresh for `ttl`, newest first.
    fn fresh_holders(&self, key_id: &KeyId, ttl: Duration, now: u64) -> Vec<PeerId> {
        let mut holders: Vec<&Holder> = self
            .holders
            .get(key_id)
            .map(|h| {
                h.iter()
                    .filter(|h| self.verified(&h.peer) && is_fresh(h.fetched_at_ms, ttl, now))
                    .collect()
            })
            .unwrap_or_default();
        holders.sort_by_key(|h| std::cmp::Reverse(h.fetched_at_ms));
        holders.into_iter().map(|h| h.peer).collect()
    }

    /// The key's coordinator: the member (this node included) with the lowest claim rank.
    fn coordinator(&self, key_id: &KeyId, me: PeerId) -> PeerId {
        self.peers
            .iter()
            .filter(|(_, p)| p.verified)
            .map(|(id, _)| *id)
            .chain(Some(me))
            .min_by_key(|p| claim_rank(key_id, p))
            .unwrap_or(me)
    }

    /// As the key's coordinator, answers `requester`'s claim: holders first, then a live
    /// claimant, else the claim is granted and recorded.
    fn coordinate(
        &mut self,
        key_id: &KeyId,
        requester: PeerId,
        ttl: Duration,
        me: PeerId,
    ) -> Decision {
        let now = now_ms();
        let mut holders: Vec<PeerId> = self
            .fresh_holders(key_id, ttl, now)
            .into_iter()
            .filter(|p| *p != requester)
            .collect();
        if requester != me
            && self
                .served
                .get(key_id)
                .is_some_and(|h| is_fresh(h.fetched_at_ms, ttl, now))
        {
            holders.insert(0, me);
        }
        if !holders.is_empty() {
            return Decision::Holders(holders);
        }
        match self.claims.get(key_id) {
            Some((claimant, until)) if *until > now && *claimant != requester => {
                Decision::Wait(*claimant)
            }
            _ => {
                let until = now + CLAIM_TTL.as_millis() as u64;
                self.claims.insert(*key_id, (requester, until));
                Decision::Granted
            }
        }
    }
}

fn is_fresh(fetched_at_ms: u64, ttl: Duration, now: u64) -> bool {
    (now.saturating_sub(fetched_at_ms) as u128) < ttl.as_millis()
}

enum Command {
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, String>>,
    },
    Respond {
        channel: ResponseChannel<Response>,
        response: Response,
    },
    Publish(Gossip),
    Dial(Multiaddr),
    DialPeer(PeerId, Vec<Multiaddr>),
    Punish(PeerId),
    Shutdown(oneshot::Sender<()>),
}

struct Inner {
    peer_id: PeerId,
    keys: SwarmKeys,
    cache: Cache,
    commands: mpsc::UnboundedSender<Command>,
    state: Mutex<State>,
    counters: Counters,
    fault: Option<TestFault>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the swarm down with a poisoned lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }
}

/// A cheap, clonable way to use the swarm from request handlers.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

/// A running node: its handle and the task that drives it.
pub struct Node {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    exchange: request_response::cbor::Behaviour<Request, Response>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

impl Node {
    /// Builds the swarm, listens, dials the bootstrap peers and starts the loop; returns once
    /// every listener has an address.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let keys = SwarmKeys::derive(&config.secret);
        let peer_id = config.keypair.public().to_peer_id();
        let mut swarm = build_swarm(&config.keypair, config.mdns)?;
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        let topic = gossipsub::IdentTopic::new(keys.topic());
        swarm.behaviour_mut().gossipsub.subscribe(&topic)?;

        for addr in &config.listen {
            swarm.listen_on(addr.clone()).map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr}: {e}; pick another --port or --listen")
            })?;
        }
        let listen_addrs = wait_for_listeners(&mut swarm, config.listen.len()).await?;

        let (commands, receiver) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            peer_id,
            keys,
            cache: config.cache.clone(),
            commands,
            state: Mutex::new(State {
                listen_addrs,
                ..State::default()
            }),
            counters: Counters::default(),
            fault: config.test_fault,
        });
        index_cache(&inner).await;

        let mut bootstrap = Vec::new();
        for addr in config.bootstrap {
            if let Some(Protocol::P2p(peer)) = addr.iter().last()
                && peer != peer_id
            {
                bootstrap.push(Redial {
                    peer,
                    addr,
                    next_attempt: Instant::now(),
                    backoff: Duration::from_secs(1),
                });
            }
        }
        let meta = PeerMeta {
            runner_name: config.runner_name,
            listen_port: first_port(&inner.state().listen_addrs),
        };
        let event_loop = EventLoop {
            swarm,
            inner: inner.clone(),
            commands: receiver,
            pending_requests: HashMap::new(),
            pending_hellos: HashSet::new(),
            keep_connected: bootstrap,
            to_disconnect: Vec::new(),
            topic,
            meta,
            metrics: config.metrics,
        };
        let task = tokio::spawn(event_loop.run());
        Ok(Node {
            handle: Handle { inner },
            task,
        })
    }

    /// The handle to the node.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops the loop and closes every connection.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        self.handle.inner.send(Command::Shutdown(tx));
        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn build_swarm(keypair: &Keypair, with_mdns: bool) -> anyhow::Result<Swarm<Behaviour>> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(
            |key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let gossip_config = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(700))
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .max_transmit_size(64 * 1024)
                    .message_id_fn(|message: &gossipsub::Message| {
                        gossipsub::MessageId::from(Sha256::digest(&message.data)[..20].to_vec())
                    })
                    .build()?;
                let gossipsub = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?;
                let codec = request_response::cbor::codec::Codec::<Request, Response>::default()
                    .set_request_size_maximum(MAX_REQUEST_BYTES)
                    .set_response_size_maximum(MAX_RESPONSE_BYTES);
                let exchange = request_response::Behaviour::with_codec(
                    codec,
                    [(
                        StreamProtocol::new(EXCHANGE_PROTOCOL),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(PULL_TIMEOUT)
                        .with_max_concurrent_streams(512),
                );
                // Only verified members enter the routing table (see `add_to_routing`), so a
                // stranger is never handed out as a peer.
                let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
                kad_config
                    .set_kbucket_inserts(kad::BucketInserts::Manual)
                    .set_periodic_bootstrap_interval(Some(KAD_REFRESH));
                let peer_id = key.public().to_peer_id();
                let kad = kad::Behaviour::with_config(
                    peer_id,
                    kad::store::MemoryStore::new(peer_id),
                    kad_config,
                );
                let mdns = if with_mdns {
                    let config = mdns::Config {
                        query_interval: Duration::from_secs(30),
                        ..mdns::Config::default()
                    };
                    Some(mdns::tokio::Behaviour::new(config, peer_id)?)
                } else {
                    None
                };
                let limits = connection_limits::ConnectionLimits::default()
                    .with_max_established_per_peer(Some(4))
                    .with_max_established(Some(1024))
                    .with_max_pending_incoming(Some(128));
                Ok(Behaviour {
                    limits: connection_limits::Behaviour::new(limits),
                    identify: identify::Behaviour::new(
                        identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                            .with_agent_version(crate::github::USER_AGENT_VALUE.into()),
                    ),
                    ping: ping::Behaviour::new(ping::Config::new()),
                    gossipsub,
                    exchange,
                    kad,
                    mdns: Toggle::from(mdns),
                })
            },
        )?
        // Connections between runners are few and long-lived; keep them while the job runs.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build();
    Ok(swarm)
}

/// Drives the swarm until every listener reported an address (or failed).
async fn wait_for_listeners(
    swarm: &mut Swarm<Behaviour>,
    listeners: usize,
) -> anyhow::Result<Vec<Multiaddr>> {
    let mut addrs = Vec::new();
    let mut ready = HashSet::new();
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    while ready.len() < listeners {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    ready.insert(listener_id);
                    addrs.push(address);
                }
                SwarmEvent::ListenerClosed { addresses, reason, .. } => {
                    anyhow::bail!("a listener on {addresses:?} closed: {reason:?}");
                }
                SwarmEvent::ListenerError { error, .. } => anyhow::bail!("a listener failed: {error}"),
                _ => {}
            },
            _ = &mut deadline => anyhow::bail!("the p2p listeners did not start within 10 s"),
        }
    }
    Ok(addrs)
}

/// Maps the key ids of entries already on disk, so that they can be served after a restart.
async fn index_cache(inner: &Arc<Inner>) {
    let cache = inner.cache.clone();
    let entries = tokio::task::spawn_blocking(move || cache.entries())
        .await
        .unwrap_or_default();
    let mut state = inner.state();
    for (local_id, entry) in entries {
        let key_id = inner.keys.key_id(&entry.key);
        let fetched_at_ms = entry.fetched_at_ms;
        state.served.insert(
            key_id,
            Held {
                local_id,
                fetched_at_ms,
            },
        );
    }
}

/// Whether an address can be dialed at all (not `0.0.0.0`/`::`, not a relay circuit).
fn is_dialable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        Protocol::P2pCircuit => false,
        _ => true,
    })
}

fn first_port(addrs: &[Multiaddr]) -> Option<u16> {
    addrs.iter().find_map(|a| {
        a.iter().find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
    })
}

struct Redial {
    peer: PeerId,
    addr: Multiaddr,
    next_attempt: Instant,
    backoff: Duration,
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    inner: Arc<Inner>,
    commands: mpsc::UnboundedReceiver<Command>,
    pending_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, String>>>,
    pending_hellos: HashSet<OutboundRequestId>,
    /// Peers to keep connected: the bootstrap setting's, and those mDNS currently reports.
    keep_connected: Vec<Redial>,
    /// Banned peers still connected, disconnected at the next tick so that the `Denied` they
    /// were sent (and the hello they sent us) can cross first: both sides then see the refusal.
    to_disconnect: Vec<PeerId>,
    topic: gossipsub::IdentTopic,
    meta: PeerMeta,
    metrics: Option<libp2p::metrics::Metrics>,
}

impl EventLoop {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        let _ = done.send(());
                        break;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        tracing::debug!("p2p loop stopped");
    }

    fn hello(&self, to: &PeerId) -> (Vec<u8>, Vec<u8>) {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        (
            self.inner.keys.proof(&self.inner.peer_id, to),
            self.inner.keys.seal(HELLO_AAD, &meta),
        )
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .exchange
                    .send_request(&peer, request);
                self.pending_requests.insert(id, reply);
            }
            Command::Respond { channel, response } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .exchange
                    .send_response(channel, response);
            }
            Command::Publish(gossip) => {
                // The benchmark's announcement delivery figure pairs this line with the
                // receivers' "heard announcement" lines by key id (scripts/bench.sh).
                if let Gossip::Announce { key_id, .. } = &gossip {
                    tracing::debug!("announcing key {key_id}");
                }
                let json = serde_json::to_vec(&gossip).expect("gossip serializes");
                let sealed = self.inner.keys.seal(GOSSIP_AAD, &json);
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.topic.clone(), sealed)
                {
                    tracing::debug!("gossip not published: {e}");
                }
            }
            Command::Dial(addr) => match addr.iter().last() {
                Some(Protocol::P2p(peer)) => self.dial_peer(peer, vec![addr], "a request"),
                _ => {
                    let opts = DialOpts::unknown_peer_id()
                        .address(addr.clone())
                        .allocate_new_port()
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!("cannot dial {addr}: {e}");
                    }
                }
            },
            Command::DialPeer(peer, addrs) => self.dial_peer(peer, addrs, "a registry"),
            Command::Punish(peer) => self.punish(peer),
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// Disconnects a peer and refuses it for a while.
    fn punish(&mut self, peer: PeerId) {
        {
            let mut state = self.inner.state();
            state.banned.insert(peer, Instant::now());
            state.peers.remove(&peer);
            for holders in state.holders.values_mut() {
                holders.retain(|h| h.peer != peer);
            }
        }
        self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
        self.to_disconnect.push(peer);
        tracing::warn!("disconnecting peer {peer}: it failed verification");
    }

    fn on_tick(&mut self) {
        for peer in std::mem::take(&mut self.to_disconnect) {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let now = Instant::now();
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        let banned: HashSet<PeerId> = {
            let mut state = self.inner.state();
            state.banned.retain(|_, at| at.elapsed() < BAN_TIME);
            let now_ms = now_ms();
            state.claims.retain(|_, (_, until)| *until > now_ms);
            state.banned.keys().copied().collect()
        };
        for redial in &mut self.keep_connected {
            if connected.contains(&redial.peer)
                || redial.next_attempt > now
                || banned.contains(&redial.peer)
            {
                continue;
            }
            redial.next_attempt = now + redial.backoff;
            redial.backoff = (redial.backoff * 2).min(MAX_REDIAL_BACKOFF);
            let opts = DialOpts::peer_id(redial.peer)
                .addresses(vec![redial.addr.clone()])
                .allocate_new_port()
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!("cannot dial {}: {e}", redial.addr);
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(metrics) = &self.metrics {
            record_metrics(metrics, &event);
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!("listening on {address}");
                self.inner.state().listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.inner.state().listen_addrs.retain(|a| a != &address)
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                if self.inner.state().banned.contains_key(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                self.inner
                    .state()
                    .peers
                    .entry(peer_id)
                    .or_default()
                    .last_seen_ms = now_ms();
                if let Some(redial) = self.keep_connected.iter_mut().find(|r| r.peer == peer_id) {
                    redial.backoff = Duration::from_secs(1);
                }
                if num_established.get() == 1 {
                    let (proof, meta) = self.hello(&peer_id);
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .exchange
                        .send_request(&peer_id, Request::Hello { proof, meta });
                    self.pending_hellos.insert(id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                let mut state = self.inner.state();
                if state.peers.remove(&peer_id).is_some_and(|p| p.verified) {
                    tracing::info!("peer {peer_id} left");
                }
                for holders in state.holders.values_mut() {
                    holders.retain(|h| h.peer != peer_id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let verified = match self.inner.state().peers.get_mut(&peer_id) {
                    Some(peer) => {
                        peer.addrs = info.listen_addrs;
                        peer.last_seen_ms = now_ms();
                        peer.verified
                    }
                    None => false,
                };
                if verified {
                    self.add_to_routing(&peer_id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    // Keep dialing (with backoff) until connected: mDNS reports a peer once per
                    // record lifetime, so a failed first dial must not be the last.
                    for addr in addrs.iter().filter(|a| is_dialable(a)) {
                        if !self
                            .keep_connected
                            .iter()
                            .any(|r| r.peer == peer && &r.addr == addr)
                        {
                            self.keep_connected.push(Redial {
                                peer,
                                addr: addr.clone(),
                                next_attempt: Instant::now() + Duration::from_secs(1),
                                backoff: Duration::from_secs(1),
                            });
                        }
                    }
                    self.dial_peer(peer, addrs, "mDNS");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                self.keep_connected
                    .retain(|r| !gone.iter().any(|(p, a)| *p == r.peer && *a == r.addr));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(_),
                ..
            })) => {
                if let Some(peer) = self.inner.state().peers.get_mut(&peer) {
                    peer.last_seen_ms = now_ms();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Exchange(event)) => self.on_exchange(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) => {
                if let Some(source) = message.source {
                    self.on_gossip(source, &message.data);
                }
            }
            _ => {}
        }
    }

    fn on_exchange(&mut self, event: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => match request {
                Request::Hello { proof, meta } => {
                    if self.accept_hello(&peer, &proof, &meta) {
                        let (proof, meta) = self.hello(&peer);
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .exchange
                            .send_response(channel, Response::Hello { proof, meta });
                    } else {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .exchange
                            .send_response(channel, Response::Denied);
                        bump(&self.inner.counters.auth_failures);
                        self.punish(peer);
                    }
                }
                Request::Claim { key_id, ttl_ms } => {
                    let me = self.inner.peer_id;
                    let response = match <KeyId>::try_from(key_id.as_slice()) {
                        Ok(key_id) if self.inner.state().verified(&peer) => {
                            let ttl = Duration::from_millis(ttl_ms);
                            let decision = self.inner.state().coordinate(&key_id, peer, ttl, me);
                            decision_response(decision)
                        }
                        _ => Response::Denied,
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .exchange
                        .send_response(channel, response);
                }
                Request::Pull { key_id } => {
                    let verified = self.inner.state().verified(&peer);
                    match <KeyId>::try_from(key_id.as_slice()) {
                        Ok(key_id) if verified => serve_pull(self.inner.clone(), key_id, channel),
                        _ => {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .exchange
                                .send_response(channel, Response::Denied);
                        }
                    }
                }
            },
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if self.pending_hellos.remove(&request_id) {
                    let accepted = match &response {
                        Response::Hello { proof, meta } => self.accept_hello(&peer, proof, meta),
                        _ => false,
                    };
                    if !accepted {
                        bump(&self.inner.counters.auth_failures);
                        self.punish(peer);
                    }
                } else if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id,
                peer,
                error,
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                } else if self.pending_hellos.remove(&request_id) {
                    tracing::debug!("hello to {peer} failed: {error}");
                }
            }
            _ => {}
        }
    }

    /// Checks a peer's proof; on success marks it verified with what it told about itself.
    fn accept_hello(&mut self, peer: &PeerId, proof: &[u8], meta: &[u8]) -> bool {
        if !self
            .inner
            .keys
            .verify_proof(peer, &self.inner.peer_id, proof)
        {
            return false;
        }
        let meta = self
            .inner
            .keys
            .open(HELLO_AAD, meta)
            .and_then(|m| serde_json::from_slice::<PeerMeta>(&m).ok())
            .unwrap_or_default();
        let mut state = self.inner.state();
        let entry = state.peers.entry(*peer).or_default();
        if !entry.verified {
            tracing::info!(
                "peer {peer} joined the swarm ({})",
                meta.runner_name.as_deref().unwrap_or("unnamed runner")
            );
        }
        let newly_verified = !entry.verified;
        entry.verified = true;
        entry.meta = meta;
        entry.last_seen_ms = now_ms();
        drop(state);
        if newly_verified {
            self.add_to_routing(peer);
        }
        true
    }

    /// Puts a verified member's listen addresses into the Kademlia routing table.
    fn add_to_routing(&mut self, peer: &PeerId) {
        let addrs = self
            .inner
            .state()
            .peers
            .get(peer)
            .map(|p| p.addrs.clone())
            .unwrap_or_default();
        for addr in addrs.into_iter().filter(is_dialable) {
            self.swarm.behaviour_mut().kad.add_address(peer, addr);
        }
    }

    /// Dials a peer at all its known addresses at once, unless it is us, banned, connected or
    /// being dialed already.
    fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, how: &str) {
        if peer == self.inner.peer_id || self.inner.state().banned.contains_key(&peer) {
            return;
        }
        let addrs: Vec<Multiaddr> = addrs.into_iter().filter(is_dialable).collect();
        if addrs.is_empty() {
            return;
        }
        tracing::debug!("dialing {peer} at {addrs:?}, found by {how}");
        // A new source port: two nodes that find each other at the same moment (mDNS) and dial
        // from their listen ports would meet in one TCP simultaneous open, where both sides are
        // the Noise initiator and the handshake fails.
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .allocate_new_port()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!("not dialing {peer}: {e}");
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address } => {
                self.dial_peer(peer, vec![address], "Kademlia");
            }
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(Ok(found)),
                ..
            } => {
                for info in found.peers {
                    self.dial_peer(info.peer_id, info.addrs, "Kademlia");
                }
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, source: PeerId, data: &[u8]) {
        let Some(gossip) = self
            .inner
            .keys
            .open(GOSSIP_AAD, data)
            .and_then(|plain| serde_json::from_slice::<Gossip>(&plain).ok())
        else {
            tracing::debug!("ignored a gossip message that is not sealed with the swarm secret");
            return;
        };
        let mut state = self.inner.state();
        match gossip {
            Gossip::Announce {
                key_id,
                fetched_at_ms,
                ..
            } => {
                let Some(parsed) = parse_key_id(&key_id) else {
                    return;
                };
                // Logged only once it parsed: a peer's text must not reach the log unchecked.
                tracing::debug!("heard announcement of key {key_id} from {source}");
                let key_id = parsed;
                bump(&self.inner.counters.announcements_received);
                if state.holders.len() >= MAX_TRACKED_KEYS {
                    let horizon = now_ms().saturating_sub(3_600_000);
                    state
                        .holders
                        .retain(|_, h| h.iter().any(|h| h.fetched_at_ms > horizon));
                }
                let holders = state.holders.entry(key_id).or_default();
                holders.retain(|h| h.peer != source);
                holders.push(Holder {
                    peer: source,
                    fetched_at_ms: fetched_at_ms.min(now_ms()),
                });
                // The key is available now: its claim, if this node coordinates it, is over.
                state.claims.remove(&key_id);
                state.wake(&key_id);
            }
            Gossip::Release { key_id } => {
                let Some(key_id) = parse_key_id(&key_id) else {
                    return;
                };
                if state.claims.get(&key_id).is_some_and(|(p, _)| *p == source) {
                    state.claims.remove(&key_id);
                }
                state.wake(&key_id);
            }
        }
    }
}

/// Feeds one swarm event to libp2p's metrics. libp2p-metrics has no recorder for
/// request-response; the exchange's figures are the node's own [`P2pStats`].
fn record_metrics(metrics: &libp2p::metrics::Metrics, event: &SwarmEvent<BehaviourEvent>) {
    use libp2p::metrics::Recorder;
    metrics.record(event);
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => metrics.record(e),
        _ => {}
    }
}

/// Reads, seals and sends an entry to a verified peer, off the loop (disk reads, test delays).
fn serve_pull(inner: Arc<Inner>, key_id: KeyId, channel: ResponseChannel<Response>) {
    tokio::spawn(async move {
        let local_id = inner
            .state()
            .served
            .get(&key_id)
            .map(|h| h.local_id.clone());
        let response = match local_id {
            None => Response::NotFound,
            Some(local_id) => {
                let cache = inner.cache.clone();
                match tokio::task::spawn_blocking(move || cache.get_by_id(&local_id, None)).await {
                    Ok(Lookup::Hit { entry, mut body }) => {
                        if inner.fault == Some(TestFault::TamperBodies) && !body.is_empty() {
                            let middle = body.len() / 2;
                            body[middle] ^= 0x01;
                        }
                        bump(&inner.counters.entries_served);
                        Response::Entry {
                            sealed: seal_entry(&inner.keys, &key_id, &entry, &body),
                        }
                    }
                    _ => Response::NotFound,
                }
            }
        };
        if let Some(TestFault::SlowResponses(delay)) = inner.fault {
            tokio::time::sleep(delay).await;
        }
        inner.send(Command::Respond { channel, response });
    });
}

/// A coordinator's decision as a wire answer.
fn decision_response(decision: Decision) -> Response {
    let id = |p: &PeerId| serde_bytes::ByteBuf::from(p.to_bytes());
    match decision {
        Decision::Granted => Response::Claim {
            granted: true,
            claimant: None,
            holders: Vec::new(),
        },
        Decision::Wait(claimant) => Response::Claim {
            granted: false,
            claimant: Some(id(&claimant)),
            holders: Vec::new(),
        },
        Decision::Holders(holders) => Response::Claim {
            granted: false,
            claimant: None,
            holders: holders.iter().map(id).collect(),
        },
    }
}

fn parse_key_id(hex_id: &str) -> Option<KeyId> {
    hex::decode(hex_id).ok()?.try_into().ok()
}

/// The order in which claimants of a key win: deterministic, and different for every key so
/// that no one node fetches everything.
fn claim_rank(key_id: &KeyId, peer: &PeerId) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(key_id);
    hasher.update(peer.to_bytes());
    hasher.finalize().into()
}

impl Handle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// The addresses the node listens on.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.inner.state().listen_addrs.clone()
    }

    /// The verified swarm members.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let state = self.inner.state();
        let mut peers: Vec<PeerInfo> = state
            .peers
            .iter()
            .filter(|(_, p)| p.verified)
            .map(|(id, p)| PeerInfo {
                peer_id: id.to_string(),
                runner_name: p.meta.runner_name.clone(),
                listen_port: p.meta.listen_port,
                last_seen: p.last_seen_ms / 1000,
                multiaddrs: p.addrs.iter().map(|a| a.to_string()).collect(),
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }

    /// Figures since start.
    pub fn stats(&self) -> P2pStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        P2pStats {
            entries_received: get(&c.entries_received),
            entries_rejected: get(&c.entries_rejected),
            entries_served: get(&c.entries_served),
            auth_failures: get(&c.auth_failures),
            announcements_received: get(&c.announcements_received),
            claims_won: get(&c.claims_won),
            claims_waited: get(&c.claims_waited),
        }
    }

    /// Asks the node to dial an address (for `discover --connect`).
    pub fn dial(&self, addr: Multiaddr) {
        self.inner.send(Command::Dial(addr));
    }

    /// Dials a peer at all these addresses at once, unless it is connected or being dialed.
    pub fn dial_peer(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        self.inner.send(Command::DialPeer(peer, addrs));
    }

    /// The peer tier: an entry fresh for `ttl` from the swarm, or `None` when this node should
    /// call upstream itself (and then call [`Handle::finished`]).
    ///
    /// Holders that announced the key are asked first. Then the key's coordinator (the member
    /// with the lowest claim rank for it) decides: pull from holders it knows of, wait for the
    /// node already fetching it, or fetch it ourselves. One claim per key is granted at a time,
    /// so the swarm calls GitHub once per key however many nodes want it at once.
    pub async fn obtain(&self, key: &CacheKey, ttl: Duration) -> Option<(Entry, Vec<u8>)> {
        let key_id = self.inner.keys.key_id(key.canonical());
        let me = self.inner.peer_id;
        let (holders, coordinator, members) = {
            let state = self.inner.state();
            let members = state.peers.values().filter(|p| p.verified).count();
            (
                state.fresh_holders(&key_id, ttl, now_ms()),
                state.coordinator(&key_id, me),
                members,
            )
        };
        if members == 0 {
            return None;
        }
        // A peer that failed once in this lookup is not asked again in it.
        let mut tried = HashSet::new();
        if let Some(hit) = self.pull_any(&holders, &mut tried, &key_id, key, ttl).await {
            return Some(hit);
        }

        let decision = if coordinator == me {
            self.inner.state().coordinate(&key_id, me, ttl, me)
        } else {
            self.claim_at(coordinator, &key_id, ttl).await
        };
        match decision {
            Decision::Holders(holders) => {
                self.pull_any(&holders, &mut tried, &key_id, key, ttl).await
            }
            Decision::Wait(claimant) => {
                tracing::debug!("{claimant} is fetching a key this node wants; waiting for it");
                self.wait_for_claimant(&mut tried, &key_id, key, ttl).await
            }
            Decision::Granted => {
                bump(&self.inner.counters.claims_won);
                // Members that joined after an announcement: someone may hold it unannounced.
                let others: Vec<PeerId> = {
                    let state = self.inner.state();
                    let mut others: Vec<PeerId> = state
                        .peers
                        .iter()
                        .filter(|(id, p)| p.verified && !tried.contains(*id))
                        .map(|(id, _)| *id)
                        .collect();
                    others.sort_by_key(|p| claim_rank(&key_id, p));
                    others.truncate(ASK_FANOUT);
                    others
                };
                let hit = self.ask_all(&others, &key_id, key, ttl).await;
                if let Some((entry, _)) = &hit {
                    // Tell the coordinator and the waiters that the key is available.
                    self.finished(key, Some(entry));
                }
                hit
            }
        }
    }

    /// After this node called upstream: announce the stored entry, or release the claim.
    pub fn finished(&self, key: &CacheKey, entry: Option<&Entry>) {
        let key_id = self.inner.keys.key_id(key.canonical());
        let me = self.inner.peer_id;
        let gossip = {
            let mut state = self.inner.state();
            if state.claims.get(&key_id).is_some_and(|(p, _)| *p == me) {
                state.claims.remove(&key_id);
            }
            match entry {
                Some(entry) => {
                    let held = Held {
                        local_id: key.id().to_string(),
                        fetched_at_ms: entry.fetched_at_ms,
                    };
                    state.served.insert(key_id, held);
                    Gossip::Announce {
                        key_id: hex::encode(key_id),
                        digest: entry.digest.clone(),
                        size: entry.size,
                        fetched_at_ms: entry.fetched_at_ms,
                        ttl_secs: entry.ttl_secs,
                    }
                }
                None => Gossip::Release {
                    key_id: hex::encode(key_id),
                },
            }
        };
        self.inner.send(Command::Publish(gossip));
    }

    /// Sends a claim to the key's coordinator. If it cannot answer, this node fetches the key
    /// itself: a slow or lost coordinator costs an extra upstream call, never a failed fetch.
    async fn claim_at(&self, coordinator: PeerId, key_id: &KeyId, ttl: Duration) -> Decision {
        let request = Request::Claim {
            key_id: key_id.to_vec(),
            ttl_ms: ttl.as_millis() as u64,
        };
        match self.request(coordinator, request, CLAIM_TIMEOUT).await {
            Ok(Response::Claim { granted: true, .. }) => Decision::Granted,
            Ok(Response::Claim {
                claimant: Some(claimant),
                ..
            }) => match PeerId::from_bytes(&claimant) {
                Ok(claimant) => Decision::Wait(claimant),
                Err(_) => Decision::Granted,
            },
            Ok(Response::Claim { holders, .. }) => Decision::Holders(
                holders
                    .iter()
                    .filter_map(|h| PeerId::from_bytes(h).ok())
                    .collect(),
            ),
            Ok(_) | Err(_) => {
                tracing::debug!(
                    "the coordinator {coordinator} did not answer a claim; fetching upstream"
                );
                Decision::Granted
            }
        }
    }

    /// Waits (bounded) for the claimant's announcement, then pulls from the holders.
    async fn wait_for_claimant(
        &self,
        tried: &mut HashSet<PeerId>,
        key_id: &KeyId,
        key: &CacheKey,
        ttl: Duration,
    ) -> Option<(Entry, Vec<u8>)> {
        bump(&self.inner.counters.claims_waited);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.inner.state();
            // The announcement may have arrived already.
            if state.fresh_holders(key_id, ttl, now_ms()).is_empty() {
                state.waiters.entry(*key_id).or_default().push(tx);
            } else {
                let _ = tx.send(());
            }
        }
        if tokio::time::timeout(CLAIM_WAIT, rx).await.is_err() {
            tracing::info!(
                "no announcement for a claimed key within {CLAIM_WAIT:?}; fetching it upstream"
            );
            return None;
        }
        let holders = self.inner.state().fresh_holders(key_id, ttl, now_ms());
        self.pull_any(&holders, tried, key_id, key, ttl).await
    }

    /// Pulls from holders in order (at most three new ones) until one sends a valid entry.
    async fn pull_any(
        &self,
        holders: &[PeerId],
        tried: &mut HashSet<PeerId>,
        key_id: &KeyId,
        key: &CacheKey,
        ttl: Duration,
    ) -> Option<(Entry, Vec<u8>)> {
        let untried: Vec<PeerId> = holders
            .iter()
            .filter(|p| !tried.contains(*p))
            .copied()
            .collect();
        for peer in untried.into_iter().take(MAX_HOLDERS_TRIED) {
            tried.insert(peer);
            if let Some(hit) = self.pull(peer, key_id, key, ttl, PULL_TIMEOUT).await {
                return Some(hit);
            }
        }
        None
    }

    /// Asks several peers at once; the first fresh, verified entry wins.
    async fn ask_all(
        &self,
        peers: &[PeerId],
        key_id: &KeyId,
        key: &CacheKey,
        ttl: Duration,
    ) -> Option<(Entry, Vec<u8>)> {
        let mut asks: futures::stream::FuturesUnordered<_> = peers
            .iter()
            .map(|peer| self.pull(*peer, key_id, key, ttl, ASK_TIMEOUT))
            .collect();
        while let Some(result) = asks.next().await {
            if result.is_some() {
                return result;
            }
        }
        None
    }

    /// Sends one request through the loop and waits (bounded) for its answer.
    async fn request(
        &self,
        peer: PeerId,
        request: Request,
        limit: Duration,
    ) -> Result<Response, String> {
        let (tx, rx) = oneshot::channel();
        self.inner.send(Command::Request {
            peer,
            request,
            reply: tx,
        });
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the p2p loop stopped".into()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// Pulls one entry from one peer and verifies it: seal, key, digest, size, freshness.
    async fn pull(
        &self,
        peer: PeerId,
        key_id: &KeyId,
        key: &CacheKey,
        ttl: Duration,
        limit: Duration,
    ) -> Option<(Entry, Vec<u8>)> {
        let response = match self
            .request(
                peer,
                Request::Pull {
                    key_id: key_id.to_vec(),
                },
                limit,
            )
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!("pull from {peer} failed: {error}");
                return None;
            }
        };
        let Response::Entry { sealed } = response else {
            return None;
        };
        let (entry, body) = match open_entry(&self.inner.keys, key_id, &sealed) {
            Ok(opened) => opened,
            Err(why) => return self.reject(peer, why),
        };
        if entry.key != key.canonical() {
            return self.reject(peer, "the entry is for another key".into());
        }
        if body.len() as u64 != entry.size || hex::encode(Sha256::digest(&body)) != entry.digest {
            return self.reject(peer, "the body does not match its SHA-256".into());
        }
        let now = now_ms();
        if entry.fetched_at_ms > now + 60_000 {
            return self.reject(peer, "the entry claims to be fetched in the future".into());
        }
        if !entry.is_fresh(ttl, now) {
            tracing::debug!("{peer} sent an entry that is not fresh for our TTL");
            return None;
        }
        let cache = self.inner.cache.clone();
        let (local_id, stored_entry, stored_body) =
            (key.id().to_string(), entry.clone(), body.clone());
        match tokio::task::spawn_blocking(move || {
            cache.put_entry(&local_id, &stored_entry, &stored_body)
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("could not store an entry received from {peer}: {e:#}"),
            Err(e) => tracing::warn!("could not store an entry received from {peer}: {e}"),
        }
        let held = Held {
            local_id: key.id().to_string(),
            fetched_at_ms: entry.fetched_at_ms,
        };
        self.inner.state().served.insert(*key_id, held);
        bump(&self.inner.counters.entries_received);
        Some((entry, body))
    }

    /// Counts a bad entry; a peer that keeps sending them is disconnected.
    fn reject(&self, peer: PeerId, why: String) -> Option<(Entry, Vec<u8>)> {
        bump(&self.inner.counters.entries_rejected);
        tracing::warn!("rejected an entry from peer {peer}: {why}");
        let failures = {
            let mut state = self.inner.state();
            let p = state.peers.entry(peer).or_default();
            p.failures += 1;
            p.failures
        };
        if failures >= MAX_FAILURES {
            self.inner.send(Command::Punish(peer));
        }
        None
    }
}
