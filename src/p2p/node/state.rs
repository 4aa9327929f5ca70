//! What the event loop has learnt about peers, holders and claims, shared with the handlers.

use libp2p::swarm::ConnectionId;

use super::*;

#[derive(Debug, Clone)]
pub(super) struct Holder {
    pub(super) peer: PeerId,
    pub(super) fetched_at_ms: u64,
}

#[derive(Debug, Default)]
pub(super) struct PeerState {
    pub(super) verified: bool,
    pub(super) meta: PeerMeta,
    pub(super) addrs: Vec<Multiaddr>,
    pub(super) last_seen_ms: u64,
    pub(super) failures: u32,
    /// Its open connections.
    pub(super) connections: HashMap<ConnectionId, Link>,
    /// The address this node dialed it at, when not through a relay (to reserve on it).
    pub(super) dialed_addr: Option<Multiaddr>,
    /// It serves circuit relay v2 (identify lists the hop protocol): a hub.
    pub(super) is_hub: bool,
    /// The last request or answer exchanged with it (an overlay closes idle connections only).
    pub(super) last_exchange: Option<std::time::Instant>,
    /// Requests under way with it, either way (sent and not answered or failed; received and
    /// not answered): a connection that carries one is not closed as quiet.
    pub(super) in_flight: u32,
}

impl PeerState {
    /// Whether one of its connections does not go through a relay.
    pub(super) fn is_direct(&self) -> bool {
        self.connections.values().any(|l| !l.relayed)
    }
}

/// One connection to a peer.
#[derive(Debug, Clone)]
pub(super) struct Link {
    /// Its remote address (for an accepted relayed connection only `/p2p/<peer>`).
    pub(super) remote: Multiaddr,
    /// It goes through a relay (`/p2p-circuit` on either end).
    pub(super) relayed: bool,
    /// When it was established.
    pub(super) opened: std::time::Instant,
    /// This node dialed it (else the peer did).
    pub(super) dialed: bool,
}

/// AutoNAT's verdict on this node's reachability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Reachability {
    /// A hub dialed one of its addresses back.
    Public,
    /// Every address a hub tried failed.
    Private,
    /// No test has finished yet.
    #[default]
    Unknown,
}

impl Reachability {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Reachability::Public => "public",
            Reachability::Private => "private",
            Reachability::Unknown => "unknown",
        }
    }
}

/// An entry this node can serve.
#[derive(Debug, Clone)]
pub(super) struct Held {
    /// Its local cache key id.
    pub(super) local_id: String,
    /// When it was fetched or revalidated.
    pub(super) fetched_at_ms: u64,
}
/// A claim granted by this node as a key's coordinator.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    /// The node fetching the key.
    pub(super) claimant: PeerId,
    /// Until when the claim holds (ms since the epoch).
    pub(super) until_ms: u64,
    /// The claimant was connected here when it claimed: its leaving voids the claim. (A
    /// claimant reached through others in a bounded overlay cannot be seen leaving; its claim
    /// lasts until `until_ms`.)
    pub(super) watched: bool,
}

/// What the loop has learnt, readable by handlers.
#[derive(Default)]
pub(super) struct State {
    pub(super) listen_addrs: Vec<Multiaddr>,
    pub(super) peers: HashMap<PeerId, PeerState>,
    pub(super) banned: Bans,
    pub(super) holders: HashMap<KeyId, Vec<Holder>>,
    /// As coordinator: the one node fetching each key, and until when its claim holds.
    pub(super) claims: HashMap<KeyId, Claim>,
    pub(super) waiters: HashMap<KeyId, Vec<oneshot::Sender<()>>>,
    /// Every entry this node can serve, by wire key id.
    pub(super) served: HashMap<KeyId, Held>,
    /// AutoNAT's verdict.
    pub(super) reachability: Reachability,
    /// The `/p2p-circuit` addresses of the reservations held, by relay.
    pub(super) relays: HashMap<PeerId, Multiaddr>,
    /// `--external-addr`.
    pub(super) external_addrs: Vec<Multiaddr>,
    /// The swarm is larger than a full mesh: connections are bounded (see `overlay.rs`).
    pub(super) bounded: bool,
}

impl State {
    /// The connections open at this moment, to members and to peers not verified yet.
    pub(super) fn connections(&self) -> usize {
        self.peers.values().map(|p| p.connections.len()).sum()
    }

    pub(super) fn wake(&mut self, key_id: &KeyId) {
        for waiter in self.waiters.remove(key_id).unwrap_or_default() {
            let _ = waiter.send(());
        }
    }

