//! The overlay: which members this node stays connected to, and which member coordinates a key.
//!
//! A swarm of up to [`NodeConfig::full_mesh`] members is a full mesh, as it always was: every
//! member dials every other one it hears of. Beyond that size, connections are bounded the way
//! Kademlia bounds its routing table: members are sorted into buckets by the XOR distance of
//! their ids to this node's, and the node keeps [`PER_BUCKET`] verified connections in each
//! bucket that has members, [`MAX_NEIGHBOURS`] at most. That is O(log n) connections per node,
//! and it is enough to route: a node that is not the closest member to a key always has a
//! neighbour closer to it (the one in the bucket where the closest member lies), so a claim
//! passed on greedily reaches the key's coordinator — the member closest to the key — in
//! O(log n) hops, whoever starts it (see `claims.rs`).
//!
//! Kademlia (members only) finds the members: its lookups connect to them. The idle
//! connections this node dialed beyond its buckets' needs are closed again; those others dialed
//! are theirs to keep (they need them for their own buckets), up to [`MAX_CONNECTED`].

use libp2p::swarm::ConnectionId;

use super::*;

/// Verified neighbours kept in each bucket of a bounded overlay (Kademlia's `k`, kept small:
/// routing needs one, the spares ride out a neighbour leaving).
pub(super) const PER_BUCKET: usize = 2;
/// Neighbours this node dials for, at most (besides one per bucket, which routing needs).
const MAX_NEIGHBOURS: usize = 32;
/// Verified members connected at once, others' choices included, before the youngest idle
/// connections others dialed are closed too.
const MAX_CONNECTED: usize = 64;
/// How long a connection must have been without an exchange before it may be closed, when its
/// count says a request is under way (a request ends within 10 s, answered or failed: this
/// also bounds what a count that went wrong can hold).
const IDLE_BEFORE_CLOSE: Duration = Duration::from_secs(10);
/// How long a connection that carries no request must have been quiet before it may be closed.
/// (At 10 s, the first 32 members of a 200-member swarm kept their full-mesh connections
/// through the newcomers' join wave: 61–69 connections each at its end.)
const QUIET_BEFORE_CLOSE: Duration = Duration::from_secs(3);
/// How long a connection must be open before it counts as settled enough to close.
const YOUNGEST_CLOSED: Duration = Duration::from_secs(5);
/// How often the overlay is looked after.
const MAINTENANCE: Duration = Duration::from_secs(1);
/// How often the overlay's state is logged (at debug).
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long a member heard of stays a candidate without being heard of again.
const KNOWN_FOR: Duration = Duration::from_secs(600);
/// Dials of new neighbours at once.
const DIALS_AT_ONCE: usize = 4;
/// Members remembered as candidates, at most.
const MAX_KNOWN: usize = 4096;
/// Dials in a row that did not reach a member before it is forgotten (its job ended): it
/// leaves the candidates and the routing table, which would otherwise keep it (see
/// `look_up_swarm`). With the backoff between them, about five minutes of trying.
const FORGET_AFTER_FAILED_DIALS: u32 = 6;
/// How long a member that closed a connection this node dialed is not dialed again by the
/// overlay (a pull may still reach it).
const CLOSED_BY_PEER_BACKOFF: Duration = Duration::from_secs(120);

/// A member heard of (from Kademlia, a registry, mDNS or the bootstrap setting).
#[derive(Debug, Clone)]
pub(super) struct Known {
    pub(super) addrs: Vec<Multiaddr>,
    pub(super) heard: Instant,
    /// Not dialed again before this (a failed dial backs off).
    pub(super) next_dial: Instant,
    pub(super) failures: u32,
}

/// The overlay's own bookkeeping (the loop's, not shared).
#[derive(Default)]
pub(super) struct Overlay {
    pub(super) known: HashMap<PeerId, Known>,
    /// Members whose connections this node closed (alive: they stay in the routing table).
    pub(super) closing: HashSet<PeerId>,
    last_maintenance: Option<Instant>,
    last_report: Option<Instant>,
}

/// The bucket of `peer` seen from `me`: the index of the highest bit in which their ids' hashes
/// differ (255 for half of all ids, 254 for a quarter, …).
pub(super) fn bucket(me: &kad::KBucketKey<PeerId>, peer: &PeerId) -> u32 {
    me.distance(&kad::KBucketKey::from(*peer))
        .ilog2()
        .unwrap_or(0)
}

