//! The daemon's figures: what it observes per request (answers by endpoint, the last rate-limit
//! headers), one [`Snapshot`] of everything at a moment, and that snapshot as Prometheus text.
//!
//! Definitions, shared by `/api/cache/stats`, `/api/status`, `/metrics`, the status page and
//! `peercache status` (docs/observability.md):
//!
//! - a **request** is one `GET <base>/gh/…` the daemon answered (or failed to answer);
//! - a **hit** is a request answered from a fresh entry without any call to GitHub: from the local
//!   cache (`local`) or from a peer (`peer`). A revalidation (`revalidated`, a 304) is not a
//!   hit: it called GitHub, even though the call cost no primary quota. A stale answer
//!   (`stale`) is not a hit either: it is what is left when GitHub cannot be used;
//! - `misses` = requests − hits; `hit_rate` = hits / requests (0 before the first request);
//! - `api_calls_made` = HTTP requests sent to GitHub (revalidations and failed calls included);
//!   `api_calls_saved` = hits, one call avoided each.
//!
//! Every request is counted once, by the tier that answered it. Entries this node sends to
//! peers, entries it receives while answering a request, and announcements it hears are swarm
//! figures (`peercache_swarm_*`), never hits.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::cache::{Counters as CacheCounters, Usage};
use crate::github::ratelimit::LimitState;
use crate::p2p::{P2pStats, PeerInfo};
use crate::resolver::{CountersSnapshot, Source};

/// Most endpoints tracked one by one; requests for others are only counted in total.
pub const MAX_ENDPOINTS: usize = 1000;
/// Longest endpoint path kept (longer ones are cut, with `…`).
const MAX_ENDPOINT_CHARS: usize = 200;
/// Endpoints listed as "top endpoints".
pub const TOP_ENDPOINTS: usize = 10;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by this tier.
    Answered(Source),
    /// Not answered: GitHub unreachable with nothing cached (502), or a local failure (500).
    Failed,
}

/// The answers for one endpoint path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EndpointCounts {
    /// Requests for it.
    pub requests: u64,
    /// Hits (local + peer).
    pub hits: u64,
    /// Answered from the local cache.
    pub local_hits: u64,
    /// Answered from a peer.
    pub peer_hits: u64,
    /// Answered after a 304.
    pub revalidated: u64,
    /// Answered with a stale entry.
    pub stale_served: u64,
    /// Answered by GitHub (any status).
    pub upstream: u64,
    /// Not answered.
    pub errors: u64,
}

/// [`EndpointCounts`] as atomics: a request for a known endpoint counts itself under a shared
/// read lock of the map, so concurrent hits never wait on each other.
#[derive(Debug, Default)]
struct EndpointCounters {
    requests: AtomicU64,
    hits: AtomicU64,
    local_hits: AtomicU64,
    peer_hits: AtomicU64,
    revalidated: AtomicU64,
    stale_served: AtomicU64,
    upstream: AtomicU64,
    errors: AtomicU64,
}

impl EndpointCounters {
    fn add(&self, outcome: Outcome) {
        let bump = |counter: &AtomicU64| {
            counter.fetch_add(1, Ordering::Relaxed);
        };
        bump(&self.requests);
        match outcome {
            Outcome::Answered(Source::Local) => {
                bump(&self.local_hits);
                bump(&self.hits);
            }
            Outcome::Answered(Source::Peer) => {
                bump(&self.peer_hits);
                bump(&self.hits);
            }
            Outcome::Answered(Source::Revalidated) => bump(&self.revalidated),
            Outcome::Answered(Source::Stale) => bump(&self.stale_served),
            Outcome::Answered(Source::Upstream) => bump(&self.upstream),
            Outcome::Failed => bump(&self.errors),
        }
    }

    fn load(&self) -> EndpointCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EndpointCounts {
            requests: get(&self.requests),
            hits: get(&self.hits),
            local_hits: get(&self.local_hits),
            peer_hits: get(&self.peer_hits),
            revalidated: get(&self.revalidated),
            stale_served: get(&self.stale_served),
            upstream: get(&self.upstream),
            errors: get(&self.errors),
        }
    }
}

