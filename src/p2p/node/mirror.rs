//! The hub keeps the swarm's cache: it takes a copy of every entry announced in the swarm
//! (bounded by its cache size; the cache evicts the least recently used), so entries outlive
//! the jobs that fetched them. Given a token of its own, it fetches each ETag-only entry of
//! another token once with it, in the background, so that the revalidations it does for
//! members later are free 304s.

use super::*;

impl Handle {
    /// Pulls the entry `peer` announced under `key_id` and keeps it. The hub does not know the
    /// key behind an id: it reads it from the entry and checks that it hashes to the id under
    /// the swarm's keys.
    pub(super) async fn mirror(&self, peer: PeerId, key_id: KeyId) {
        let Ok(_slot) = self.inner.mirrors.acquire().await else {
            return;
        };
        let already = self.inner.state().served.contains_key(&key_id);
        if already && self.is_current(&key_id, peer) {
            return;
        }
        let request = Request::Pull {
            key_id: key_id.to_vec(),
        };
        let Ok(Response::Entry { sealed }) = self.request(peer, request, PULL_TIMEOUT).await else {
            return;
        };
        let (entry, body) = match open_entry(&self.inner.keys, &key_id, &sealed) {
            Ok(opened) => opened,
            Err(why) => {
                self.reject(peer, why);
                return;
            }
        };
        if self.inner.keys.key_id(&entry.key) != key_id {
            self.reject(peer, "the entry is for another key".into());
            return;
        }
        let key = CacheKey::from_canonical(&entry.key);
        if key.is_per_token() {
            self.reject(peer, "a per-token entry was announced to the swarm".into());
            return;
        }
        if body.len() as u64 != entry.size || hex::encode(Sha256::digest(&body)) != entry.digest {
            self.reject(peer, "the body does not match its SHA-256".into());
            return;
        }
        if entry.fetched_at_ms > now_ms() + 60_000 {
            self.reject(peer, "the entry claims to be fetched in the future".into());
            return;
        }
        let newer = self
            .inner
            .state()
            .served
            .get(&key_id)
            .is_none_or(|h| h.fetched_at_ms < entry.fetched_at_ms);
        if !newer {
            return;
        }
        // A renewal of a body the hub already holds under its own ETag: renew its own copy
        // rather than take the other token's ETag (and pay again to get its own back).
        if let Some(own_tag) = self.inner.token_tag.clone() {
            let cache = self.inner.cache.clone();
            let (local, digest) = (key.clone(), entry.digest.clone());
            let renewed = tokio::task::spawn_blocking(move || match cache.get(&local) {
                Lookup::Hit { entry: mine, .. }
                    if mine.digest == digest
                        && mine.etag_token.as_deref() == Some(own_tag.as_str()) =>
                {
                    cache.renew(&local, &mine, None, None).ok()
                }
                _ => None,
            })
            .await
            .ok()
            .flatten();
            if let Some(renewed) = renewed {
                if let Some(held) = self.inner.state().served.get_mut(&key_id) {
                    held.fetched_at_ms = renewed.fetched_at_ms;
                }
                bump(&self.inner.counters.entries_mirrored);
                return;
            }
        }
        let Some(body) = self.keep(peer, &key_id, &key, &entry, body).await else {
            return;
        };
        bump(&self.inner.counters.entries_mirrored);
        self.adopt(key_id, entry, body).await;
    }

    /// Whether this node's copy is as new as the newest `peer` announced (announcements queue
    /// up while the pulls are busy).
    fn is_current(&self, key_id: &KeyId, peer: PeerId) -> bool {
        let state = self.inner.state();
        let announced = state
            .holders
            .get(key_id)
            .and_then(|h| h.iter().find(|h| h.peer == peer))
            .map(|h| h.fetched_at_ms);
        let held = state.served.get(key_id).map(|h| h.fetched_at_ms);
        matches!((announced, held), (Some(a), Some(h)) if h >= a)
    }

    /// For an entry whose ETag another token fetched and that has no `Last-Modified`: one full
    /// GET with the hub's own token (its quota; one at a time, and not while its rate limit
    /// blocks calls), so that its own ETag serves the swarm's revalidations from then on.
    async fn adopt(&self, key_id: KeyId, entry: Entry, body: Vec<u8>) {
        let Some(own_tag) = self.inner.token_tag.clone() else {
            return;
        };
        let etag_only = entry.etag.is_some() && entry.last_modified.is_none();
        if !etag_only || entry.etag_token.as_deref() == Some(own_tag.as_str()) {
            return;
        }
        let Some(revalidator) = self
            .inner
            .revalidator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return;
        };
        let _one_at_a_time = self.inner.adoptions.lock().await;
        let ttl = Duration::from_secs(entry.ttl_secs.max(1));
        let Some((adopted, _)) = revalidator(entry, body, ttl).await else {
            return;
        };
        if adopted.etag_token.as_deref() != Some(own_tag.as_str()) {
            return;
        }
        bump(&self.inner.counters.own_token_fetches);
        let gossip = {
            let mut state = self.inner.state();
            let Some(held) = state.served.get_mut(&key_id) else {
                return;
            };
            held.fetched_at_ms = adopted.fetched_at_ms;
            Gossip::announce(&key_id, &adopted)
        };
        self.inner.send(Command::Publish(gossip));
    }
}