    pub(super) fn verified(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.verified)
    }

    /// Verified holders whose copy is fresh for `ttl`, newest first.
    pub(super) fn fresh_holders(&self, key_id: &KeyId, ttl: Duration, now: u64) -> Vec<PeerId> {
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

    /// Holders fresh for `ttl` this node is not connected to (heard of through the gossip of a
    /// bounded overlay), newest first: reached by dialing them.
    pub(super) fn far_holders(&self, key_id: &KeyId, ttl: Duration, now: u64) -> Vec<PeerId> {
        if !self.bounded {
            return Vec::new();
        }
        let mut holders: Vec<&Holder> = self
            .holders
            .get(key_id)
            .map(|h| {
                h.iter()
                    .filter(|h| {
                        !self.verified(&h.peer)
                            && !self.banned.contains(&h.peer)
                            && is_fresh(h.fetched_at_ms, ttl, now)
                    })
                    .collect()
            })
            .unwrap_or_default();
        holders.sort_by_key(|h| std::cmp::Reverse(h.fetched_at_ms));
        holders.into_iter().map(|h| h.peer).collect()
    }

    /// The next hop towards the key's coordinator: of the verified members connected and this
    /// node, the one closest to the key by XOR distance. In a full mesh that is the coordinator
    /// itself; in a bounded overlay a claim is passed on until no neighbour is closer (see
    /// `overlay.rs`).
    pub(super) fn coordinator(&self, key_id: &KeyId, me: PeerId) -> PeerId {
        self.peers
            .iter()
            .filter(|(_, p)| p.verified)
            .map(|(id, _)| *id)
            .chain(Some(me))
            .min_by_key(|p| super::overlay::key_distance(p, key_id))
            .unwrap_or(me)
    }
}

/// Peers refused for [`BAN_TIME`], at most [`MAX_BANNED`]: failing the hello costs a stranger
/// nothing but a new key, so the list evicts its oldest entry rather than grow.
#[derive(Default)]
pub(super) struct Bans {
    until: HashMap<PeerId, Instant>,
    /// Ban times, oldest first (an entry whose peer was banned again since is skipped).
    order: std::collections::VecDeque<(PeerId, Instant)>,
}

/// Bans kept at once (about 200 bytes each).
pub(super) const MAX_BANNED: usize = 4096;

impl Bans {
    /// Bans `peer` from now; returns the peers evicted to stay under [`MAX_BANNED`].
    pub(super) fn insert(&mut self, peer: PeerId, now: Instant) -> Vec<PeerId> {
        self.until.insert(peer, now);
        self.order.push_back((peer, now));
        let mut evicted = Vec::new();
        while self.until.len() > MAX_BANNED {
            evicted.extend(self.pop_oldest());
        }
        // Entries made stale by a second ban must not pile up either.
        if self.order.len() > 2 * MAX_BANNED {
            let until = &self.until;
            self.order.retain(|(p, at)| until.get(p) == Some(at));
        }
        evicted
    }

    fn pop_oldest(&mut self) -> Option<PeerId> {
        let (peer, at) = self.order.pop_front()?;
        if self.until.get(&peer) == Some(&at) {
            self.until.remove(&peer);
            return Some(peer);
        }
        None
    }

    /// Forgets bans older than [`BAN_TIME`]; returns the peers no longer banned.
    pub(super) fn expire(&mut self) -> Vec<PeerId> {
        let mut expired = Vec::new();
        while self
            .order
            .front()
            .is_some_and(|(_, at)| at.elapsed() >= BAN_TIME)
        {
            expired.extend(self.pop_oldest());
        }
        expired
    }

    pub(super) fn contains(&self, peer: &PeerId) -> bool {
        self.until.contains_key(peer)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.until.len()
    }
}

pub(super) fn is_fresh(fetched_at_ms: u64, ttl: Duration, now: u64) -> bool {
    (now.saturating_sub(fetched_at_ms) as u128) < ttl.as_millis()
}

pub(super) fn parse_key_id(hex_id: &str) -> Option<KeyId> {
    hex::decode(hex_id).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ban_list_stays_bounded_and_evicts_the_oldest() {
        let mut bans = Bans::default();
        let first = PeerId::random();
        let now = Instant::now();
        assert!(bans.insert(first, now).is_empty());
        let mut evicted = Vec::new();
        for _ in 0..3 * MAX_BANNED {
            evicted.extend(bans.insert(PeerId::random(), now));
        }
        assert_eq!(bans.len(), MAX_BANNED);
        assert!(bans.order.len() <= 2 * MAX_BANNED + 1);
        assert_eq!(evicted.len(), 2 * MAX_BANNED + 1);
        assert_eq!(evicted[0], first, "the oldest goes first");
        assert!(!bans.contains(&first));
        // One peer banned again and again takes one entry.
        let again = PeerId::random();
        for _ in 0..3 * MAX_BANNED {
            bans.insert(again, Instant::now());
        }
        assert!(bans.contains(&again));
        assert_eq!(bans.len(), MAX_BANNED);
        assert!(bans.order.len() <= 2 * MAX_BANNED + 1);
    }

    #[test]
    fn bans_expire() {
        let mut bans = Bans::default();
        let old = PeerId::random();
        let young = PeerId::random();
        let past = Instant::now() - BAN_TIME - Duration::from_secs(1);
        bans.insert(old, past);
        bans.insert(young, Instant::now());
        assert_eq!(bans.expire(), vec![old]);
        assert!(!bans.contains(&old) && bans.contains(&young));
    }
}
