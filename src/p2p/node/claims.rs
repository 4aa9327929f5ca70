//! Claims: one upstream call per key across the swarm, decided by the key's coordinator.

use super::*;

/// A coordinator's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    /// Fetch it from GitHub; others asking meanwhile are told to wait for you.
    Granted,
    /// This node is fetching it: wait for its announcement.
    Wait(PeerId),
    /// These nodes hold a fresh copy: pull it.
    Holders(Vec<PeerId>),
}

impl State {
    /// As the key's coordinator, answers `requester`'s claim: holders first, then a live
    /// claimant, else the claim is granted and recorded.
    pub(super) fn coordinate(
        &mut self,
        key_id: &KeyId,
        requester: PeerId,
        ttl: Duration,
        me: PeerId,
    ) -> Decision {
        let now = now_ms();
        // Holders connected here (this node too, when it holds the key) first; in a bounded
        // overlay, then those heard of through gossip. The requester pulls from them in order,
        // dialing those it is not connected to.
        let mut near: Vec<PeerId> = self.fresh_holders(key_id, ttl, now);
        if self
            .served
            .get(key_id)
            .is_some_and(|h| is_fresh(h.fetched_at_ms, ttl, now))
        {
            near.push(me);
        }
        let far = self.far_holders(key_id, ttl, now);
        let mut holders = nearest_first(near, requester);
        holders.extend(nearest_first(far, requester));
        if !holders.is_empty() {
            holders.truncate(MAX_HOLDERS_TRIED * 2);
            return Decision::Holders(holders);
        }
        match self.claims.get(key_id) {
            // A claimant that left (killed mid-fetch) will announce nothing: its claim is void.
            Some(claim)
                if claim.until_ms > now
                    && claim.claimant != requester
                    && (claim.claimant == me
                        || !claim.watched
                        || self.verified(&claim.claimant)) =>
            {
                Decision::Wait(claim.claimant)
            }
            _ => {
                let claim = Claim {
                    claimant: requester,
                    until_ms: now + CLAIM_TTL.as_millis() as u64,
                    watched: requester == me || self.verified(&requester),
                };
                self.claims.insert(*key_id, claim);
                tracing::debug!(
                    "coordinating key {}: claim granted to {requester}",
                    hex::encode(key_id)
                );
                Decision::Granted
            }
        }
    }
}

/// How long a waiter in a bounded overlay gives its neighbours to hold an announced key before
/// it dials a holder it is not connected to. The claimant's neighbours pull at once, theirs
/// from them: two rounds of pulls, a second or more on a loaded 2-core machine.
const NEIGHBOUR_GRACE: Duration = Duration::from_secs(2);
/// How long a waiter in a bounded overlay waits for a claimant's announcement before it dials
/// the claimant to ask (gossip lost); one it is connected to is asked from the first ask on.
const FAR_DIAL_WITHOUT_ANNOUNCEMENT: Duration = Duration::from_secs(5);

/// How often a waiter checks that the claimant it waits for is still a member.
const CLAIMANT_CHECK: Duration = Duration::from_millis(250);

/// How waiting for a claimant ended.
pub(super) enum Waited {
    /// Its entry (pulled, verified, stored).
    Got(Box<(Entry, Vec<u8>)>),
    /// It left the swarm before announcing the key.
    ClaimantLeft,
    /// No usable entry in time.
    Nothing,
}

impl From<Option<(Entry, Vec<u8>)>> for Waited {
    fn from(hit: Option<(Entry, Vec<u8>)>) -> Self {
        match hit {
            Some(hit) => Waited::Got(Box::new(hit)),
            None => Waited::Nothing,
        }
    }
}

/// A coordinator's decision as a wire answer.
pub(super) fn decision_response(decision: Decision) -> Response {
    let id = |p: &PeerId| serde_bytes::ByteBuf::from(p.to_bytes());
    match decision {
        Decision::Granted => Response::Claim {
            granted: true,
            claimant: None,
            holders: Vec::new(),
        },
        Decision::Wait(claimant) => Response::Claim {
            granted: false,
            claimant: Some(id(&claimant)),
            holders: Vec::new(),
        },
        Decision::Holders(holders) => Response::Claim {
            granted: false,
            claimant: None,
            holders: holders.iter().map(id).collect(),
        },
    }
}

