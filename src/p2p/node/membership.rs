//! Membership: the hello that proves the secret, and what happens to peers that fail it.

use super::*;

impl EventLoop {
    pub(super) fn hello(&self, to: &PeerId) -> (Vec<u8>, Vec<u8>) {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        (
            self.inner.keys.proof(&self.inner.peer_id, to),
            self.inner.keys.seal(HELLO_AAD, &meta),
        )
    }

    /// Disconnects a peer and refuses it for a while.
    pub(super) fn punish(&mut self, peer: PeerId) {
        let evicted = {
            let mut state = self.inner.state();
            let evicted = state.banned.insert(peer, Instant::now());
            state.peers.remove(&peer);
            for holders in state.holders.values_mut() {
                holders.retain(|h| h.peer != peer);
            }
            evicted
        };
        self.unblacklist(evicted);
        self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
        self.to_disconnect.push(peer);
        tracing::warn!("disconnecting peer {peer}: it failed verification");
    }

    /// Checks a peer's proof; on success marks it verified with what it told about itself.
    pub(super) fn accept_hello(&mut self, peer: &PeerId, proof: &[u8], meta: &[u8]) -> bool {
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
            // What it sent gossipsub and Kademlia before its hello passed reaches them now.
            self.swarm.behaviour_mut().gossipsub.admit(peer);
            self.swarm.behaviour_mut().kad.admit(peer);
            self.add_to_routing(peer);
            self.maybe_reserve(*peer);
        }
        true
    }

    /// Puts a verified member's listen addresses into the Kademlia routing table.
    pub(super) fn add_to_routing(&mut self, peer: &PeerId) {
        let (addrs, on_loopback) = self
            .inner
            .state()
            .peers
            .get(peer)
            .map(|p| {
                (
                    p.addrs.clone(),
                    p.connections.values().any(|l| is_loopback(&l.remote)),
                )
            })
            .unwrap_or_default();
        // A peer's loopback addresses are of use only to nodes on its host: handed to anyone
        // else (Kademlia answers carry them), they reach that node itself, and the whole dial
        // fails on the wrong peer id.
        for addr in addrs
            .into_iter()
            .filter(|a| is_dialable(a) && (on_loopback || !is_loopback(a)))
        {
            self.swarm.behaviour_mut().kad.add_address(peer, addr);
        }
    }
}
