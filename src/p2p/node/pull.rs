//! Pulls: sending entries to members and receiving them, with every check on the way in.

use super::*;

/// What one pull (or one round of asks) brought.
pub(super) enum Pulled {
    /// A verified entry fresh for the requester's TTL (stored).
    Fresh(Entry, Vec<u8>),
    /// A verified entry past the requester's TTL, with its validators (not stored).
    Stale(Entry, Vec<u8>),
    /// Nothing usable.
    Nothing,
}

/// Bytes of entry bodies being sealed or sent to members at once: the default entry cap, so the
/// largest default entry is sent to one member at a time (a larger one, under a raised cap,
/// takes the whole budget), while small ones go out by the thousand. A serve holds about three
/// times its body at its peak (the framed body, its ciphertext, the CBOR frame on the wire), so
/// this bounds what serving adds to the daemon's memory to ~50 MiB (~100 MiB for an entry of
/// 32 MiB) however many members pull.
const SERVE_BUDGET: u64 = crate::config::DEFAULT_MAX_ENTRY;
/// How long a pull waits for room in the budget before it is answered `NotFound` (the member
/// then asks another holder or GitHub): half of `PULL_TIMEOUT`, leaving the other half to read,
/// seal and send. Waiting costs no memory.
const SERVE_WAIT: Duration = Duration::from_secs(5);
/// Budget units: KiB, so that the largest entry fits in a semaphore's permit count.
const UNIT: u64 = 1024;

/// The budget of bodies in flight to members, and the permits of responses still on the wire.
pub(super) struct Serving {
    budget: Arc<tokio::sync::Semaphore>,
    /// Released when libp2p reports the response sent or failed; in any case after
    /// `PULL_TIMEOUT`, by when libp2p has dropped the stream and the bytes it held.
    on_the_wire: Mutex<HashMap<request_response::InboundRequestId, (Instant, OwnedPermit)>>,
}

type OwnedPermit = tokio::sync::OwnedSemaphorePermit;

impl Default for Serving {
    fn default() -> Serving {
        Serving {
            budget: Arc::new(tokio::sync::Semaphore::new((SERVE_BUDGET / UNIT) as usize)),
            on_the_wire: Mutex::default(),
        }
    }
}

impl Serving {
    /// Room for a body of `size` bytes, waiting at most [`SERVE_WAIT`].
    async fn reserve(&self, size: u64) -> Option<OwnedPermit> {
        let units = size.div_ceil(UNIT).clamp(1, SERVE_BUDGET / UNIT) as u32;
        tokio::time::timeout(SERVE_WAIT, self.budget.clone().acquire_many_owned(units))
            .await
            .ok()?
            .ok()
    }

    /// Keeps `permit` until the response to `request_id` has left (see [`Serving::sent`]), or
    /// for `PULL_TIMEOUT` at most: libp2p may have reported the request failed (timed out,
    /// connection closed) before the permit got here, and by then the stream is gone anyway.
    fn hold(self: &Arc<Self>, request_id: request_response::InboundRequestId, permit: OwnedPermit) {
        let since = Instant::now();
        self.lock().insert(request_id, (since, permit));
        let serving = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(PULL_TIMEOUT).await;
            if let Some(serving) = serving.upgrade() {
                let mut held = serving.lock();
                if held.get(&request_id).is_some_and(|(at, _)| *at == since) {
                    held.remove(&request_id);
                }
            }
        });
    }

    fn lock(
        &self,
    ) -> MutexGuard<'_, HashMap<request_response::InboundRequestId, (Instant, OwnedPermit)>> {
        self.on_the_wire.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The response to `request_id` was written or failed: its bytes are gone.
    pub(super) fn sent(&self, request_id: request_response::InboundRequestId) {
        self.lock().remove(&request_id);
    }
}

/// Reads, seals and sends an entry to a verified peer, off the loop (disk reads, test delays).
/// Bodies in flight stay within [`SERVE_BUDGET`]: a pull that finds no room in time is answered
/// `NotFound`, and the member asks elsewhere.
pub(super) fn serve_pull(
    inner: Arc<Inner>,
    key_id: KeyId,
    request_id: request_response::InboundRequestId,
    channel: ResponseChannel<Response>,
) {
    tokio::spawn(async move {
        let (response, permit) = sealed_for(&inner, &key_id, &channel).await;
        if let Some(TestFault::SlowResponses(delay)) = inner.fault {
            tokio::time::sleep(delay).await;
        }
        if let Some(permit) = permit {
            inner.serving.hold(request_id, permit);
        }
        inner.send(Command::Respond { channel, response });
    });
}