/// `holders` but `requester`, the nearest to it (XOR distance of their ids) first.
///
/// Each requester gets its own order: requesters are spread over the id space, so their pulls
/// spread over the holders, and the holders nearest to a requester are the likeliest to be its
/// neighbours already. One order for all had every requester of a key pull from the same
/// holder (the coordinator, most often): in a 200-member swarm one node held 190 connections
/// during a fetch round.
pub(super) fn nearest_first(mut holders: Vec<PeerId>, requester: PeerId) -> Vec<PeerId> {
    let from = kad::KBucketKey::from(requester);
    holders.retain(|p| *p != requester);
    holders.sort_by_cached_key(|p| from.distance(&kad::KBucketKey::from(*p)));
    holders
}

/// The order in which claimants of a key win: deterministic, and different for every key so
/// that no one node fetches everything.
pub(super) fn claim_rank(key_id: &KeyId, peer: &PeerId) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(key_id);
    hasher.update(peer.to_bytes());
    hasher.finalize().into()
}

/// What the swarm offers a lookup that found nothing fresh locally.
#[derive(Debug)]
pub enum Obtained {
    /// An entry fresh for the requester's TTL, pulled from a peer (and stored).
    Fresh(Entry, Vec<u8>),
    /// This node holds the key's claim and no peer has a fresh copy, but one sent this stale
    /// copy with its validators: revalidate it upstream (then call [`Handle::finished`]).
    Stale(Entry, Vec<u8>),
    /// Nothing: call upstream (then call [`Handle::finished`]).
    Nothing,
}

impl Handle {
    /// The peer tier: an entry fresh for `ttl` from the swarm, or a stale copy to revalidate,
    /// or nothing when this node should call upstream itself (and then call
    /// [`Handle::finished`]).
    ///
    /// Holders that announced the key are asked first. Then the key's coordinator (the member
    /// with the lowest claim rank for it) decides: pull from holders it knows of, wait for the
    /// node already fetching (or revalidating) it, or fetch it ourselves. One claim per key is
    /// granted at a time, so the swarm calls GitHub once per key however many nodes want it at
    /// once — revalidations included: the claimant revalidates, the others wait for its
    /// announcement.
    pub async fn obtain(&self, key: &CacheKey, ttl: Duration) -> Obtained {
        let key_id = self.inner.keys.key_id(key.canonical());
        let me = self.inner.peer_id;
        let (holders, members) = {
            let state = self.inner.state();
            let members = state.peers.values().filter(|p| p.verified).count();
            let now = now_ms();
            // Neighbours first; in a bounded overlay, then the member heard of holding it
            // nearest to this one (one: each one not reached costs the wait for a connection;
            // the nearest, so that the members wanting a key do not all dial one holder).
            let mut holders = state.fresh_holders(&key_id, ttl, now);
            holders.extend(
                nearest_first(state.far_holders(&key_id, ttl, now), me)
                    .into_iter()
                    .take(1),
            );
            (holders, members)
        };
        if members == 0 {
            return Obtained::Nothing;
        }
        let found = |hit: Option<(Entry, Vec<u8>)>| match hit {
            Some((entry, body)) => Obtained::Fresh(entry, body),
            None => Obtained::Nothing,
        };
        // A peer that failed once in this lookup is not asked again in it.
        let mut tried = HashSet::new();
        if let Some(hit) = self.pull_any(&holders, &mut tried, &key_id, key, ttl).await {
            return Obtained::Fresh(hit.0, hit.1);
        }

        // A claimant that leaves while we wait for it is replaced once: the claim is asked for
        // again (of the coordinator of the members left), so that one node, not every waiter,
        // goes upstream in its place.
        let mut reclaimed = false;
        loop {
            let coordinator = self.inner.state().coordinator(&key_id, me);
            let decision = if coordinator == me {
                self.coordinate_here(&key_id, me, ttl)
            } else if tried.contains(&coordinator) {
                // It just failed a pull (a stalled or lossy link, most likely): a claim would
                // wait on the same link. One possible extra upstream call beats a second timeout.
                tracing::debug!(
                    "the coordinator {coordinator} failed a pull in this lookup; fetching upstream"
                );
                Decision::Granted
            } else {
                self.claim_at(coordinator, &key_id, ttl).await
            };
            let claimant = match decision {
                Decision::Holders(holders) => {
                    let mut hit = self.pull_any(&holders, &mut tried, &key_id, key, ttl).await;
                    if hit.is_none() {
                        // While those were tried (each one not reached costs a dial's wait),
                        // neighbours may have pulled a copy and said so (`Have`): one of them
                        // beats the call upstream.
                        let neighbours = self.inner.state().fresh_holders(&key_id, ttl, now_ms());
                        hit = self
                            .pull_any(&neighbours, &mut tried, &key_id, key, ttl)
                            .await;
                    }
                    if hit.is_none() {
                        bump(&self.inner.counters.holders_unreached);
                    }
                    return found(hit);
                }
                Decision::Wait(claimant) => claimant,
                Decision::Granted => break,
            };
            tracing::debug!("{claimant} is fetching a key this node wants; waiting for it");
            match self
                .wait_for_claimant(claimant, &mut tried, &key_id, key, ttl)
                .await
            {
                Waited::Got(hit) => return Obtained::Fresh(hit.0, hit.1),
                Waited::ClaimantLeft if !reclaimed => {
                    tracing::info!(
                        "{claimant} left while fetching a key this node wants, before announcing \
                         it; claiming the key again"
                    );
                    reclaimed = true;
                    // The coordinator learns of the departure as this node did; a moment lets
                    // it see the connection close before it is asked again.
                    tokio::time::sleep(CLAIMANT_CHECK).await;
                }
                Waited::ClaimantLeft | Waited::Nothing => {
                    bump(&self.inner.counters.claim_waits_expired);
                    return Obtained::Nothing;
                }
            }
        }
        // Granted: this node fetches the key.
        bump(&self.inner.counters.claims_won);
        // Holders of a stale copy first (their validators can save a full GET), then
        // members that joined after an announcement: someone may hold it unannounced.
        let others: Vec<PeerId> = {
            let state = self.inner.state();
            let mut stale = state.fresh_holders(&key_id, Duration::MAX, now_ms());
            stale.retain(|p| !tried.contains(p));
            let mut others: Vec<PeerId> = state
                .peers
                .iter()
                .filter(|(id, p)| p.verified && !tried.contains(*id) && !stale.contains(*id))
                .map(|(id, _)| *id)
                .collect();
            others.sort_by_key(|p| claim_rank(&key_id, p));
            stale.truncate(MAX_HOLDERS_TRIED);
            stale.extend(others);
            stale.truncate(ASK_FANOUT.max(MAX_HOLDERS_TRIED));
            stale
        };
        match self.ask_all(&others, &key_id, key, ttl).await {
            Pulled::Fresh(entry, body) => {
                // Tell the coordinator and the waiters that the key is available.
                self.finished(key, Some(&entry));
                Obtained::Fresh(entry, body)
            }
            Pulled::Stale(entry, body) => Obtained::Stale(entry, body),
            Pulled::Nothing => Obtained::Nothing,
        }
    }

