//! The local API: a GitHub-compatible base URL and the daemon's figures, behind a capability.
//!
//! Every path starts with the capability (`/<32 hex>/…`), or the request carries it in
//! `x-peercache-capability` (then paths start at `/gh/…`); anything else is a 404 that says
//! nothing more, so other users and jobs on a shared host learn nothing. No request body is
//! read before the capability is checked, and only routes that take one read it. Routes:
//!
//! | route                 | answer                                                           |
//! |-----------------------|------------------------------------------------------------------|
//! | `GET`/`HEAD /gh/<endpoint>` | the API answer through the cache tiers (see [`super::gh`])  |
//! | any other method on `/gh/…` | passed through to GitHub, uncached                          |
//! | `GET /api/ping`       | 204: the liveness check `fetch` pipelines ahead of its request   |
//! | `GET /api/peers`      | `{enabled, active, peer_count, peers}` (also `/api/mcp/peers`)    |
//! | `GET /api/cache/stats`| the contract's cache and request figures (also `/api/mcp/cache/stats`) |
//! | `GET /api/status`     | both of the above and everything else: `peercache status --json` |
//! | `GET /api/swarm`      | the swarm's own figures                                          |
//! | `GET /metrics`        | the figures and libp2p's as Prometheus (OpenMetrics) text        |
//! | `POST /api/connect`   | dial a JSON array of peer multiaddrs: `{dialed}` (409: no sharing) |
//! | `GET /`               | a status page for people that refreshes itself                   |
//!
//! Routing is done by hand rather than with axum's router, so that the capability is compared
//! in constant time and is checked before anything else (an unknown route and a wrong
//! capability look the same from outside).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use url::Url;

use super::metrics::{self, Observer, Snapshot, TOP_ENDPOINTS};
use super::state;
use crate::cache::Cache;
use crate::resolver::Resolver;
use crate::secret::Secret;

/// The request header that sets the freshness TTL of one request, in seconds.
pub const TTL_HEADER: &str = "x-peercache-ttl";
/// The response header that names the tier an answer came from.
pub const SOURCE_HEADER: &str = "x-peercache-source";
/// The response header of a 502 that means "GitHub unreachable and nothing cached".
pub const ERROR_HEADER: &str = "x-peercache-error";

/// What the API's handlers share.
pub struct Api {
    /// The capability: 32 lowercase hex digits.
    pub capability: String,
    /// `http://127.0.0.1:PORT`, the API's own address.
    pub origin: String,
    /// The upstream API base (`settings.api_url`).
    pub upstream: Url,
    /// The tiers.
    pub resolver: Resolver,
    /// The upstream client, for requests passed through (it shares the resolver's pool).
    pub github: crate::github::GitHub,
    /// The cache, for its figures.
    pub cache: Cache,
    /// The daemon's own token, used when a request brings no `Authorization`.
    pub default_token: Option<Secret>,
    /// The daemon's TTL, used when a request brings no `x-peercache-ttl`.
    pub default_ttl: Duration,
    /// The p2p node, when sharing is on.
    pub peers: Option<crate::p2p::Handle>,
    /// Why sharing is off (`None` when on).
    pub sharing_reason: Option<String>,
    /// Who shares the swarm (`PEERCACHE_SCOPE`), as shown to people.
    pub scope: String,
    /// The daemon's peer id.
    pub peer_id: String,
    /// Answers per endpoint and the last rate-limit figures.
    pub observer: Observer,
    /// Each token's rate-limit figures for cached answers.
    pub limit_figures: super::gh::LimitFigures,
    /// The base URLs answers point at, worked out once.
    pub bases: Bases,
    /// Bodies as sent, their URLs rewritten once per body and base.
    pub sent: super::gh::SentBodies,
    /// Answers to hot hits, sent again while they hold.
    pub hot: super::hot::HotAnswers,
    /// libp2p's own metrics (empty when sharing is off).
    pub libp2p_registry: prometheus_client::registry::Registry,
}

