//! [`MembersOnly`]: a behaviour that hears a peer only once it has passed the membership hello.
//!
//! Every event a peer's connection handler reports (a request it sent, a subscription, a
//! message) reaches the wrapped behaviour only when the peer is a member. Before that, it is
//! either dropped (the AutoNAT server: a stranger's dial-back request is refused unanswered) or
//! held, in order and bounded, and replayed when the node admits the peer
//! ([`MembersOnly::admit`], called as its hello passes): a member's first gossipsub RPC (its
//! subscriptions) and its first Kademlia requests cross before the hello has finished, and must
//! not be lost. A peer that sends more than a member does before its hello is disconnected; one
//! that never passes it takes its events with it when it goes.
//!
//! So a stranger's Kademlia `FIND_NODE` is never answered and its `PUT_RECORD` never stored, and
//! its gossipsub subscription never registers: nothing is published to it, and what it publishes
//! is never forwarded.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    CloseConnection, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};

use super::gate::Members;
use super::*;

/// Events held per unverified peer: a member sends one or two (a gossipsub subscription, a
/// Kademlia lookup) before its hello passes.
pub const HELD_PER_PEER: usize = 8;
/// Events held for all unverified peers of one behaviour. A held event is at most one
/// gossipsub RPC (64 KiB) or one Kademlia message (16 KiB), so this bounds what strangers can
/// park in memory to 4 MiB for gossipsub. Over it, the peer that has been holding the longest
/// is disconnected (a member holds for milliseconds).
pub const HELD_IN_ALL: usize = 64;

/// What happens to a stranger's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BeforeHello {
    /// Dropped (the behaviour answers no one before the hello).
    Drop,
    /// Held until the peer is admitted.
    Hold,
}

/// Events of one unverified peer.
struct Held<E> {
    since: Instant,
    events: VecDeque<(ConnectionId, E)>,
}

/// A behaviour whose peers' handler events reach it only when they are members.
pub(super) struct MembersOnly<B: NetworkBehaviour> {
    inner: B,
    members: Members,
    mode: BeforeHello,
    /// What the logs call it.
    name: &'static str,
    held: HashMap<PeerId, Held<THandlerOutEvent<B>>>,
    held_count: usize,
    to_disconnect: VecDeque<PeerId>,
}

impl<B: NetworkBehaviour> MembersOnly<B> {
    pub(super) fn new(inner: B, members: Members, mode: BeforeHello, name: &'static str) -> Self {
        MembersOnly {
            inner,
            members,
            mode,
            name,
            held: HashMap::new(),
            held_count: 0,
            to_disconnect: VecDeque::new(),
        }
    }

    /// The peer passed the hello: what it sent so far reaches the behaviour, in order.
    pub(super) fn admit(&mut self, peer: &PeerId) {
        if let Some(held) = self.held.remove(peer) {
            self.held_count -= held.events.len();
            for (id, event) in held.events {
                self.inner.on_connection_handler_event(*peer, id, event);
            }
        }
    }

    /// Forgets a peer's held events and disconnects it.
    fn evict(&mut self, peer: PeerId, why: &str) {
        if let Some(held) = self.held.remove(&peer) {
            self.held_count -= held.events.len();
        }
        tracing::info!(
            "disconnecting {peer}: it {why} before proving the swarm secret ({})",
            self.name
        );
        self.to_disconnect.push_back(peer);
    }

    fn hold(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<B>) {
        if self
            .held
            .get(&peer)
            .is_some_and(|h| h.events.len() >= HELD_PER_PEER)
        {
            self.evict(peer, &format!("sent more than {HELD_PER_PEER} messages"));
            return;
        }
        if self.held_count >= HELD_IN_ALL {
            let longest = self
                .held
                .iter()
                .min_by_key(|(_, h)| h.since)
                .map(|(p, _)| *p);
            if let Some(longest) = longest {
                self.evict(
                    longest,
                    &format!("held the oldest of {HELD_IN_ALL} messages from unverified peers"),
                );
            }
        }
        let held = self.held.entry(peer).or_insert_with(|| Held {
            since: Instant::now(),
            events: VecDeque::new(),
        });
        held.events.push_back((id, event));
        self.held_count += 1;
    }
}

impl<B: NetworkBehaviour> std::ops::Deref for MembersOnly<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B: NetworkBehaviour> std::ops::DerefMut for MembersOnly<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

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
        if let FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id,
            connection_id,
            remaining_established,
            ..
        }) = event
            && let Some(held) = self.held.get_mut(&peer_id)
        {
            let before = held.events.len();
            held.events.retain(|(id, _)| *id != connection_id);
            let dropped = before - held.events.len();
            self.held_count -= dropped;
            if remaining_established == 0 || held.events.is_empty() {
                let rest = self.held.remove(&peer_id).map_or(0, |h| h.events.len());
                self.held_count -= rest;
            }
        }
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        if (self.members)(&peer) {
            // Whatever it sent before its hello goes first.
            self.admit(&peer);
            self.inner.on_connection_handler_event(peer, id, event);
            return;
        }
        match self.mode {
            BeforeHello::Hold => self.hold(peer, id, event),
            BeforeHello::Drop => {
                // For the AutoNAT server this is a dial-back request: dropping it drops its
                // answer channel, and the stranger is told the test failed without being
                // dialed.
                tracing::debug!(
                    "ignored a request from {peer} ({}): it has not proven the swarm secret",
                    self.name
                );
            }
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(peer_id) = self.to_disconnect.pop_front() {
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::All,
            });
        }
        let polled = self.inner.poll(cx);
        if let Poll::Ready(ToSwarm::Dial { opts }) = &polled {
            // Said here because the inner behaviour dials without telling the node why.
            tracing::debug!(
                "{} dials {}",
                self.name,
                opts.get_peer_id()
                    .map_or_else(|| "an address".to_string(), |p| p.to_string())
            );
        }
        polled
    }
}
