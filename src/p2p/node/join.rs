//! Joining a bounded overlay: a joiner asks a member for the members it knows and picks its
//! neighbours from that list, instead of walking Kademlia.
//!
//! Kademlia's bootstrap finds a node's place by lookups: one of its own id, then one per bucket,
//! and every member a lookup contacts is a connection and a hello. Even narrowed to three
//! results a lookup contacts about ten members on its way, and a late joiner of a 200-member
//! swarm was connected to 105–198 members within seconds of its start (README, "Performance
//! at the limit"). A member's hello says how many members it knows ([`PeerMeta::members_known`]);
//! when that is past the full mesh, the joiner asks it once for its list, nearest to the joiner
//! first (`Request::Members`). The list names the members of every bucket, so the overlay
//! dials [`super::overlay::PER_BUCKET`] per bucket from it, closest first, and nothing else;
//! the joiner's Kademlia bootstraps are cut before they contact anyone beyond the few members
//! of its table. It asks once more, the nearest member the list named: that member knows the
//! joiner's neighbourhood best (its own nearest buckets are the joiner's).
//!
//! Members that joined earlier hear of a joiner in two ways. The joiner dials every member of
//! its nearest bucket that holds any (at most [`INTRODUCE_AT_MOST`]): for exactly those members
//! the joiner may be alone in one of their buckets, which routing needs a neighbour in. Every
//! [`LIST_REFRESH_MAX`] (sooner at first) each member of a bounded overlay asks a neighbour it is connected to for its
//! list, so the rest spreads without a connection of its own.
//!
//! The list is taken from a verified member only, and each member on it must pass the hello
//! before it counts as a neighbour: a member that lies in its list costs the joiner failed
//! dials, never a stranger in the swarm. A member that cannot answer (an older peer drops the
//! request it cannot decode) leaves the joiner to look its buckets up narrowly in Kademlia.

use super::*;
use crate::p2p::protocol::{ListedMember, MAX_ADDRS_LISTED, MAX_MEMBERS_LISTED};

/// Lists a node asks for to join: the first member's, the nearest member's, and one more
/// should one of them not answer.
const MAX_ASKS: usize = 3;
/// The fewest members a node asks to be listed (it asks for more when its full mesh is large,
/// so that the list alone tells it the overlay is bounded).
const MIN_LIST: usize = 256;
/// How often one member's request for the list is answered (an answer hashes and sorts every
/// member known).
const ANSWER_EVERY: Duration = Duration::from_secs(1);
/// Members whose last request is remembered, at most.
const MAX_REMEMBERED_ASKERS: usize = 4096;
/// How soon a member of a bounded overlay first asks a neighbour for its list again; the
/// interval doubles up to [`LIST_REFRESH_MAX`]. Soon at first: the members that joined at
/// about the same time are on no list yet.
const LIST_REFRESH_FIRST: Duration = Duration::from_secs(2);
/// How often a member asks for a list again once it has been in the swarm a while.
const LIST_REFRESH_MAX: Duration = Duration::from_secs(60);
/// Members of its nearest bucket a joiner dials at once to introduce itself, at most.
const INTRODUCE_AT_MOST: usize = 8;
/// How long a joiner that let its entry point go does not dial the bootstrap peers again: time
/// for the overlay's dials of the members on the list to pass their hellos.
const HOLD_REDIALS: Duration = Duration::from_secs(10);

/// Why a list was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// To join: the neighbours are picked from it.
    Join,
    /// To hear of the members that joined since.
    Refresh,
    /// To find a member to pull from that this node has not heard of.
    Reach,
}

