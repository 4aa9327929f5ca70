//! Membership: the hello that proves the secret (a SPAKE2 run per direction, [`crate::p2p::pake`]),
//! and what happens to peers that fail it.
//!
//! Of a run this node started it keeps the SPAKE2 state until the reply (then the session until
//! the welcome), by request id: one per connection that opened first, each ended by its answer,
//! its failure or the request timeout, and never more than [`MAX_STARTED`]. Of a run it answered
//! it keeps the session until the initiator confirms: at most [`MAX_ANSWERED`] of them,
//! [`MAX_ANSWERED_PER_PEER`] per peer, none older than [`CONFIRM_WITHIN`].

use std::collections::VecDeque;

use super::*;
use crate::p2p::pake::{self, Initiator, Refusal, Session};

/// Runs this node answered and keeps waiting for their confirmation.
const MAX_ANSWERED: usize = 64;
/// Of those, runs of one peer (a resend after a closed connection, a second connection).
const MAX_ANSWERED_PER_PEER: usize = 4;
/// How long an answered run waits for the initiator's confirmation.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);
/// Runs this node started and keeps waiting for.
const MAX_STARTED: usize = 1024;

/// A run this node started, by the request that carries its current step.
pub(super) enum Started {
    /// `Hello` sent; waiting for the `HelloReply`.
    Hello(Initiator),
    /// The responder proved the secret and `HelloConfirm` is sent; waiting for the `Welcome`.
    Confirm(Session),
}

/// A run this node answered: the `HelloReply` is sent, the `HelloConfirm` is due.
struct Answered {
    peer: PeerId,
    session: Session,
    at: Instant,
}

/// The hellos under way.
#[derive(Default)]
pub(super) struct Hellos {
    pub(super) started: HashMap<OutboundRequestId, Started>,
    answered: VecDeque<Answered>,
}

/// What an initiator's confirmation turned out to be.
enum Confirmation {
    /// It matches one of the runs answered for that peer.
    Matches(Session),
    /// It matches none of them: the peer does not hold the secret.
    Mismatch,
    /// There is no answered run of that peer (expired or never started) to check it against.
    NoRun,
}

impl Hellos {
    fn remember(&mut self, peer: PeerId, session: Session) {
        self.expire();
        if self.answered.iter().filter(|a| a.peer == peer).count() >= MAX_ANSWERED_PER_PEER
            && let Some(oldest) = self.answered.iter().position(|a| a.peer == peer)
        {
            self.answered.remove(oldest);
        }
        if self.answered.len() >= MAX_ANSWERED {
            self.answered.pop_front();
        }
        self.answered.push_back(Answered {
            peer,
            session,
            at: Instant::now(),
        });
    }

    fn confirm(&mut self, peer: &PeerId, confirm: &[u8]) -> Confirmation {
        self.expire();
        let mut any = false;
        for (i, run) in self.answered.iter().enumerate() {
            if run.peer == *peer {
                any = true;
                if run.session.verify_initiator(confirm) {
                    let run = self.answered.remove(i).expect("the index was just found");
                    return Confirmation::Matches(run.session);
                }
            }
        }
        if any {
            self.answered.retain(|a| a.peer != *peer);
            Confirmation::Mismatch
        } else {
            Confirmation::NoRun
        }
    }

    fn expire(&mut self) {
        while self
            .answered
            .front()
            .is_some_and(|a| a.at.elapsed() >= CONFIRM_WITHIN)
        {
            self.answered.pop_front();
        }
    }
}

impl EventLoop {
    /// The first step of a run to `peer`: the request to send, and the state to keep for it.
    /// `None` when too many runs are under way already.
    pub(super) fn start_hello(&mut self, peer: &PeerId) -> Option<(Request, Started)> {
        if self.hellos.started.len() >= MAX_STARTED {
            tracing::debug!("no hello to {peer} for now: {MAX_STARTED} are under way");
            return None;
        }
        let (run, message) = Initiator::start(&self.inner.keys, &self.inner.peer_id, peer);
        Some((Request::Hello { pake: message }, Started::Hello(run)))
    }

    /// Answers `peer`'s `Hello`. Nothing in the answer is keyed from the secret but the
    /// exchange's own messages: the peer is not verified yet.
    pub(super) fn answer_hello(&mut self, peer: PeerId, message: &[u8]) -> Response {
        match pake::respond(&self.inner.keys, &peer, &self.inner.peer_id, message) {
            Ok((reply, confirm, session)) => {
                self.hellos.remember(peer, session);
                Response::HelloReply {
                    pake: reply,
                    confirm,
                }
            }
            Err(refusal) => {
                self.refuse(peer, refusal);
                Response::Denied
            }
        }
    }

