//! The event loop: it owns the swarm, runs [`Command`]s and reacts to swarm events.

use libp2p::relay;
use libp2p::swarm::ConnectionId;

use super::membership::{Hellos, Started};
use super::*;

pub(super) struct EventLoop {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) inner: Arc<Inner>,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) pending_requests:
        HashMap<OutboundRequestId, oneshot::Sender<Result<Response, String>>>,
    /// The hellos under way (see [`super::membership`]).
    pub(super) hellos: Hellos,
    /// Peers to keep connected: the bootstrap setting's, and those mDNS currently reports.
    pub(super) keep_connected: Vec<Redial>,
    /// Banned peers still connected, disconnected at the next tick so that the `Denied` they
    /// were sent (and the hello they sent us) can cross first: both sides then see the refusal.
    pub(super) to_disconnect: Vec<PeerId>,
    pub(super) topic: gossipsub::IdentTopic,
    pub(super) meta: PeerMeta,
    pub(super) metrics: Option<libp2p::metrics::Metrics>,
    /// This node is a hub: it serves the relay and reserves on no one.
    pub(super) hub: bool,
    /// A hub without `--external-addr` announces what it listens on: a hub is set up where
    /// members can reach it, and relay reservations must name at least one address.
    pub(super) announce_listeners: bool,
    /// Relay reservations asked for or held: the relay listener and the hub it is on.
    pub(super) reservations: HashMap<libp2p::core::transport::ListenerId, PeerId>,
    /// When to look the swarm up once more after a reservation.
    pub(super) rebootstrap_at: Option<Instant>,
    /// When the swarm is next looked up (every [`KAD_REFRESH`]).
    pub(super) next_refresh: Instant,
    /// The times of the gossip messages taken, against replays.
    pub(super) replay: ReplayGuard,
    /// The time stamped on this node's last gossip message (stamps strictly increase).
    pub(super) last_stamp_ms: u64,
    /// The members heard of, and the connections kept (see [`super::overlay`]).
    pub(super) overlay: Overlay,
    /// The full-mesh size ([`NodeConfig::full_mesh`]).
    pub(super) full_mesh: usize,
    /// Members being looked up in Kademlia to pull from, and since when.
    pub(super) reaching: HashMap<PeerId, Instant>,
    /// A Kademlia bootstrap has ended (run to its end, or cut short, below).
    pub(super) bootstrapped: bool,
    /// Bootstraps being cut short after their first lookup (see [`EventLoop::on_bootstrap_step`]).
    pub(super) cut_bootstraps: HashSet<kad::QueryId>,
    /// Joining a bounded overlay from a member's list (see [`super::join`]).
    pub(super) join: Join,
}

