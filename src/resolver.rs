//! Resolving one GET through the tiers: the local cache, the swarm, then GitHub.
//!
//! ```text
//! fresh local entry ──────────────────────────────► local
//! miss or expired ─► take the key's fetch stripe ─► (another process filled it?) local
//!                  ─► a peer has it fresh, or the swarm's claimant fetched it ─► peer
//!                  ─► rate-limited right now? ────► stale entry, or "unreachable"
//!                  ─► GET upstream (conditional when an entry exists)
//!                        304 ─► renew ────────────► revalidated
//!                        2xx ─► store ────────────► upstream
//!                        5xx, 403/429 limit, network error ─► stale entry, or the error
//!                        other status ────────────► the error, not stored
//! ```
//!
//! Freshness is always judged by the requester's TTL, so a stale entry is never served as fresh.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use url::Url;

use crate::cache::{Cache, CacheKey, Entry, Lookup, ResponseMeta, now_ms, token_tag};
use crate::github::ratelimit::{RateLimits, Verdict};
use crate::github::{ApiRequest, ApiResponse, GitHub};
use crate::p2p;
use crate::secret::Secret;

/// Where an answer came from; sent as `x-peercache-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A fresh entry of the local cache.
    Local,
    /// A fresh entry received from a peer.
    Peer,
    /// A 304 from GitHub renewed the local entry.
    Revalidated,
    /// A full answer from GitHub.
    Upstream,
    /// An expired entry, served because GitHub could not be used.
    Stale,
}

impl Source {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Peer => "peer",
            Source::Revalidated => "revalidated",
            Source::Upstream => "upstream",
            Source::Stale => "stale",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request to resolve.
#[derive(Debug, Clone)]
pub struct Request {
    /// The URL on the API host.
    pub url: Url,
    /// `Accept` (part of the key).
    pub accept: String,
    /// `X-GitHub-Api-Version` (part of the key).
    pub api_version: String,
    /// The token to use upstream (never part of the key).
    pub token: Option<Secret>,
    /// Other headers to send upstream.
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// The requester's freshness TTL.
    pub ttl: Duration,
}

impl Request {
    /// The cache key of this request.
    pub fn key(&self) -> CacheKey {
        CacheKey::new(&self.url, &self.accept, &self.api_version)
    }
}

/// An answer: status, headers to show, body, and where it came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where it came from.
    pub source: Source,
    /// HTTP status.
    pub status: u16,
    /// Headers to show with `-i` and to send from the local API (without `x-peercache-source`).
    pub headers: Vec<(String, String)>,
    /// The body, byte-identical to what GitHub sent.
    pub body: Vec<u8>,
    /// The cache entry behind a 2xx answer.
    pub entry: Option<Entry>,
}

impl Resolved {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `Link` header, for pagination.
    pub fn link(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("link"))
            .map(|(_, v)| v.as_str())
    }

    fn from_entry(source: Source, entry: Entry, body: Vec<u8>) -> Resolved {
        let mut headers = Vec::new();
        let fields = [
            ("content-type", &entry.content_type),
            ("etag", &entry.etag),
            ("last-modified", &entry.last_modified),
            ("link", &entry.link),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                headers.push((name.to_string(), value.clone()));
            }
        }
        Resolved {
            source,
            status: entry.status,
            headers,
            body,
            entry: Some(entry),
        }
    }

    fn from_response(response: ApiResponse, entry: Option<Entry>) -> Resolved {
        let headers = response
            .headers
            .iter()
            .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
            })
            .collect();
        Resolved {
            source: Source::Upstream,
            status: response.status,
            headers,
            body: response.body,
            entry,
        }
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "set-cookie",
];