/// The API's router: one handler that routes by hand.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .fallback(dispatch)
        .with_state(api)
        .layer(axum::middleware::map_response(keep_alive_hint))
}

/// The server closes a connection idle for 5 s (the header-read timeout); saying so lets
/// clients with connection pools (undici, urllib3) retire it first instead of reusing a
/// connection that is being closed.
async fn keep_alive_hint(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::HeaderName::from_static("keep-alive"),
        HeaderValue::from_static("timeout=4"),
    );
    response
}

/// 128 random bits as 32 hex digits, from the OS's generator.
pub fn new_capability() -> String {
    use aes_gcm::aead::OsRng;
    use aes_gcm::aead::rand_core::RngCore;
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Equality that takes the same time wherever the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The request header that carries the capability for requests without the path prefix
/// (`http://127.0.0.1:PORT/gh/…`), so that scripts need not put it in a URL on a command line.
pub const CAPABILITY_HEADER: &str = "x-peercache-capability";

/// Most bytes of a body the API reads itself (`POST /api/connect`: 1,000 multiaddrs).
const MAX_OWN_BODY: usize = 256 << 10;

/// Routes a request. The capability is checked from the request line (or the capability
/// header) before anything else, and no body is read before that, nor on routes that take none.
async fn dispatch(State(api): State<Arc<Api>>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path()
        .strip_prefix('/')
        .unwrap_or(parts.uri.path());
    let (first, rest) = match path.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    let (rest, base) = if constant_time_eq(first.as_bytes(), api.capability.as_bytes()) {
        (rest, api.bases.of(&parts.headers, true))
    } else if parts
        .headers
        .get(CAPABILITY_HEADER)
        .is_some_and(|v| constant_time_eq(v.as_bytes(), api.capability.as_bytes()))
    {
        (Some(path), api.bases.of(&parts.headers, false))
    } else {
        return not_found();
    };
    let route = match rest {
        None | Some("") => Route::Status,
        Some("gh") => Route::GitHub(""),
        Some(r) if r.starts_with("gh/") => Route::GitHub(&r[3..]),
        // `/api/mcp/…`: the predecessor's paths, for its users' scripts.
        Some("api/peers" | "api/mcp/peers") => Route::Peers,
        Some("api/cache/stats" | "api/mcp/cache/stats") => Route::Stats,
        Some("api/status") => Route::StatusJson,
        Some("api/swarm") => Route::Swarm,
        Some("api/connect") => Route::Connect,
        Some("api/ping") => Route::Ping,
        Some("metrics") => Route::Metrics,
        Some(_) => return not_found(),
    };
    if let Route::GitHub(endpoint) = route {
        return super::gh::handle(&api, base, endpoint, &parts, body).await;
    }
    let allowed = match route {
        Route::Connect => Method::POST,
        _ => Method::GET,
    };
    if parts.method != allowed {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, allowed.as_str())],
            axum::Json(json!({"message": format!("only {allowed} is supported here")})),
        )
            .into_response();
    }
    match route {
        Route::GitHub(_) => unreachable!("answered above"),
        Route::Peers => {
            let peers = api
                .peers
                .as_ref()
                .map(crate::p2p::Handle::peers)
                .unwrap_or_default();
            axum::Json(peers_json(api.peers.as_ref(), &peers)).into_response()
        }
        Route::Stats => axum::Json(stats_json(&snapshot(&api).await)).into_response(),
        Route::StatusJson => axum::Json(status_json(&api).await).into_response(),
        Route::Swarm => axum::Json(swarm(&api)).into_response(),
        Route::Metrics => metrics(&api).await,
        Route::Status => status_page(&api).await,
        Route::Ping => StatusCode::NO_CONTENT.into_response(),
        Route::Connect => match axum::body::to_bytes(body, MAX_OWN_BODY).await {
            Ok(body) => connect(&api, &body),
            Err(_) => json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is cut off or larger than {MAX_OWN_BODY} bytes"),
            ),
        },
    }
}