    /// Answers `peer`'s `HelloConfirm`: a match makes it a member, and only then does it get
    /// this node's description.
    pub(super) fn answer_confirm(&mut self, peer: PeerId, confirm: &[u8], meta: &[u8]) -> Response {
        match self.hellos.confirm(&peer, confirm) {
            Confirmation::Matches(session) => {
                self.accept_member(&peer, session.open_meta(meta));
                Response::Welcome {
                    meta: session.seal_meta(&self.meta_json()),
                }
            }
            Confirmation::Mismatch => {
                self.refuse(peer, Refusal::Mismatch);
                Response::Denied
            }
            Confirmation::NoRun => {
                tracing::debug!("a hello confirmation from {peer} matches no run under way");
                Response::Denied
            }
        }
    }

    /// The answer to a step of a run this node started: the next step to send, if any.
    pub(super) fn on_hello_answer(
        &mut self,
        peer: PeerId,
        step: Started,
        response: Response,
    ) -> Option<(Request, Started)> {
        match (step, response) {
            (Started::Hello(run), Response::HelloReply { pake, confirm }) => {
                match run.finish_verified(&pake, &confirm) {
                    // The peer holds the secret; it is counted once it has checked ours too
                    // (its `Welcome`), so that a member counted here counts this node there.
                    Ok(session) => Some((
                        Request::HelloConfirm {
                            confirm: session.initiator_confirm(),
                            meta: session.seal_meta(&self.meta_json()),
                        },
                        Started::Confirm(session),
                    )),
                    Err(refusal) => {
                        self.refuse(peer, refusal);
                        None
                    }
                }
            }
            (Started::Hello(_), _) => {
                tracing::debug!("peer {peer} refused our hello");
                bump(&self.inner.counters.auth_failures);
                self.punish(peer);
                None
            }
            (Started::Confirm(session), Response::Welcome { meta }) => {
                self.accept_member(&peer, session.open_meta(&meta));
                None
            }
            (Started::Confirm(_), _) => {
                // It proved the secret in this run; its refusal is a run that expired there.
                // The hello it started itself verifies both sides.
                tracing::debug!("peer {peer} did not take our hello confirmation");
                None
            }
        }
    }

    fn refuse(&mut self, peer: PeerId, why: Refusal) {
        tracing::debug!("peer {peer} failed the hello: {why}");
        bump(&self.inner.counters.auth_failures);
        self.punish(peer);
    }

    fn meta_json(&self) -> Vec<u8> {
        let meta = PeerMeta {
            members_known: Some(u32::try_from(self.members_known()).unwrap_or(u32::MAX)),
            ..self.meta.clone()
        };
        serde_json::to_vec(&meta).unwrap_or_default()
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

    /// Marks a peer that completed a run verified, with what it told about itself (`meta`:
    /// the sealed [`PeerMeta`] opened with the run's key).
    fn accept_member(&mut self, peer: &PeerId, meta: Option<Vec<u8>>) {
        let meta = meta.and_then(|m| serde_json::from_slice::<PeerMeta>(&m).ok());
        let mut state = self.inner.state();
        let entry = state.peers.entry(*peer).or_default();
        // What it said in an earlier run stays when this one's description did not open.
        if let Some(meta) = meta {
            entry.meta = meta;
        }
        if !entry.verified {
            tracing::info!(
                "peer {peer} joined the swarm ({})",
                entry
                    .meta
                    .runner_name
                    .as_deref()
                    .unwrap_or("unnamed runner")
            );
        }
        let newly_verified = !entry.verified;
        entry.verified = true;
        entry.last_seen_ms = now_ms();
        drop(state);
        if newly_verified {
            // What it sent gossipsub and Kademlia before its hello passed reaches them now.
            self.swarm.behaviour_mut().gossipsub.admit(peer);
            self.swarm.behaviour_mut().kad.admit(peer);
            self.add_to_routing(peer);
            self.overlay_verified(peer);
            self.inner.member_verified.notify_waiters();
            self.maybe_reserve(*peer);
            self.maybe_ask_for_members(peer);
        }
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
        let addrs: Vec<Multiaddr> = addrs
            .into_iter()
            .filter(|a| is_dialable(a) && (on_loopback || !is_loopback(a)))
            .collect();
        if self.inner.state().bounded && self.kad_bucket_full_without(peer) {
            // In a bounded overlay most members in the routing table are not connected (the
            // overlay closed those connections), and a new member for a full bucket makes
            // Kademlia dial the oldest of them to see whether it is alive. That connection's
            // hello has the member dialed do the same in its own table, and so on: dials that
            // beget dials, for nothing the overlay keeps. The table keeps the members it has;
            // lookups through them find the rest.
            self.overlay.hear(*peer, addrs);
            return;
        }
        for addr in &addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(peer, addr.clone());
        }
        self.overlay.hear(*peer, addrs);
    }