/// Why a request could not be answered at all.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// GitHub could not be reached or may not be called yet, and nothing is cached.
    #[error("{0}")]
    Unreachable(String),
    /// GitHub's rate limit for the request's token forbids calls until `until_ms`, and nothing
    /// is cached (the local API answers it with GitHub's own 403/429 and `retry-after`).
    #[error("{reason}")]
    RateLimited {
        /// No upstream call before this time (ms since the epoch).
        until_ms: u64,
        /// Why, and until when, for people.
        reason: String,
    },
    /// A local failure (the cache dir, the runtime).
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// Request figures since start: every request counted once, by how it was answered.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    local_hits: AtomicU64,
    peer_hits: AtomicU64,
    revalidated: AtomicU64,
    stale_served: AtomicU64,
    upstream_calls: AtomicU64,
    requests_with_upstream_call: AtomicU64,
}

/// A copy of the request figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CountersSnapshot {
    /// Requests resolved (errors included).
    pub requests: u64,
    /// Answered from a fresh local entry.
    pub local_hits: u64,
    /// Answered from an entry received from a peer.
    pub peer_hits: u64,
    /// Answered after a 304 renewed the local entry.
    pub revalidated: u64,
    /// Answered with an expired entry because GitHub could not be used.
    pub stale_served: u64,
    /// HTTP requests sent to GitHub.
    pub upstream_calls: u64,
    /// Requests that needed at least one call to GitHub.
    pub requests_with_upstream_call: u64,
    /// Requests not answered from the local cache or a peer.
    pub misses: u64,
}

/// Resolves requests against one cache dir and one API base (and, in the daemon, the swarm).
#[derive(Clone)]
pub struct Resolver {
    cache: Cache,
    github: GitHub,
    api_base: String,
    peers: Option<p2p::Handle>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("api_base", &self.api_base)
            .field("swarm", &self.peers.is_some())
            .finish()
    }
}

impl Resolver {
    /// A resolver over this cache and API base.
    pub fn new(cache: Cache, github: GitHub, api_base: &Url) -> Resolver {
        Resolver {
            cache,
            github,
            api_base: api_base.as_str().trim_end_matches('/').to_string(),
            peers: None,
            counters: Arc::default(),
        }
    }

    /// Adds the swarm as a tier between the local cache and GitHub.
    pub fn with_peers(mut self, peers: p2p::Handle) -> Resolver {
        self.peers = Some(peers);
        self
    }

    /// The swarm, when this resolver uses one.
    pub fn peers(&self) -> Option<&p2p::Handle> {
        self.peers.as_ref()
    }

    /// The request figures since start.
    pub fn counters(&self) -> CountersSnapshot {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests = get(&c.requests);
        let (local_hits, peer_hits) = (get(&c.local_hits), get(&c.peer_hits));
        CountersSnapshot {
            requests,
            local_hits,
            peer_hits,
            revalidated: get(&c.revalidated),
            stale_served: get(&c.stale_served),
            upstream_calls: get(&c.upstream_calls),
            requests_with_upstream_call: get(&c.requests_with_upstream_call),
            misses: requests.saturating_sub(local_hits + peer_hits),
        }
    }

    fn limits(&self, token: Option<&Secret>) -> RateLimits {
        RateLimits::new(self.cache.dir(), &self.api_base, token.map(Secret::expose))
    }

