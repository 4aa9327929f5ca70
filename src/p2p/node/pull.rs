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

/// Reads, seals and sends an entry to a verified peer, off the loop (disk reads, test delays).
pub(super) fn serve_pull(inner: Arc<Inner>, key_id: KeyId, channel: ResponseChannel<Response>) {
    tokio::spawn(async move {
        let local_id = inner
            .state()
            .served
            .get(&key_id)
            .map(|h| h.local_id.clone());
        let response = match local_id {
            None => Response::NotFound,
            Some(local_id) => {
                let cache = inner.cache.clone();
                match tokio::task::spawn_blocking(move || cache.get_by_id(&local_id, None)).await {
                    Ok(Lookup::Hit { entry, mut body }) => {
                        if inner.fault == Some(TestFault::TamperBodies) && !body.is_empty() {
                            let middle = body.len() / 2;
                            body[middle] ^= 0x01;
                        }
                        bump(&inner.counters.entries_served);
                        Response::Entry {
                            sealed: seal_entry(&inner.keys, &key_id, &entry, &body),
                        }
                    }
                    _ => Response::NotFound,
                }
            }
        };
        if let Some(TestFault::SlowResponses(delay)) = inner.fault {
            tokio::time::sleep(delay).await;
        }
        inner.send(Command::Respond { channel, response });
    });
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
        self.receive(peer, request, key_id, key, ttl, limit).await
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
        let (entry, body) = match open_entry(&self.inner.keys, key_id, &sealed) {
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
        self.keep(peer, key_id, key, &entry, &body).await;
        bump(&self.inner.counters.entries_received);
        Pulled::Fresh(entry, body)
    }

    /// Stores an entry received from `peer` and serves it from here on.
    pub(super) async fn keep(
        &self,
        peer: PeerId,
        key_id: &KeyId,
        key: &CacheKey,
        entry: &Entry,
        body: &[u8],
    ) {
        let cache = self.inner.cache.clone();
        let (local_id, stored_entry, stored_body) =
            (key.id().to_string(), entry.clone(), body.to_vec());
        match tokio::task::spawn_blocking(move || {
            cache.put_entry(&local_id, &stored_entry, &stored_body)
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("could not store an entry received from {peer}: {e:#}"),
            Err(e) => tracing::warn!("could not store an entry received from {peer}: {e}"),
        }
        let held = Held {
            local_id: key.id().to_string(),
            fetched_at_ms: entry.fetched_at_ms,
        };
        self.inner.state().served.insert(*key_id, held);
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
