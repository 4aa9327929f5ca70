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

mod claims;
mod codec;
mod connectivity;
mod event_loop;
mod gate;
mod hub;
mod join;
mod members_only;
mod membership;
mod mirror;
mod overlay;
mod pull;
mod reach;
mod replay;
mod revalidate;
mod state;
mod swarm;

pub use self::claims::Obtained;
use self::claims::*;
use self::connectivity::*;
use self::event_loop::*;
use self::join::Join;
use self::overlay::Overlay;
use self::pull::*;
use self::reach::*;
use self::replay::ReplayGuard;
pub use self::revalidate::Revalidator;
use self::revalidate::*;
use self::state::*;
use self::swarm::*;
use super::TestFault;
use super::crypto::{KeyId, SwarmKeys};
use super::protocol::{
    ANNOUNCE_TOPIC, EXCHANGE_PROTOCOL, GOSSIP_AAD, Gossip, IDENTIFY_PROTOCOL, MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES, PeerMeta, Request, Response, Stamped, open_entry, seal_entry,
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
/// How long a claim passed on towards the coordinator may wait for the next hop (less than
/// [`CLAIM_TIMEOUT`], so that a lost hop is decided here before the asker gives up).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(4);
/// How long connecting to a member for a pull (a bounded overlay's far holder) may take.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);
/// Peers asked at once when nobody announced the key.
const ASK_FANOUT: usize = 8;
/// Holders tried, newest first, before asking the others.
const MAX_HOLDERS_TRIED: usize = 3;
/// How long a claim stays valid at its coordinator.
const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How long to wait for a claimant's announcement before going upstream ourselves.
const CLAIM_WAIT: Duration = Duration::from_secs(20);
/// How long a direct connection must have been open before the relayed ones beside it close.
const RELAY_HANDOVER: Duration = Duration::from_secs(3);
/// How long a waiter first waits for the claimant's announcement before asking it directly.
const CLAIMANT_FIRST_ASK: Duration = Duration::from_millis(500);
/// The longest pause between direct asks while a claimant fetches.
const CLAIMANT_ASK_MAX_PAUSE: Duration = Duration::from_secs(4);
/// Verification failures after which a peer is disconnected and banned.
const MAX_FAILURES: u32 = 3;
/// How long a banned peer stays banned.
const BAN_TIME: Duration = Duration::from_secs(600);
/// Longest wait between two dials of a lost bootstrap peer.
const MAX_REDIAL_BACKOFF: Duration = Duration::from_secs(60);
/// The Kademlia protocol name: a DHT of peercache nodes only, never the public IPFS one.
const KAD_PROTOCOL: &str = "/peercache/kad/1";
/// How often the node looks the swarm up again (see [`EventLoop::refresh_routing_when_due`]).
/// Kademlia also looks the swarm up by itself while its table holds fewer than `k` members,
/// which is how a node that knows one member finds the rest. Rarely: every lookup connects to
/// members (a hello each way), and in a bounded overlay those connections are closed again;
/// members joining later dial in themselves.
const KAD_REFRESH: Duration = Duration::from_secs(300);
/// Pulls a hub makes at once to keep announced entries (announcements come in bursts).
const MAX_MIRRORS: usize = 8;
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
    /// The sharing scope: with the secret, it derives every key of the swarm.
    pub scope: String,
    /// The local cache, to serve and store entries.
    pub cache: Cache,
    /// `RUNNER_NAME`, told to verified peers.
    pub runner_name: Option<String>,
    /// Test-only misbehaviour.
    pub test_fault: Option<TestFault>,
    /// Whether to discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// libp2p's own metrics (connections, identify, ping, gossipsub, Kademlia, relay, DCUtR),
    /// recorded from the swarm's events when given.
    pub metrics: Option<libp2p::metrics::Metrics>,
    /// Serve circuit relay v2 and AutoNAT v2 to verified members (`serve --hub`).
    pub hub: bool,
    /// Addresses this node is reachable at from outside (`--external-addr`), announced as is.
    pub external_addrs: Vec<Multiaddr>,
    /// The one-way tag of this node's own token, told to members (see [`Handle::set_revalidator`]).
    pub token_tag: Option<String>,
    /// Up to this many members the swarm is a full mesh; beyond, each node keeps a bounded,
    /// Kademlia-shaped set of neighbours (`PEERCACHE_FULL_MESH`).
    pub full_mesh: usize,
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
    /// `direct` when one of its connections is not through a relay, else `relayed`.
    pub connection: &'static str,
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
    /// Neighbours told of a copy this node pulled (a bounded overlay: `Have`).
    pub have_notices_sent: u64,
    /// Neighbours' `Have` notices received: they hold a copy they pulled.
    pub have_notices_received: u64,
    /// Claims this node won (it then called upstream).
    pub claims_won: u64,
    /// Times this node waited for another node's claim.
    pub claims_waited: u64,
    /// Claims this node granted as a key's coordinator (its own included).
    pub claims_granted: u64,
    /// Claims whose coordinator did not answer in time: this node then called upstream.
    pub claims_unanswered: u64,
    /// Claims passed on whose next hop did not answer in time, decided here instead.
    pub claims_decided_on_the_way: u64,
    /// Lookups whose named holders, and the neighbours that said they hold a copy, could not
    /// be pulled from: this node then called upstream.
    pub holders_unreached: u64,
    /// Waits for a claimant that ended without its entry: this node then called upstream.
    pub claim_waits_expired: u64,
    /// Revalidations this node did with its own token because a member asked.
    pub revalidations_for_others: u64,
    /// Revalidations this node asked the owner of an entry's ETag to do.
    pub revalidations_asked: u64,
    /// Of the revalidations for members, those GitHub answered 304 (a full GET saved).
    pub revalidations_unchanged: u64,
    /// Entries a hub took a copy of from their announcements.
    pub entries_mirrored: u64,
    /// Full GETs a hub made with its own token so that its ETag serves the swarm (its quota).
    pub own_token_fetches: u64,
    /// DCUtR hole punches that ended (succeeded or failed).
    pub hole_punches_attempted: u64,
    /// Hole punches that gave a direct TCP connection.
    pub hole_punches_tcp: u64,
    /// Hole punches that gave a direct QUIC connection.
    pub hole_punches_quic: u64,
}