/// The base URLs answers point at: `http://HOST:PORT` as the client addressed the daemon, when
/// that is a loopback name for this very port (so that URLs in answers keep working for a
/// client configured with `localhost`), else the daemon's own address, never a name a client
/// made up; with the capability prefix, or without it for a client that sends the capability
/// header. They are few, so they are worked out once and a request only picks one.
pub struct Bases {
    /// `(Host, origin, origin/capability)`; the first, the daemon's own, has no Host.
    by_host: Vec<(String, String, String)>,
}

impl Bases {
    /// The bases of an API at `origin` (`http://127.0.0.1:PORT`) behind `capability`.
    pub fn new(origin: &str, capability: &str) -> Bases {
        let port = origin.rsplit(':').next().unwrap_or_default();
        let mut by_host = vec![(
            String::new(),
            origin.to_string(),
            format!("{origin}/{capability}"),
        )];
        for name in ["127.0.0.1", "localhost", "[::1]"] {
            let host = format!("{name}:{port}");
            let origin = format!("http://{host}");
            let prefixed = format!("{origin}/{capability}");
            by_host.push((host, origin, prefixed));
        }
        Bases { by_host }
    }

    /// The base for a request with these headers, with the capability prefix or without.
    fn of(&self, headers: &HeaderMap, prefixed: bool) -> &str {
        let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
        let (_, origin, with_capability) = self.by_host[1..]
            .iter()
            .find(|(name, _, _)| host == Some(name.as_bytes()))
            .unwrap_or(&self.by_host[0]);
        if prefixed { with_capability } else { origin }
    }
}

enum Route<'a> {
    GitHub(&'a str),
    Peers,
    Stats,
    StatusJson,
    Swarm,
    Metrics,
    Status,
    Connect,
    Ping,
}

/// Most addresses one `/api/connect` may name.
const MAX_CONNECT_ADDRS: usize = 1000;

/// `POST /api/connect` with a JSON array of multiaddrs, each ending in `/p2p/<peer id>`: the
/// node dials them (its own are skipped). Answers `{"dialed": n}`; 400 when any entry is not a
/// peer multiaddr (nothing is dialed then); 409 when sharing is off.
fn connect(api: &Api, body: &[u8]) -> Response {
    let Some(node) = &api.peers else {
        let reason = api
            .sharing_reason
            .as_deref()
            .unwrap_or("peer sharing is off");
        return json_error(
            StatusCode::CONFLICT,
            &format!("this daemon does not share, so it dials nobody: {reason}"),
        );
    };
    let addrs: Vec<String> = match serde_json::from_slice(body) {
        Ok(addrs) => addrs,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("expected a JSON array of multiaddrs ({e})"),
            );
        }
    };
    if addrs.len() > MAX_CONNECT_ADDRS {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("at most {MAX_CONNECT_ADDRS} addresses at a time"),
        );
    }
    let mut parsed = Vec::with_capacity(addrs.len());
    for text in &addrs {
        match crate::p2p::parse_peer_addr(text) {
            Ok(pair) => parsed.push(pair),
            Err(why) => {
                return json_error(StatusCode::BAD_REQUEST, &format!("{text:?}: {why}"));
            }
        }
    }
    let me = node.peer_id();
    let mut dialed = 0;
    for (peer, addr) in parsed {
        if peer != me {
            node.dial(addr);
            dialed += 1;
        }
    }
    axum::Json(json!({ "dialed": dialed })).into_response()
}

/// Every counter of [`crate::p2p::P2pStats`] by its field name: one list, the struct, for
/// `/api/swarm` and `/api/status` alike.
fn swarm_counters(stats: &crate::p2p::P2pStats) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(stats) {
        Ok(serde_json::Value::Object(map)) => map,
        // A struct of integers always serialises to an object.
        _ => serde_json::Map::new(),
    }
}