/// The sealed entry held under `key_id` and the budget it takes, or `NotFound`.
async fn sealed_for(
    inner: &Arc<Inner>,
    key_id: &KeyId,
    channel: &ResponseChannel<Response>,
) -> (Response, Option<OwnedPermit>) {
    let local_id = inner.state().served.get(key_id).map(|h| h.local_id.clone());
    let Some(local_id) = local_id else {
        return (Response::NotFound, None);
    };
    let cache = inner.cache.clone();
    let id = local_id.clone();
    let Ok(Some(record)) = tokio::task::spawn_blocking(move || cache.record_by_id(&id)).await
    else {
        return (Response::NotFound, None);
    };
    if record.size > MAX_SERVED_BODY {
        tracing::debug!(
            "not serving key {}: its {} bytes exceed what the exchange protocol carries",
            hex::encode(key_id),
            record.size
        );
        return (Response::NotFound, None);
    }
    let Some(permit) = inner.serving.reserve(record.size).await else {
        tracing::debug!(
            "busy: a pull of {} bytes found no room among the bodies being sent; the member asks elsewhere",
            record.size
        );
        return (Response::NotFound, None);
    };
    if !channel.is_open() {
        // The request timed out while it waited: nobody would read the entry.
        return (Response::NotFound, None);
    }
    let (cache, for_seal) = (inner.cache.clone(), inner.clone());
    let key = *key_id;
    let sealed = tokio::task::spawn_blocking(move || {
        let (_, mut plain) = cache.get_framed(&local_id, frame_header)?;
        if for_seal.fault == Some(TestFault::TamperBodies) {
            let header = 4 + u32::from_be_bytes([plain[0], plain[1], plain[2], plain[3]]) as usize;
            if plain.len() > header {
                let middle = header + (plain.len() - header) / 2;
                plain[middle] ^= 0x01;
            }
        }
        // The framing of `seal_entry`, sealed from the one buffer the body was read into.
        Some(for_seal.keys.seal(&key, &plain))
    })
    .await;
    match sealed {
        Ok(Some(sealed)) => {
            bump(&inner.counters.entries_served);
            (Response::Entry { sealed }, Some(permit))
        }
        _ => (Response::NotFound, None),
    }
}

/// The largest body served: what fits in one response of the exchange protocol, beside the
/// entry's record, the length, the nonce and the tag.
const MAX_SERVED_BODY: u64 = MAX_RESPONSE_BYTES - 64 * 1024;

/// `u32 BE length ‖ entry JSON`, with room for the body after it (see [`seal_entry`]).
fn frame_header(entry: &Entry) -> Vec<u8> {
    let json = serde_json::to_vec(entry).expect("an entry serializes");
    let mut plain = Vec::with_capacity(4 + json.len() + entry.size as usize + 16);
    plain.extend_from_slice(&(json.len() as u32).to_be_bytes());
    plain.extend_from_slice(&json);
    plain
}

impl Handle {
    /// Pulls from holders in order (at most three new ones) until one sends a valid entry.
    pub(super) async fn pull_any(
        &self,
        holders: &[PeerId],
        tried: &mut HashSet<PeerId>,
        key_id: &KeyId,
        key: &CacheKey,
        ttl: Duration,
    ) -> Option<(Entry, Vec<u8>)> {
        let untried: Vec<PeerId> = holders
            .iter()
            .filter(|p| !tried.contains(*p))
            .copied()
            .collect();
        for peer in untried.into_iter().take(MAX_HOLDERS_TRIED) {
            tried.insert(peer);
            if let Some(hit) = self.pull(peer, key_id, key, ttl, PULL_TIMEOUT).await {
                return Some(hit);
            }
        }
        None
    }