/// One endpoint's line in the top list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointFigures {
    /// The path under the API base, e.g. `/repos/octo/hello` (no query).
    pub endpoint: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: EndpointCounts,
}

/// The rate-limit headers of the last GitHub answer the daemon saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateSeen {
    /// `x-ratelimit-remaining`.
    pub remaining: u64,
    /// `x-ratelimit-limit`.
    pub limit: Option<u64>,
    /// `x-ratelimit-reset`, epoch seconds.
    pub reset: Option<u64>,
    /// When the daemon read it, epoch seconds.
    pub seen_at: u64,
}

#[derive(Default)]
struct Endpoints {
    by_path: HashMap<String, EndpointCounters>,
    /// Requests for endpoints beyond [`MAX_ENDPOINTS`].
    untracked: AtomicU64,
}

/// What the daemon observes as it answers requests: counts per endpoint (a bounded map), the
/// outcomes the resolver does not count, and the last rate-limit figures.
pub struct Observer {
    started_at: u64,
    endpoints: RwLock<Endpoints>,
    upstream: AtomicU64,
    errors: AtomicU64,
    rate: Mutex<Option<RateSeen>>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer::new()
    }
}

impl Observer {
    /// A fresh observer; the daemon's start time is now.
    pub fn new() -> Observer {
        Observer {
            started_at: super::state::now_secs(),
            endpoints: RwLock::default(),
            upstream: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rate: Mutex::new(None),
        }
    }

    /// When the daemon started, epoch seconds.
    pub fn started_at(&self) -> u64 {
        self.started_at
    }