impl EventLoop {
    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    self.on_swarm_event(event);
                    self.cut_bootstraps_while_listed();
                }
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        let _ = done.send(());
                        break;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        tracing::debug!("p2p loop stopped");
    }

    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Request {
                peer,
                request,
                reply,
            } => {
                self.exchange_began(&peer);
                if !self.swarm.is_connected(&peer) {
                    tracing::debug!("a request to {peer} dials it (not connected)");
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .exchange
                    .send_request(&peer, request);
                self.pending_requests.insert(id, reply);
            }
            Command::Respond { channel, response } => self.respond(channel, response),
            Command::Publish(gossip) => {
                // The benchmark's announcement delivery figure pairs this line with the
                // receivers' "heard announcement" lines by key id (scripts/bench.sh).
                if let Gossip::Announce { key_id, .. } = &gossip {
                    if self.inner.fault == Some(TestFault::SilentAnnouncements) {
                        tracing::debug!("not announcing key {key_id} (test fault)");
                        return;
                    }
                    tracing::debug!("announcing key {key_id}");
                }
                self.last_stamp_ms = now_ms().max(self.last_stamp_ms + 1);
                let stamped = Stamped {
                    sent_at_ms: self.last_stamp_ms,
                    gossip,
                };
                let json = serde_json::to_vec(&stamped).expect("gossip serializes");
                let copies = if self.inner.fault == Some(TestFault::ReplayGossip) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    // Sealed afresh each time: a new nonce, so a new gossipsub message id, as a
                    // recording replayed after gossipsub's duplicate cache has forgotten it.
                    let sealed = self.inner.keys.seal(GOSSIP_AAD, &json);
                    if let Err(e) = self
                        .swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(self.topic.clone(), sealed)
                    {
                        tracing::debug!("gossip not published: {e}");
                    }
                }
            }
            Command::Dial(addr) => match addr.iter().last() {
                Some(Protocol::P2p(peer)) => self.dial_peer(peer, vec![addr], "a request"),
                _ => {
                    let opts = DialOpts::unknown_peer_id()
                        .address(addr.clone())
                        .allocate_new_port()
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!("cannot dial {addr}: {e}");
                    }
                }
            },
            Command::DialPeer(peer, addrs) => self.heard_of(peer, addrs, "a registry"),
            Command::Reach(peer) => self.reach(peer),
            Command::Punish(peer) => self.punish(peer),
            Command::TellNeighbours {
                key_id,
                fetched_at_ms,
                source,
            } => self.tell_neighbours(key_id, fetched_at_ms, source),
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// Every half second: deferred disconnects, expiries, redials.
    pub(super) fn on_tick(&mut self) {
        for peer in std::mem::take(&mut self.to_disconnect) {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        self.expire();
        self.close_superseded_relays();
        self.redial_lost();
        self.rebootstrap_when_due();
        self.refresh_routing_when_due();
        self.look_after_overlay();
        self.refresh_members_when_due();
    }

    /// A request with `peer` began (sent or received): its connection is busy until it ends.
    pub(super) fn exchange_began(&mut self, peer: &PeerId) {
        if let Some(p) = self.inner.state().peers.get_mut(peer) {
            p.last_exchange = Some(Instant::now());
            p.in_flight = p.in_flight.saturating_add(1);
        }
    }

    /// A request with `peer` ended (answered, or failed).
    fn exchange_ended(&mut self, peer: &PeerId) {
        if let Some(p) = self.inner.state().peers.get_mut(peer) {
            p.last_exchange = Some(Instant::now());
            p.in_flight = p.in_flight.saturating_sub(1);
        }
    }

    /// Starts a hello to `peer` (a key-exchange run that proves the secret).
    fn send_hello(&mut self, peer: PeerId) {
        if let Some(step) = self.start_hello(&peer) {
            self.send_hello_step(peer, step);
        }
    }

    /// Sends a step of a hello this node started and remembers its request.
    fn send_hello_step(&mut self, peer: PeerId, (request, step): (Request, Started)) {
        self.exchange_began(&peer);
        let id = self
            .swarm
            .behaviour_mut()
            .exchange
            .send_request(&peer, request);
        self.hellos.started.insert(id, step);
    }

    /// Closes relayed connections to peers that have had a direct one for [`RELAY_HANDOVER`].
    ///
    /// Once a direct connection exists, a relayed one only costs the hub's bandwidth and
    /// outlives it: request-response spreads requests over all of a peer's connections, and one
    /// relayed through a hub that died without a word (QUIC) swallows claims and pulls until it
    /// times out. The wait lets the peer see the direct connection first: closing at once can
    /// leave the peer's last connection gone on one side only, and gossipsub then forgets the
    /// peer's subscriptions on that side for good.
    pub(super) fn close_superseded_relays(&mut self) {
        let superseded: Vec<(PeerId, ConnectionId)> = {
            let mut state = self.inner.state();
            let mut superseded = Vec::new();
            for (peer_id, peer) in state.peers.iter_mut() {
                let settled = peer
                    .connections
                    .values()
                    .any(|l| !l.relayed && l.opened.elapsed() >= RELAY_HANDOVER);
                if !settled {
                    continue;
                }
                peer.connections.retain(|id, link| {
                    if link.relayed {
                        superseded.push((*peer_id, *id));
                    }
                    !link.relayed
                });
            }
            superseded
        };
        for (peer_id, id) in superseded {
            tracing::debug!("closing a relayed connection to {peer_id}: a direct one is open");
            self.swarm.close_connection(id);
        }
    }

    /// Forgets expired bans and claims.
    pub(super) fn expire(&mut self) {
        let unbanned = {
            let mut state = self.inner.state();
            let now_ms = now_ms();
            state.claims.retain(|_, c| c.until_ms > now_ms);
            state.banned.expire()
        };
        self.unblacklist(unbanned);
    }

    /// Takes peers no longer banned off gossipsub's blacklist (which never forgets by itself).
    pub(super) fn unblacklist(&mut self, peers: Vec<PeerId>) {
        for peer in peers {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .remove_blacklisted_peer(&peer);
        }
    }

    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(metrics) = &self.metrics {
            record_metrics(metrics, &event);
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!("listening on {address}");
                if self.announce_listeners && !is_relayed(&address) && !is_loopback(&address) {
                    self.swarm.add_external_address(address.clone());
                }
                self.inner.state().listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.inner.state().listen_addrs.retain(|a| a != &address)
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                self.inner
                    .state()
                    .listen_addrs
                    .retain(|a| !addresses.contains(a));
                self.on_listener_closed(listener_id, reason);
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.on_dial_failure(peer_id, &error);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if self.inner.state().banned.contains(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                {
                    let mut state = self.inner.state();
                    let peer = state.peers.entry(peer_id).or_default();
                    peer.last_seen_ms = now_ms();
                    let remote = endpoint.get_remote_address().clone();
                    let relayed = endpoint.is_relayed();
                    if endpoint.is_dialer() && !relayed {
                        peer.dialed_addr = Some(remote.clone());
                    }
                    tracing::debug!(
                        "connected to {peer_id} at {remote} ({}, {})",
                        if relayed { "relayed" } else { "direct" },
                        if endpoint.is_dialer() {
                            "dialed"
                        } else {
                            "accepted"
                        }
                    );
                    peer.connections.insert(
                        connection_id,
                        Link {
                            remote,
                            relayed,
                            opened: Instant::now(),
                            dialed: endpoint.is_dialer(),
                        },
                    );
                }
                if let Some(redial) = self.keep_connected.iter_mut().find(|r| r.peer == peer_id) {
                    redial.backoff = Duration::from_secs(1);
                }
                if num_established.get() == 1 {
                    self.send_hello(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                let mut state = self.inner.state();
                if num_established > 0 {
                    if let Some(peer) = state.peers.get_mut(&peer_id) {
                        peer.connections.remove(&connection_id);
                    }
                    return;
                }
                let dialed_here = state
                    .peers
                    .get(&peer_id)
                    .and_then(|p| p.connections.get(&connection_id))
                    .is_some_and(|link| link.dialed);
                // Gone members leave the routing table: a hub would otherwise keep handing out
                // runners whose jobs ended (and whose circuits are gone) to every newcomer.
                // In a bounded overlay connections close and open all the time (this node's and
                // others' choices): a member that is not connected is not gone, and taking it
                // out would make its return news, which sets Kademlia looking the whole swarm up
                // again, which opens more connections to close. Kademlia drops the ones that
                // stop answering.
                let closed_here = self.overlay.closing.remove(&peer_id);
                if !state.bounded && !closed_here {
                    self.swarm.behaviour_mut().kad.remove_peer(&peer_id);
                }
                if state.bounded && dialed_here && !closed_here {
                    self.overlay.closed_by_peer(&peer_id, Instant::now());
                }
                if state.peers.remove(&peer_id).is_some_and(|p| p.verified) {
                    tracing::info!("peer {peer_id} left");
                }
                // In a bounded overlay a member that is not connected may still hold keys
                // (it is dialed to pull them); in a full mesh, it left.
                if !state.bounded {
                    for holders in state.holders.values_mut() {
                        holders.retain(|h| h.peer != peer_id);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let verified = match self.inner.state().peers.get_mut(&peer_id) {
                    Some(peer) => {
                        peer.addrs = info.listen_addrs;
                        peer.last_seen_ms = now_ms();
                        peer.is_hub = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
                        peer.verified
                    }
                    None => false,
                };
                if verified {
                    self.add_to_routing(&peer_id);
                    self.maybe_reserve(peer_id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    if self.inner.state().bounded {
                        // More members than a full mesh: a candidate neighbour, like any other.
                        self.heard_of(peer, addrs, "mDNS");
                        continue;
                    }
                    // Keep dialing (with backoff) until connected: mDNS reports a peer once per
                    // record lifetime, so a failed first dial must not be the last.
                    for addr in addrs.iter().filter(|a| is_dialable(a)) {
                        if !self
                            .keep_connected
                            .iter()
                            .any(|r| r.peer == peer && &r.addr == addr)
                        {
                            self.keep_connected.push(Redial {
                                peer,
                                addr: addr.clone(),
                                next_attempt: Instant::now() + Duration::from_secs(1),
                                backoff: Duration::from_secs(1),
                                warned: false,
                                reuse_port: false,
                                hub: false,
                            });
                        }
                    }
                    self.dial_peer(peer, addrs, "mDNS");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                self.keep_connected
                    .retain(|r| !gone.iter().any(|(p, a)| *p == r.peer && *a == r.addr));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(event)) => {
                self.on_relay_client(event)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(event)) => self.on_dcutr(event),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(event)) => self.on_autonat(event),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(event)) => {
                tracing::debug!("relay: {event:?}")
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(_),
                ..
            })) => {
                if let Some(peer) = self.inner.state().peers.get_mut(&peer) {
                    peer.last_seen_ms = now_ms();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Exchange(event)) => self.on_exchange(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let acceptance = self.on_gossip(propagation_source, message.source, &message.data);
                // Only what was accepted is forwarded; a rejection counts against the peer
                // that sent it in gossipsub's score.
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            _ => {}
        }
    }

    pub(super) fn on_exchange(&mut self, event: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match &event {
            Event::Message {
                peer,
                message: Message::Request { .. },
                ..
            } => self.exchange_began(peer),
            Event::Message { peer, .. }
            | Event::OutboundFailure { peer, .. }
            | Event::InboundFailure { peer, .. }
            | Event::ResponseSent { peer, .. } => self.exchange_ended(peer),
        }
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request,
                        channel,
                        request_id,
                    },
                ..
            } => match request {
                Request::Hello { pake } => {
                    let response = self.answer_hello(peer, &pake);
                    self.respond(channel, response);
                }
                Request::HelloConfirm { confirm, meta } => {
                    let response = self.answer_confirm(peer, &confirm, &meta);
                    self.respond(channel, response);
                }
                Request::Claim {
                    key_id,
                    ttl_ms,
                    on_behalf_of,
                } => match self.member_key(&peer, &key_id) {
                    Some(key_id) => {
                        let ttl = Duration::from_millis(ttl_ms);
                        // Passed on by a member: the one that asked first fetches.
                        let requester = on_behalf_of
                            .and_then(|p| PeerId::from_bytes(&p).ok())
                            .unwrap_or(peer);
                        let handle = Handle {
                            inner: self.inner.clone(),
                        };
                        handle.answer_claim(key_id, ttl, peer, requester, channel);
                    }
                    None => self.respond(channel, Response::Denied),
                },
                Request::Revalidate { key_id, ttl_ms } => match self.member_key(&peer, &key_id) {
                    Some(key_id) => {
                        let ttl = Duration::from_millis(ttl_ms);
                        serve_revalidation(self.inner.clone(), key_id, ttl, channel)
                    }
                    None => self.respond(channel, Response::Denied),
                },
                Request::Pull { key_id } => match self.member_key(&peer, &key_id) {
                    Some(key_id) => serve_pull(self.inner.clone(), key_id, request_id, channel),
                    None => self.respond(channel, Response::Denied),
                },
                Request::Have {
                    key_id,
                    fetched_at_ms,
                } => match self.member_key(&peer, &key_id) {
                    Some(key_id) => {
                        tracing::debug!("{peer} holds a copy of key {} now", hex::encode(key_id));
                        bump(&self.inner.counters.have_notices_received);
                        self.heard_holder(peer, key_id, fetched_at_ms);
                        self.respond(channel, Response::Noted);
                    }
                    None => self.respond(channel, Response::Denied),
                },
                Request::Members { limit } => {
                    let response = if self.inner.state().verified(&peer) {
                        self.answer_members(peer, limit)
                    } else {
                        Response::Denied
                    };
                    self.respond(channel, response);
                }
            },
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(step) = self.hellos.started.remove(&request_id) {
                    if let Some(next) = self.on_hello_answer(peer, step, response) {
                        self.send_hello_step(peer, next);
                    }
                } else if let Some((asked, why)) = self.join.take(&request_id) {
                    self.on_members_answer(asked, why, Some(response));
                } else if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                request_id,
                peer,
                error,
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                } else if let Some((asked, why)) = self.join.take(&request_id) {
                    tracing::debug!("asking {asked} for its members failed: {error}");
                    self.on_members_answer(asked, why, None);
                } else if self.hellos.started.remove(&request_id).is_some() {
                    tracing::debug!("hello to {peer} failed: {error}");
                    // The hello rode a connection closed under it (a relayed one superseded
                    // by a direct one): say it again on what is left.
                    let unverified_and_connected = self
                        .inner
                        .state()
                        .peers
                        .get(&peer)
                        .is_some_and(|p| !p.verified && !p.connections.is_empty());
                    if matches!(error, request_response::OutboundFailure::ConnectionClosed)
                        && unverified_and_connected
                    {
                        self.send_hello(peer);
                    }
                }
            }
            // A response's bytes are gone: its room in the serving budget is free again.
            Event::ResponseSent { request_id, .. } | Event::InboundFailure { request_id, .. } => {
                self.inner.serving.sent(request_id)
            }
        }
    }

    /// The key a request names, when it comes from a verified member and is well formed;
    /// anyone else is answered `Denied`.
    fn member_key(&self, peer: &PeerId, key_id: &[u8]) -> Option<KeyId> {
        if !self.inner.state().verified(peer) {
            return None;
        }
        KeyId::try_from(key_id).ok()
    }

    /// Answers a request; a peer that has gone meanwhile misses nothing it could use.
    fn respond(
        &mut self,
        channel: request_response::ResponseChannel<Response>,
        response: Response,
    ) {
        let _ = self
            .swarm
            .behaviour_mut()
            .exchange
            .send_response(channel, response);
    }

    /// Takes a gossip message from `via` (a member: see `MembersOnly`) written by `author`:
    /// accepted (and forwarded by gossipsub) only when it opens with the swarm key and is no
    /// replay; rejected when it does not open.
    pub(super) fn on_gossip(
        &mut self,
        via: PeerId,
        author: Option<PeerId>,
        data: &[u8],
    ) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let opened = self
            .inner
            .keys
            .open(GOSSIP_AAD, data)
            .and_then(|plain| serde_json::from_slice::<Stamped>(&plain).ok());
        let (Some(source), Some(Stamped { sent_at_ms, gossip })) = (author, opened) else {
            tracing::debug!(
                "rejected a gossip message from {via}: it is not sealed with the swarm secret"
            );
            return Reject;
        };
        if !self.inner.state().verified(&via) {
            // Not reached: gossipsub hears members only. Said here so that it stays true.
            return Reject;
        }
        if let Err(why) = self.replay.check(source, sent_at_ms, now_ms()) {
            tracing::info!(
                "ignored a gossip message from {source} (via {via}): {}",
                why.describe()
            );
            // Not forwarded, and not counted against `via`: it may have passed on a replay in
            // good faith.
            return Ignore;
        }
        self.take_gossip(source, gossip);
        Accept
    }

    /// Acts on a gossip message that passed every check.
    fn take_gossip(&mut self, source: PeerId, gossip: Gossip) {
        match gossip {
            Gossip::Announce {
                key_id,
                fetched_at_ms,
                ..
            } => {
                let Some(parsed) = parse_key_id(&key_id) else {
                    return;
                };
                // Logged only once it parsed: a peer's text must not reach the log unchecked.
                tracing::debug!("heard announcement of key {key_id} from {source}");
                bump(&self.inner.counters.announcements_received);
                self.heard_holder(source, parsed, fetched_at_ms);
            }
            Gossip::Release { key_id } => {
                let Some(key_id) = parse_key_id(&key_id) else {
                    return;
                };
                let mut state = self.inner.state();
                if state
                    .claims
                    .get(&key_id)
                    .is_some_and(|c| c.claimant == source)
                {
                    state.claims.remove(&key_id);
                }
                state.wake(&key_id);
            }
        }
    }

    /// Records that `source` holds a copy of the key fetched at `fetched_at_ms` (announced to
    /// the swarm, or told to this neighbour): waiters wake, a claim here is over, and a hub
    /// takes a copy of a newer entry.
    fn heard_holder(&mut self, source: PeerId, key_id: KeyId, fetched_at_ms: u64) {
        let mut state = self.inner.state();
        if state.holders.len() >= MAX_TRACKED_KEYS {
            let horizon = now_ms().saturating_sub(3_600_000);
            state
                .holders
                .retain(|_, h| h.iter().any(|h| h.fetched_at_ms > horizon));
        }
        // A peer's clock must not make its copy look newer than now.
        let fetched_at_ms = fetched_at_ms.min(now_ms());
        let holders = state.holders.entry(key_id).or_default();
        holders.retain(|h| h.peer != source);
        holders.push(Holder {
            peer: source,
            fetched_at_ms,
        });
        // The key is available now: its claim, if this node coordinates it, is over.
        state.claims.remove(&key_id);
        state.wake(&key_id);
        // A hub keeps the swarm's cache: it takes a copy of every newer entry.
        let newer = state
            .served
            .get(&key_id)
            .is_none_or(|h| h.fetched_at_ms < fetched_at_ms);
        if self.hub && newer && state.verified(&source) {
            let handle = Handle {
                inner: self.inner.clone(),
            };
            tokio::spawn(async move { handle.mirror(source, key_id).await });
        }
    }

    /// Tells the verified neighbours that this node holds a copy of the key now (pulled from
    /// `source`), but not those that hold one as new already: in a bounded overlay the entry
    /// spreads from neighbour to neighbour without a swarm-wide flood per copy.
    fn tell_neighbours(&mut self, key_id: KeyId, fetched_at_ms: u64, source: PeerId) {
        let neighbours: Vec<PeerId> = {
            let state = self.inner.state();
            let holding: HashSet<PeerId> = state
                .holders
                .get(&key_id)
                .map(|h| {
                    h.iter()
                        .filter(|h| h.fetched_at_ms >= fetched_at_ms)
                        .map(|h| h.peer)
                        .collect()
                })
                .unwrap_or_default();
            state
                .peers
                .iter()
                .filter(|(id, p)| {
                    p.verified
                        && !p.connections.is_empty()
                        && **id != source
                        && !holding.contains(*id)
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for peer in neighbours {
            bump(&self.inner.counters.have_notices_sent);
            self.exchange_began(&peer);
            // Fire and forget: the answer (`Noted`) matches no pending request and is dropped.
            self.swarm.behaviour_mut().exchange.send_request(
                &peer,
                Request::Have {
                    key_id: key_id.to_vec(),
                    fetched_at_ms,
                },
            );
        }
    }
}