#[derive(Default)]
struct Counters {
    entries_received: AtomicU64,
    entries_rejected: AtomicU64,
    entries_served: AtomicU64,
    auth_failures: AtomicU64,
    announcements_received: AtomicU64,
    have_notices_sent: AtomicU64,
    have_notices_received: AtomicU64,
    claims_won: AtomicU64,
    claims_waited: AtomicU64,
    claims_granted: AtomicU64,
    claims_unanswered: AtomicU64,
    claims_decided_on_the_way: AtomicU64,
    holders_unreached: AtomicU64,
    claim_waits_expired: AtomicU64,
    revalidations_for_others: AtomicU64,
    revalidations_asked: AtomicU64,
    revalidations_unchanged: AtomicU64,
    entries_mirrored: AtomicU64,
    own_token_fetches: AtomicU64,
    hole_punches_attempted: AtomicU64,
    hole_punches_tcp: AtomicU64,
    hole_punches_quic: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
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
    /// Connect to a member for a pull: at its addresses heard of, or looked up in Kademlia.
    Reach(PeerId),
    Punish(PeerId),
    /// Tell the neighbours this node holds a copy of a key it pulled from `source`.
    TellNeighbours {
        key_id: KeyId,
        fetched_at_ms: u64,
        source: PeerId,
    },
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
    token_tag: Option<String>,
    revalidator: Mutex<Option<Revalidator>>,
    /// A hub's own-token fetches, one at a time (its quota, in the background).
    adoptions: tokio::sync::Mutex<()>,
    /// A hub's pulls of announced entries at once.
    mirrors: tokio::sync::Semaphore,
    /// Entries being sent to members, within a byte budget.
    serving: Arc<Serving>,
    /// Woken whenever a member is verified (what a pull that dialed a far holder waits for).
    member_verified: tokio::sync::Notify,
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
impl Node {
    /// Builds the swarm, listens, dials the bootstrap peers and starts the loop; returns once
    /// every listener has an address.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let keys = SwarmKeys::derive(&config.secret, &config.scope);
        let peer_id = config.keypair.public().to_peer_id();
        let (commands, receiver) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            peer_id,
            keys,
            cache: config.cache.clone(),
            commands,
            state: Mutex::new(State::default()),
            counters: Counters::default(),
            fault: config.test_fault,
            token_tag: config.token_tag.clone(),
            revalidator: Mutex::new(None),
            adoptions: tokio::sync::Mutex::new(()),
            mirrors: tokio::sync::Semaphore::new(MAX_MIRRORS),
            serving: Arc::default(),
            member_verified: tokio::sync::Notify::new(),
        });
        // Weak: the swarm lives inside the loop, which holds the `Inner` itself.
        let members: gate::Members = {
            let inner = Arc::downgrade(&inner);
            Arc::new(move |peer: &PeerId| {
                inner
                    .upgrade()
                    .is_some_and(|inner| inner.state().verified(peer))
            })
        };
        let banned: gate::Banned = {
            let inner = Arc::downgrade(&inner);
            Arc::new(move |peer: &PeerId| {
                inner
                    .upgrade()
                    .is_some_and(|inner| inner.state().banned.contains(peer))
            })
        };
        let options = SwarmOptions {
            mdns: config.mdns,
            hub: config.hub,
            members,
            banned,
        };
        let mut swarm = build_swarm(&config.keypair, options)?;
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        let topic = gossipsub::IdentTopic::new(ANNOUNCE_TOPIC);
        swarm.behaviour_mut().gossipsub.subscribe(&topic)?;

        for addr in &config.listen {
            swarm.listen_on(addr.clone()).map_err(|e| {
                anyhow::anyhow!("cannot listen on {addr}: {e}; pick another --port or --listen")
            })?;
        }
        let listen_addrs = wait_for_listeners(&mut swarm, config.listen.len()).await?;
        for addr in &config.external_addrs {
            tracing::info!("announcing the external address {addr}");
            swarm.add_external_address(addr.clone());
        }
        let announce_listeners = config.hub && config.external_addrs.is_empty();
        if announce_listeners {
            // Loopback addresses only when the hub listens on nothing else (a test on one host).
            let public: Vec<&Multiaddr> = listen_addrs.iter().filter(|a| !is_loopback(a)).collect();
            let announced = if public.is_empty() {
                listen_addrs.iter().collect()
            } else {
                public
            };
            for addr in announced {
                swarm.add_external_address(addr.clone());
            }
        }
        {
            let mut state = inner.state();
            state.listen_addrs = listen_addrs;
            state.external_addrs = config.external_addrs.clone();
        }
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
                    warned: false,
                    reuse_port: true,
                    hub: false,
                });
            }
        }
        let meta = PeerMeta {
            runner_name: config.runner_name,
            listen_port: first_port(&inner.state().listen_addrs),
            token_tag: config.token_tag.clone(),
            members_known: None,
        };
        let event_loop = EventLoop {
            swarm,
            inner: inner.clone(),
            commands: receiver,
            pending_requests: HashMap::new(),
            hellos: membership::Hellos::default(),
            keep_connected: bootstrap,
            to_disconnect: Vec::new(),
            topic,
            meta,
            metrics: config.metrics,
            hub: config.hub,
            announce_listeners,
            reservations: HashMap::new(),
            rebootstrap_at: None,
            next_refresh: Instant::now() + KAD_REFRESH,
            replay: ReplayGuard::default(),
            last_stamp_ms: 0,
            overlay: Overlay::default(),
            full_mesh: config.full_mesh,
            reaching: HashMap::new(),
            bootstrapped: false,
            cut_bootstraps: HashSet::new(),
            join: Join::default(),
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

fn first_port(addrs: &[Multiaddr]) -> Option<u16> {
    addrs.iter().find_map(|a| {
        a.iter().find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
    })
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
                connection: if p.is_direct() { "direct" } else { "relayed" },
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }

    /// The connections open at this moment, to members and to peers not verified yet.
    pub fn connections(&self) -> usize {
        self.inner.state().connections()
    }

    /// Whether the swarm is larger than a full mesh, so that connections are bounded.
    pub fn bounded(&self) -> bool {
        self.inner.state().bounded
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
            have_notices_sent: get(&c.have_notices_sent),
            have_notices_received: get(&c.have_notices_received),
            claims_won: get(&c.claims_won),
            claims_waited: get(&c.claims_waited),
            claims_granted: get(&c.claims_granted),
            claims_unanswered: get(&c.claims_unanswered),
            claims_decided_on_the_way: get(&c.claims_decided_on_the_way),
            holders_unreached: get(&c.holders_unreached),
            claim_waits_expired: get(&c.claim_waits_expired),
            revalidations_for_others: get(&c.revalidations_for_others),
            revalidations_asked: get(&c.revalidations_asked),
            revalidations_unchanged: get(&c.revalidations_unchanged),
            entries_mirrored: get(&c.entries_mirrored),
            own_token_fetches: get(&c.own_token_fetches),
            hole_punches_attempted: get(&c.hole_punches_attempted),
            hole_punches_tcp: get(&c.hole_punches_tcp),
            hole_punches_quic: get(&c.hole_punches_quic),
        }
    }

    /// AutoNAT's verdict on this node: `public`, `private` or `unknown`.
    pub fn reachability(&self) -> &'static str {
        self.inner.state().reachability.as_str()
    }

    /// The relay addresses this node holds a reservation on.
    pub fn relays(&self) -> Vec<String> {
        let state = self.inner.state();
        let mut relays: Vec<String> = state.relays.values().map(|a| a.to_string()).collect();
        relays.sort();
        relays
    }

    /// Asks the node to dial an address (for `discover --connect`).
    pub fn dial(&self, addr: Multiaddr) {
        self.inner.send(Command::Dial(addr));
    }

    /// Dials a peer at all these addresses at once, unless it is connected or being dialed.
    pub fn dial_peer(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        self.inner.send(Command::DialPeer(peer, addrs));
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
}