    /// Asks several peers at once; the first fresh, verified entry wins. Without one, the
    /// newest stale copy any of them sent (verified, not stored), for revalidation.
    pub(super) async fn ask_all(
        &self,
        peers: &[PeerId],
        key_id: &KeyId,
        key: &CacheKey,
        ttl: Duration,
    ) -> Pulled {
        let mut asks: futures::stream::FuturesUnordered<_> = peers
            .iter()
            .map(|peer| self.pull_copy(*peer, key_id, key, ttl, ASK_TIMEOUT))
            .collect();
        let mut newest_stale: Option<(Entry, Vec<u8>)> = None;
        while let Some(result) = asks.next().await {
            match result {
                Pulled::Fresh(entry, body) => return Pulled::Fresh(entry, body),
                Pulled::Stale(entry, body) => {
                    let newer = newest_stale
                        .as_ref()
                        .is_none_or(|(e, _)| e.fetched_at_ms < entry.fetched_at_ms);
                    if newer {
                        newest_stale = Some((entry, body));
                    }
                }
                Pulled::Nothing => {}
            }
        }
        match newest_stale {
            Some((entry, body)) => Pulled::Stale(entry, body),
            None => Pulled::Nothing,
        }
    }

    /// Pulls one entry from one peer, verified (seal, key, digest, size, time); a fresh one is
    /// stored and served from here on.
    pub(super) async fn pull(
        &self,
        peer: PeerId,
        key_id: &KeyId,
        key: &CacheKey,
        ttl: Duration,
        limit: Duration,
    ) -> Option<(Entry, Vec<u8>)> {
        match self.pull_copy(peer, key_id, key, ttl, limit).await {
            Pulled::Fresh(entry, body) => Some((entry, body)),
            Pulled::Stale(..) => {
                tracing::debug!("{peer} sent an entry that is not fresh for our TTL");
                None
            }
            Pulled::Nothing => None,
        }
    }

    /// Pulls one entry from one peer and verifies it: seal, key, digest, size, time. A fresh
    /// one is stored; a stale one is handed back unstored (a stale local copy under this
    /// node's own token may be worth more).
    pub(super) async fn pull_copy(
        &self,
        peer: PeerId,
        key_id: &KeyId,
        key: &CacheKey,
        ttl: Duration,
        limit: Duration,
    ) -> Pulled {
        let request = Request::Pull {
            key_id: key_id.to_vec(),
        };
        let (verified, bounded) = {
            let state = self.inner.state();
            (state.verified(&peer), state.bounded)
        };
        if verified || !bounded {
            return self.receive(peer, request, key_id, key, ttl, limit).await;
        }
        // A holder heard of in a bounded overlay: connected for this pull (the overlay closes
        // the connection again once idle).
        if !self.reach(peer).await {
            tracing::debug!("could not reach {peer} to pull a key it holds");
            // Most likely gone (its job ended): its announcements would cost every later
            // lookup the same wait.
            for holders in self.inner.state().holders.values_mut() {
                holders.retain(|h| h.peer != peer);
            }
            return Pulled::Nothing;
        }
        match self
            .receive(peer, request.clone(), key_id, key, ttl, limit)
            .await
        {
            // It may verify this node a moment after this node verified it.
            Pulled::Nothing => {
                tokio::time::sleep(Duration::from_millis(150)).await;
                self.receive(peer, request, key_id, key, ttl, limit).await
            }
            pulled => pulled,
        }
    }

    /// Connects to a member this node is not connected to (its addresses heard of, or looked up
    /// in Kademlia) and waits until both hellos passed; `false` after [`REACH_TIMEOUT`].
    pub(super) async fn reach(&self, peer: PeerId) -> bool {
        if peer == self.inner.peer_id || self.inner.state().banned.contains(&peer) {
            return false;
        }
        self.inner.send(Command::Reach(peer));
        let deadline = tokio::time::Instant::now() + REACH_TIMEOUT;
        loop {
            // Registered before the check, so that a verification between the two still wakes it.
            let verified = self.inner.member_verified.notified();
            tokio::pin!(verified);
            verified.as_mut().enable();
            if self.inner.state().verified(&peer) {
                return true;
            }
            if tokio::time::timeout_at(deadline, verified).await.is_err() {
                return false;
            }
        }
    }