    /// Answers a request from the freshest tier that can.
    pub async fn resolve(&self, request: &Request) -> Result<Resolved, ResolveError> {
        let calls_before = self.counters.upstream_calls.load(Ordering::Relaxed);
        let result = self.resolve_uncounted(request).await;
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        if c.upstream_calls.load(Ordering::Relaxed) != calls_before {
            c.requests_with_upstream_call
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(resolved) = &result {
            let counter = match resolved.source {
                Source::Local => Some(&c.local_hits),
                Source::Peer => Some(&c.peer_hits),
                Source::Revalidated => Some(&c.revalidated),
                Source::Stale => Some(&c.stale_served),
                Source::Upstream => None,
            };
            if let Some(counter) = counter {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn resolve_uncounted(&self, request: &Request) -> Result<Resolved, ResolveError> {
        let key = request.key();

        // The daemon's hot path: an entry it read before, unchanged on disk, still fresh.
        if let Some(Lookup::Hit { entry, body }) = self.cache.get_remembered(&key)
            && entry.is_fresh(request.ttl, now_ms())
        {
            return Ok(Resolved::from_entry(Source::Local, entry, body));
        }
        if let Lookup::Hit { entry, body } = self.lookup(&key).await?
            && entry.is_fresh(request.ttl, now_ms())
        {
            return Ok(Resolved::from_entry(Source::Local, entry, body));
        }

        // One process at a time fetches a key: the others wait, then find it in the cache.
        let cache = self.cache.clone();
        let stripe_key = key.clone();
        let _stripe = tokio::task::spawn_blocking(move || cache.lock_key(&stripe_key))
            .await
            .map_err(anyhow::Error::from)??;
        let cached = match self.lookup(&key).await? {
            Lookup::Hit { entry, body } if entry.is_fresh(request.ttl, now_ms()) => {
                return Ok(Resolved::from_entry(Source::Local, entry, body));
            }
            Lookup::Hit { entry, body } => Some((entry, body)),
            Lookup::Miss | Lookup::Discarded { .. } => None,
        };
        let Some(peers) = &self.peers else {
            return self.upstream(request, &key, cached).await;
        };
        if let Some((entry, body)) = peers.obtain(&key, request.ttl).await {
            return Ok(Resolved::from_entry(Source::Peer, entry, body));
        }
        let result = self.upstream(request, &key, cached).await;
        // Tell the swarm: announce what is now fresh here, or release the claim.
        let fresh = match &result {
            Ok(r) if matches!(r.source, Source::Upstream | Source::Revalidated) => r.entry.as_ref(),
            _ => None,
        };
        peers.finished(&key, fresh);
        result
    }

    /// After a successful write to `request.url`: every entry of that path and of its
    /// collection (the path without its last segment), under any query, is marked expired, so
    /// the next read revalidates upstream instead of serving what the write changed. Entries
    /// are found by their URL (not by recomputing keys), so it holds however keys are made.
    pub async fn invalidate(&self, request: &Request) {
        let path = request.url.path().trim_end_matches('/').to_string();
        let collection = path.rsplit_once('/').map(|(parent, _)| parent.to_string());
        let origin = request.url.origin();
        let cache = self.cache.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut expired = 0usize;
            for (id, entry) in cache.entries() {
                let Ok(url) = Url::parse(&entry.url) else {
                    continue;
                };
                let entry_path = url.path().trim_end_matches('/');
                let hit = entry_path == path || collection.as_deref() == Some(entry_path);
                if !hit || url.origin() != origin || entry.fetched_at_ms == 0 {
                    continue;
                }
                if let Lookup::Hit { mut entry, body } = cache.get_by_id(&id, None) {
                    entry.fetched_at_ms = 0;
                    if cache.put_entry(&id, &entry, &body).is_ok() {
                        expired += 1;
                    }
                }
            }
            expired
        })
        .await;
        if let Ok(expired) = outcome {
            tracing::debug!(
                "a write to {} expired {expired} cache entries",
                request.url.path()
            );
        }
    }

    async fn lookup(&self, key: &CacheKey) -> Result<Lookup, ResolveError> {
        let cache = self.cache.clone();
        let key = key.clone();
        Ok(tokio::task::spawn_blocking(move || cache.get(&key))
            .await
            .map_err(anyhow::Error::from)?)
    }

    async fn upstream(
        &self,
        request: &Request,
        key: &CacheKey,
        cached: Option<(Entry, Vec<u8>)>,
    ) -> Result<Resolved, ResolveError> {
        let limits = self.limits(request.token.as_ref());
        if let Some((until_ms, reason)) = limits.blocked() {
            let why = format!(
                "{reason}; no call to GitHub before {}",
                format_time(until_ms)
            );
            return stale_or(cached, why.clone(), || {
                Err(ResolveError::RateLimited {
                    until_ms,
                    reason: format!("{why}, and nothing is cached for {}", request.url),
                })
            });
        }

        let tag = token_tag(request.token.as_ref().map(Secret::expose));
        let (if_modified_since, if_none_match) = match &cached {
            Some((entry, _)) => (
                entry.last_modified.clone(),
                entry
                    .etag
                    .clone()
                    .filter(|_| entry.etag_token.as_deref() == Some(tag.as_str())),
            ),
            None => (None, None),
        };
        let api_request = ApiRequest {
            url: request.url.clone(),
            accept: request.accept.clone(),
            api_version: request.api_version.clone(),
            token: request.token.clone(),
            extra_headers: request.extra_headers.clone(),
            if_modified_since,
            if_none_match,
        };

        self.counters.upstream_calls.fetch_add(1, Ordering::Relaxed);
        let response = match self.github.get(&api_request).await {
            Ok(response) => response,
            Err(error) => {
                let why = format!("GitHub could not be reached ({error})");
                return stale_or(cached, why.clone(), || {
                    Err(ResolveError::Unreachable(format!(
                        "{why}, and nothing is cached for {}",
                        request.url
                    )))
                });
            }
        };

        match limits.record(response.status, &response.headers, &response.body) {
            Verdict::Limited { reason, .. } if !(200..400).contains(&response.status) => {
                return stale_or(cached, reason, || return_error(response));
            }
            Verdict::ServerError { .. } => {
                let why = format!("GitHub answered {}", response.status);
                return stale_or(cached, why, || return_error(response));
            }
            _ => {}
        }

        if response.status == 304
            && let Some((entry, body)) = cached
        {
            let etag = response.header("etag");
            let cache = self.cache.clone();
            let key = key.clone();
            let renewed =
                tokio::task::spawn_blocking(move || cache.renew(&key, &entry, etag, Some(tag)))
                    .await
                    .map_err(anyhow::Error::from)??;
            return Ok(Resolved::from_entry(Source::Revalidated, renewed, body));
        }

        if (200..300).contains(&response.status) {
            let meta = ResponseMeta {
                status: response.status,
                content_type: response.header("content-type"),
                link: response.header("link"),
                last_modified: response.header("last-modified"),
                etag: response.header("etag"),
                etag_token: Some(tag),
            };
            let cache = self.cache.clone();
            let (key, url, body, ttl) = (
                key.clone(),
                request.url.to_string(),
                response.body.clone(),
                request.ttl,
            );
            let stored =
                tokio::task::spawn_blocking(move || cache.put(&key, &url, &meta, &body, ttl))
                    .await
                    .map_err(anyhow::Error::from)?;
            let entry = match stored {
                Ok(entry) => Some(entry),
                Err(e) => {
                    tracing::warn!(
                        "could not store the answer for {} in the cache: {e:#}",
                        request.url
                    );
                    None
                }
            };
            return Ok(Resolved::from_response(response, entry));
        }
        Ok(Resolved::from_response(response, None))
    }
}

/// The stale entry marked as such, or the error when nothing is cached.
fn stale_or(
    cached: Option<(Entry, Vec<u8>)>,
    why: String,
    otherwise: impl FnOnce() -> Result<Resolved, ResolveError>,
) -> Result<Resolved, ResolveError> {
    match cached {
        Some((entry, body)) => {
            tracing::warn!("serving a stale cache entry for {}: {why}", entry.url);
            Ok(Resolved::from_entry(Source::Stale, entry, body))
        }
        None => otherwise(),
    }
}

fn return_error(response: ApiResponse) -> Result<Resolved, ResolveError> {
    Ok(Resolved::from_response(response, None))
}

/// A time in ms since the epoch as an HTTP date (UTC), for messages.
pub fn format_time(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_millis(ms))
}