/// The XOR distance between a member and a key id (both hashed as Kademlia hashes them).
pub(super) fn key_distance(peer: &PeerId, key_id: &KeyId) -> kad::KBucketDistance {
    kad::KBucketKey::from(*peer).distance(&kad::KBucketKey::new(key_id.to_vec()))
}

impl Overlay {
    /// Remembers a member heard of, with where it listens.
    pub(super) fn hear(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let now = Instant::now();
        if self.known.len() >= MAX_KNOWN && !self.known.contains_key(&peer) {
            let horizon = now.checked_sub(KNOWN_FOR).unwrap_or(now);
            self.known.retain(|_, k| k.heard > horizon);
            if self.known.len() >= MAX_KNOWN {
                return;
            }
        }
        let known = self.known.entry(peer).or_insert_with(|| Known {
            addrs: Vec::new(),
            heard: now,
            next_dial: now,
            failures: 0,
        });
        known.heard = now;
        for addr in addrs {
            if !known.addrs.contains(&addr) {
                known.addrs.push(addr);
            }
        }
        known.addrs.truncate(8);
    }

    /// The overlay is about to dial `peer`: its backoff until the next dial grows. `false`, and
    /// `peer` forgotten, when [`FORGET_AFTER_FAILED_DIALS`] dials in a row have not reached it.
    pub(super) fn note_dial(&mut self, peer: &PeerId, now: Instant) -> bool {
        let Some(known) = self.known.get_mut(peer) else {
            return true;
        };
        if known.failures >= FORGET_AFTER_FAILED_DIALS {
            self.known.remove(peer);
            return false;
        }
        known.next_dial = now + Duration::from_secs(5u64 << known.failures.min(5));
        known.failures += 1;
        true
    }

    /// `peer` was reached (it passed the hello): the dials before it count no more.
    pub(super) fn reached(&mut self, peer: &PeerId) {
        if let Some(known) = self.known.get_mut(peer) {
            known.failures = 0;
        }
    }

    /// The last connection to `peer`, which this node dialed and did not close itself, was
    /// closed: `peer` has more connections than it keeps (the first member every job is given,
    /// most often), or it left. Either way another member of its bucket is dialed in its place.
    /// Dialing it again at once had every member that bootstrapped through it come back to it,
    /// keeping it above the bound and both sides busy with handshakes.
    pub(super) fn closed_by_peer(&mut self, peer: &PeerId, now: Instant) {
        if let Some(known) = self.known.get_mut(peer) {
            known.next_dial = known.next_dial.max(now + CLOSED_BY_PEER_BACKOFF);
        }
    }
}

impl EventLoop {
    /// Whether the swarm is larger than a full mesh: more members known (connected or heard of)
    /// than the full-mesh size, or, while this node joins, a member it met knowing more.
    /// Counted afresh; [`State::bounded`] holds the last count.
    pub(super) fn count_bounded(&self) -> bool {
        if self.members_known() > self.full_mesh {
            return true;
        }
        // Until its first bootstrap is over, a joiner also goes by what the members it met
        // said they knew at the hello: its own count lags behind its lookups, whose later
        // passes (twenty members each) it would otherwise let run (see `on_bootstrap_step`).
        !self.bootstrapped
            && self
                .inner
                .state()
                .peers
                .values()
                .filter(|p| p.verified)
                .filter_map(|p| p.meta.members_known)
                .any(|known| known as usize > self.full_mesh)
    }

    /// Members this node knows of: connected and verified, or heard of.
    pub(super) fn members_known(&self) -> usize {
        let state = self.inner.state();
        let connected = state.peers.iter().filter(|(_, p)| p.verified).count();
        let heard_only = self
            .overlay
            .known
            .keys()
            .filter(|p| !state.peers.get(*p).is_some_and(|s| s.verified))
            .count();
        connected + heard_only
    }

