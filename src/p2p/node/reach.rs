//! Reach: relay reservations on hubs, DCUtR hole punching and AutoNAT's verdict.
//!
//! A node that AutoNAT has not found public reserves a slot on every verified hub it dialed
//! directly; its `/p2p-circuit` address then appears among its listen addresses, so identify,
//! Kademlia and the registries hand it out. Members that cannot dial it directly reach it
//! through the hub, and DCUtR upgrades that relayed connection to a direct one where both NATs
//! allow (the relayed connection stays where they do not).

use libp2p::core::transport::ListenerId;
use libp2p::{autonat, dcutr, relay};

use super::*;

/// Whether a connection's remote address goes through a relay.
pub(super) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// `tcp` or `quic`: the transport of a direct address.
fn transport_of(addr: &Multiaddr) -> &'static str {
    if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) {
        "quic"
    } else {
        "tcp"
    }
}

/// The address to reserve on a relay we dialed at `dialed`: `dialed/p2p/<relay>/p2p-circuit`.
fn circuit_listen_addr(dialed: &Multiaddr, relay: PeerId) -> Multiaddr {
    let mut addr = dialed.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit)
}

impl EventLoop {
    /// Reserves a relay slot on `peer` when it is a verified hub this node dialed directly,
    /// this node is not a hub itself and AutoNAT has not found it public.
    pub(super) fn maybe_reserve(&mut self, peer: PeerId) {
        if self.hub || self.reservations.values().any(|p| *p == peer) {
            return;
        }
        let dialed = {
            let state = self.inner.state();
            if state.reachability == Reachability::Public {
                return;
            }
            match state.peers.get(&peer) {
                Some(p) if p.verified && p.is_hub => p.dialed_addr.clone(),
                p => {
                    tracing::trace!(
                        "not reserving on {peer}: verified {:?}, hub {:?}",
                        p.map(|p| p.verified),
                        p.map(|p| p.is_hub)
                    );
                    None
                }
            }
        };
        let Some(dialed) = dialed else {
            return;
        };
        let addr = circuit_listen_addr(&dialed, peer);
        match self.swarm.listen_on(addr.clone()) {
            Ok(id) => {
                tracing::debug!("asking the hub {peer} for a relay reservation at {addr}");
                self.reservations.insert(id, peer);
            }
            Err(e) => tracing::warn!("cannot reserve a relay slot at {addr}: {e}"),
        }
    }

    pub(super) fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                let addr = {
                    let state = self.inner.state();
                    state
                        .peers
                        .get(&relay_peer_id)
                        .and_then(|p| p.dialed_addr.clone())
                        .map(|a| circuit_listen_addr(&a, relay_peer_id))
                };
                if let Some(addr) = addr {
                    if !renewal {
                        tracing::info!("holding a relay reservation on {addr}");
                    }
                    self.inner.state().relays.insert(relay_peer_id, addr);
                }
                if !renewal {
                    // Members behind NATs are findable only now: look the swarm up again, and
                    // once more when the others' reservations have had time to land.
                    self.look_up_swarm();
                    self.rebootstrap_at = Some(Instant::now() + Duration::from_secs(3));
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!("opened a relayed connection through {relay_peer_id}");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!("{src_peer_id} reached this node through a relay");
            }
        }
    }

    /// A listener closed: when it was a relay reservation, forget it (it is made again once
    /// the hub is back and verified).
    pub(super) fn on_listener_closed(
        &mut self,
        listener: ListenerId,
        reason: Result<(), std::io::Error>,
    ) {
        let Some(relay) = self.reservations.remove(&listener) else {
            return;
        };
        self.inner.state().relays.remove(&relay);
        match reason {
            Ok(()) => tracing::info!("the relay reservation on {relay} ended"),
            Err(e) => tracing::warn!(
                "the hub {relay} refused or lost this node's relay reservation ({e}); reserving again once it is reachable"
            ),
        }
    }

    pub(super) fn on_dcutr(&mut self, event: dcutr::Event) {
        bump(&self.inner.counters.hole_punches_attempted);
        let peer = event.remote_peer_id;
        match event.result {
            Ok(connection) => {
                let transport = self
                    .inner
                    .state()
                    .peers
                    .get(&peer)
                    .and_then(|p| {
                        p.connections
                            .get(&connection)
                            .map(|l| transport_of(&l.remote))
                    })
                    .unwrap_or("tcp");
                let counter = if transport == "quic" {
                    &self.inner.counters.hole_punches_quic
                } else {
                    &self.inner.counters.hole_punches_tcp
                };
                bump(counter);
                tracing::info!("hole punched a direct {transport} connection to {peer}");
            }
            Err(e) => {
                tracing::info!("hole punching to {peer} failed ({e}); staying on the relay")
            }
        }
    }

    pub(super) fn on_autonat(&mut self, event: autonat::v2::client::Event) {
        let verdict = match &event.result {
            Ok(()) => Reachability::Public,
            Err(_) => Reachability::Private,
        };
        let mut state = self.inner.state();
        // One address reachable from outside makes the node public.
        if state.reachability == Reachability::Public && verdict == Reachability::Private {
            return;
        }
        if state.reachability != verdict {
            tracing::info!(
                "AutoNAT (hub {}): this node is {} ({} tested)",
                event.server,
                verdict.as_str(),
                event.tested_addr
            );
            state.reachability = verdict;
        }
    }

    /// The second swarm lookup after a reservation (see [`EventLoop::on_relay_client`]).
    pub(super) fn rebootstrap_when_due(&mut self) {
        if self.rebootstrap_at.is_some_and(|at| at <= Instant::now()) {
            self.rebootstrap_at = None;
            self.look_up_swarm();
        }
    }
}