    /// Whether `peer`'s Kademlia bucket is full and `peer` is not in it.
    fn kad_bucket_full_without(&mut self, peer: &PeerId) -> bool {
        let Some(bucket) = self.swarm.behaviour_mut().kad.kbucket(*peer) else {
            return false;
        };
        bucket.num_entries() >= kad::K_VALUE.get()
            && !bucket.iter().any(|e| e.node.key.preimage() == peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::crypto::SwarmKeys;
    use crate::secret::Secret;

    /// A run `initiator` → `me` as far as the responder's side goes: its session, and the
    /// confirmation the (honest) initiator sends.
    fn answered_run(keys: &SwarmKeys, initiator: PeerId, me: PeerId) -> (Session, Vec<u8>) {
        let (run, hello) = Initiator::start(keys, &initiator, &me);
        let (reply, confirm, session) = pake::respond(keys, &initiator, &me, &hello).unwrap();
        let theirs = run.finish_verified(&reply, &confirm).unwrap();
        (session, theirs.initiator_confirm())
    }

    #[test]
    fn answered_runs_are_bounded_per_peer_and_in_all_and_expire() {
        let keys = SwarmKeys::derive(&Secret::new("bounded"), "");
        let me = PeerId::random();
        let mut hellos = Hellos::default();

        // A flood of identities leaves at most MAX_ANSWERED runs, the newest.
        let peers: Vec<PeerId> = (0..MAX_ANSWERED + 10).map(|_| PeerId::random()).collect();
        let mut confirms = Vec::new();
        for peer in &peers {
            let (session, confirm) = answered_run(&keys, *peer, me);
            hellos.remember(*peer, session);
            confirms.push(confirm);
        }
        assert_eq!(hellos.answered.len(), MAX_ANSWERED);
        assert!(matches!(
            hellos.confirm(&peers[0], &confirms[0]),
            Confirmation::NoRun
        ));
        let last = peers.len() - 1;
        assert!(matches!(
            hellos.confirm(&peers[last], &confirms[last]),
            Confirmation::Matches(_)
        ));
        assert!(
            matches!(
                hellos.confirm(&peers[last], &confirms[last]),
                Confirmation::NoRun
            ),
            "a run confirms once"
        );

        // One peer keeps at most MAX_ANSWERED_PER_PEER runs; the newest still confirm.
        let peer = PeerId::random();
        let mut confirms = Vec::new();
        for _ in 0..MAX_ANSWERED_PER_PEER + 1 {
            let (session, confirm) = answered_run(&keys, peer, me);
            hellos.remember(peer, session);
            confirms.push(confirm);
        }
        let held = hellos.answered.iter().filter(|a| a.peer == peer).count();
        assert_eq!(held, MAX_ANSWERED_PER_PEER);
        assert!(matches!(
            hellos.confirm(&peer, &confirms[0]),
            Confirmation::Mismatch
        ));
        let (session, confirm) = answered_run(&keys, peer, me);
        hellos.remember(peer, session);
        assert!(matches!(
            hellos.confirm(&peer, &confirm),
            Confirmation::Matches(_)
        ));

        // A wrong confirmation is a mismatch, and ends that peer's runs.
        let (session, _) = answered_run(&keys, peer, me);
        hellos.remember(peer, session);
        assert!(matches!(
            hellos.confirm(&peer, &[0; 32]),
            Confirmation::Mismatch
        ));
        assert!(hellos.answered.iter().all(|a| a.peer != peer));

        // Runs older than CONFIRM_WITHIN are gone.
        let peer = PeerId::random();
        let (session, confirm) = answered_run(&keys, peer, me);
        hellos.remember(peer, session);
        for run in hellos.answered.iter_mut() {
            run.at = run.at.checked_sub(CONFIRM_WITHIN).unwrap();
        }
        assert!(matches!(
            hellos.confirm(&peer, &confirm),
            Confirmation::NoRun
        ));
        assert!(hellos.answered.is_empty());
    }
}