    /// A member was heard of: a candidate neighbour. In a full mesh it is dialed at once.
    pub(super) fn heard_of(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, how: &str) {
        if peer == self.inner.peer_id {
            return;
        }
        // Only a member not heard of before can change the count (a second's staleness
        // otherwise is corrected by the next maintenance round).
        let new = !self.overlay.known.contains_key(&peer);
        self.overlay.hear(peer, addrs.clone());
        let bounded = if new {
            let bounded = self.count_bounded();
            self.inner.state().bounded = bounded;
            bounded
        } else {
            self.inner.state().bounded
        };
        if !bounded {
            self.dial_peer(peer, addrs, how);
        }
    }

    /// Once a second in a bounded overlay: dial a neighbour for every bucket short of
    /// [`PER_BUCKET`], close the idle connections this node dialed beyond its needs.
    pub(super) fn look_after_overlay(&mut self) {
        let now = Instant::now();
        if self
            .overlay
            .last_maintenance
            .is_some_and(|at| now.duration_since(at) < MAINTENANCE)
        {
            return;
        }
        self.overlay.last_maintenance = Some(now);
        let horizon = now.checked_sub(KNOWN_FOR).unwrap_or(now);
        self.overlay.known.retain(|_, k| k.heard > horizon);
        let bounded = self.count_bounded();
        self.inner.state().bounded = bounded;
        if !bounded {
            return;
        }
        let me = kad::KBucketKey::from(self.inner.peer_id);
        let plan = {
            let state = self.inner.state();
            plan(&me, &state, &self.overlay, now)
        };
        self.report_overlay(&plan, now);
        for (peer, addrs) in plan.dial {
            if !self.overlay.note_dial(&peer, now) {
                tracing::debug!(
                    "forgetting {peer}: {FORGET_AFTER_FAILED_DIALS} dials in a row did not reach it"
                );
                self.swarm.behaviour_mut().kad.remove_peer(&peer);
                continue;
            }
            self.dial_peer(peer, addrs, "the overlay");
        }
        // A member is noted as closed here only when its last connection goes: one that
        // keeps a connection it dialed is still connected, and a later loss of that one is a
        // departure like any other.
        let last_ones: Vec<PeerId> = {
            let state = self.inner.state();
            let closing = |peer: &PeerId, id: &ConnectionId| plan.close.contains(&(*peer, *id));
            plan.close
                .iter()
                .map(|(peer, _)| *peer)
                .filter(|peer| {
                    state
                        .peers
                        .get(peer)
                        .is_some_and(|p| p.connections.keys().all(|id| closing(peer, id)))
                })
                .collect()
        };
        self.overlay.closing.extend(last_ones);
        for (peer, id) in plan.close {
            tracing::debug!("closing a connection to {peer}: the overlay does not need it");
            self.swarm.close_connection(id);
        }
    }

    /// A maintenance round now, whenever the last one was: a joiner that took a list dials
    /// its neighbours at once.
    pub(super) fn maintain_overlay_now(&mut self) {
        self.overlay.last_maintenance = None;
        self.look_after_overlay();
    }

    /// Every [`REPORT_EVERY`] in a bounded overlay, at debug: what the node is connected to, what its routing table
    /// holds, which Kademlia lookups run, and what this round does (to look into a swarm whose
    /// connections grow past the bound).
    fn report_overlay(&mut self, plan: &Plan, now: Instant) {
        if !tracing::enabled!(tracing::Level::DEBUG)
            || self
                .overlay
                .last_report
                .is_some_and(|at| now.duration_since(at) < REPORT_EVERY)
        {
            return;
        }
        self.overlay.last_report = Some(now);
        let (connections, verified) = {
            let state = self.inner.state();
            let verified = state.peers.values().filter(|p| p.verified).count();
            (state.connections(), verified)
        };
        let kad = &mut self.swarm.behaviour_mut().kad;
        let in_table: usize = kad.kbuckets().map(|bucket| bucket.num_entries()).sum();
        let (mut bootstraps, mut lookups) = (0, 0);
        for query in kad.iter_queries() {
            match query.info() {
                kad::QueryInfo::Bootstrap { .. } => bootstraps += 1,
                _ => lookups += 1,
            }
        }
        tracing::debug!(
            "overlay: {connections} connections ({verified} verified members), {in_table} members in the routing table, {} heard of; Kademlia: {bootstraps} bootstraps and {lookups} other lookups running; this round dials {} and closes {}",
            self.overlay.known.len(),
            plan.dial.len(),
            plan.close.len()
        );
    }

