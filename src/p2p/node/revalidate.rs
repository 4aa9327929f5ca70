//! Token-affine revalidation: GitHub's ETags are bound to the token that fetched them, so only
//! the member holding that token can revalidate an ETag-only entry (a collection) for free. A
//! member asks it to; it revalidates with its own token (never the requester's, which it never
//! sees), renews, announces, and sends the renewed or changed entry back.

use futures::future::BoxFuture;

use super::*;

/// The daemon's way to revalidate an entry upstream with this node's own token: the renewed (a
/// 304) or replaced (a 200) entry and body, or `None` when GitHub did neither (the token is no
/// longer accepted, a rate limit, an error).
pub type Revalidator = Arc<
    dyn Fn(Entry, Vec<u8>, Duration) -> BoxFuture<'static, Option<(Entry, Vec<u8>)>> + Send + Sync,
>;

/// How long a member may take to revalidate for another: one upstream call.
const REVALIDATE_TIMEOUT: Duration = Duration::from_secs(15);

/// Answers a member's `Revalidate`, off the loop: only an entry whose ETag this node's own token
/// fetched is revalidated (any other would cost a full GET of this node's quota).
pub(super) fn serve_revalidation(
    inner: Arc<Inner>,
    key_id: KeyId,
    ttl: Duration,
    channel: ResponseChannel<Response>,
) {
    tokio::spawn(async move {
        let response = revalidated(&inner, &key_id, ttl)
            .await
            .map(|(entry, body)| Response::Entry {
                sealed: seal_entry(&inner.keys, &key_id, &entry, &body),
            })
            .unwrap_or(Response::NotFound);
        inner.send(Command::Respond { channel, response });
    });
}

async fn revalidated(
    inner: &Arc<Inner>,
    key_id: &KeyId,
    ttl: Duration,
) -> Option<(Entry, Vec<u8>)> {
    let own_tag = inner.token_tag.clone()?;
    let revalidator = inner
        .revalidator
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()?;
    let local_id = inner.state().served.get(key_id)?.local_id.clone();
    let cache = inner.cache.clone();
    let (entry, body) =
        match tokio::task::spawn_blocking(move || cache.get_by_id(&local_id, None)).await {
            Ok(Lookup::Hit { entry, body }) => (entry, Vec::from(body)),
            _ => return None,
        };
    // Renewed within the requester's TTL (or the last second: a member may not make this node
    // call GitHub for one key more often) by another member's request meanwhile.
    if entry.is_fresh(ttl.max(Duration::from_secs(1)), now_ms()) {
        return Some((entry, body));
    }
    if entry.etag.is_none() || entry.etag_token.as_deref() != Some(own_tag.as_str()) {
        return None;
    }
    let before = entry.digest.clone();
    let (entry, body) = revalidator(entry, body, ttl).await?;
    bump(&inner.counters.revalidations_for_others);
    if entry.digest == before {
        bump(&inner.counters.revalidations_unchanged);
    }
    let gossip = {
        let mut state = inner.state();
        let local_id = state.served.get(key_id).map(|h| h.local_id.clone())?;
        state.served.insert(
            *key_id,
            Held {
                local_id,
                fetched_at_ms: entry.fetched_at_ms,
            },
        );
        Gossip::announce(key_id, &entry)
    };
    inner.send(Command::Publish(gossip));
    Some((entry, body))
}

impl Handle {
    /// Sets how this node revalidates entries for members that ask (the daemon's resolver, with
    /// the daemon's own token). Without one, such requests are answered `NotFound`.
    pub fn set_revalidator(&self, revalidator: Revalidator) {
        *self
            .inner
            .revalidator
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(revalidator);
    }

    /// Asks the live member whose own token fetched the entry's ETag (`owner_tag`), else a hub
    /// with a token of its own, to revalidate `key`; its renewed or changed entry, fresh for `ttl` (stored here), or `None`
    /// when no such member is live or it could not (then the caller fetches with its own token).
    pub async fn revalidate_at_owner(
        &self,
        key: &CacheKey,
        owner_tag: &str,
        ttl: Duration,
    ) -> Option<(Entry, Vec<u8>)> {
        let key_id = self.inner.keys.key_id(key.canonical());
        let owners: Vec<PeerId> = {
            let state = self.inner.state();
            let mut owners: Vec<PeerId> = state
                .peers
                .iter()
                .filter(|(_, p)| p.verified && p.meta.token_tag.as_deref() == Some(owner_tag))
                .map(|(id, _)| *id)
                .collect();
            owners.sort_by_key(|p| claim_rank(&key_id, p));
            // Then hubs with a token of their own: a hub that kept the entry fetched it once
            // with its own token, so it can revalidate it for free when the owner is gone.
            let hubs = state.peers.iter().filter(|(id, p)| {
                p.verified && p.is_hub && p.meta.token_tag.is_some() && !owners.contains(*id)
            });
            let hubs: Vec<PeerId> = hubs.map(|(id, _)| *id).collect();
            owners.extend(hubs);
            owners
        };
        for owner in owners.into_iter().take(MAX_HOLDERS_TRIED) {
            bump(&self.inner.counters.revalidations_asked);
            let request = Request::Revalidate {
                key_id: key_id.to_vec(),
                ttl_ms: ttl.as_millis() as u64,
            };
            match self
                .receive(owner, request, &key_id, key, ttl, REVALIDATE_TIMEOUT)
                .await
            {
                Pulled::Fresh(entry, body) => return Some((entry, body)),
                Pulled::Stale(..) | Pulled::Nothing => {
                    tracing::debug!("{owner} did not revalidate a key with its own token");
                }
            }
        }
        None
    }
}