/// The joiner's side, and the answerer's rate limit (the loop's, not shared).
#[derive(Default)]
pub(super) struct Join {
    /// Members asked for their list to join.
    asked: HashSet<PeerId>,
    /// Requests for a list under way, to whom and why.
    pending: HashMap<OutboundRequestId, (PeerId, Ask)>,
    /// A list was taken: the neighbours come from it, and Kademlia's bootstraps are cut.
    listed: bool,
    /// The member to ask next once it is verified: the nearest one a list named.
    ask_next: Option<PeerId>,
    /// When each member last asked this node for its list.
    answered: HashMap<PeerId, Instant>,
    /// When the list is next asked for again, and the interval after that.
    next_refresh: Option<(Instant, Duration)>,
    /// The neighbour asked last for a refresh or a reach (the next ask goes to another one,
    /// when there is one).
    last_asked: Option<PeerId>,
    /// Until when the bootstrap peers are not dialed again: the member a join's list came from
    /// was let go, and the overlay is dialing the members the list named.
    redials_held_until: Option<Instant>,
}

impl Join {
    /// The request for a list `request_id` is, which is then no longer under way.
    pub(super) fn take(&mut self, request_id: &OutboundRequestId) -> Option<(PeerId, Ask)> {
        self.pending.remove(request_id)
    }

    /// Whether the bootstrap peers are not to be dialed again yet (see `redials_held_until`).
    pub(super) fn holds_redials(&self, now: Instant) -> bool {
        self.redials_held_until.is_some_and(|until| now < until)
    }

    /// Whether Kademlia's bootstraps are to be cut: a list is taken, or asked for to join.
    fn cuts_bootstraps(&self) -> bool {
        self.listed || self.pending.values().any(|(_, ask)| *ask == Ask::Join)
    }
}

impl EventLoop {
    /// A member was verified: it is asked for its list when it is the nearest member a list
    /// named, or when no list is taken yet and its hello said the swarm is past the full mesh.
    pub(super) fn maybe_ask_for_members(&mut self, peer: &PeerId) {
        let join = &self.join;
        if join.asked.len() >= MAX_ASKS || join.asked.contains(peer) {
            return;
        }
        let nearest = join.ask_next == Some(*peer);
        // No list taken, and none asked for to join.
        let first = !join.cuts_bootstraps()
            && self
                .inner
                .state()
                .peers
                .get(peer)
                .and_then(|p| p.meta.members_known)
                .is_some_and(|known| known as usize > self.full_mesh);
        if !(nearest || first) {
            return;
        }
        self.join.asked.insert(*peer);
        if nearest {
            self.join.ask_next = None;
        }
        self.ask_for_members(*peer, Ask::Join);
        self.cut_bootstraps_while_listed();
    }

    /// Sends `peer` a request for its list.
    fn ask_for_members(&mut self, peer: PeerId, ask: Ask) {
        let limit = (self.full_mesh * 4).clamp(MIN_LIST, MAX_MEMBERS_LISTED);
        self.exchange_began(&peer);
        let id = self.swarm.behaviour_mut().exchange.send_request(
            &peer,
            Request::Members {
                limit: u32::try_from(limit).unwrap_or(u32::MAX),
            },
        );
        tracing::debug!("overlay: asking {peer} for the members it knows ({ask:?})");
        self.join.pending.insert(id, (peer, ask));
    }

    /// In a bounded overlay, [`LIST_REFRESH_FIRST`] after the start and then at doubling
    /// intervals up to [`LIST_REFRESH_MAX`]: asks a verified neighbour, at random, for its list.
    pub(super) fn refresh_members_when_due(&mut self) {
        let now = Instant::now();
        let (due, interval) = *self
            .join
            .next_refresh
            .get_or_insert((now + LIST_REFRESH_FIRST, LIST_REFRESH_FIRST));
        if now < due {
            return;
        }
        let interval = (interval * 2).min(LIST_REFRESH_MAX);
        self.join.next_refresh = Some((now + interval, interval));
        if !self.inner.state().bounded || !self.join.pending.is_empty() {
            return;
        }
        self.ask_a_neighbour(Ask::Refresh);
    }

    /// Whether a member this node has not heard of can be found from a neighbour's list
    /// instead of a Kademlia lookup: a list was taken before, in a bounded overlay.
    pub(super) fn reaches_by_list(&self) -> bool {
        self.join.listed && self.inner.state().bounded
    }