    /// After this node called upstream: announce the stored entry, or release the claim.
    pub fn finished(&self, key: &CacheKey, entry: Option<&Entry>) {
        let key_id = self.inner.keys.key_id(key.canonical());
        let me = self.inner.peer_id;
        let gossip = {
            let mut state = self.inner.state();
            if state.claims.get(&key_id).is_some_and(|c| c.claimant == me) {
                state.claims.remove(&key_id);
            }
            match entry {
                Some(entry) => {
                    let held = Held {
                        local_id: key.id().to_string(),
                        fetched_at_ms: entry.fetched_at_ms,
                    };
                    state.served.insert(key_id, held);
                    Gossip::announce(&key_id, entry)
                }
                None => Gossip::Release {
                    key_id: hex::encode(key_id),
                },
            }
        };
        self.inner.send(Command::Publish(gossip));
    }

    /// Sends a claim to the key's coordinator (or the next hop towards it). If it cannot
    /// answer, this node fetches the key itself: a slow or lost coordinator costs an extra
    /// upstream call, never a failed fetch.
    pub(super) async fn claim_at(
        &self,
        coordinator: PeerId,
        key_id: &KeyId,
        ttl: Duration,
    ) -> Decision {
        match self
            .claim_via(coordinator, key_id, ttl, None, CLAIM_TIMEOUT)
            .await
        {
            Some(decision) => decision,
            None => {
                tracing::debug!(
                    "the coordinator {coordinator} did not answer a claim; fetching upstream"
                );
                bump(&self.inner.counters.claims_unanswered);
                Decision::Granted
            }
        }
    }

    /// Decides `requester`'s claim at this node, counting the grants.
    fn coordinate_here(&self, key_id: &KeyId, requester: PeerId, ttl: Duration) -> Decision {
        let decision = self
            .inner
            .state()
            .coordinate(key_id, requester, ttl, self.inner.peer_id);
        if decision == Decision::Granted {
            bump(&self.inner.counters.claims_granted);
        }
        decision
    }