    /// Sends `request` (a pull, or a revalidation) and verifies the entry it brings back.
    pub(super) async fn receive(
        &self,
        peer: PeerId,
        request: Request,
        key_id: &KeyId,
        key: &CacheKey,
        ttl: Duration,
        limit: Duration,
    ) -> Pulled {
        let response = match self.request(peer, request, limit).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!("pull from {peer} failed: {error}");
                return Pulled::Nothing;
            }
        };
        let Response::Entry { sealed } = response else {
            return Pulled::Nothing;
        };
        let opened = open_entry(&self.inner.keys, key_id, &sealed);
        // The sealed copy goes before the body is checked and stored: one copy at a time.
        drop(sealed);
        let (entry, body) = match opened {
            Ok(opened) => opened,
            Err(why) => return self.reject(peer, why),
        };
        if entry.key != key.canonical() {
            return self.reject(peer, "the entry is for another key".into());
        }
        if body.len() as u64 != entry.size || hex::encode(Sha256::digest(&body)) != entry.digest {
            return self.reject(peer, "the body does not match its SHA-256".into());
        }
        let now = now_ms();
        if entry.fetched_at_ms > now + 60_000 {
            return self.reject(peer, "the entry claims to be fetched in the future".into());
        }
        if !entry.is_fresh(ttl, now) {
            return Pulled::Stale(entry, body);
        }
        let Some(body) = self.keep(peer, key_id, key, &entry, body).await else {
            return Pulled::Nothing;
        };
        bump(&self.inner.counters.entries_received);
        Pulled::Fresh(entry, body)
    }

    /// Stores an entry received from `peer` and serves it from here on; the body moves to the
    /// writer and back (a large entry is never held twice). `None` only when the writer
    /// panicked and took the body with it.
    pub(super) async fn keep(
        &self,
        peer: PeerId,
        key_id: &KeyId,
        key: &CacheKey,
        entry: &Entry,
        body: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let cache = self.inner.cache.clone();
        let (local_id, stored_entry) = (key.id().to_string(), entry.clone());
        let stored = tokio::task::spawn_blocking(move || {
            let outcome = cache.put_entry(&local_id, &stored_entry, &body);
            (outcome, body)
        })
        .await;
        let body = match stored {
            Ok((Ok(()), body)) => Some(body),
            Ok((Err(e), body)) => {
                tracing::warn!("could not store an entry received from {peer}: {e:#}");
                Some(body)
            }
            Err(e) => {
                tracing::warn!("could not store an entry received from {peer}: {e}");
                None
            }
        };
        let held = Held {
            local_id: key.id().to_string(),
            fetched_at_ms: entry.fetched_at_ms,
        };
        let bounded = {
            let mut state = self.inner.state();
            state.served.insert(*key_id, held);
            state.bounded
        };
        // In a bounded overlay most members are not connected to the first holder: each one that
        // has a copy tells its neighbours, and the entry spreads from neighbour to neighbour.
        // Told, not announced: a flood per copy costs every member n messages per key.
        if bounded && body.is_some() {
            self.inner.send(Command::TellNeighbours {
                key_id: *key_id,
                fetched_at_ms: entry.fetched_at_ms,
                source: peer,
            });
        }
        body
    }

    /// Counts a bad entry; a peer that keeps sending them is disconnected.
    pub(super) fn reject(&self, peer: PeerId, why: String) -> Pulled {
        bump(&self.inner.counters.entries_rejected);
        tracing::warn!("rejected an entry from peer {peer}: {why}");
        let failures = {
            let mut state = self.inner.state();
            let p = state.peers.entry(peer).or_default();
            p.failures += 1;
            p.failures
        };
        if failures >= MAX_FAILURES {
            self.inner.send(Command::Punish(peer));
        }
        Pulled::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_body_opens_as_a_sealed_entry() {
        let keys = SwarmKeys::derive(&Secret::new("a-secret-long-enough-for-the-test-0123"), "s");
        let key_id = keys.key_id("GET https://api.github.com/x");
        let body = b"the body".to_vec();
        let entry = Entry {
            key: "GET https://api.github.com/x".into(),
            url: "https://api.github.com/x".into(),
            status: 200,
            content_type: None,
            link: None,
            last_modified: None,
            etag: None,
            etag_token: None,
            digest: hex::encode(Sha256::digest(&body)),
            size: body.len() as u64,
            fetched_at_ms: 1,
            ttl_secs: 60,
        };
        let mut plain = frame_header(&entry);
        plain.extend_from_slice(&body);
        let (opened, opened_body) =
            open_entry(&keys, &key_id, &keys.seal(&key_id, &plain)).unwrap();
        assert_eq!((opened, opened_body), (entry, body));
    }
}
