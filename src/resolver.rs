//! Resolving one GET through the tiers: the local cache, the swarm, then GitHub.
//!
//! ```text
//! fresh local entry ──────────────────────────────► local
//! miss or expired ─► take the key's fetch stripe ─► (another process filled it?) local
//!                  ─► a peer has it fresh, or the swarm's claimant fetched it ─► peer
//!                  ─► the swarm has only stale copies: take one with its validators
//!                        (an ETag of another token: its owner revalidates it with its own
//!                        token ─► revalidated)
//!                  ─► rate-limited right now? ────► stale entry, or "unreachable"
//!                  ─► GET upstream (conditional when an entry exists)
//!                        304 ─► renew ────────────► revalidated
//!                        2xx ─► store ────────────► upstream
//!                        5xx, 403/429 limit, network error ─► stale entry, or the error
//!                        other status ────────────► the error, not stored
//! ```
//!
//! Freshness is always judged by the requester's TTL, so a stale entry is never served as fresh.
//!
//! What may be shared is decided first ([`crate::github::sharing`]): `/rate_limit` and requests
//! whose headers change the representation (`Range`, `Accept-Encoding`, …) pass straight through;
//! answers about the caller are cached per token and never offered to peers; a repository's
//! answers are shared, but a token is served another token's copy only once GitHub has shown
//! that it can see the repository ([`crate::access`]): a conditional request for the repository
//! object, free when it answers 304, GitHub's own 404 when the token may not see it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue};
use url::Url;

use crate::access::{AccessProofs, PROOF_LIFETIME, Term, Verdict as Access};
use crate::cache::{
    Cache, CacheKey, DEFAULT_ACCEPT, DEFAULT_API_VERSION, Entry, Lookup, RecordMark, Remembered,
    ResponseMeta, no_token_tag, now_ms, token_tag,
};
use crate::github::ratelimit::{RateLimits, Verdict};
use crate::github::sharing::{self, Sharing};
use crate::github::{ApiRequest, ApiResponse, GitHub, Overflow};
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
    /// The shared cache key of this request (see [`Resolver::keys`] for the keys it is looked
    /// up under).
    pub fn key(&self) -> CacheKey {
        CacheKey::new(&self.url, &self.accept, &self.api_version)
    }

    /// The key of this request's answer for this token alone.
    pub fn per_token_key(&self) -> CacheKey {
        CacheKey::per_token(
            &self.url,
            &self.accept,
            &self.api_version,
            &self.token_tag(),
        )
    }

    /// The one-way tag of the request's token (or of "no token"); the token's is worked out
    /// once per request (a hit used to hash the token three times).
    pub fn token_tag(&self) -> String {
        self.tag().to_string()
    }

    /// [`Request::token_tag`], borrowed.
    pub fn tag(&self) -> &str {
        match &self.token {
            Some(token) => token.tag(),
            None => no_token_tag(),
        }
    }

    /// The first header that may ask for another representation than the stored one, if any
    /// (a `Range`'s 206, a gzip body, a `Time-Zone`'s timestamps, …): such a request is passed
    /// through, so the stored entry stays the full, plain answer. Only headers known to leave GitHub's answer alone are let by: the client describing
    /// itself, its own caching preferences (freshness is peercache's TTL, `x-peercache-ttl`),
    /// tracing ids.
    pub fn representation_header(&self) -> Option<&HeaderName> {
        const NEUTRAL: &[&str] = &[
            "user-agent",
            "cache-control",
            "pragma",
            "accept-charset",
            "accept-language",
            "content-type",
            "dnt",
            "origin",
            "referer",
            "x-requested-with",
            "traceparent",
            "tracestate",
            "baggage",
            "x-request-id",
            "x-correlation-id",
            "upgrade-insecure-requests",
            "priority",
        ];
        self.extra_headers
            .iter()
            .find(|(name, value)| {
                let identity = *name == reqwest::header::ACCEPT_ENCODING
                    && value
                        .to_str()
                        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"));
                let name = name.as_str();
                // Browser-style fetch metadata, which some clients (fastcore, ghapi) send.
                let fetch_metadata = name.starts_with("sec-fetch-") || name.starts_with("sec-ch-");
                !(identity || fetch_metadata || NEUTRAL.contains(&name))
            })
            .map(|(name, _)| name)
    }
}

