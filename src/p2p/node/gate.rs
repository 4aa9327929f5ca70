//! The gate: what a peer that has not passed the membership hello may hold.
//!
//! Before its hello a peer is a stranger. Noise has authenticated its peer id, nothing more, and
//! peer ids cost nothing, so the gate bounds what strangers can take:
//!
//! - **a hello deadline**: a connection whose peer has not proven the secret within
//!   [`HELLO_DEADLINE`] is closed;
//! - **small limits on unverified inbound connections**, counted only while they are unverified
//!   (members pass the hello in milliseconds, so their connections leave the count at once): per
//!   identity and per remote address refuse the new connection; the total closes the *oldest*
//!   unverified one instead, so that a flood from many addresses cannot lock newcomers out;
//! - **a limit on handshakes in progress per remote address**, so that slow handshakes from
//!   one host (a byte a second until libp2p's 10 s upgrade timeout) cannot take all the pending
//!   slots of [`connection_limits`] and keep newcomers from other hosts out;
//! - **bans**: a banned peer's connections are refused before any behaviour sees them.
//!
//! Verified members are never refused or closed here. Dials this node makes itself (bootstrap,
//! mDNS, Kademlia, registries) are subject to the deadline but not to the limits.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    CloseConnection, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

use super::*;

/// Who passed the membership hello, readable from inside the swarm's behaviours.
pub(super) type Members = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;
/// Who is banned, readable from inside the swarm's behaviours.
pub(super) type Banned = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;

/// How long a connected peer has to pass the hello. The hello is two request-response round
/// trips on a connection that is already up (Noise and Yamux done; SPAKE2, then the
/// confirmations): milliseconds on a LAN, about a second through a relay across continents. 10 s leaves a loaded 2-core CI machine and a
/// relayed link ample slack, and equals the exchange's request timeout ([`PULL_TIMEOUT`]),
/// after which a hello has failed anyway; a member cut off here re-dials (bootstrap peers,
/// mDNS) or is dialed again by Kademlia, and its hello is sent afresh on the new connection.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// Unverified inbound connections at once, in all. Above it the oldest unverified one is
/// closed. A member holds one only for its hello's two round trips, so 128 lets 128 runners
/// dial in within the same few milliseconds.
pub const MAX_UNVERIFIED: usize = 128;
/// Unverified inbound connections at once from one remote address (IPv4) or one IPv6 /64 (what
/// one host gets). Tests and self-hosted fleets run tens of members behind one address, each
/// unverified only during its hello; 32 is well above that, a quarter of [`MAX_UNVERIFIED`].
pub const MAX_UNVERIFIED_PER_IP: usize = 32;
/// Unverified inbound connections at once from one peer id: a bootstrap dial to the TCP and the
/// QUIC address, and one through a relay.
pub const MAX_UNVERIFIED_PER_PEER: usize = 3;
/// Inbound connections at once still in their Noise/Yamux handshake from one remote address
/// (IPv4) or IPv6 /64. A handshake takes milliseconds, so members rarely hold one; the node's
/// total of pending connections (128) is four times this, so one host cannot take them all.
pub const MAX_PENDING_PER_IP: usize = 32;
/// How often the deadline is checked.
const SWEEP: Duration = Duration::from_secs(1);
/// Lines about strangers logged at info per [`LOG_WINDOW`]; the rest go to debug, so that a
/// flood of strangers cannot flood the log.
const LOUD_LINES: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Why the gate refused a connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("the peer is banned")]
    Banned,
    #[error("{MAX_UNVERIFIED_PER_PEER} unverified connections of this peer are open")]
    PerPeer,
    #[error("{MAX_UNVERIFIED_PER_IP} unverified connections from {0} are open")]
    PerIp(String),
    #[error("{MAX_PENDING_PER_IP} handshakes from {0} are in progress")]
    PendingPerIp(String),
}

/// The address a limit counts by: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Origin {
    V4(std::net::Ipv4Addr),
    V6Prefix(u64),
}

impl Origin {
    /// The origin of a remote address; none through a relay (the relay's address is not the
    /// peer's, and a hub relays for its members only).
    fn of(remote: &Multiaddr) -> Option<Origin> {
        if remote.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            return None;
        }
        remote.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(Origin::V4(ip)),
            Protocol::Ip6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => Some(Origin::V4(v4)),
                None => Some(Origin::V6Prefix(u64::from_be_bytes(
                    ip.octets()[..8].try_into().expect("8 bytes"),
                ))),
            },
            _ => None,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::V4(ip) => write!(f, "{ip}"),
            Origin::V6Prefix(prefix) => {
                let mut octets = [0u8; 16];
                octets[..8].copy_from_slice(&prefix.to_be_bytes());
                write!(f, "{}/64", IpAddr::from(octets))
            }
        }
    }
}