/// `/api/swarm`: the swarm's own figures (entries received, rejected, served, auth failures,
/// announcements, claims, revalidations done for members and asked of them); all zero when
/// sharing is off.
fn swarm(api: &Api) -> serde_json::Value {
    let stats = api.peers.as_ref().map(|h| h.stats()).unwrap_or_default();
    let node = api.peers.as_ref();
    let mut figures = swarm_counters(&stats);
    figures.insert("enabled".into(), json!(api.peers.is_some()));
    // Connections open now, and whether the swarm outgrew the full mesh (see overlay.rs).
    figures.insert(
        "connections".into(),
        json!(node.map_or(0, crate::p2p::Handle::connections)),
    );
    let overlay = if node.is_some_and(crate::p2p::Handle::bounded) {
        "bounded"
    } else {
        "full_mesh"
    };
    figures.insert("overlay".into(), json!(overlay));
    serde_json::Value::Object(figures)
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"message": "Not Found"})),
    )
        .into_response()
}

pub(super) fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

/// `GET <base>/api/peers` (and `/api/mcp/peers`): exactly the contract's fields, `{enabled,
/// active, peer_count, reachability, relays, peers: [{peer_id, runner_name, listen_port,
/// last_seen, multiaddrs, connection}]}`. Why sharing is off is in `/api/status`.
fn peers_json(
    node: Option<&crate::p2p::Handle>,
    peers: &[crate::p2p::PeerInfo],
) -> serde_json::Value {
    let list: Vec<serde_json::Value> = peers
        .iter()
        .map(|p| {
            json!({
                "peer_id": p.peer_id,
                "runner_name": p.runner_name,
                "listen_port": p.listen_port,
                "last_seen": p.last_seen,
                "multiaddrs": p.multiaddrs,
                "connection": p.connection,
            })
        })
        .collect();
    json!({
        "enabled": node.is_some(),
        "active": !list.is_empty(),
        "peer_count": list.len(),
        "reachability": node.map_or("unknown", crate::p2p::Handle::reachability),
        "relays": node.map(crate::p2p::Handle::relays).unwrap_or_default(),
        "peers": list,
    })
}

/// Every figure at this moment (see [`metrics`] for the definitions).
async fn snapshot(api: &Api) -> Snapshot {
    let cache = api.cache.clone();
    let (usage, cache_counters) =
        tokio::task::spawn_blocking(move || (cache.usage(), cache.counters()))
            .await
            .unwrap_or_default();
    Snapshot {
        counters: api.resolver.counters(),
        upstream_answers: api.observer.upstream_answers(),
        errors: api.observer.errors(),
        usage,
        cache_counters,
        sharing: api.peers.is_some(),
        peers: api
            .peers
            .as_ref()
            .map(crate::p2p::Handle::peers)
            .unwrap_or_default(),
        swarm: api.peers.as_ref().map(|h| h.stats()).unwrap_or_default(),
        rate_limit: api.observer.rate_limit(),
        started_at: api.observer.started_at(),
        replayed_hits: api.hot.replayed(),
    }
}

/// `GET <base>/api/cache/stats` (and `/api/mcp/cache/stats`): exactly the contract's fields.
fn stats_json(s: &Snapshot) -> serde_json::Value {
    let c = &s.counters;
    json!({
        "available": true,
        "total_entries": s.usage.entries,
        "total_size_mb": round_to(s.usage.bytes as f64 / (1024.0 * 1024.0), 2),
        "hit_rate": round_to(s.hit_rate(), 4),
        "p2p_enabled": s.sharing,
        "p2p_peers": s.peers.len(),
        "api_calls_made": c.upstream_calls,
        "api_calls_saved": s.calls_saved(),
        "local_hits": c.local_hits,
        "peer_hits": c.peer_hits,
        "misses": c.misses,
        "revalidated": c.revalidated,
        "stale_served": c.stale_served,
    })
}