    /// Sends a claim (for `on_behalf_of` when passed on) to `next`; `None` without an answer.
    pub(super) async fn claim_via(
        &self,
        next: PeerId,
        key_id: &KeyId,
        ttl: Duration,
        on_behalf_of: Option<PeerId>,
        limit: Duration,
    ) -> Option<Decision> {
        let request = Request::Claim {
            key_id: key_id.to_vec(),
            ttl_ms: ttl.as_millis() as u64,
            on_behalf_of: on_behalf_of.map(|p| serde_bytes::ByteBuf::from(p.to_bytes())),
        };
        match self.request(next, request, limit).await {
            Ok(Response::Claim { granted: true, .. }) => Some(Decision::Granted),
            Ok(Response::Claim {
                claimant: Some(claimant),
                ..
            }) => Some(match PeerId::from_bytes(&claimant) {
                Ok(claimant) => Decision::Wait(claimant),
                Err(_) => Decision::Granted,
            }),
            Ok(Response::Claim { holders, .. }) => Some(Decision::Holders(
                holders
                    .iter()
                    .filter_map(|h| PeerId::from_bytes(h).ok())
                    .collect(),
            )),
            Ok(_) | Err(_) => None,
        }
    }

    /// Answers a claim from `via` (for `requester`) as the coordinator, or passes it on to the
    /// neighbour closer to the key (a bounded overlay), off the loop.
    pub(super) fn answer_claim(
        &self,
        key_id: KeyId,
        ttl: Duration,
        via: PeerId,
        requester: PeerId,
        channel: ResponseChannel<Response>,
    ) {
        let me = self.inner.peer_id;
        let next = self.inner.state().coordinator(&key_id, me);
        if next == me || next == via || next == requester {
            let decision = self.coordinate_here(&key_id, requester, ttl);
            self.inner.send(Command::Respond {
                channel,
                response: decision_response(decision),
            });
            return;
        }
        // `next` is strictly closer to the key than this node: the claim ends at the member
        // closest to it, in O(log n) hops, without a loop.
        let handle = self.clone();
        tokio::spawn(async move {
            let passed = handle
                .claim_via(next, &key_id, ttl, Some(requester), FORWARD_TIMEOUT)
                .await;
            let decision = passed.unwrap_or_else(|| {
                tracing::debug!("{next} did not answer a claim passed on; deciding it here");
                bump(&handle.inner.counters.claims_decided_on_the_way);
                handle.coordinate_here(&key_id, requester, ttl)
            });
            handle.inner.send(Command::Respond {
                channel,
                response: decision_response(decision),
            });
        });
    }