/// A connection whose peer has not passed the hello yet.
struct Unverified {
    peer: PeerId,
    origin: Option<Origin>,
    inbound: bool,
    opened: Instant,
    /// Already asked to close (deadline or eviction): no longer counted.
    closing: bool,
}

/// Logs at info until [`LOUD_LINES`] a window, then at debug.
struct Throttle {
    window: Instant,
    lines: u32,
}

impl Throttle {
    fn log(&mut self, line: std::fmt::Arguments<'_>) {
        if self.window.elapsed() >= LOG_WINDOW {
            self.window = Instant::now();
            self.lines = 0;
        }
        self.lines += 1;
        if self.lines <= LOUD_LINES {
            tracing::info!("{line}");
        } else {
            tracing::debug!("{line}");
        }
    }
}

/// The behaviour that enforces the gate (it has no protocol of its own).
pub(super) struct Gate {
    members: Members,
    banned: Banned,
    unverified: HashMap<ConnectionId, Unverified>,
    /// Inbound connections still in their handshake, by where they come from.
    pending: HashMap<ConnectionId, Origin>,
    to_close: VecDeque<(PeerId, ConnectionId)>,
    sweep: tokio::time::Interval,
    throttle: Throttle,
}

impl Gate {
    pub(super) fn new(members: Members, banned: Banned) -> Gate {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Gate {
            members,
            banned,
            unverified: HashMap::new(),
            pending: HashMap::new(),
            to_close: VecDeque::new(),
            sweep,
            throttle: Throttle {
                window: Instant::now(),
                lines: 0,
            },
        }
    }

    /// Drops the connections of peers that have passed the hello since.
    fn forget_members(&mut self) {
        let members = self.members.clone();
        self.unverified.retain(|_, u| !members(&u.peer));
    }

    /// Closes unverified connections past the deadline.
    fn enforce_deadline(&mut self) {
        self.forget_members();
        for (id, u) in self.unverified.iter_mut() {
            if !u.closing && u.opened.elapsed() >= HELLO_DEADLINE {
                u.closing = true;
                self.to_close.push_back((u.peer, *id));
                self.throttle.log(format_args!(
                    "closing a connection of {}: it did not prove the swarm secret within {} s",
                    u.peer,
                    HELLO_DEADLINE.as_secs()
                ));
            }
        }
    }

    /// Whether one more unverified inbound connection of `peer` from `origin` is allowed; over
    /// the total, the oldest unverified inbound connection is closed to make room.
    fn admit_inbound(&mut self, peer: PeerId, origin: Option<Origin>) -> Result<(), Refusal> {
        self.forget_members();
        let open = || self.unverified.values().filter(|u| u.inbound && !u.closing);
        if open().filter(|u| u.peer == peer).count() >= MAX_UNVERIFIED_PER_PEER {
            return Err(Refusal::PerPeer);
        }
        if let Some(origin) = origin
            && open().filter(|u| u.origin == Some(origin)).count() >= MAX_UNVERIFIED_PER_IP
        {
            return Err(Refusal::PerIp(origin.to_string()));
        }
        if open().count() >= MAX_UNVERIFIED {
            let oldest = self
                .unverified
                .iter_mut()
                .filter(|(_, u)| u.inbound && !u.closing)
                .min_by_key(|(_, u)| u.opened);
            if let Some((id, u)) = oldest {
                u.closing = true;
                self.to_close.push_back((u.peer, *id));
                let old = u.peer;
                self.throttle.log(format_args!(
                    "closing a connection of {old}: {MAX_UNVERIFIED} unverified connections are \
                     open and it is the oldest (it has not proven the swarm secret)"
                ));
            }
        }
        Ok(())
    }