    /// A member became verified: it dialed or answered, so its dial backoff is over.
    pub(super) fn overlay_verified(&mut self, peer: &PeerId) {
        self.overlay.reached(peer);
    }
}

/// What one round of maintenance does.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    pub(super) dial: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Connections to close (of these peers).
    pub(super) close: Vec<(PeerId, ConnectionId)>,
}

/// Whether `peer` is one of the [`PER_BUCKET`] members closest to this node in its bucket, of
/// those known (connected and verified, or heard of): one the overlay keeps, or dials.
pub(super) fn would_pick(
    me: &kad::KBucketKey<PeerId>,
    state: &State,
    overlay: &Overlay,
    peer: &PeerId,
) -> bool {
    let in_bucket = bucket(me, peer);
    let mut known: Vec<&PeerId> = overlay
        .known
        .keys()
        .chain(
            state
                .peers
                .iter()
                .filter(|(_, p)| p.verified)
                .map(|(id, _)| id),
        )
        .filter(|p| bucket(me, p) == in_bucket)
        .collect();
    known.sort_by_key(|p| me.distance(&kad::KBucketKey::from(**p)));
    known.dedup();
    known.iter().take(PER_BUCKET).any(|p| *p == peer)
}

/// One round of maintenance, decided from what the loop knows.
///
/// Each node answers for the connections it dialed and leaves those others dialed alone, so
/// that one node's choice never undoes another's (which would have both dial again, and again).
/// It keeps a member it dialed while fewer than [`PER_BUCKET`] members of its bucket closer to
/// itself stay connected, whoever dialed them, and closes the rest once idle: most are left
/// over from Kademlia's lookups or from the full mesh the swarm was while it was small, and a
/// member that others dialed, closer, serves routing as well. (Counting only the members it
/// dialed, the first 32 members of a 200-member swarm kept the full mesh's connections among
/// themselves on top of the newcomers', 57–77 each.) Closest, not longest-standing as Kademlia keeps: every node's Kademlia lookups
/// meet the first members to join first, so keeping the oldest connections has every node
/// keep the same few members, and those end up connected to everyone. The closest members
/// differ from node to node. A bucket with fewer than [`PER_BUCKET`] members connected either
/// way is dialed for. Only above [`MAX_CONNECTED`] are the youngest idle connections that
/// others dialed closed too.
fn plan(me: &kad::KBucketKey<PeerId>, state: &State, overlay: &Overlay, now: Instant) -> Plan {
    struct Neighbour {
        peer: PeerId,
        dialed: Vec<ConnectionId>,
        accepted: Vec<ConnectionId>,
        closable: bool,
        opened: Instant,
    }
    let mut by_bucket: std::collections::BTreeMap<u32, Vec<Neighbour>> = Default::default();
    for (peer, p) in state.peers.iter().filter(|(_, p)| p.verified) {
        let opened = p
            .connections
            .values()
            .map(|l| l.opened)
            .min()
            .unwrap_or(now);
        let idle = p.last_exchange.is_none_or(|at| {
            let quiet = now.duration_since(at);
            quiet >= IDLE_BEFORE_CLOSE || (p.in_flight == 0 && quiet >= QUIET_BEFORE_CLOSE)
        });
        let (dialed, accepted): (Vec<_>, Vec<_>) =
            p.connections.iter().partition(|(_, link)| link.dialed);
        by_bucket
            .entry(bucket(me, peer))
            .or_default()
            .push(Neighbour {
                peer: *peer,
                dialed: dialed.into_iter().map(|(id, _)| *id).collect(),
                accepted: accepted.into_iter().map(|(id, _)| *id).collect(),
                // Hubs (the relay, the swarm's cache) and relayed members are never closed.
                closable: idle
                    && !p.is_hub
                    && p.is_direct()
                    && now.duration_since(opened) >= YOUNGEST_CLOSED,
                opened,
            });
    }
    let connected: usize = by_bucket.values().map(Vec::len).sum();

    let mut plan = Plan::default();
    let mut dialed_kept = 0;
    let mut closed_peers = 0;
    let mut accepted_only = Vec::new();
    for neighbours in by_bucket.values_mut() {
        neighbours.sort_by_key(|n| me.distance(&kad::KBucketKey::from(n.peer)));
        let mut kept = 0;
        // Neighbours closer than this one that stay connected, whoever dialed them.
        let mut closer = 0;
        for n in neighbours.iter() {
            if n.dialed.is_empty() {
                if n.closable {
                    accepted_only.push((n.opened, n.peer, n.accepted.clone()));
                }
                closer += 1;
                continue;
            }
            if closer < PER_BUCKET || !n.closable {
                kept += 1;
                closer += 1;
                continue;
            }
            plan.close.extend(n.dialed.iter().map(|id| (n.peer, *id)));
            if n.accepted.is_empty() {
                closed_peers += 1;
            }
        }
        dialed_kept += kept;
    }
    // Far too many: the youngest of what others dialed go too.
    accepted_only.sort();
    let mut over = (connected - closed_peers).saturating_sub(MAX_CONNECTED);
    while over > 0 {
        let Some((_, peer, ids)) = accepted_only.pop() else {
            break;
        };
        plan.close.extend(ids.into_iter().map(|id| (peer, id)));
        over -= 1;
    }

    let mut candidates: std::collections::BTreeMap<u32, Vec<(&PeerId, &Known)>> =
        Default::default();
    for (peer, known) in &overlay.known {
        let connected = state
            .peers
            .get(peer)
            .is_some_and(|p| !p.connections.is_empty());
        if connected || state.banned.contains(peer) || known.next_dial > now {
            continue;
        }
        candidates
            .entry(bucket(me, peer))
            .or_default()
            .push((peer, known));
    }
    let mut dialing = dialed_kept;
    for (bucket, found) in candidates.iter_mut() {
        let have = by_bucket.get(bucket).map_or(0, Vec::len);
        // One per bucket is what routing needs, whatever the count; spares up to the bound.
        let want = if have == 0 {
            1
        } else if dialing < MAX_NEIGHBOURS {
            PER_BUCKET.saturating_sub(have)
        } else {
            0
        };
        if want == 0 || plan.dial.len() >= DIALS_AT_ONCE {
            continue;
        }
        // The closest to this node first: the near buckets are what routing needs most.
        found.sort_by_key(|(peer, _)| me.distance(&kad::KBucketKey::from(**peer)));
        for (peer, known) in found.iter().take(want) {
            plan.dial.push((**peer, known.addrs.clone()));
            dialing += 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_that_dials_do_not_reach_is_forgotten_and_one_reached_is_not() {
        let mut overlay = Overlay::default();
        let (gone, back) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        overlay.hear(gone, Vec::new());
        overlay.hear(back, Vec::new());
        for _ in 0..FORGET_AFTER_FAILED_DIALS {
            assert!(overlay.note_dial(&gone, now));
            assert!(overlay.note_dial(&back, now));
        }
        // Backed off between dials, longer each time.
        assert!(overlay.known[&gone].next_dial >= now + Duration::from_secs(5 << 5));
        overlay.reached(&back);
        assert!(!overlay.note_dial(&gone, now), "dialed a 7th time");
        assert!(!overlay.known.contains_key(&gone));
        assert!(
            overlay.note_dial(&back, now),
            "forgotten though it was reached"
        );
        assert!(overlay.known.contains_key(&back));
    }

    fn ids(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    /// Every member's neighbours: [`PER_BUCKET`] per non-empty bucket, picked as the overlay
    /// picks them (closest first).
    fn overlay_of(members: &[PeerId]) -> HashMap<PeerId, Vec<PeerId>> {
        members
            .iter()
            .map(|me| {
                let key = kad::KBucketKey::from(*me);
                let mut by_bucket: std::collections::BTreeMap<u32, Vec<PeerId>> =
                    Default::default();
                for p in members.iter().filter(|p| *p != me) {
                    by_bucket.entry(bucket(&key, p)).or_default().push(*p);
                }
                let mut chosen = Vec::new();
                for (_, mut peers) in by_bucket {
                    peers.sort_by_key(|p| key.distance(&kad::KBucketKey::from(*p)));
                    chosen.extend(peers.into_iter().take(PER_BUCKET));
                }
                (*me, chosen)
            })
            .collect()
    }

    /// Greedy routing: the neighbour closest to the key, while it is closer than the holder.
    fn route(overlay: &HashMap<PeerId, Vec<PeerId>>, from: PeerId, key: &KeyId) -> (PeerId, usize) {
        let mut at = from;
        let mut hops = 0;
        loop {
            let next = overlay[&at]
                .iter()
                .copied()
                .chain(Some(at))
                .min_by_key(|p| key_distance(p, key))
                .unwrap();
            if next == at {
                return (at, hops);
            }
            at = next;
            hops += 1;
        }
    }

    #[test]
    fn greedy_routing_over_the_buckets_finds_the_closest_member_from_everywhere() {
        let members = ids(200);
        let overlay = overlay_of(&members);
        let most = overlay.values().map(Vec::len).max().unwrap();
        assert!(most <= MAX_NEIGHBOURS, "{most} neighbours");
        for k in 0..20u8 {
            let key: KeyId = [k; 32];
            let closest = *members
                .iter()
                .min_by_key(|p| key_distance(p, &key))
                .unwrap();
            for from in &members {
                let (found, hops) = route(&overlay, *from, &key);
                assert_eq!(found, closest, "from {from}, key {k}");
                assert!(hops <= 12, "{hops} hops");
            }
        }
    }

    /// A verified member with one direct connection, opened `age` ago, dialed by us or not.
    fn member(state: &mut State, peer: PeerId, dialed: bool, age: Duration, now: Instant) {
        let mut p = PeerState {
            verified: true,
            ..PeerState::default()
        };
        p.connections.insert(
            ConnectionId::new_unchecked(state.peers.len() + 1),
            Link {
                remote: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                relayed: false,
                opened: now - age,
                dialed,
            },
        );
        state.peers.insert(peer, p);
    }

    /// `n` random members in this node's top bucket (half of all ids), closest first.
    fn in_top_bucket(key: &kad::KBucketKey<PeerId>, n: usize) -> Vec<PeerId> {
        let mut top: Vec<PeerId> = std::iter::repeat_with(PeerId::random)
            .filter(|p| bucket(key, p) == 255)
            .take(n)
            .collect();
        top.sort_by_key(|p| key.distance(&kad::KBucketKey::from(*p)));
        top
    }

    /// The members whose connections `plan` closes.
    fn closed(plan: &Plan) -> Vec<PeerId> {
        plan.close.iter().map(|(p, _)| *p).collect()
    }

    #[test]
    fn a_node_closes_only_what_it_dialed_beyond_its_buckets_needs() {
        let me = PeerId::random();
        let key = kad::KBucketKey::from(me);
        // Members in the top bucket (half of all ids), closest first: four this node dialed,
        // the farthest two of them the longest-standing; two others dialed.
        let top = in_top_bucket(&key, 6);
        let now = Instant::now() + Duration::from_secs(3600);
        let mut state = State::default();
        for (i, peer) in top.iter().enumerate() {
            let age = Duration::from_secs(50 + i as u64 * 10);
            member(&mut state, *peer, i < 4, age, now);
        }
        let closed_at =
            |state: &State, at: Instant| closed(&plan(&key, state, &Overlay::default(), at));
        let first = closed_at(&state, now);
        // The two closest it dialed stay, however young; the two farther ones it dialed go;
        // what others dialed is theirs.
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(
            first.contains(&top[2]) && first.contains(&top[3]),
            "{first:?}"
        );

        // Busy connections stay, whatever the count: one that just carried an exchange, and
        // one with a request under way until it has been quiet for `IDLE_BEFORE_CLOSE`.
        state.peers.get_mut(&top[3]).unwrap().last_exchange = Some(now);
        assert_eq!(closed_at(&state, now), vec![top[2]]);
        let busy = state.peers.get_mut(&top[3]).unwrap();
        busy.last_exchange = Some(now - QUIET_BEFORE_CLOSE);
        busy.in_flight = 1;
        assert_eq!(closed_at(&state, now), vec![top[2]]);
        // Quiet with nothing under way: it goes.
        state.peers.get_mut(&top[3]).unwrap().in_flight = 0;
        assert_eq!(closed_at(&state, now).len(), 2);
        state.peers.get_mut(&top[3]).unwrap().in_flight = 1;
        let later = now + IDLE_BEFORE_CLOSE - QUIET_BEFORE_CLOSE;
        assert_eq!(closed_at(&state, later).len(), 2);
    }

    #[test]
    fn a_member_it_dialed_goes_once_two_closer_members_of_its_bucket_are_connected() {
        let me = PeerId::random();
        let key = kad::KBucketKey::from(me);
        let top = in_top_bucket(&key, 3);
        let now = Instant::now() + Duration::from_secs(3600);
        let mut state = State::default();
        // The farthest one this node dialed; the two closer ones dialed it.
        member(&mut state, top[2], true, Duration::from_secs(60), now);
        member(&mut state, top[0], false, Duration::from_secs(60), now);
        // One closer member is not enough: it stays.
        assert!(closed(&plan(&key, &state, &Overlay::default(), now)).is_empty());
        member(&mut state, top[1], false, Duration::from_secs(60), now);
        assert_eq!(
            closed(&plan(&key, &state, &Overlay::default(), now)),
            [top[2]]
        );
    }

    #[test]
    fn the_overlay_picks_the_two_closest_known_members_of_a_bucket() {
        let me = PeerId::random();
        let key = kad::KBucketKey::from(me);
        let top = in_top_bucket(&key, 4);
        let now = Instant::now() + Duration::from_secs(3600);
        let mut state = State::default();
        let mut overlay = Overlay::default();
        // The farthest is connected; the others are heard of only.
        member(&mut state, top[3], true, Duration::from_secs(1), now);
        for peer in &top[..3] {
            overlay.hear(*peer, vec!["/ip4/127.0.0.1/tcp/2".parse().unwrap()]);
        }
        let picked: Vec<bool> = top
            .iter()
            .map(|p| would_pick(&key, &state, &overlay, p))
            .collect();
        assert_eq!(picked, [true, true, false, false]);
        // Alone in its bucket, it is picked.
        assert!(would_pick(&key, &state, &Overlay::default(), &top[3]));
    }

    #[test]
    fn a_bucket_without_a_neighbour_is_dialed_for() {
        let me = PeerId::random();
        let key = kad::KBucketKey::from(me);
        let far = std::iter::repeat_with(PeerId::random)
            .find(|p| bucket(&key, p) == 255)
            .unwrap();
        let mut overlay = Overlay::default();
        overlay.hear(far, vec!["/ip4/127.0.0.1/tcp/2".parse().unwrap()]);
        let now = Instant::now();
        let plan = plan(
            &key,
            &State::default(),
            &overlay,
            now + Duration::from_secs(1),
        );
        assert_eq!(plan.dial.len(), 1);
        assert_eq!(plan.dial[0].0, far);
    }

    /// The members a plan dials, in its order.
    fn dialed(plan: Plan) -> Vec<PeerId> {
        plan.dial.into_iter().map(|(peer, _)| peer).collect()
    }

    #[test]
    fn a_member_that_closed_our_connection_is_not_dialed_again_for_its_bucket() {
        let me = PeerId::random();
        let key = kad::KBucketKey::from(me);
        let top = in_top_bucket(&key, 2);
        let (crowded, other) = (top[0], top[1]);
        let mut overlay = Overlay::default();
        for peer in [crowded, other] {
            overlay.hear(peer, vec!["/ip4/127.0.0.1/tcp/2".parse().unwrap()]);
        }
        let now = Instant::now() + Duration::from_secs(1);
        // The closest member of the bucket first…
        assert_eq!(
            dialed(plan(&key, &State::default(), &overlay, now)),
            [crowded]
        );
        // …but not once it closed our connection: the other one instead, and the crowded one
        // again only after the backoff.
        overlay.closed_by_peer(&crowded, now);
        assert_eq!(
            dialed(plan(&key, &State::default(), &overlay, now)),
            [other]
        );
        overlay.closed_by_peer(&other, now);
        let later = now + CLOSED_BY_PEER_BACKOFF;
        assert_eq!(
            dialed(plan(&key, &State::default(), &overlay, later)),
            [crowded]
        );
    }

    #[test]
    fn a_bucket_tells_how_far_a_member_is() {
        let me = PeerId::random();
        let key = kad::KBucketKey::from(me);
        let members = ids(1000);
        let top = members.iter().filter(|p| bucket(&key, p) == 255).count();
        // Half of all ids differ from ours in the top bit.
        assert!((400..600).contains(&top), "{top}");
    }
}