    /// A member to pull from is not heard of: a neighbour is asked for its list (unless one is
    /// being asked already), and the member is dialed once a list names it (see
    /// [`EventLoop::reach`]). A Kademlia lookup instead dialed every member it met, as many
    /// as 77 in one second at 200 members.
    pub(super) fn reach_by_list(&mut self) {
        if self
            .join
            .pending
            .values()
            .all(|(_, ask)| *ask != Ask::Reach)
        {
            self.ask_a_neighbour(Ask::Reach);
        }
    }

    /// Asks a verified neighbour chosen at random for its list, another one than last time
    /// when there is one.
    fn ask_a_neighbour(&mut self, ask: Ask) {
        let neighbours: Vec<PeerId> = {
            let state = self.inner.state();
            state
                .peers
                .iter()
                .filter(|(_, p)| p.verified && !p.connections.is_empty())
                .map(|(peer, _)| *peer)
                .collect()
        };
        // One at random: the closest to a random id.
        let pivot = kad::KBucketKey::from(PeerId::random());
        let last = self.join.last_asked;
        let Some(peer) = neighbours
            .iter()
            .copied()
            .filter(|p| Some(*p) != last)
            .min_by_key(|p| pivot.distance(&kad::KBucketKey::from(*p)))
            .or(last.filter(|p| neighbours.contains(p)))
        else {
            if ask == Ask::Reach {
                self.look_up_unlisted();
            }
            return;
        };
        self.join.last_asked = Some(peer);
        self.ask_for_members(peer, ask);
    }