    fn refuse(&mut self, peer: PeerId, remote: &Multiaddr, why: Refusal) -> ConnectionDenied {
        self.throttle.log(format_args!(
            "refused a connection from {peer} at {remote}: {why}"
        ));
        ConnectionDenied::new(why)
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(origin) = Origin::of(remote) else {
            return Ok(());
        };
        if self.pending.values().filter(|o| **o == origin).count() >= MAX_PENDING_PER_IP {
            let why = Refusal::PendingPerIp(origin.to_string());
            self.throttle.log(format_args!(
                "refused a connection from {remote}: {why} (slow or stalled handshakes)"
            ));
            return Err(ConnectionDenied::new(why));
        }
        self.pending.insert(id, origin);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.pending.remove(&id);
        if (self.banned)(&peer) {
            return Err(self.refuse(peer, remote, Refusal::Banned));
        }
        if (self.members)(&peer) {
            return Ok(dummy::ConnectionHandler);
        }
        match self.admit_inbound(peer, Origin::of(remote)) {
            Ok(()) => Ok(dummy::ConnectionHandler),
            Err(why) => Err(self.refuse(peer, remote, why)),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if (self.banned)(&peer) {
            return Err(self.refuse(peer, addr, Refusal::Banned));
        }
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) if !(self.members)(&peer_id) => {
                self.unverified.insert(
                    connection_id,
                    Unverified {
                        peer: peer_id,
                        origin: Origin::of(endpoint.get_remote_address()),
                        inbound: endpoint.is_listener(),
                        opened: Instant::now(),
                        closing: false,
                    },
                );
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.unverified.remove(&connection_id);
            }
            // A handshake that failed or timed out, or a connection another behaviour refused.
            FromSwarm::ListenFailure(failure) => {
                self.pending.remove(&failure.connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while self.sweep.poll_tick(cx).is_ready() {
            self.enforce_deadline();
        }
        match self.to_close.pop_front() {
            Some((peer_id, id)) => Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(id),
            }),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_addresses_or_ipv6_prefixes_and_none_through_a_relay() {
        let of = |a: &str| Origin::of(&a.parse().unwrap()).map(|o| o.to_string());
        assert_eq!(of("/ip4/10.1.2.3/tcp/9"), Some("10.1.2.3".into()));
        assert_eq!(
            of("/ip6/2001:db8:1:2:aaaa::1/udp/9/quic-v1"),
            of("/ip6/2001:db8:1:2:bbbb::7/tcp/9")
        );
        assert_eq!(
            of("/ip6/2001:db8:1:2::1/tcp/9"),
            Some("2001:db8:1:2::/64".into())
        );
        assert_eq!(of("/ip6/::ffff:10.0.0.1/tcp/9"), Some("10.0.0.1".into()));
        let relay = PeerId::random();
        assert_eq!(
            of(&format!("/ip4/1.2.3.4/tcp/9/p2p/{relay}/p2p-circuit")),
            None
        );
    }

    fn gate(members: &'static [PeerId]) -> Gate {
        Gate::new(Arc::new(|p| members.contains(p)), Arc::new(|_| false))
    }

    fn open(gate: &mut Gate, peer: PeerId, ip: &str) -> Result<(), Refusal> {
        let origin = Origin::of(&format!("/ip4/{ip}/tcp/1").parse().unwrap());
        gate.admit_inbound(peer, origin)?;
        gate.unverified.insert(
            ConnectionId::new_unchecked(gate.unverified.len() + 1_000_000),
            Unverified {
                peer,
                origin,
                inbound: true,
                opened: Instant::now(),
                closing: false,
            },
        );
        Ok(())
    }

    #[tokio::test]
    async fn limits_count_unverified_connections_per_peer_per_address_and_in_all() {
        let mut g = gate(&[]);
        let one = PeerId::random();
        for _ in 0..MAX_UNVERIFIED_PER_PEER {
            open(&mut g, one, "10.0.0.1").unwrap();
        }
        assert!(matches!(
            open(&mut g, one, "10.0.0.2"),
            Err(Refusal::PerPeer)
        ));
        for _ in MAX_UNVERIFIED_PER_PEER..MAX_UNVERIFIED_PER_IP {
            open(&mut g, PeerId::random(), "10.0.0.1").unwrap();
        }
        assert!(matches!(
            open(&mut g, PeerId::random(), "10.0.0.1"),
            Err(Refusal::PerIp(_))
        ));
        // Over the total, the oldest unverified connection goes, the new one stays.
        let mut n = 0;
        while g.unverified.len() < MAX_UNVERIFIED {
            open(&mut g, PeerId::random(), &format!("10.0.1.{}", n / 16)).unwrap();
            n += 1;
        }
        assert!(g.to_close.is_empty());
        open(&mut g, PeerId::random(), "10.0.9.9").unwrap();
        assert_eq!(g.to_close.len(), 1);
        assert_eq!(
            g.unverified.values().filter(|u| !u.closing).count(),
            MAX_UNVERIFIED
        );
    }
}
