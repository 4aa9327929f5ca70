//! Connectivity: which addresses are dialed, keeping bootstrap peers connected, Kademlia.

use super::*;

/// Whether an address can be dialed at all (not `0.0.0.0`/`::`, not a relay circuit).
pub(super) fn is_dialable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        Protocol::P2pCircuit => false,
        _ => true,
    })
}

pub(super) struct Redial {
    pub(super) peer: PeerId,
    pub(super) addr: Multiaddr,
    pub(super) next_attempt: Instant,
    pub(super) backoff: Duration,
}

impl EventLoop {
    /// Re-dials lost bootstrap and mDNS peers, each with its own backoff.
    pub(super) fn redial_lost(&mut self) {
        let now = Instant::now();
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        let banned: HashSet<PeerId> = self.inner.state().banned.keys().copied().collect();
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

    /// Dials a peer at all its known addresses at once, unless it is us, banned, connected or
    /// being dialed already.
    pub(super) fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, how: &str) {
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

    pub(super) fn on_kad(&mut self, event: kad::Event) {
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
}
