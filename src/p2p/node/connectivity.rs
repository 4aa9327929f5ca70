//! Connectivity: which addresses are dialed, keeping bootstrap peers connected, Kademlia.

use libp2p::swarm::DialError;

use super::*;

/// Whether an address can be dialed at all: not `0.0.0.0`/`::`, and a relay circuit only
/// through a named relay (`…/p2p/<relay>/p2p-circuit`).
pub(super) fn is_dialable(addr: &Multiaddr) -> bool {
    let mut previous = None;
    addr.iter().all(|p| {
        let ok = match p {
            Protocol::Ip4(ip) => !ip.is_unspecified(),
            Protocol::Ip6(ip) => !ip.is_unspecified(),
            Protocol::P2pCircuit => matches!(previous, Some(Protocol::P2p(_))),
            _ => true,
        };
        previous = Some(p);
        ok
    })
}

/// Whether an address is on the loopback interface.
pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// Whether dialing `addr` would reach this node itself: its first hop (everything before the
/// first `/p2p/`) is one of our own listen addresses — typically a peer's `127.0.0.1` address
/// with the same port as ours. Such a dial connects to us first, and the whole dial then
/// fails on the wrong peer id, taking the good addresses tried with it down too.
pub(super) fn reaches_itself(addr: &Multiaddr, own: &[Multiaddr]) -> bool {
    let first_hop: Multiaddr = addr
        .iter()
        .take_while(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    own.iter().any(|listen| {
        let listen: Multiaddr = listen
            .iter()
            .take_while(|p| !matches!(p, Protocol::P2p(_)))
            .collect();
        listen == first_hop
    })
}

/// A peer to keep connected.
pub(super) struct Redial {
    pub(super) peer: PeerId,
    pub(super) addr: Multiaddr,
    pub(super) next_attempt: Instant,
    pub(super) backoff: Duration,
    /// A failure to reach it was logged already (once per address, not once per backoff).
    pub(super) warned: bool,
    /// Dial from the listen port (bootstrap peers: see `redial_lost`); mDNS peers, which may
    /// dial each other at the same moment, use a new port.
    pub(super) reuse_port: bool,
    /// It is a hub (it was seen serving the relay): kept connected even in a bounded overlay.
    pub(super) hub: bool,
}

impl EventLoop {
    /// A dial failed: a peer kept connected (a bootstrap peer, or one mDNS found) gets one
    /// warning per address naming it and the fix; others are routine (Kademlia tries every
    /// address it knows).
    pub(super) fn on_dial_failure(&mut self, peer: Option<PeerId>, error: &DialError) {
        let Some(peer) = peer else {
            tracing::debug!("a dial failed: {error}");
            return;
        };
        let mut warned = false;
        for redial in self.keep_connected.iter_mut().filter(|r| r.peer == peer) {
            if !redial.warned && !warned {
                tracing::warn!(
                    "cannot reach {} ({}); check that the name resolves and the port is open from this host; retrying with backoff",
                    redial.addr,
                    one_line(error)
                );
                warned = true;
            }
            redial.warned = true;
        }
        if !warned {
            tracing::debug!("dialing {peer} failed: {error}");
        }
    }

    /// Re-dials lost bootstrap and mDNS peers, each with its own backoff.
    pub(super) fn redial_lost(&mut self) {
        let now = Instant::now();
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        let banned: HashSet<PeerId> = {
            let state = self.inner.state();
            self.keep_connected
                .iter()
                .map(|r| r.peer)
                .filter(|p| state.banned.contains(p))
                .collect()
        };
        // In a bounded overlay a bootstrap member is an entry point, not a neighbour for good:
        // it is dialed again only while this node has too few members (hubs always are).
        let (bounded, members, hubs): (bool, usize, HashSet<PeerId>) = {
            let state = self.inner.state();
            (
                state.bounded,
                state.peers.values().filter(|p| p.verified).count(),
                state
                    .peers
                    .iter()
                    .filter(|(_, p)| p.is_hub)
                    .map(|(id, _)| *id)
                    .collect(),
            )
        };
        // A joiner that let the member it joined through go gives its list's members time.
        let entry_let_go = self.join.holds_redials(now);
        for redial in &mut self.keep_connected {
            redial.hub |= hubs.contains(&redial.peer);
            if connected.contains(&redial.peer)
                || redial.next_attempt > now
                || banned.contains(&redial.peer)
                || (bounded
                    && !redial.hub
                    && (members >= super::overlay::PER_BUCKET || entry_let_go))
            {
                continue;
            }
            redial.next_attempt = now + redial.backoff;
            redial.backoff = (redial.backoff * 2).min(MAX_REDIAL_BACKOFF);
            // From the listen port: through a cone NAT the hub then sees the port that other
            // members can punch a hole to. (A hub never dials back, so no simultaneous open.)
            let opts = DialOpts::peer_id(redial.peer).addresses(vec![redial.addr.clone()]);
            // Always: each bootstrap address of one peer (its TCP and its QUIC one) gets its
            // own connection, so that the hub observes this node's address on both transports
            // and hole punching can try both.
            let opts = if redial.reuse_port {
                opts.condition(PeerCondition::Always).build()
            } else {
                opts.allocate_new_port().build()
            };
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!("cannot dial {}: {e}", redial.addr);
            }
        }
    }

    /// Connects to a member for a pull: at the addresses heard of, else after a Kademlia lookup.
    pub(super) fn reach(&mut self, peer: PeerId) {
        if let Some(known) = self.overlay.known.get(&peer) {
            let addrs = known.addrs.clone();
            self.dial_peer(peer, addrs, "a pull");
            return;
        }
        let now = Instant::now();
        self.reaching
            .retain(|_, since| now.duration_since(*since) < REACH_TIMEOUT);
        if self.reaches_by_list() {
            tracing::debug!(
                "asking a neighbour for its list to pull from {peer}: not heard of yet"
            );
            self.reaching.insert(peer, now);
            self.reach_by_list();
            return;
        }
        if self.reaching.insert(peer, now).is_none() {
            tracing::debug!("looking {peer} up in Kademlia to pull from it: not heard of yet");
            // Narrow: the lookup ends at the member itself (it is the closest to its own id),
            // after a few hops. A lookup for `k` = 20 members connected a waiter to twenty
            // more at once, and every waiter of a 200-member swarm's fetch round made some.
            self.swarm
                .behaviour_mut()
                .kad
                .get_n_closest_peers(peer, BUCKET_LOOKUP_RESULTS);
        }
    }

    /// Dials a peer at all its known addresses at once, unless it is us, banned, connected or
    /// being dialed already.
    pub(super) fn dial_peer(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, how: &str) {
        if peer == self.inner.peer_id || self.inner.state().banned.contains(&peer) {
            return;
        }
        let own = self.inner.state().listen_addrs.clone();
        let addrs: Vec<Multiaddr> = addrs
            .into_iter()
            .filter(|a| is_dialable(a) && !reaches_itself(a, &own))
            .collect();
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

    /// Looks the swarm up in Kademlia, as widely as the overlay's size calls for.
    ///
    /// In a full mesh: the whole table is refreshed (Kademlia's bootstrap: a lookup of this
    /// node's id, then one of a random id in every bucket beyond the closest), which costs
    /// nothing new, as every member is connected anyway. In a bounded overlay that refresh
    /// connects to nearly every member: each of its eight or so lookups meets `k` members, a
    /// hello each, at 200 members 140–190 connections per node within seconds, closed again by
    /// the overlay half a minute later; with every node's refresh due in turn, some node is
    /// always in such a wave and the swarm never settles. There one lookup of this node's own
    /// id is made: it keeps the members closest to this node (those that coordinate the keys
    /// nearest to it) current, and the neighbours in the other buckets are the overlay's to
    /// keep. The members in the table are heard of again, so that a member that is not
    /// connected stays a candidate (and counts towards the swarm's size) while it is there.
    pub(super) fn look_up_swarm(&mut self) {
        if !self.inner.state().bounded {
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
            return;
        }
        let me = self.inner.peer_id;
        self.swarm.behaviour_mut().kad.get_closest_peers(me);
        for (peer, addrs) in self.members_in_table() {
            self.overlay.hear(peer, addrs);
        }
    }

    /// The members in Kademlia's routing table, with their addresses there.
    fn members_in_table(&mut self) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .flat_map(|bucket| {
                bucket
                    .iter()
                    .map(|e| {
                        (
                            *e.node.key.preimage(),
                            e.node.value.iter().cloned().collect(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every [`KAD_REFRESH`]: looks the swarm up again (see [`EventLoop::look_up_swarm`]).
    pub(super) fn refresh_routing_when_due(&mut self) {
        let now = Instant::now();
        if now < self.next_refresh {
            return;
        }
        self.next_refresh = now + KAD_REFRESH;
        self.look_up_swarm();
    }

    pub(super) fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address } => {
                self.heard_of(peer, vec![address], "Kademlia");
            }
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(Ok(found)),
                ..
            } => {
                for info in found.peers {
                    let wanted = self.reaching.remove(&info.peer_id).is_some();
                    if wanted {
                        self.dial_peer(info.peer_id, info.addrs.clone(), "a pull");
                    }
                    self.heard_of(info.peer_id, info.addrs, "Kademlia");
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::Bootstrap(_),
                step,
                ..
            } => self.on_bootstrap_step(id, &step),
            _ => {}
        }
    }

    /// Cuts a repeated bootstrap short in a bounded overlay, after its lookup of this node's id.
    ///
    /// Kademlia bootstraps by itself whenever a member joins its table while the table holds
    /// fewer than `k` members, and a join during the first bootstrap has the second start as
    /// the first ends. Past its first lookup a bootstrap is one lookup per bucket beyond the
    /// closest, each of which meets `k` members, a connection and a hello each: at 200
    /// members a late joiner's second pass went from ~107 to ~190 connections in 2 s, which
    /// the overlay closed again within 10 s (README, "Performance at the limit"). The first
    /// pass has filled the buckets by then, and the overlay keeps a neighbour in each; the
    /// second's own-id lookup keeps the closest members current, and the rest is dropped. A
    /// query made to continue with its next lookup is finished before that lookup sends
    /// anything (this runs before Kademlia is polled again), so each remaining step ends at
    /// once.
    ///
    /// A node's first bootstrap is cut too, after the first of its lookups to end with the
    /// overlay bounded (a joiner counts the members it meets as it goes), and its lookups of
    /// the other buckets are made here, narrow ([`EventLoop::look_up_buckets`]): Kademlia's own
    /// meet `k` = 20 members each, which had a late joiner of a 200-member swarm connected to
    /// 170–198 of them within seconds.
    pub(super) fn on_bootstrap_step(&mut self, id: kad::QueryId, step: &kad::ProgressStep) {
        if step.last {
            self.cut_bootstraps.remove(&id);
            self.bootstrapped = true;
            return;
        }
        let cut = self.cut_bootstraps.contains(&id) || self.count_bounded();
        if !cut {
            return;
        }
        if self.cut_bootstraps.insert(id) {
            let done = step.count.get();
            if self.bootstrapped {
                tracing::debug!(
                    "overlay: a repeated Kademlia bootstrap is cut after {done} lookup(s)"
                );
            } else {
                let lookups = self.look_up_buckets();
                tracing::debug!(
                    "overlay: the first Kademlia bootstrap is cut after {done} lookup(s); \
                     {lookups} narrow lookup(s) of the other buckets instead"
                );
            }
        }
        if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
    }

    /// One lookup per bucket farther than the closest one holding a member known, each for
    /// [`BUCKET_LOOKUP_RESULTS`] members: what the overlay keeps there and a spare. A target in
    /// bucket `i` has every member of bucket `i` closer to it than any other member, so the
    /// lookup ends among them after a few contacts, where Kademlia's would meet twenty.
    /// Returns how many lookups were started.
    pub(super) fn look_up_buckets(&mut self) -> usize {
        let me = kad::KBucketKey::from(self.inner.peer_id);
        let in_table = self.members_in_table().into_iter().map(|(peer, _)| peer);
        let members: Vec<PeerId> = self.overlay.known.keys().copied().chain(in_table).collect();
        let Some(closest) = members.iter().map(|p| super::overlay::bucket(&me, p)).min() else {
            return 0;
        };
        let mut started = 0;
        for index in (closest + 1)..=MAX_BUCKET {
            // A member of the bucket is a target in it; random ids (a hash each) only for a
            // bucket without one known.
            let target = members
                .iter()
                .copied()
                .find(|p| super::overlay::bucket(&me, p) == index)
                .or_else(|| {
                    (0..TARGET_TRIES)
                        .map(|_| PeerId::random())
                        .find(|p| super::overlay::bucket(&me, p) == index)
                });
            if let Some(target) = target {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .get_n_closest_peers(target, BUCKET_LOOKUP_RESULTS);
                started += 1;
            }
        }
        started
    }
}

/// Members a narrow lookup asks for (see [`EventLoop::look_up_buckets`] and
/// [`EventLoop::reach`]).
pub(super) const BUCKET_LOOKUP_RESULTS: std::num::NonZeroUsize =
    std::num::NonZeroUsize::new(super::overlay::PER_BUCKET + 1).expect("PER_BUCKET + 1 > 0");
/// The farthest bucket (a 256-bit distance).
const MAX_BUCKET: u32 = 255;
/// Random ids tried for a target in a bucket where no member is known: bucket
/// `255 - j` holds one id in `2^(j+1)`, so 2048 tries find one in each of the eight farthest
/// buckets (those of a swarm of a few hundred members) all but once in thousands of times.
const TARGET_TRIES: usize = 2048;

/// A dial error on one line: libp2p lists one line per address tried.
fn one_line(error: &DialError) -> String {
    error
        .to_string()
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