/// Whether a token may be served another token's copy of an answer.
enum Admission {
    /// Yes: it may see the repository (or needs no proof).
    Allowed,
    /// No: GitHub's own answer to it (its 404) instead.
    Denied(Box<Resolved>),
}

/// How long an offline admission holds.
#[derive(Debug, Clone, Copy)]
enum Holds {
    /// For good: the entry is the token's own, anyone's, of the job's repository, or needs no proof.
    Always,
    /// While the access proof it rests on does.
    While(Term),
}

/// What a local hit from memory rested on: while all of it holds, the same request gets the
/// same answer ([`Resolver::still_replayable`]), so the daemon may send it again as it is.
#[derive(Debug, Clone)]
pub struct Replay {
    mark: RecordMark,
    fresh_until_ms: u64,
    holds: Holds,
}

/// An answer: status, headers to show, body, and where it came from.
#[derive(Debug)]
pub struct Resolved {
    /// Where it came from.
    pub source: Source,
    /// HTTP status.
    pub status: u16,
    /// Headers to show with `-i` and to send from the local API (without `x-peercache-source`).
    pub headers: Vec<(String, String)>,
    /// The body, byte-identical to what GitHub sent; with `overflow`, only its beginning. A
    /// local hit's are the verified bytes in memory themselves, shared, not copied.
    pub body: Bytes,
    /// The rest of an upstream body larger than the entry cap (only from
    /// [`Resolver::resolve_streamed`]): never stored, passed on as it arrives.
    pub overflow: Option<Overflow>,
    /// The cache entry behind a 2xx answer.
    pub entry: Option<Entry>,
    /// Set on a local hit from memory: what it rested on.
    pub replay: Option<Replay>,
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