fn round_to(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// `GET <base>/api/status`: `/api/peers` and `/api/cache/stats` as they are at this moment, and
/// everything else the daemon knows: why sharing is off, the request breakdown, the cache dir's
/// counters, the swarm's figures, the last rate-limit figures, and the top endpoints.
async fn status_json(api: &Api) -> serde_json::Value {
    let s = snapshot(api).await;
    let c = &s.counters;
    let (top, tracked, untracked) = api.observer.top_endpoints(TOP_ENDPOINTS);
    let w = &s.swarm;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "peer_id": api.peer_id,
        "started_at": s.started_at,
        "uptime_secs": state::now_secs().saturating_sub(s.started_at),
        "upstream": api.upstream.as_str().trim_end_matches('/'),
        "sharing": { "enabled": s.sharing, "reason": api.sharing_reason, "scope": api.scope },
        "peers": peers_json(api.peers.as_ref(), &s.peers),
        "cache": stats_json(&s),
        "requests": {
            "total": c.requests,
            "hits": s.hits(),
            "hit_rate": round_to(s.hit_rate(), 4),
            "local_hits": c.local_hits,
            "replayed_hits": s.replayed_hits,
            "peer_hits": c.peer_hits,
            "revalidated": c.revalidated,
            "stale_served": c.stale_served,
            "upstream": s.upstream_answers,
            "errors": s.errors,
            "misses": c.misses,
            "upstream_calls": c.upstream_calls,
            "upstream_calls_saved": s.calls_saved(),
            "requests_with_upstream_call": c.requests_with_upstream_call,
        },
        "store": {
            "entries": s.usage.entries,
            "bytes": s.usage.bytes,
            "integrity_failures": s.cache_counters.integrity_failures,
            "evictions": s.cache_counters.evictions,
        },
        "swarm": serde_json::Value::Object(swarm_counters(w)),
        "rate_limit": s.rate_limit,
        "endpoints": {
            "tracked": tracked,
            "untracked_requests": untracked,
            "top": top,
        },
    })
}