    /// Answers a member's request for the list: the members this node knows (connected and
    /// verified, or heard of), nearest to `requester` first, at most `limit`. Loopback
    /// addresses go only to a member on this host (anyone else would dial itself). A member
    /// asking again within [`ANSWER_EVERY`] is answered `NotFound`.
    pub(super) fn answer_members(&mut self, requester: PeerId, limit: u32) -> Response {
        let now = Instant::now();
        if self
            .join
            .answered
            .get(&requester)
            .is_some_and(|at| now.duration_since(*at) < ANSWER_EVERY)
        {
            return Response::NotFound;
        }
        if self.join.answered.len() >= MAX_REMEMBERED_ASKERS {
            self.join
                .answered
                .retain(|_, at| now.duration_since(*at) < ANSWER_EVERY);
        }
        self.join.answered.insert(requester, now);
        let state = self.inner.state();
        let on_loopback = state
            .peers
            .get(&requester)
            .is_some_and(|p| p.connections.values().any(|l| is_loopback(&l.remote)));
        let mut members: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, p) in state.peers.iter().filter(|(_, p)| p.verified) {
            members.entry(*peer).or_default().extend(p.addrs.clone());
        }
        for (peer, known) in &self.overlay.known {
            members
                .entry(*peer)
                .or_default()
                .extend(known.addrs.clone());
        }
        members.remove(&requester);
        members.retain(|peer, _| !state.banned.contains(peer));
        drop(state);
        let target = kad::KBucketKey::from(requester);
        let mut listed: Vec<(kad::KBucketDistance, PeerId, Vec<Multiaddr>)> = members
            .into_iter()
            .filter_map(|(peer, addrs)| {
                let mut usable: Vec<Multiaddr> = Vec::new();
                for addr in addrs {
                    if is_dialable(&addr)
                        && (on_loopback || !is_loopback(&addr))
                        && !usable.contains(&addr)
                    {
                        usable.push(addr);
                    }
                }
                usable.truncate(MAX_ADDRS_LISTED);
                let distance = target.distance(&kad::KBucketKey::from(peer));
                (!usable.is_empty()).then_some((distance, peer, usable))
            })
            .collect();
        listed.sort_by_key(|(distance, ..)| *distance);
        listed.truncate((limit as usize).min(MAX_MEMBERS_LISTED));
        tracing::debug!("overlay: listing {} members for {requester}", listed.len());
        Response::Members {
            members: listed
                .into_iter()
                .map(|(_, peer, addrs)| ListedMember {
                    id: peer.to_bytes(),
                    addrs: addrs
                        .into_iter()
                        .map(|a| serde_bytes::ByteBuf::from(a.to_vec()))
                        .collect(),
                })
                .collect(),
        }
    }

    /// The answer to a request for a list (or its failure: `None`).
    pub(super) fn on_members_answer(&mut self, from: PeerId, ask: Ask, answer: Option<Response>) {
        let Some(Response::Members { members }) = answer else {
            tracing::debug!("overlay: {from} did not list its members");
            if ask == Ask::Reach {
                self.look_up_unlisted();
            }
            if ask == Ask::Join && !self.join.cuts_bootstraps() {
                self.ask_another_or_look_up();
            }
            return;
        };
        let heard = self.hear_listed(members);
        for (peer, addrs) in &heard {
            if self.reaching.remove(peer).is_some() {
                self.dial_peer(*peer, addrs.clone(), "a pull (a member's list)");
            }
        }
        if ask == Ask::Reach {
            self.look_up_unlisted();
        }
        // Counted once the whole list is heard: counted per member, the first members of a
        // list could look like a full mesh, and be dialed all at once.
        let joined_now = ask == Ask::Join && !self.join.listed;
        self.join.listed = true;
        self.bootstrapped = true;
        let bounded = self.count_bounded();
        self.inner.state().bounded = bounded;
        tracing::debug!(
            "overlay: {from} listed {} members ({ask:?}); the neighbours are picked from them, and Kademlia's bootstraps are cut",
            heard.len()
        );
        self.cut_bootstraps_while_listed();
        if !bounded {
            for (peer, addrs) in heard {
                self.dial_peer(peer, addrs, "a member's list");
            }
            return;
        }
        if !joined_now {
            return;
        }
        self.introduce(&heard);
        self.let_entry_point_go(from);
        self.maintain_overlay_now();
        // The nearest member listed knows this node's neighbourhood best: ask it too, once
        // it is verified (the overlay dials it first, as the closest of its bucket).
        let me = kad::KBucketKey::from(self.inner.peer_id);
        let distance = |peer: &PeerId| me.distance(&kad::KBucketKey::from(*peer));
        let nearest = heard.iter().map(|(peer, _)| *peer).min_by_key(distance);
        if let Some(nearest) =
            nearest.filter(|p| distance(p) < distance(&from) && !self.join.asked.contains(p))
        {
            self.join.ask_next = Some(nearest);
            if self.inner.state().verified(&nearest) {
                self.maybe_ask_for_members(&nearest);
            }
        }
    }

    /// The members to pull from that a neighbour's list did not name are looked up in
    /// Kademlia after all (narrowly, see [`EventLoop::reach`]).
    fn look_up_unlisted(&mut self) {
        let unlisted: Vec<PeerId> = self
            .reaching
            .keys()
            .copied()
            .filter(|peer| !self.overlay.known.contains_key(peer))
            .collect();
        for peer in unlisted {
            tracing::debug!("looking {peer} up in Kademlia to pull from it: no list named it");
            self.swarm
                .behaviour_mut()
                .kad
                .get_n_closest_peers(peer, BUCKET_LOOKUP_RESULTS);
        }
    }

    /// Closes the connections this node dialed to the member its join's list came from, unless
    /// the overlay picks that member for its bucket: every newcomer joins through the same few
    /// members (those a job is given), and they are left with the connections of every join
    /// under way. Held until the overlay's own idle rule, the first member of a 200-member
    /// swarm reached 78–89 connections during the join wave.
    fn let_entry_point_go(&mut self, entry: PeerId) {
        let me = kad::KBucketKey::from(self.inner.peer_id);
        let (dialed, only_dialed) = {
            let state = self.inner.state();
            let Some(p) = state.peers.get(&entry) else {
                return;
            };
            if p.is_hub
                || !p.is_direct()
                || super::overlay::would_pick(&me, &state, &self.overlay, &entry)
            {
                return;
            }
            let dialed: Vec<libp2p::swarm::ConnectionId> = p
                .connections
                .iter()
                .filter(|(_, link)| link.dialed)
                .map(|(id, _)| *id)
                .collect();
            let only_dialed = dialed.len() == p.connections.len();
            (dialed, only_dialed)
        };
        if dialed.is_empty() {
            return;
        }
        tracing::debug!(
            "overlay: letting {entry} go: it was the entry point, and closer members of its bucket are known"
        );
        if only_dialed {
            self.overlay.closing.insert(entry);
        }
        self.join.redials_held_until = Some(Instant::now() + HOLD_REDIALS);
        for id in dialed {
            self.swarm.close_connection(id);
        }
    }

    /// Hears of the members of a list, as far as they parse; returns them.
    fn hear_listed(&mut self, members: Vec<ListedMember>) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut heard = Vec::new();
        for member in members.into_iter().take(MAX_MEMBERS_LISTED) {
            let Ok(peer) = PeerId::from_bytes(&member.id) else {
                continue;
            };
            if peer == self.inner.peer_id {
                continue;
            }
            let addrs: Vec<Multiaddr> = member
                .addrs
                .into_iter()
                .take(MAX_ADDRS_LISTED)
                .filter_map(|a| Multiaddr::try_from(a.into_vec()).ok())
                .filter(is_dialable)
                .collect();
            if !addrs.is_empty() {
                self.overlay.hear(peer, addrs.clone());
                heard.push((peer, addrs));
            }
        }
        heard
    }

    /// Dials the members of this node's nearest bucket that holds any: in each of their own
    /// tables this node lies in a bucket where it may be the only member, and it is by its
    /// dial that they hear of it soonest.
    fn introduce(&mut self, heard: &[(PeerId, Vec<Multiaddr>)]) {
        let me = kad::KBucketKey::from(self.inner.peer_id);
        let Some(nearest_bucket) = heard
            .iter()
            .map(|(peer, _)| super::overlay::bucket(&me, peer))
            .min()
        else {
            return;
        };
        let in_it: Vec<(PeerId, Vec<Multiaddr>)> = heard
            .iter()
            .filter(|(peer, _)| super::overlay::bucket(&me, peer) == nearest_bucket)
            .take(INTRODUCE_AT_MOST)
            .cloned()
            .collect();
        for (peer, addrs) in in_it {
            self.dial_peer(peer, addrs, "the nearest bucket");
        }
    }

    /// The member asked did not list its members: another verified member whose hello said
    /// the swarm is past the full mesh is asked, or, when there is none left to ask, the
    /// buckets are looked up narrowly in Kademlia.
    fn ask_another_or_look_up(&mut self) {
        let candidates: Vec<PeerId> = {
            let state = self.inner.state();
            state
                .peers
                .iter()
                .filter(|(peer, p)| p.verified && !self.join.asked.contains(*peer))
                .map(|(peer, _)| *peer)
                .collect()
        };
        for peer in candidates {
            self.maybe_ask_for_members(&peer);
            if self.join.cuts_bootstraps() {
                return;
            }
        }
        let lookups = self.look_up_buckets();
        tracing::debug!(
            "overlay: no member listed its members; {lookups} narrow Kademlia lookup(s) of the buckets instead"
        );
    }

    /// Ends every Kademlia bootstrap under way while a list is taken or asked for (see the
    /// module's documentation): the first is cut before its lookup of this node's id contacts
    /// the members nearest to it one by one, and the ones Kademlia starts by itself whenever a
    /// member enters a table of fewer than `k` are cut as they start.
    pub(super) fn cut_bootstraps_while_listed(&mut self) {
        if !self.join.cuts_bootstraps() {
            return;
        }
        let kad = &mut self.swarm.behaviour_mut().kad;
        let running: Vec<kad::QueryId> = kad
            .iter_queries()
            .filter(|q| matches!(q.info(), kad::QueryInfo::Bootstrap { .. }))
            .map(|q| q.id())
            .filter(|id| !self.cut_bootstraps.contains(id))
            .collect();
        for id in running {
            if let Some(mut query) = kad.query_mut(&id) {
                query.finish();
            }
            self.cut_bootstraps.insert(id);
            tracing::debug!(
                "overlay: a Kademlia bootstrap is cut as it starts: the neighbours come from a member's list"
            );
        }
    }
}