    /// Waits (bounded) for the claimant's announcement, then pulls from the holders. Gossip
    /// is best effort (a mesh still forming after a peer left publishes to no one), so the
    /// claimant is also asked directly now and then: whichever comes first ends the wait.
    pub(super) async fn wait_for_claimant(
        &self,
        claimant: PeerId,
        tried: &mut HashSet<PeerId>,
        key_id: &KeyId,
        key: &CacheKey,
        ttl: Duration,
    ) -> Waited {
        bump(&self.inner.counters.claims_waited);
        let (tx, mut rx) = oneshot::channel();
        {
            let mut state = self.inner.state();
            // The announcement may have arrived already.
            if state.fresh_holders(key_id, ttl, now_ms()).is_empty() {
                state.waiters.entry(*key_id).or_default().push(tx);
            } else {
                let _ = tx.send(());
            }
        }
        let started = tokio::time::Instant::now();
        let deadline = started + CLAIM_WAIT;
        // In a bounded overlay, members this node is not connected to (the claimant, far
        // holders) are dialed only from here on: a grace after an announcement, or a while
        // without one (gossip lost). Until then the claimant is asked only over a connection
        // this node has. Asking it at once had every waiter of a 200-member swarm dial it:
        // one claimant took 198 connections, and a hello on each, within seconds.
        let mut dial_from = started + FAR_DIAL_WITHOUT_ANNOUNCEMENT;
        let mut pause = CLAIMANT_FIRST_ASK;
        let mut membership = tokio::time::interval(CLAIMANT_CHECK);
        // Only a claimant this node is connected to can be seen leaving; one it does not know
        // (a member reached through others) is waited for until the deadline.
        let watched = claimant != self.inner.peer_id && self.inner.state().verified(&claimant);
        // Set once per ask, not per turn of the loop: the membership check wakes it every
        // 250 ms, and an ask time pushed back at each wake would never come.
        let mut ask_at = (tokio::time::Instant::now() + pause).min(deadline);
        loop {
            tokio::select! {
                announced = &mut rx => {
                    if announced.is_err() {
                        // The waiter list was dropped (too many tracked keys): ask directly.
                        return self.pull(claimant, key_id, key, ttl, ASK_TIMEOUT).await.into();
                    }
                    let (near, bounded) = {
                        let state = self.inner.state();
                        (!state.fresh_holders(key_id, ttl, now_ms()).is_empty(), state.bounded)
                    };
                    if near || !bounded {
                        break;
                    }
                    // Announced by a member this node is not connected to. Its neighbours want
                    // the key too, most likely, and will hold it in a moment: wait for one of
                    // them rather than have every member dial the one holder; if none does, a
                    // far holder is dialed at the next ask.
                    let (tx, next) = oneshot::channel();
                    self.inner.state().waiters.entry(*key_id).or_default().push(tx);
                    rx = next;
                    let grace_ends = tokio::time::Instant::now() + NEIGHBOUR_GRACE;
                    dial_from = dial_from.min(grace_ends);
                    ask_at = ask_at.min(grace_ends);
                }
                _ = membership.tick() => {
                    // Gone (killed mid-fetch, its job ended): no announcement will come.
                    if watched && !self.inner.state().verified(&claimant) {
                        return Waited::ClaimantLeft;
                    }
                }
                () = tokio::time::sleep_until(ask_at) => {
                    // Neighbours that hold it, then (a bounded overlay) a member that announced
                    // it, then the claimant itself.
                    let (near, far, bounded, claimant_connected) = {
                        let state = self.inner.state();
                        let now = now_ms();
                        (
                            state.fresh_holders(key_id, ttl, now),
                            state.far_holders(key_id, ttl, now),
                            state.bounded,
                            state.verified(&claimant),
                        )
                    };
                    if let Some(hit) = self.pull_any(&near, tried, key_id, key, ttl).await {
                        return Some(hit).into();
                    }
                    let may_dial = !bounded || tokio::time::Instant::now() >= dial_from;
                    // The far holder nearest to this node: one of many by now, and a different
                    // one for each waiter, so the dials spread.
                    let far = nearest_first(far, self.inner.peer_id)
                        .into_iter()
                        .find(|p| !tried.contains(p) && *p != claimant)
                        .filter(|_| may_dial);
                    let claimant = Some(claimant).filter(|_| may_dial || claimant_connected);
                    for peer in far.into_iter().chain(claimant) {
                        if let Some(hit) = self.pull(peer, key_id, key, ttl, ASK_TIMEOUT).await {
                            return Some(hit).into();
                        }
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::info!(
                            "no announcement for a claimed key within {CLAIM_WAIT:?}; fetching it upstream"
                        );
                        return Waited::Nothing;
                    }
                    pause = (pause * 2).min(CLAIMANT_ASK_MAX_PAUSE);
                    ask_at = (tokio::time::Instant::now() + pause).min(deadline);
                }
            }
        }
        let holders = self.inner.state().fresh_holders(key_id, ttl, now_ms());
        self.pull_any(&holders, tried, key_id, key, ttl)
            .await
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_requester_is_sent_to_the_holders_nearest_to_it() {
        let holders: Vec<PeerId> = (0..50).map(|_| PeerId::random()).collect();
        let mut first_choices: HashMap<PeerId, usize> = HashMap::new();
        for _ in 0..200 {
            let requester = PeerId::random();
            let ordered = nearest_first(holders.clone(), requester);
            assert_eq!(ordered.len(), holders.len());
            let from = kad::KBucketKey::from(requester);
            let distances: Vec<_> = ordered
                .iter()
                .map(|p| from.distance(&kad::KBucketKey::from(*p)))
                .collect();
            assert!(
                distances.windows(2).all(|w| w[0] <= w[1]),
                "not nearest first"
            );
            *first_choices.entry(ordered[0]).or_default() += 1;
        }
        // 200 requesters over 50 holders: about 4 each; one order for all would send all 200
        // to one holder.
        let busiest = first_choices.values().max().copied().unwrap_or(0);
        assert!(
            busiest <= 40 && first_choices.len() >= 20,
            "first choices: {} holders, the busiest {busiest}",
            first_choices.len()
        );
        // A requester that holds the key itself is not sent to itself.
        let holder = holders[7];
        let ordered = nearest_first(holders.clone(), holder);
        assert_eq!(ordered.len(), holders.len() - 1);
        assert!(!ordered.contains(&holder));
    }
}