/// `GET <base>/metrics`: the daemon's figures and libp2p's, as OpenMetrics text (which
/// Prometheus reads natively).
async fn metrics(api: &Api) -> Response {
    let s = snapshot(api).await;
    let text = metrics::encode(&s, &api.peer_id, &api.libp2p_registry);
    (
        [
            (header::CONTENT_TYPE, metrics::CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

/// The status page's template: `{{NAME}}` placeholders, filled in one pass by [`fill`].
const STATUS_PAGE: &str = include_str!("status_page.html");

/// `GET <base>/`: a page for people that refreshes itself from `api/peers` and
/// `api/cache/stats` every 2 s. Everything from outside (peer ids, runner names, addresses) is
/// HTML-escaped here and set as text by the script; a per-response nonce in the
/// `Content-Security-Policy` lets only the page's own script and style run.
async fn status_page(api: &Api) -> Response {
    let s = snapshot(api).await;
    let nonce = new_capability();
    let c = &s.counters;
    let now = state::now_secs();
    let sharing = match &api.sharing_reason {
        None => format!("peer sharing on · scope {}", api.scope),
        Some(reason) => format!("peer sharing off: {reason}"),
    };
    let mut rows = String::new();
    for p in &s.peers {
        rows.push_str(&format!(
            "<tr data-peer-id=\"{id}\"><td class=\"mono\">{id}</td><td>{runner}</td><td>{link}</td><td class=\"mono\">{addr}</td><td>{seen}</td></tr>\n",
            id = html_escape(&p.peer_id),
            runner = html_escape(p.runner_name.as_deref().unwrap_or("—")),
            link = html_escape(p.connection),
            addr = html_escape(preferred_addr(&p.multiaddrs).unwrap_or("")),
            seen = html_escape(&last_seen_text(p.last_seen, now)),
        ));
    }
    let value = |key: &str| -> Option<String> {
        let text = match key {
            "NONCE" => nonce.clone(),
            "VERSION" => env!("CARGO_PKG_VERSION").to_string(),
            "PEER_ID" => api.peer_id.clone(),
            "UPSTREAM" => api.upstream.as_str().trim_end_matches('/').to_string(),
            "SHARING" => sharing.clone(),
            "PEER_COUNT" => s.peers.len().to_string(),
            "HIT_RATE" => format!("{:.1} %", s.hit_rate() * 100.0),
            "HITS" => s.hits().to_string(),
            "REQUESTS" => c.requests.to_string(),
            "LOCAL" => c.local_hits.to_string(),
            "PEER" => c.peer_hits.to_string(),
            "REVALIDATED" => c.revalidated.to_string(),
            "STALE" => c.stale_served.to_string(),
            "MISSES" => c.misses.to_string(),
            "CALLS_MADE" => c.upstream_calls.to_string(),
            "CALLS_SAVED" => s.calls_saved().to_string(),
            "REVALIDATED_FOR_OTHERS" => s.swarm.revalidations_for_others.to_string(),
            "REVALIDATIONS_FREE" => s.swarm.revalidations_unchanged.to_string(),
            "MIRRORED" => s.swarm.entries_mirrored.to_string(),
            "OWN_TOKEN_FETCHES" => s.swarm.own_token_fetches.to_string(),
            "ENTRIES" => s.usage.entries.to_string(),
            "SIZE_MB" => format!("{:.2}", s.usage.bytes as f64 / (1024.0 * 1024.0)),
            // Already HTML.
            "PEER_ROWS" => return Some(rows.clone()),
            "NO_PEERS_HIDDEN" => {
                return Some(if s.peers.is_empty() { "" } else { " hidden" }.into());
            }
            _ => return None,
        };
        Some(html_escape(&text))
    };
    let page = fill(STATUS_PAGE, value);
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page,
    )
        .into_response();
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

/// Replaces each `{{NAME}}` of `template` with `value(NAME)` in one pass (a value is never
/// searched for placeholders itself); unknown names are left as they are.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 1024);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after
            .find("}}")
            .and_then(|end| Some((end, value(&after[..end])?)))
        {
            Some((end, text)) => {
                out.push_str(&text);
                rest = &after[end + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Text made safe for HTML element content and quoted attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

/// The address to show for a peer: the first that is not loopback, else the first.
pub fn preferred_addr(addrs: &[String]) -> Option<&str> {
    let loopback = |a: &&String| a.starts_with("/ip4/127.") || a.starts_with("/ip6/::1/");
    addrs
        .iter()
        .find(|a| !loopback(a))
        .or_else(|| addrs.first())
        .map(String::as_str)
}

/// `12:00:01 UTC (3 s ago)`.
pub fn last_seen_text(last_seen: u64, now: u64) -> String {
    let day = last_seen % 86_400;
    let ago = now.saturating_sub(last_seen);
    let ago = if ago < 120 {
        format!("{ago} s ago")
    } else {
        format!("{} min ago", ago / 60)
    };
    format!(
        "{:02}:{:02}:{:02} UTC ({ago})",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_follow_loopback_names_of_this_port_only() {
        let bases = Bases::new("http://127.0.0.1:4000", "cap");
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert_eq!(
            bases.of(&host("localhost:4000"), true),
            "http://localhost:4000/cap"
        );
        assert_eq!(bases.of(&host("[::1]:4000"), false), "http://[::1]:4000");
        assert_eq!(
            bases.of(&host("localhost:4001"), true),
            "http://127.0.0.1:4000/cap"
        );
        assert_eq!(
            bases.of(&host("evil.example:4000"), false),
            "http://127.0.0.1:4000"
        );
        assert_eq!(
            bases.of(&HeaderMap::new(), true),
            "http://127.0.0.1:4000/cap"
        );
    }

    #[test]
    fn capabilities_are_128_random_bits_in_hex() {
        let a = new_capability();
        let b = new_capability();
        assert_eq!(a.len(), 32);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        assert!(constant_time_eq(a.as_bytes(), a.clone().as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), &a.as_bytes()[..31]));
    }
}
