//! The dial budget: in a bounded overlay, the dials nobody asked for stop at the connection
//! bound.
//!
//! Kademlia dials every member its lookups meet, and a connection between members is a
//! TCP/QUIC handshake, Noise, Yamux and the SPAKE2 hello each way, not a UDP datagram. A
//! newcomer's first lookups (Kademlia's bootstrap: its own id, then a random id in every bucket
//! beyond the closest) met 140–190 of 200 members within seconds, the overlay closed those
//! connections again half a minute later, and with members joining all the time some member
//! was always in such a wave. Here, once the node holds [`MAX_CONNECTIONS`] connections, a dial
//! that the node's own loop did not ask for ([`Budget::ask`]: the overlay's neighbours,
//! pulls, bootstrap peers, a member looked up to pull from) is denied; the lookup then counts
//! that member as failed and goes on through the members it is connected to, which cover every
//! bucket. Dials to a member already connected (hole punching, a second transport) open no new
//! peer and pass. In a full mesh nothing is denied: every member is dialed anyway.

use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, DialFailure, FromSwarm, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};

use super::*;

/// Connections (established and being dialed, both directions) above which the dials nobody
/// asked for are denied: the overlay's bound on what it keeps ([`super::overlay`]'s 64).
pub(super) const MAX_CONNECTIONS: usize = 64;
/// How long a dial the loop asked for stays allowed (a lookup for a member to pull from ends
/// within [`REACH_TIMEOUT`]).
const ASKED_FOR: Duration = Duration::from_secs(30);

/// What the loop tells the budget: whether the overlay is bounded, and the dials it asked for.
#[derive(Default)]
pub(super) struct Budget {
    bounded: AtomicBool,
    asked: Mutex<HashMap<PeerId, Instant>>,
}

impl Budget {
    /// Whether the overlay is bounded (the budget applies only then).
    pub(super) fn set_bounded(&self, bounded: bool) {
        self.bounded.store(bounded, Ordering::Relaxed);
    }

    /// The loop dials `peer` (or has a lookup find it): allowed whatever the count.
    pub(super) fn ask(&self, peer: PeerId) {
        let now = Instant::now();
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        if asked.len() >= 1024 {
            asked.retain(|_, at| now.duration_since(*at) < ASKED_FOR);
        }
        asked.insert(peer, now);
    }

    /// Whether a dial of `peer` was asked for (and is still allowed).
    fn was_asked(&self, peer: &PeerId) -> bool {
        let asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.get(peer).is_some_and(|at| at.elapsed() < ASKED_FOR)
    }

    /// The dial of `peer` connected or failed: it needs asking for again.
    fn done(&self, peer: &PeerId) {
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.remove(peer);
    }
}

/// Why a dial was denied.
#[derive(Debug, thiserror::Error)]
#[error(
    "{MAX_CONNECTIONS} connections are open in a bounded overlay and nobody asked for this one"
)]
pub(super) struct OverBudget;

/// The behaviour that counts the connections and denies the dials over the budget.
pub(super) struct DialBudget {
    budget: Arc<Budget>,
    /// Established connections, per peer.
    established: HashMap<PeerId, usize>,
    /// Outbound connections being dialed, not yet established or failed.
    dialing: HashSet<ConnectionId>,
}

impl DialBudget {
    pub(super) fn new(budget: Arc<Budget>) -> DialBudget {
        DialBudget {
            budget,
            established: HashMap::new(),
            dialing: HashSet::new(),
        }
    }

    /// Connections established and being dialed.
    fn open(&self) -> usize {
        self.established.values().sum::<usize>() + self.dialing.len()
    }

    /// Whether a dial of `peer` (if known) may go ahead.
    fn allows(&self, peer: Option<PeerId>) -> bool {
        if !self.budget.bounded.load(Ordering::Relaxed) || self.open() < MAX_CONNECTIONS {
            return true;
        }
        // A dial without a peer id is the loop's own (an address given by the user).
        peer.is_none_or(|p| self.established.contains_key(&p) || self.budget.was_asked(&p))
    }
}

impl NetworkBehaviour for DialBudget {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        _addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if !self.allows(maybe_peer) {
            tracing::trace!("not dialing {maybe_peer:?}: {OverBudget}");
            return Err(ConnectionDenied::new(OverBudget));
        }
        self.dialing.insert(connection_id);
        Ok(Vec::new())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(established) => {
                self.dialing.remove(&established.connection_id);
                *self.established.entry(established.peer_id).or_default() += 1;
                self.budget.done(&established.peer_id);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                remaining_established,
                ..
            }) => {
                if remaining_established == 0 {
                    self.established.remove(&peer_id);
                } else {
                    self.established.insert(peer_id, remaining_established);
                }
            }
            FromSwarm::DialFailure(DialFailure {
                peer_id,
                connection_id,
                ..
            }) => {
                if self.dialing.remove(&connection_id)
                    && let Some(peer) = peer_id
                {
                    self.budget.done(&peer);
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over_budget(budget: &Arc<Budget>) -> DialBudget {
        let mut behaviour = DialBudget::new(budget.clone());
        for _ in 0..MAX_CONNECTIONS {
            behaviour.established.insert(PeerId::random(), 1);
        }
        behaviour
    }

    #[test]
    fn a_full_mesh_dials_whatever_the_count() {
        let budget = Arc::new(Budget::default());
        let behaviour = over_budget(&budget);
        assert!(behaviour.allows(Some(PeerId::random())));
    }

    #[test]
    fn a_bounded_overlay_at_the_bound_dials_only_what_was_asked_for_or_is_connected() {
        let budget = Arc::new(Budget::default());
        budget.set_bounded(true);
        let behaviour = over_budget(&budget);
        let stranger = PeerId::random();
        assert!(!behaviour.allows(Some(stranger)));
        budget.ask(stranger);
        assert!(behaviour.allows(Some(stranger)));
        budget.done(&stranger);
        assert!(!behaviour.allows(Some(stranger)));
        let connected = *behaviour.established.keys().next().unwrap();
        assert!(behaviour.allows(Some(connected)));
    }

    #[test]
    fn a_bounded_overlay_below_the_bound_dials_freely() {
        let budget = Arc::new(Budget::default());
        budget.set_bounded(true);
        let mut behaviour = DialBudget::new(budget.clone());
        for _ in 0..MAX_CONNECTIONS - 1 {
            behaviour.established.insert(PeerId::random(), 1);
        }
        assert!(behaviour.allows(Some(PeerId::random())));
        behaviour.dialing.insert(ConnectionId::new_unchecked(1));
        assert!(!behaviour.allows(Some(PeerId::random())));
    }
}