    /// Counts one request for `endpoint` (a path under the API base).
    pub fn record(&self, endpoint: &str, outcome: Outcome) {
        match outcome {
            Outcome::Answered(Source::Upstream) => {
                self.upstream.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Answered(_) => {}
        }
        let endpoint = clip(endpoint);
        {
            let endpoints = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
            if let Some(counts) = endpoints.by_path.get(endpoint.as_ref()) {
                counts.add(outcome);
                return;
            }
            if endpoints.by_path.len() >= MAX_ENDPOINTS {
                endpoints.untracked.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut endpoints = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
        // Another request may have added it (or filled the map) since the read.
        if !endpoints.by_path.contains_key(endpoint.as_ref())
            && endpoints.by_path.len() >= MAX_ENDPOINTS
        {
            endpoints.untracked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        endpoints
            .by_path
            .entry(endpoint.into_owned())
            .or_default()
            .add(outcome);
    }

    /// Keeps the rate-limit figures GitHub sent last (ignored when they name no remaining).
    pub fn record_rate_limit(&self, state: &LimitState) {
        let Some(remaining) = state.remaining else {
            return;
        };
        let seen = RateSeen {
            remaining,
            limit: state.limit,
            reset: state.reset,
            seen_at: super::state::now_secs(),
        };
        *self.rate.lock().unwrap_or_else(|e| e.into_inner()) = Some(seen);
    }

    /// The last rate-limit figures.
    pub fn rate_limit(&self) -> Option<RateSeen> {
        *self.rate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers that came from GitHub (any status).
    pub fn upstream_answers(&self) -> u64 {
        self.upstream.load(Ordering::Relaxed)
    }

    /// Requests that got no answer.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The `n` endpoints with the most hits (then the most requests, then by name), how many are
    /// tracked, and how many requests went to untracked ones.
    pub fn top_endpoints(&self, n: usize) -> (Vec<EndpointFigures>, usize, u64) {
        let endpoints = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<EndpointFigures> = endpoints
            .by_path
            .iter()
            .map(|(endpoint, counts)| EndpointFigures {
                endpoint: endpoint.clone(),
                counts: counts.load(),
            })
            .collect();
        all.sort_by(|a, b| {
            b.counts
                .hits
                .cmp(&a.counts.hits)
                .then(b.counts.requests.cmp(&a.counts.requests))
                .then_with(|| a.endpoint.cmp(&b.endpoint))
        });
        all.truncate(n);
        (
            all,
            endpoints.by_path.len(),
            endpoints.untracked.load(Ordering::Relaxed),
        )
    }
}

/// The endpoint as tracked: itself (borrowed), or cut to [`MAX_ENDPOINT_CHARS`] with `…`.
fn clip(endpoint: &str) -> Cow<'_, str> {
    if endpoint.len() <= MAX_ENDPOINT_CHARS || endpoint.chars().count() <= MAX_ENDPOINT_CHARS {
        return Cow::Borrowed(endpoint);
    }
    let mut cut: String = endpoint.chars().take(MAX_ENDPOINT_CHARS - 1).collect();
    cut.push('…');
    Cow::Owned(cut)
}

/// Every figure of the daemon at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The resolver's request counters.
    pub counters: CountersSnapshot,
    /// Answers from GitHub (any status).
    pub upstream_answers: u64,
    /// Requests that got no answer.
    pub errors: u64,
    /// Entries and bytes in the cache dir.
    pub usage: Usage,
    /// Integrity failures and evictions of the cache dir (every process using it).
    pub cache_counters: CacheCounters,
    /// Whether peer sharing is on.
    pub sharing: bool,
    /// The verified peers.
    pub peers: Vec<PeerInfo>,
    /// The swarm's own figures.
    pub swarm: P2pStats,
    /// The last rate-limit figures.
    pub rate_limit: Option<RateSeen>,
    /// When the daemon started, epoch seconds.
    pub started_at: u64,
    /// Local hits sent again as kept, not resolved again (part of the local hits).
    pub replayed_hits: u64,
}

impl Snapshot {
    /// Hits: local + peer.
    pub fn hits(&self) -> u64 {
        self.counters.local_hits + self.counters.peer_hits
    }

    /// Hits over requests; 0 before the first request.
    pub fn hit_rate(&self) -> f64 {
        if self.counters.requests == 0 {
            0.0
        } else {
            self.hits() as f64 / self.counters.requests as f64
        }
    }

    /// Calls to GitHub avoided: one per hit.
    pub fn calls_saved(&self) -> u64 {
        self.hits()
    }
}

/// `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The snapshot as Prometheus (OpenMetrics) text, followed by libp2p's own metrics.
pub fn encode(snapshot: &Snapshot, peer_id: &str, libp2p: &Registry) -> String {
    let registry = peercache_registry(snapshot, peer_id);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode_registry(&mut out, &registry);
    let _ = encode_registry(&mut out, libp2p);
    let _ = encode_eof(&mut out);
    out
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric: Counter = Counter::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let metric: Gauge = Gauge::default();
    metric.set(value);
    registry.register(name, help, metric);
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A registry of constant values, built per scrape from one snapshot (counters are registered
/// without `_total`, and help texts without a final period: the encoder adds both).
fn peercache_registry(s: &Snapshot, peer_id: &str) -> Registry {
    let mut r = Registry::default();
    let c = &s.counters;
    r.register(
        "peercache_build",
        "The daemon's version and peer id",
        Info::new(vec![
            ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("peer_id".to_string(), peer_id.to_string()),
        ]),
    );
    gauge(
        &mut r,
        "peercache_start_time_seconds",
        "When the daemon started, seconds since the Unix epoch",
        int(s.started_at),
    );
    counter(
        &mut r,
        "peercache_requests",
        "Requests through the local API (GET <base>/gh/...), each counted once",
        c.requests,
    );
    let answers = Family::<Vec<(String, String)>, Counter>::default();
    for (source, value) in [
        ("local", c.local_hits),
        ("peer", c.peer_hits),
        ("revalidated", c.revalidated),
        ("stale", c.stale_served),
        ("upstream", s.upstream_answers),
    ] {
        answers
            .get_or_create(&vec![("source".to_string(), source.to_string())])
            .inc_by(value);
    }
    r.register(
        "peercache_answers",
        "Answers by the tier they came from (x-peercache-source)",
        answers,
    );
    counter(
        &mut r,
        "peercache_replayed_hits",
        "Local hits sent again as the daemon had answered the same request head, without resolving it again (part of the local answers)",
        s.replayed_hits,
    );
    counter(
        &mut r,
        "peercache_errors",
        "Requests that got no answer (GitHub unreachable and nothing cached, or a local failure)",
        s.errors,
    );
    counter(
        &mut r,
        "peercache_hits",
        "Requests answered from a fresh entry without calling GitHub: local + peer",
        s.hits(),
    );
    counter(
        &mut r,
        "peercache_misses",
        "Requests that were not hits (requests - hits)",
        c.misses,
    );
    let ratio: Gauge<f64, AtomicU64> = Gauge::default();
    ratio.set(s.hit_rate());
    r.register(
        "peercache_hit_ratio",
        "Hits over requests (0 before the first request)",
        ratio,
    );
    counter(
        &mut r,
        "peercache_upstream_calls",
        "HTTP requests sent to GitHub (revalidations and failed calls included)",
        c.upstream_calls,
    );
    counter(
        &mut r,
        "peercache_upstream_calls_saved",
        "Calls to GitHub avoided: one per hit",
        s.calls_saved(),
    );
    counter(
        &mut r,
        "peercache_oversized_answers",
        "Full answers larger than PEERCACHE_MAX_ENTRY: passed through to the caller, not cached or shared",
        c.oversized,
    );
    counter(
        &mut r,
        "peercache_requests_with_upstream_call",
        "Requests that needed at least one call to GitHub",
        c.requests_with_upstream_call,
    );
    gauge(
        &mut r,
        "peercache_cache_entries",
        "Entries in the cache dir",
        int(s.usage.entries),
    );
    gauge(
        &mut r,
        "peercache_cache_bytes",
        "Bytes of distinct bodies in the cache dir",
        int(s.usage.bytes),
    );
    counter(
        &mut r,
        "peercache_cache_integrity_failures",
        "Cache entries that failed verification and were discarded (every process using the cache dir)",
        s.cache_counters.integrity_failures,
    );
    counter(
        &mut r,
        "peercache_cache_evictions",
        "Cache entries evicted to stay under the size bound (every process using the cache dir)",
        s.cache_counters.evictions,
    );
    gauge(
        &mut r,
        "peercache_sharing",
        "1 when peer sharing is on",
        i64::from(s.sharing),
    );
    gauge(
        &mut r,
        "peercache_peers",
        "Verified swarm members (this node not included)",
        int(s.peers.len() as u64),
    );
    let w = &s.swarm;
    for (name, help, value) in [
        (
            "peercache_swarm_entries_received",
            "Entries received from peers that passed every check",
            w.entries_received,
        ),
        (
            "peercache_swarm_entries_rejected",
            "Entries received from peers that failed a check (never served)",
            w.entries_rejected,
        ),
        (
            "peercache_swarm_entries_served",
            "Entries sent to peers",
            w.entries_served,
        ),
        (
            "peercache_swarm_auth_failures",
            "Peers that could not prove they hold the swarm secret",
            w.auth_failures,
        ),
        (
            "peercache_swarm_announcements_received",
            "Announcements of fresh entries received from peers",
            w.announcements_received,
        ),
        (
            "peercache_swarm_have_notices_sent",
            "Neighbours told of a copy this node pulled (a bounded overlay)",
            w.have_notices_sent,
        ),
        (
            "peercache_swarm_have_notices_received",
            "Neighbours' notices that they hold a copy they pulled",
            w.have_notices_received,
        ),
        (
            "peercache_swarm_claims_won",
            "Keys this node was granted to fetch from GitHub for the swarm",
            w.claims_won,
        ),
        (
            "peercache_swarm_claims_waited",
            "Times this node waited for another node fetching a key",
            w.claims_waited,
        ),
        (
            "peercache_swarm_claims_granted",
            "Claims this node granted as a key's coordinator (its own included)",
            w.claims_granted,
        ),
        (
            "peercache_swarm_claims_unanswered",
            "Claims whose coordinator did not answer in time (this node then called GitHub)",
            w.claims_unanswered,
        ),
        (
            "peercache_swarm_claims_decided_on_the_way",
            "Claims passed on whose next hop did not answer in time, decided here instead",
            w.claims_decided_on_the_way,
        ),
        (
            "peercache_swarm_holders_unreached",
            "Lookups whose named holders, and the neighbours that said they hold a copy, could not be pulled from (this node then called GitHub)",
            w.holders_unreached,
        ),
        (
            "peercache_swarm_claim_waits_expired",
            "Waits for a claimant that ended without its entry (this node then called GitHub)",
            w.claim_waits_expired,
        ),
        (
            "peercache_swarm_revalidations_for_others",
            "Revalidations this node did with its own token because a member asked",
            w.revalidations_for_others,
        ),
        (
            "peercache_swarm_revalidations_for_others_unchanged",
            "Of those, the ones GitHub answered 304 (free; a full GET saved)",
            w.revalidations_unchanged,
        ),
        (
            "peercache_swarm_revalidations_asked",
            "Revalidations this node asked the owner of an entry's ETag (or a hub) to do",
            w.revalidations_asked,
        ),
        (
            "peercache_hub_entries_mirrored",
            "Entries a hub took a copy of from their announcements",
            w.entries_mirrored,
        ),
        (
            "peercache_hub_own_token_fetches",
            "Full GETs a hub made with its own token so that its ETags serve the swarm",
            w.own_token_fetches,
        ),
        (
            "peercache_hole_punches_attempted",
            "DCUtR hole punches this node took part in (succeeded or failed)",
            w.hole_punches_attempted,
        ),
        (
            "peercache_hole_punches_succeeded_tcp",
            "Hole punches that gave a direct TCP connection",
            w.hole_punches_tcp,
        ),
        (
            "peercache_hole_punches_succeeded_quic",
            "Hole punches that gave a direct QUIC connection",
            w.hole_punches_quic,
        ),
    ] {
        counter(&mut r, name, help, value);
    }
    if let Some(rate) = &s.rate_limit {
        gauge(
            &mut r,
            "peercache_ratelimit_remaining",
            "x-ratelimit-remaining of the last GitHub answer",
            int(rate.remaining),
        );
        if let Some(limit) = rate.limit {
            gauge(
                &mut r,
                "peercache_ratelimit_limit",
                "x-ratelimit-limit of the last GitHub answer",
                int(limit),
            );
        }
        if let Some(reset) = rate.reset {
            gauge(
                &mut r,
                "peercache_ratelimit_reset_time_seconds",
                "x-ratelimit-reset of the last GitHub answer, seconds since the Unix epoch",
                int(reset),
            );
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_map_is_bounded() {
        let observer = Observer::new();
        for i in 0..MAX_ENDPOINTS + 5 {
            observer.record(&format!("/e{i}"), Outcome::Answered(Source::Upstream));
        }
        observer.record("/e0", Outcome::Answered(Source::Local));
        let (top, tracked, untracked) = observer.top_endpoints(3);
        assert_eq!(tracked, MAX_ENDPOINTS);
        assert_eq!(untracked, 5);
        assert_eq!(top[0].endpoint, "/e0");
        assert_eq!(top[0].counts.hits, 1);
        assert_eq!(top[0].counts.requests, 2);
        assert_eq!(observer.upstream_answers(), MAX_ENDPOINTS as u64 + 5);
        let long = "x".repeat(500);
        assert_eq!(clip(&long).chars().count(), MAX_ENDPOINT_CHARS);
    }
}
