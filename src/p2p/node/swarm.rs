//! Building the swarm: the transports and the behaviours, and feeding libp2p's metrics.

use libp2p::{autonat, dcutr, relay};

use super::codec::ExchangeCodec;
use super::gate::{Banned, Gate, Members};
use super::hub::{AutonatServer, relay_config};
use super::members_only::{BeforeHello, MembersOnly};
use super::*;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// First: bans, the hello deadline and the limits on unverified peers (src/p2p/node/gate.rs).
    pub(super) gate: Gate,
    pub(super) limits: connection_limits::Behaviour,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    /// Members only: a stranger's subscription never registers, its messages never spread.
    pub(super) gossipsub: MembersOnly<gossipsub::Behaviour>,
    pub(super) exchange: request_response::Behaviour<ExchangeCodec>,
    /// Members only: a stranger's lookups are not answered, its records not stored.
    pub(super) kad: MembersOnly<kad::Behaviour<kad::store::MemoryStore>>,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Every node: reserve on hubs, dial and accept circuits.
    pub(super) relay_client: relay::client::Behaviour,
    /// Every node: upgrade relayed connections to direct ones.
    pub(super) dcutr: dcutr::Behaviour,
    /// Every node: ask hubs whether our addresses are reachable from outside.
    pub(super) autonat: autonat::v2::client::Behaviour,
    /// Hubs only: the relay for verified members.
    pub(super) relay: Toggle<relay::Behaviour>,
    /// Hubs only: the AutoNAT v2 server for verified members.
    pub(super) autonat_server: Toggle<AutonatServer>,
}

/// What the swarm is built with.
pub(super) struct SwarmOptions {
    pub(super) mdns: bool,
    pub(super) hub: bool,
    pub(super) members: Members,
    pub(super) banned: Banned,
}

/// The DNS resolver configuration: the system's, or (with no usable `/etc/resolv.conf`, as in
/// a bare network namespace) the hosts file alone, so that `/dns4/localhost/…` and names in
/// `/etc/hosts` always resolve, online or not.
fn resolver_config() -> (libp2p::dns::ResolverConfig, libp2p::dns::ResolverOpts) {
    let (config, mut opts) =
        hickory_resolver::system_conf::read_system_conf().unwrap_or_else(|e| {
            tracing::debug!(
                "no usable /etc/resolv.conf ({e}); resolving names from /etc/hosts only"
            );
            (
                libp2p::dns::ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
                libp2p::dns::ResolverOpts::default(),
            )
        });
    opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Always;
    (config, opts)
}

pub(super) fn build_swarm(
    keypair: &Keypair,
    options: SwarmOptions,
) -> anyhow::Result<Swarm<Behaviour>> {
    let SwarmOptions {
        mdns: with_mdns,
        hub,
        members,
        banned,
    } = options;
    let (dns_config, dns_opts) = resolver_config();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_dns_config(dns_config, dns_opts)
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(
            |key, relay_client| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let gossip_config = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_millis(700))
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .max_transmit_size(64 * 1024)
                    // Nothing is forwarded before the node has opened it (see `on_gossip`).
                    .validate_messages()
                    .message_id_fn(|message: &gossipsub::Message| {
                        gossipsub::MessageId::from(Sha256::digest(&message.data)[..20].to_vec())
                    })
                    .build()?;
                let gossipsub = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?;
                let exchange = request_response::Behaviour::with_codec(
                    ExchangeCodec::new(),
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
                    // Peercache keeps no records in the DHT: inbound PUT_RECORD and
                    // ADD_PROVIDER become events the node ignores, so nothing is stored unasked,
                    // not even by a member.
                    .set_record_filtering(kad::StoreInserts::FilterBoth)
                    // The node refreshes the table itself, as the overlay's size calls for
                    // (see `refresh_routing_when_due`).
                    .set_periodic_bootstrap_interval(None);
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
                // Who may connect at all is the gate's (and these, the libp2p limits on
                // everyone, members included).
                let limits = connection_limits::ConnectionLimits::default()
                    .with_max_established_per_peer(Some(4))
                    .with_max_established(Some(1024))
                    .with_max_pending_incoming(Some(128));
                Ok(Behaviour {
                    gate: Gate::new(members.clone(), banned),
                    limits: connection_limits::Behaviour::new(limits),
                    // Pushes tell members (and the hub's Kademlia) of a new relay address at once.
                    identify: identify::Behaviour::new(
                        identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                            .with_agent_version(crate::github::USER_AGENT_VALUE.into())
                            .with_push_listen_addr_updates(true),
                    ),
                    ping: ping::Behaviour::new(ping::Config::new()),
                    gossipsub: MembersOnly::new(
                        gossipsub,
                        members.clone(),
                        BeforeHello::Hold,
                        "gossipsub",
                    ),
                    exchange,
                    kad: MembersOnly::new(kad, members.clone(), BeforeHello::Hold, "Kademlia"),
                    mdns: Toggle::from(mdns),
                    relay_client,
                    dcutr: dcutr::Behaviour::new(peer_id),
                    // Probes every 5 s, up to 10 candidate addresses.
                    autonat: autonat::v2::client::Behaviour::default(),
                    relay: Toggle::from(hub.then(|| {
                        let mut relay =
                            relay::Behaviour::new(peer_id, relay_config(members.clone()));
                        // A hub is reachable by definition (that is what it is set up for): it
                        // offers the relay without waiting for a confirmed external address.
                        relay.set_status(Some(relay::Status::Enable));
                        relay
                    })),
                    autonat_server: Toggle::from(hub.then(|| {
                        MembersOnly::new(
                            autonat::v2::server::Behaviour::default(),
                            members.clone(),
                            BeforeHello::Drop,
                            "AutoNAT server",
                        )
                    })),
                })
            },
        )?
        // Connections between runners are few and long-lived; keep them while the job runs.
        // (Strangers do not profit: the gate closes what has not passed the hello in 10 s.)
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(24 * 3600)))
        .build();
    Ok(swarm)
}

/// Drives the swarm until every listener reported an address (or failed).
pub(super) async fn wait_for_listeners(
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

/// Feeds one swarm event to libp2p's metrics. libp2p-metrics has no recorder for
/// request-response; the exchange's figures are the node's own [`P2pStats`].
pub(super) fn record_metrics(
    metrics: &libp2p::metrics::Metrics,
    event: &SwarmEvent<BehaviourEvent>,
) {
    use libp2p::metrics::Recorder;
    metrics.record(event);
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => metrics.record(e),
        _ => {}
    }
}
