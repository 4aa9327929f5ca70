//! The hub's services: circuit relay v2 and an AutoNAT v2 server, for verified members only.
//!
//! Both are gated on [`Members`], the set of peers that passed the membership hello: the relay
//! through its rate-limiter hook (asked for every reservation and every circuit a peer
//! requests, so a stranger's request is refused with `RESOURCE_LIMIT_EXCEEDED`), the AutoNAT
//! server by [`MembersOnly`], which drops a stranger's dial-back request before the server can
//! dial anything (the stranger gets an error answer).

use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{autonat, relay};

use super::*;

/// Who passed the membership hello, readable from inside the swarm's behaviours.
pub(super) type Members = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;

/// Reservations the hub holds at once: a fleet of runners, each behind its own NAT, with
/// room for restarts (a reservation outlives the runner that made it until it expires).
pub const MAX_RESERVATIONS: usize = 1024;
/// How long a reservation lasts before the runner renews it (the client renews on its own).
pub const RESERVATION_DURATION: Duration = Duration::from_secs(3600);
/// Circuits at once: every pair of 50 runners that cannot punch a hole (1225) and room.
pub const MAX_CIRCUITS: usize = 2048;
/// Circuits per peer: one per other member of a large fleet.
pub const MAX_CIRCUITS_PER_PEER: usize = 128;
/// A circuit's lifetime: longer than the longest GitHub-hosted job (6 h); members re-dial
/// through the relay when one ends.
pub const MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(12 * 3600);

/// The relay server's configuration: rust-libp2p's defaults (2 min, 128 KiB, 16 circuits) are
/// sized for hole-punch coordination; a hub carries cache entries of up to 32 MiB between
/// runners that cannot punch a hole, for the whole of a job.
pub(super) fn relay_config(members: Members) -> relay::Config {
    let reservation_gate = members.clone();
    let circuit_gate = members;
    let mut config = relay::Config {
        max_reservations: MAX_RESERVATIONS,
        max_reservations_per_peer: 4,
        reservation_duration: RESERVATION_DURATION,
        reservation_rate_limiters: Vec::new(),
        max_circuits: MAX_CIRCUITS,
        max_circuits_per_peer: MAX_CIRCUITS_PER_PEER,
        max_circuit_duration: MAX_CIRCUIT_DURATION,
        // No byte limit: an entry of any accepted size must cross.
        max_circuit_bytes: 0,
        circuit_src_rate_limiters: Vec::new(),
    };
    config.reservation_rate_limiters.push(Box::new(
        move |peer: PeerId, _: &Multiaddr, _: Instant| {
            let allowed = reservation_gate(&peer);
            if !allowed {
                tracing::warn!(
                    "refused a relay reservation to {peer}: it has not proven the swarm secret"
                );
            }
            allowed
        },
    ));
    config.circuit_src_rate_limiters.push(Box::new(
        move |peer: PeerId, _: &Multiaddr, _: Instant| {
            let allowed = circuit_gate(&peer);
            if !allowed {
                tracing::warn!(
                    "refused a relay circuit to {peer}: it has not proven the swarm secret"
                );
            }
            allowed
        },
    ));
    // Members renew and re-dial; these only stop a member that misbehaves in a loop.
    config
        .reservation_rate_per_peer(
            std::num::NonZeroU32::new(30).unwrap(),
            Duration::from_secs(120),
        )
        .circuit_src_per_peer(
            std::num::NonZeroU32::new(240).unwrap(),
            Duration::from_secs(60),
        )
}

/// A behaviour whose peers' requests reach it only when they are members: events from the
/// connection handlers of anyone else are dropped.
pub(super) struct MembersOnly<B> {
    inner: B,
    members: Members,
}

impl<B> MembersOnly<B> {
    pub(super) fn new(inner: B, members: Members) -> Self {
        MembersOnly { inner, members }
    }
}

/// The AutoNAT v2 server, answering members only.
pub(super) type AutonatServer = MembersOnly<autonat::v2::server::Behaviour>;

impl<B: NetworkBehaviour> NetworkBehaviour for MembersOnly<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        if (self.members)(&peer) {
            self.inner.on_connection_handler_event(peer, id, event);
        } else {
            // For the AutoNAT server this is a dial-back request: dropping it drops its answer
            // channel, and the stranger is told the test failed without being dialed.
            tracing::debug!("ignored a request from {peer}: it has not proven the swarm secret");
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