    fn from_entry(source: Source, entry: Entry, body: Bytes) -> Resolved {
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
            overflow: None,
            entry: Some(entry),
            replay: None,
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
            body: response.body.into(),
            overflow: response.overflow,
            entry,
            replay: None,
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
    oversized: AtomicU64,
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
    /// Full upstream answers larger than the entry cap: passed through, not stored or shared.
    pub oversized: u64,
}

/// Resolves requests against one cache dir and one API base (and, in the daemon, the swarm).
#[derive(Clone)]
pub struct Resolver {
    cache: Cache,
    github: GitHub,
    api_base: String,
    api_url: Url,
    peers: Option<p2p::Handle>,
    counters: Arc<Counters>,
    proofs: AccessProofs,
    home_repository: Option<String>,
    max_entry: u64,
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
            proofs: AccessProofs::new(cache.dir()),
            cache,
            github,
            api_base: api_base.as_str().trim_end_matches('/').to_string(),
            api_url: api_base.clone(),
            peers: None,
            counters: Arc::default(),
            home_repository: None,
            max_entry: crate::config::DEFAULT_MAX_ENTRY,
        }
    }

    /// Sets the largest body stored (`PEERCACHE_MAX_ENTRY`): a larger answer is passed through
    /// to the caller, never held whole in memory, stored or announced.
    pub fn with_max_entry(mut self, max_entry: u64) -> Resolver {
        self.max_entry = max_entry;
        self
    }

    /// Names this job's repository (`owner/repo`): every request this resolver answers comes
    /// from a job of it, which can read it, so its entries need no access proof.
    pub fn with_home_repository(mut self, repository: Option<String>) -> Resolver {
        self.home_repository = repository.map(|r| r.to_ascii_lowercase());
        self
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
            oversized: get(&c.oversized),
            misses: requests.saturating_sub(local_hits + peer_hits),
        }
    }

    fn limits(&self, token: Option<&Secret>) -> RateLimits {
        RateLimits::new(self.cache.dir(), &self.api_base, token.map(Secret::expose))
    }

    /// Answers a request from the freshest tier that can, with the whole body in memory (an
    /// answer over the entry cap is read to its end, still not stored).
    pub async fn resolve(&self, request: &Request) -> Result<Resolved, ResolveError> {
        let mut resolved = self.resolve_streamed(request).await?;
        if let Some(overflow) = resolved.overflow.take() {
            let mut body = Vec::from(std::mem::take(&mut resolved.body));
            overflow.read_into(&mut body).await.map_err(|e| {
                ResolveError::Unreachable(format!(
                    "GitHub's answer to {} broke off ({e})",
                    request.url
                ))
            })?;
            resolved.body = body.into();
        }
        Ok(resolved)
    }

    /// Answers a request from the freshest tier that can; an upstream answer over the entry
    /// cap comes with only its beginning in `body` and the rest in `overflow`, for the caller
    /// to pass on as it arrives (the daemon's memory stays bounded whatever GitHub sends).
    pub async fn resolve_streamed(&self, request: &Request) -> Result<Resolved, ResolveError> {
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

    /// How the request's answers may be shared, and the keys it is looked up under. The first is
    /// the one the swarm knows (when it may be shared); a repository answer that embedded the
    /// caller's permissions was kept under the second, this token's own.
    fn keys(&self, request: &Request) -> (Sharing, Vec<CacheKey>) {
        let sharing = sharing::classify(&self.api_url, &request.url);
        let keys = match &sharing {
            Sharing::PassThrough => Vec::new(),
            Sharing::PerToken(_) => vec![request.per_token_key()],
            // Shared first: the hot path of a shared hit looks up one key.
            Sharing::Repository(_) => vec![request.key(), request.per_token_key()],
            Sharing::Public => vec![request.key()],
        };
        (sharing, keys)
    }

    /// The first key [`Resolver::keys`] names, alone (`None`: passed through): a hit under it
    /// needs no other key worked out.
    fn first_key(request: &Request, sharing: &Sharing) -> Option<CacheKey> {
        match sharing {
            Sharing::PassThrough => None,
            Sharing::PerToken(_) => Some(request.per_token_key()),
            Sharing::Repository(_) | Sharing::Public => Some(request.key()),
        }
    }

    async fn resolve_uncounted(&self, request: &Request) -> Result<Resolved, ResolveError> {
        let sharing = sharing::classify(&self.api_url, &request.url);
        if let Some(header) = request.representation_header() {
            tracing::debug!(
                "{} passes through uncached: its {header} header asks for another representation",
                request.url
            );
            return self.pass_through(request).await;
        }
        let Some(first) = Self::first_key(request, &sharing) else {
            return self.pass_through(request).await;
        };
        // The daemon's hot path: an entry it read before, unchanged on disk, still fresh. The
        // per-token key of a repository answer is worked out only when the shared one misses.
        if let Some(hit) = self.cache.get_remembered(&first)
            && hit.entry.is_fresh(request.ttl, now_ms())
        {
            return self.serve_remembered(request, &sharing, hit).await;
        }
        let mut keys = vec![first];
        if matches!(sharing, Sharing::Repository(_)) {
            let own = request.per_token_key();
            if let Some(hit) = self.cache.get_remembered(&own)
                && hit.entry.is_fresh(request.ttl, now_ms())
            {
                return self.serve_remembered(request, &sharing, hit).await;
            }
            keys.push(own);
        }
        let shared_key = keys[0].clone();

        for key in &keys {
            if let Lookup::Hit { entry, body } = self.lookup(key).await?
                && entry.is_fresh(request.ttl, now_ms())
            {
                return self
                    .serve(request, &sharing, Source::Local, entry, body)
                    .await;
            }
        }

        // One process at a time fetches a key: the others wait, then find it in the cache.
        let cache = self.cache.clone();
        let stripe_key = shared_key.clone();
        let _stripe = tokio::task::spawn_blocking(move || cache.lock_key(&stripe_key))
            .await
            .map_err(anyhow::Error::from)??;
        let mut cached = None;
        for key in &keys {
            match self.lookup(key).await? {
                Lookup::Hit { entry, body } if entry.is_fresh(request.ttl, now_ms()) => {
                    return self
                        .serve(request, &sharing, Source::Local, entry, body)
                        .await;
                }
                Lookup::Hit { entry, body } => {
                    cached = Some((key.clone(), entry, body));
                    break;
                }
                Lookup::Miss | Lookup::Discarded { .. } => {}
            }
        }
        let peers = self.peers.as_ref().filter(|_| !shared_key.is_per_token());
        let Some(peers) = peers else {
            return self.upstream(request, &sharing, &keys, cached).await;
        };
        match peers.obtain(&shared_key, request.ttl).await {
            p2p::Obtained::Fresh(entry, body) => {
                return self
                    .serve(request, &sharing, Source::Peer, entry, body.into())
                    .await;
            }
            p2p::Obtained::Stale(entry, body) if self.worth_revalidating(request, &cached) => {
                // The swarm's copy and its validators: a conditional request instead of a full
                // GET. The admission rules hold as for a local copy: it is served only after
                // GitHub's 304 to this token, or as a stale stand-in where the token may have it.
                cached = Some(
                    self.keep_swarm_copy(request, &shared_key, entry, body.into())
                        .await,
                );
            }
            p2p::Obtained::Stale(..) | p2p::Obtained::Nothing => {}
        }
        // An ETag-only copy (a collection) whose ETag another token fetched: only that token's
        // holder can revalidate it for free, so it is asked to, with its own token.
        if let Some((owner, stale_digest)) = cached.as_ref().and_then(|(_, entry, _)| {
            Self::etag_owner(request, entry).map(|owner| (owner, entry.digest.clone()))
        }) && let Some((entry, body)) = peers
            .revalidate_at_owner(&shared_key, &owner, request.ttl)
            .await
        {
            // Unchanged: the owner's 304 renewed it; changed: the owner's 200 is a new entry.
            let source = if entry.digest == stale_digest {
                Source::Revalidated
            } else {
                Source::Peer
            };
            let result = self
                .serve(request, &sharing, source, entry, body.into())
                .await;
            peers.finished(
                &shared_key,
                result.as_ref().ok().and_then(|r| r.entry.as_ref()),
            );
            return result;
        }
        let result = self.upstream(request, &sharing, &keys, cached).await;
        // Tell the swarm: announce what is now fresh here under the shared key, or release the
        // claim.
        let fresh = match &result {
            // An entry over the wire limit (stored under a larger cap of old) is never announced:
            // no member could pull it.
            Ok(r) if matches!(r.source, Source::Upstream | Source::Revalidated) => r
                .entry
                .as_ref()
                .filter(|e| e.key == shared_key.canonical())
                .filter(|e| e.size <= crate::config::MAX_ENTRY_LIMIT),
            _ => None,
        };
        peers.finished(&shared_key, fresh);
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

    /// The token tag whose holder alone can revalidate `entry` for free: it has an ETag of
    /// another token and no `Last-Modified`.
    fn etag_owner(request: &Request, entry: &Entry) -> Option<String> {
        let owner = entry.etag_token.clone()?;
        let usable_here = entry.last_modified.is_some() || owner == request.token_tag();
        (entry.etag.is_some() && !usable_here && owner != token_tag(None)).then_some(owner)
    }

    /// For a member that asked: revalidates `entry` (one of this node's, whose ETag `token`
    /// fetched) upstream with `token`. The renewed entry after a 304, the new one after a 200,
    /// or `None` when GitHub did neither (then the member fetches with its own token).
    pub async fn revalidate_for_peer(
        &self,
        token: Option<Secret>,
        entry: Entry,
        body: Vec<u8>,
        ttl: Duration,
    ) -> Option<(Entry, Vec<u8>)> {
        let url = Url::parse(&entry.url).ok()?;
        let line = |name: &str| {
            entry
                .key
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::to_string)
        };
        let request = Request {
            url,
            accept: line("accept: ")?,
            api_version: line("x-github-api-version: ")?,
            token,
            extra_headers: Vec::new(),
            ttl,
        };
        let (sharing, keys) = self.keys(&request);
        // The entry must be the one this request names, shared with the swarm.
        if keys.first().map(CacheKey::canonical) != Some(entry.key.as_str())
            || keys[0].is_per_token()
        {
            return None;
        }
        let key = keys[0].clone();
        let resolved = self
            .upstream(
                &request,
                &sharing,
                &keys,
                Some((key.clone(), entry, body.into())),
            )
            .await
            .ok()?;
        match resolved.source {
            Source::Revalidated | Source::Upstream if resolved.status == 200 => {
                let entry = resolved.entry?;
                (entry.key == key.canonical()).then_some((entry, Vec::from(resolved.body)))
            }
            _ => {
                tracing::info!(
                    "could not revalidate {} for a member: GitHub answered {} ({})",
                    request.url,
                    resolved.status,
                    resolved.source
                );
                None
            }
        }
    }

    /// Whether a stale copy from the swarm would do better than `cached`, the local one: there
    /// is none, or it holds no validator this token can use (`Last-Modified`, or an ETag of its
    /// own).
    fn worth_revalidating(
        &self,
        request: &Request,
        cached: &Option<(CacheKey, Entry, Bytes)>,
    ) -> bool {
        let Some((_, entry, _)) = cached else {
            return true;
        };
        let own_etag = entry.etag.is_some()
            && entry.etag_token.as_deref() == Some(request.token_tag().as_str());
        entry.last_modified.is_none() && !own_etag
    }

    /// Stores a stale copy pulled from the swarm (a 304 renews the stored entry, whose body must
    /// be on disk), and hands it back as the cached copy to revalidate.
    async fn keep_swarm_copy(
        &self,
        request: &Request,
        key: &CacheKey,
        entry: Entry,
        body: Bytes,
    ) -> (CacheKey, Entry, Bytes) {
        let cache = self.cache.clone();
        let (id, stored, stored_body) = (key.id().to_string(), entry.clone(), body.clone());
        let outcome =
            tokio::task::spawn_blocking(move || cache.put_entry(&id, &stored, &stored_body)).await;
        if !matches!(outcome, Ok(Ok(()))) {
            tracing::warn!(
                "could not store the swarm's stale copy of {}; revalidating it anyway",
                request.url
            );
        }
        tracing::debug!("revalidating the swarm's copy of {}", request.url);
        (key.clone(), entry, body)
    }

    async fn lookup(&self, key: &CacheKey) -> Result<Lookup, ResolveError> {
        let cache = self.cache.clone();
        let key = key.clone();
        Ok(tokio::task::spawn_blocking(move || cache.get(&key))
            .await
            .map_err(anyhow::Error::from)?)
    }

    /// A hit from memory as the answer, once the requester may have it; with what it rested
    /// on when the requester was admitted without asking GitHub.
    async fn serve_remembered(
        &self,
        request: &Request,
        sharing: &Sharing,
        hit: Remembered,
    ) -> Result<Resolved, ResolveError> {
        let Remembered { entry, body, mark } = hit;
        if let Some((Admission::Allowed, holds)) = self.admitted_offline(request, sharing, &entry) {
            let fresh_until_ms = entry
                .fetched_at_ms
                .saturating_add(request.ttl.as_millis().min(u64::MAX as u128) as u64);
            let mut resolved = Resolved::from_entry(Source::Local, entry, body);
            resolved.replay = Some(Replay {
                mark,
                fresh_until_ms,
                holds,
            });
            return Ok(resolved);
        }
        self.serve(request, sharing, Source::Local, entry, body)
            .await
    }

    /// Whether the request a [`Replay`] came with would be resolved the same way at `now`: the
    /// entry is still fresh for it, its admission still holds, and the record it came from is
    /// still the one in memory and on disk.
    pub fn still_replayable(&self, replay: &Replay, now: std::time::SystemTime) -> bool {
        let now_ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let admitted = match replay.holds {
            Holds::Always => true,
            Holds::While(term) => self.proofs.still_holds(term),
        };
        now_ms < replay.fresh_until_ms && admitted && self.cache.still_remembered(&replay.mark, now)
    }

    /// Counts a request answered again from a [`Replay`]: a local hit, as its first answer was.
    pub fn count_replayed_hit(&self) {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.local_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// An entry as the answer, once the requester may have it.
    async fn serve(
        &self,
        request: &Request,
        sharing: &Sharing,
        source: Source,
        entry: Entry,
        body: Bytes,
    ) -> Result<Resolved, ResolveError> {
        match self.admit(request, sharing, &entry).await? {
            Admission::Allowed => Ok(Resolved::from_entry(source, entry, body)),
            Admission::Denied(answer) => Ok(*answer),
        }
    }

    /// Whether the requester may have `entry` without asking GitHub: it is its own, GitHub gave
    /// it to anyone, it is of this job's repository, or the token has proved access before.
    /// `None`: only GitHub can tell.
    fn admitted_offline(
        &self,
        request: &Request,
        sharing: &Sharing,
        entry: &Entry,
    ) -> Option<(Admission, Holds)> {
        let Sharing::Repository(repo) = sharing else {
            return Some((Admission::Allowed, Holds::Always));
        };
        let tag = request.tag();
        let fetched_by = entry.etag_token.as_deref();
        if fetched_by == Some(tag) || fetched_by == Some(no_token_tag()) {
            return Some((Admission::Allowed, Holds::Always));
        }
        if self.home_repository.as_deref() == Some(repo.as_str()) {
            return Some((Admission::Allowed, Holds::Always));
        }
        let (verdict, term) = self.proofs.lookup_with_term(tag, repo)?;
        let holds = Holds::While(term);
        match verdict {
            Access::Allowed | Access::Public => Some((Admission::Allowed, holds)),
            Access::Denied {
                status,
                body,
                content_type,
            } => Some((
                Admission::Denied(Box::new(Resolved {
                    source: Source::Local,
                    status,
                    headers: content_type
                        .map(|ct| vec![("content-type".to_string(), ct)])
                        .unwrap_or_default(),
                    body: body.into_bytes().into(),
                    overflow: None,
                    entry: None,
                    replay: None,
                })),
                holds,
            )),
        }
    }

    async fn admit(
        &self,
        request: &Request,
        sharing: &Sharing,
        entry: &Entry,
    ) -> Result<Admission, ResolveError> {
        if let Some((admission, _)) = self.admitted_offline(request, sharing, entry) {
            return Ok(admission);
        }
        let Sharing::Repository(repo) = sharing else {
            return Ok(Admission::Allowed);
        };
        self.prove_access(request, repo).await
    }

    /// Asks GitHub whether the request's token can see `repo`: a conditional GET of the
    /// repository object, which costs no quota when it answers 304, and answers 404 to a token
    /// that may not see it.
    async fn prove_access(&self, request: &Request, repo: &str) -> Result<Admission, ResolveError> {
        let cannot = |why: String| {
            ResolveError::Unreachable(format!(
                "cannot check that this token may see {repo} ({why}); another token's copy of {} is not served without that check",
                request.url
            ))
        };
        let limits = self.limits(request.token.as_ref());
        if let Some((until_ms, reason)) = limits.blocked() {
            return Err(cannot(format!(
                "{reason}; no call to GitHub before {}",
                format_time(until_ms)
            )));
        }
        let url = Url::parse(&format!("{}/repos/{repo}", self.api_base))
            .map_err(|e| cannot(e.to_string()))?;
        let proof = ApiRequest {
            url,
            accept: DEFAULT_ACCEPT.to_string(),
            api_version: DEFAULT_API_VERSION.to_string(),
            token: request.token.clone(),
            extra_headers: Vec::new(),
            if_modified_since: Some(httpdate::fmt_http_date(std::time::SystemTime::now())),
            if_none_match: None,
        };
        self.counters.upstream_calls.fetch_add(1, Ordering::Relaxed);
        let response = self
            .github
            .get_capped(&proof, self.max_entry)
            .await
            .map_err(|e| cannot(format!("GitHub could not be reached: {e}")))?;
        let verdict = limits.record(response.status, &response.headers, &response.body);
        let tag = request.token_tag();
        match response.status {
            200..=299 | 304 => {
                if response.status == 200
                    && let Some(public) = sharing::says_public(&response.body)
                {
                    self.proofs.record_visibility(repo, public);
                }
                self.proofs
                    .record(&tag, repo, Access::Allowed, PROOF_LIFETIME);
                tracing::debug!(
                    "this token may see {repo} (GitHub answered {})",
                    response.status
                );
                Ok(Admission::Allowed)
            }
            401 | 403 | 404 if !matches!(verdict, Verdict::Limited { .. }) => {
                let denied = Access::Denied {
                    status: response.status,
                    body: String::from_utf8_lossy(&response.body).into_owned(),
                    content_type: response.header("content-type"),
                };
                self.proofs.record(&tag, repo, denied, request.ttl);
                tracing::info!(
                    "not serving a cached copy of {}: GitHub answers this token {} for {repo}",
                    request.url,
                    response.status
                );
                Ok(Admission::Denied(Box::new(Resolved::from_response(
                    response, None,
                ))))
            }
            status => Err(cannot(format!("GitHub answered {status}"))),
        }
    }

    /// Sends the request as it is and stores nothing.
    async fn pass_through(&self, request: &Request) -> Result<Resolved, ResolveError> {
        let limits = self.limits(request.token.as_ref());
        if let Some((until_ms, reason)) = limits.blocked() {
            return Err(ResolveError::Unreachable(format!(
                "{reason}; no call to GitHub before {}, and {} is never served from the cache",
                format_time(until_ms),
                request.url
            )));
        }
        let api_request = ApiRequest {
            url: request.url.clone(),
            accept: request.accept.clone(),
            api_version: request.api_version.clone(),
            token: request.token.clone(),
            extra_headers: request.extra_headers.clone(),
            if_modified_since: None,
            if_none_match: None,
        };
        self.counters.upstream_calls.fetch_add(1, Ordering::Relaxed);
        let response = self
            .github
            .get_capped(&api_request, self.max_entry)
            .await
            .map_err(|error| {
                ResolveError::Unreachable(format!("GitHub could not be reached ({error})"))
            })?;
        limits.record(response.status, &response.headers, &response.body);
        Ok(Resolved::from_response(response, None))
    }

    /// Remembers that GitHub answered this token for a repository (or its object).
    fn saw_access(&self, request: &Request, response: &ApiResponse) {
        let Some((repo, is_object)) = sharing::repository_of(&self.api_url, &request.url) else {
            return;
        };
        if !(200..300).contains(&response.status) && response.status != 304 {
            return;
        }
        self.proofs
            .record(&request.token_tag(), &repo, Access::Allowed, PROOF_LIFETIME);
        if is_object
            && response.status == 200
            && let Some(public) = sharing::says_public(&response.body)
        {
            self.proofs.record_visibility(&repo, public);
        }
    }

    async fn upstream(
        &self,
        request: &Request,
        sharing: &Sharing,
        keys: &[CacheKey],
        cached: Option<(CacheKey, Entry, Bytes)>,
    ) -> Result<Resolved, ResolveError> {
        // A stale copy may stand in for GitHub only where the requester may have it anyway.
        let stale = cached.as_ref().and_then(|(_, entry, body)| {
            matches!(
                self.admitted_offline(request, sharing, entry),
                Some((Admission::Allowed, _))
            )
            .then(|| (entry.clone(), body.clone()))
        });
        let limits = self.limits(request.token.as_ref());
        if let Some((until_ms, reason)) = limits.blocked() {
            let why = format!(
                "{reason}; no call to GitHub before {}",
                format_time(until_ms)
            );
            return stale_or(stale, why.clone(), || {
                Err(ResolveError::RateLimited {
                    until_ms,
                    reason: format!("{why}, and nothing is cached for {}", request.url),
                })
            });
        }

        let tag = request.token_tag();
        let (if_modified_since, if_none_match) = match &cached {
            Some((_, entry, _)) => (
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
        let mut response = match self.github.get_capped(&api_request, self.max_entry).await {
            Ok(response) => response,
            Err(error) => {
                let why = format!("GitHub could not be reached ({error})");
                return stale_or(stale, why.clone(), || {
                    Err(ResolveError::Unreachable(format!(
                        "{why}, and nothing is cached for {}",
                        request.url
                    )))
                });
            }
        };

        match limits.record(response.status, &response.headers, &response.body) {
            Verdict::Limited { reason, .. } if !(200..400).contains(&response.status) => {
                return stale_or(stale, reason, || return_error(response));
            }
            Verdict::ServerError { .. } => {
                let why = format!("GitHub answered {}", response.status);
                return stale_or(stale, why, || return_error(response));
            }
            _ => {}
        }
        self.saw_access(request, &response);

        // A 304 to this token's own conditional request: GitHub let it see the resource.
        if response.status == 304
            && let Some((key, entry, body)) = cached
        {
            let etag = response.header("etag");
            let cache = self.cache.clone();
            let kept = entry.clone();
            let renewed =
                tokio::task::spawn_blocking(move || cache.renew(&key, &entry, etag, Some(tag)))
                    .await
                    .map_err(anyhow::Error::from)?;
            let renewed = renewed.unwrap_or_else(|e| {
                // GitHub said the body is current: it is the answer, kept or not.
                tracing::warn!("could not renew the cache entry for {}: {e:#}", request.url);
                Entry {
                    fetched_at_ms: now_ms(),
                    ..kept
                }
            });
            return Ok(Resolved::from_entry(Source::Revalidated, renewed, body));
        }

        if response.status == 200 && response.overflow.is_some() {
            self.counters.oversized.fetch_add(1, Ordering::Relaxed);
            let declared = response
                .overflow
                .as_ref()
                .and_then(Overflow::content_length);
            let limit = crate::config::MAX_ENTRY_LIMIT_TEXT;
            let (size, fix) = match declared {
                Some(n) if n > crate::config::MAX_ENTRY_LIMIT => (
                    format!(" ({n} bytes)"),
                    format!("answers over {limit} are never cached"),
                ),
                Some(n) => (
                    format!(" ({n} bytes)"),
                    format!("raise PEERCACHE_MAX_ENTRY (at most {limit}) to cache it"),
                ),
                None => (
                    String::new(),
                    format!("raise PEERCACHE_MAX_ENTRY (at most {limit}) to cache it"),
                ),
            };
            tracing::warn!(
                "the answer for {}{size} is larger than PEERCACHE_MAX_ENTRY ({} bytes): passed through to the caller, not cached or shared; {fix}",
                request.url,
                self.max_entry,
            );
            return Ok(Resolved::from_response(response, None));
        }

        // Only a full, plain answer is stored: not a 206, a 204 or another 2xx.
        if response.status == 200 {
            let shared_key = &keys[0];
            let personal = matches!(sharing, Sharing::Repository(_))
                && sharing::embeds_caller_permissions(&response.body);
            if personal {
                tracing::debug!(
                    "{} embeds the caller's permissions: kept for this token only",
                    request.url
                );
            }
            let key = if personal {
                keys.last().unwrap_or(shared_key)
            } else {
                shared_key
            };
            let meta = ResponseMeta {
                status: response.status,
                content_type: response.header("content-type"),
                link: response.header("link"),
                last_modified: response.header("last-modified"),
                etag: response.header("etag"),
                etag_token: Some(tag),
            };
            let cache = self.cache.clone();
            // The body moves to the writer and back: an answer is never held twice.
            let (key, url, body, ttl) = (
                key.clone(),
                request.url.to_string(),
                std::mem::take(&mut response.body),
                request.ttl,
            );
            let (stored, body) = tokio::task::spawn_blocking(move || {
                let stored = cache.put(&key, &url, &meta, &body, ttl);
                (stored, body)
            })
            .await
            .map_err(anyhow::Error::from)?;
            response.body = body;
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
    cached: Option<(Entry, Bytes)>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            url: Url::parse("https://api.github.com/repos/a/b/issues").unwrap(),
            accept: DEFAULT_ACCEPT.into(),
            api_version: DEFAULT_API_VERSION.into(),
            token: None,
            extra_headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    )
                })
                .collect(),
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn only_plain_requests_are_stored() {
        assert!(request(&[]).representation_header().is_none());
        assert!(
            request(&[
                ("user-agent", "octokit"),
                ("cache-control", "no-cache"),
                ("sec-fetch-mode", "cors"),
                ("accept-encoding", "identity"),
            ])
            .representation_header()
            .is_none()
        );
        for changing in [
            ("range", "bytes=0-9"),
            ("accept-encoding", "gzip"),
            ("if-match", "\"x\""),
            ("time-zone", "Europe/Amsterdam"),
            ("x-unknown", "1"),
        ] {
            let r = request(&[changing]);
            assert!(r.representation_header().is_some(), "{changing:?}");
            assert_eq!(r.representation_header().unwrap().as_str(), changing.0);
        }
    }
}
