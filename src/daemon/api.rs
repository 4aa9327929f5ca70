//! The local API: a GitHub-compatible base URL and the daemon's figures, behind a capability.
//!
//! Every path starts with the capability (`/<32 hex>/…`); anything else is a 404 that says
//! nothing more, so other users and jobs on a shared host learn nothing. Routes below it:
//!
//! | route                 | answer                                                           |
//! |-----------------------|------------------------------------------------------------------|
//! | `GET /gh/<endpoint>`  | the API answer through the cache tiers, with `x-peercache-source` |
//! | `GET /api/peers`      | `{enabled, active, peer_count, peers, reason}`                    |
//! | `GET /api/cache/stats`| cache and request figures                                        |
//! | `GET /metrics`        | the same figures as Prometheus text                              |
//! | `POST /api/connect`   | dial a JSON array of peer multiaddrs: `{dialed}` (409: no sharing) |
//! | `GET /`               | a short status page for people                                   |
//!
//! Routing is done by hand rather than with axum's router, so that the capability is compared
//! in constant time and is checked before anything else (an unknown route and a wrong
//! capability look the same from outside).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use url::Url;

use crate::cache::{Cache, DEFAULT_ACCEPT, DEFAULT_API_VERSION};
use crate::github::on_api_host;
use crate::resolver::{Request, ResolveError, Resolved, Resolver};
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
    /// `http://127.0.0.1:PORT/<capability>`, for rewriting `Link` headers.
    pub base_url: String,
    /// The upstream API base (`settings.api_url`).
    pub upstream: Url,
    /// The tiers.
    pub resolver: Resolver,
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
    /// The daemon's peer id.
    pub peer_id: String,
}

/// The API's router: one handler that routes by hand.
pub fn router(api: Arc<Api>) -> Router {
    Router::new().fallback(dispatch).with_state(api)
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

async fn dispatch(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = uri.path().strip_prefix('/').unwrap_or(uri.path());
    let (first, rest) = match path.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (path, None),
    };
    if !constant_time_eq(first.as_bytes(), api.capability.as_bytes()) {
        return not_found();
    }
    let route = match rest {
        None | Some("") => Route::Status,
        Some("gh") => Route::GitHub(""),
        Some(r) if r.starts_with("gh/") => Route::GitHub(&r[3..]),
        Some("api/peers") => Route::Peers,
        Some("api/cache/stats") => Route::Stats,
        Some("api/swarm") => Route::Swarm,
        Some("api/connect") => Route::Connect,
        Some("metrics") => Route::Metrics,
        Some(_) => return not_found(),
    };
    let allowed = match route {
        Route::Connect => Method::POST,
        _ => Method::GET,
    };
    if method != allowed {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, allowed.as_str())],
            axum::Json(json!({"message": format!("only {allowed} is supported here")})),
        )
            .into_response();
    }
    match route {
        Route::GitHub(endpoint) => github(&api, endpoint, uri.query(), &headers).await,
        Route::Peers => axum::Json(peers(&api)).into_response(),
        Route::Stats => axum::Json(stats(&api).await).into_response(),
        Route::Swarm => axum::Json(swarm(&api)).into_response(),
        Route::Metrics => metrics(&api).await,
        Route::Status => status_page(&api).await,
        Route::Connect => connect(&api, &body),
    }
}

enum Route<'a> {
    GitHub(&'a str),
    Peers,
    Stats,
    Swarm,
    Metrics,
    Status,
    Connect,
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

/// `/api/swarm`: the swarm's own figures (entries received, rejected, served, auth failures,
/// announcements, claims); all zero when sharing is off.
fn swarm(api: &Api) -> serde_json::Value {
    let stats = api.peers.as_ref().map(|h| h.stats()).unwrap_or_default();
    json!({
        "enabled": api.peers.is_some(),
        "entries_received": stats.entries_received,
        "entries_rejected": stats.entries_rejected,
        "entries_served": stats.entries_served,
        "auth_failures": stats.auth_failures,
        "announcements_received": stats.announcements_received,
        "claims_won": stats.claims_won,
        "claims_waited": stats.claims_waited,
    })
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"message": "Not Found"})),
    )
        .into_response()
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

/// `GET <base>/gh/<endpoint>`: the request resolved through the tiers.
async fn github(api: &Api, endpoint: &str, query: Option<&str>, headers: &HeaderMap) -> Response {
    let request = match to_request(api, endpoint, query, headers) {
        Ok(request) => request,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    match api.resolver.resolve(&request).await {
        Ok(resolved) => respond(api, resolved),
        Err(ResolveError::Unreachable(message)) => {
            let mut response = json_error(StatusCode::BAD_GATEWAY, &message);
            response
                .headers_mut()
                .insert(ERROR_HEADER, HeaderValue::from_static("unreachable"));
            response
        }
        Err(ResolveError::Local(error)) => {
            let message = format!("{error:#}");
            tracing::error!("cannot answer {}: {message}", request.url);
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &message)
        }
    }
}

/// The resolver's request for `<base>/gh/<endpoint>?<query>` and the request's headers.
fn to_request(
    api: &Api,
    endpoint: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Request, String> {
    let mut text = format!(
        "{}/{}",
        api.upstream.as_str().trim_end_matches('/'),
        endpoint
    );
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        text.push('?');
        text.push_str(query);
    }
    let url = Url::parse(&text).map_err(|e| format!("invalid endpoint {endpoint:?}: {e}"))?;
    if !on_api_host(&api.upstream, &url) {
        return Err(format!(
            "invalid endpoint {endpoint:?}: it leaves the API base {}",
            api.upstream
        ));
    }
    let text_header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    // curl sends `Accept: */*`; GitHub answers it with its default media type, so it is the
    // default representation (and the same cache entry).
    let accept = text_header("accept")
        .filter(|v| *v != "*/*")
        .unwrap_or(DEFAULT_ACCEPT);
    let api_version = text_header("x-github-api-version").unwrap_or(DEFAULT_API_VERSION);
    let token = match text_header("authorization") {
        Some(value) => Some(Secret::new(value)),
        None => api.default_token.clone(),
    };
    let ttl = match text_header(TTL_HEADER) {
        Some(value) => match value.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => {
                tracing::debug!("ignoring {TTL_HEADER}: {value:?} (not a number of seconds)");
                api.default_ttl
            }
        },
        None => api.default_ttl,
    };
    Ok(Request {
        url,
        accept: accept.to_string(),
        api_version: api_version.to_string(),
        token,
        extra_headers: Vec::new(),
        ttl,
    })
}

/// Headers never passed on: hyper frames the body itself.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    SOURCE_HEADER,
    ERROR_HEADER,
];

/// The answer as an HTTP response: status, headers (`Link` pointing back at the daemon),
/// `x-peercache-source`, and the body byte for byte.
fn respond(api: &Api, resolved: Resolved) -> Response {
    let Ok(status) = StatusCode::from_u16(resolved.status) else {
        return json_error(
            StatusCode::BAD_GATEWAY,
            &format!("GitHub answered an invalid status {}", resolved.status),
        );
    };
    let mut response = Response::new(Body::from(resolved.body));
    *response.status_mut() = status;
    let out = response.headers_mut();
    for (name, value) in &resolved.headers {
        let lower = name.to_ascii_lowercase();
        if NOT_FORWARDED.contains(&lower.as_str()) {
            continue;
        }
        let value = if lower == "link" {
            rewrite_link(value, &api.upstream, &api.base_url)
        } else {
            value.clone()
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            out.append(name, value);
        }
    }
    out.insert(
        SOURCE_HEADER,
        HeaderValue::from_static(resolved.source.as_str()),
    );
    response
}

/// Points `Link` targets under the upstream base at `<base>/gh`, so that pagination by octokit
/// or curl stays on the daemon.
pub fn rewrite_link(link: &str, upstream: &Url, base_url: &str) -> String {
    let from = format!("<{}/", upstream.as_str().trim_end_matches('/'));
    let to = format!("<{}/gh/", base_url.trim_end_matches('/'));
    link.replace(&from, &to)
}

/// The inverse of [`rewrite_link`], for `fetch`, which shows and follows upstream URLs.
pub fn unrewrite_link(link: &str, upstream: &Url, base_url: &str) -> String {
    let from = format!("<{}/gh/", base_url.trim_end_matches('/'));
    let to = format!("<{}/", upstream.as_str().trim_end_matches('/'));
    link.replace(&from, &to)
}

/// `GET <base>/api/peers`.
fn peers(api: &Api) -> serde_json::Value {
    let peers = api
        .peers
        .as_ref()
        .map(crate::p2p::Handle::peers)
        .unwrap_or_default();
    let list: Vec<serde_json::Value> = peers
        .iter()
        .map(|p| {
            json!({
                "peer_id": p.peer_id,
                "runner_name": p.runner_name,
                "listen_port": p.listen_port,
                "last_seen": p.last_seen,
                "multiaddrs": p.multiaddrs,
            })
        })
        .collect();
    json!({
        "enabled": api.peers.is_some(),
        "active": !list.is_empty(),
        "peer_count": list.len(),
        "peers": list,
        "reason": api.sharing_reason,
    })
}

/// The figures behind `/api/cache/stats`, `/metrics` and the status page.
struct Figures {
    entries: u64,
    bytes: u64,
    peers: usize,
    counters: crate::resolver::CountersSnapshot,
}

impl Figures {
    async fn collect(api: &Api) -> Figures {
        let cache = api.cache.clone();
        let usage = tokio::task::spawn_blocking(move || cache.usage())
            .await
            .unwrap_or_default();
        Figures {
            entries: usage.entries,
            bytes: usage.bytes,
            peers: api.peers.as_ref().map_or(0, |h| h.peers().len()),
            counters: api.resolver.counters(),
        }
    }

    /// Answers from the local cache or a peer, over all requests (0 before the first).
    fn hit_rate(&self) -> f64 {
        let c = &self.counters;
        if c.requests == 0 {
            0.0
        } else {
            (c.local_hits + c.peer_hits) as f64 / c.requests as f64
        }
    }

    /// Requests answered without any call to GitHub.
    fn calls_saved(&self) -> u64 {
        self.counters
            .requests
            .saturating_sub(self.counters.requests_with_upstream_call)
    }
}

/// `GET <base>/api/cache/stats`.
async fn stats(api: &Api) -> serde_json::Value {
    let f = Figures::collect(api).await;
    let c = f.counters;
    json!({
        "available": true,
        "total_entries": f.entries,
        "total_size_mb": round2(f.bytes as f64 / (1024.0 * 1024.0)),
        "hit_rate": round2(f.hit_rate() * 100.0) / 100.0,
        "p2p_enabled": api.peers.is_some(),
        "p2p_peers": f.peers,
        "api_calls_made": c.upstream_calls,
        "api_calls_saved": f.calls_saved(),
        "local_hits": c.local_hits,
        "peer_hits": c.peer_hits,
        "misses": c.misses,
        "revalidated": c.revalidated,
        "stale_served": c.stale_served,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `GET <base>/metrics`: Prometheus text format 0.0.4.
async fn metrics(api: &Api) -> Response {
    let f = Figures::collect(api).await;
    let c = f.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    metric(
        "peercache_requests_total",
        "counter",
        "Requests answered through the local API.",
        &[("", c.requests)],
    );
    metric(
        "peercache_answers_total",
        "counter",
        "Answers by the tier they came from.",
        &[
            ("{source=\"local\"}", c.local_hits),
            ("{source=\"peer\"}", c.peer_hits),
            ("{source=\"revalidated\"}", c.revalidated),
            ("{source=\"stale\"}", c.stale_served),
        ],
    );
    metric(
        "peercache_misses_total",
        "counter",
        "Requests that found no fresh entry locally or at a peer.",
        &[("", c.misses)],
    );
    metric(
        "peercache_upstream_calls_total",
        "counter",
        "Calls made to GitHub.",
        &[("", c.upstream_calls)],
    );
    metric(
        "peercache_cache_entries",
        "gauge",
        "Entries in the local cache.",
        &[("", f.entries)],
    );
    metric(
        "peercache_cache_bytes",
        "gauge",
        "Bytes of distinct bodies in the local cache.",
        &[("", f.bytes)],
    );
    metric(
        "peercache_sharing",
        "gauge",
        "1 when peer sharing is on.",
        &[("", u64::from(api.peers.is_some()))],
    );
    metric(
        "peercache_peers",
        "gauge",
        "Verified swarm members.",
        &[("", f.peers as u64)],
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// `GET <base>/`: a few lines for people.
async fn status_page(api: &Api) -> Response {
    let f = Figures::collect(api).await;
    let c = f.counters;
    let sharing = match &api.sharing_reason {
        None => format!("on, {} verified peer(s)", f.peers),
        Some(reason) => format!("off: {reason}"),
    };
    let text = format!(
        "peercache {version}\n\
         peer id:        {peer_id}\n\
         upstream:       {upstream}\n\
         peer sharing:   {sharing}\n\
         cache:          {entries} entries, {mb:.2} MB\n\
         requests:       {requests} ({local} local, {peer} peer, {revalidated} revalidated, {stale} stale, {misses} misses)\n\
         hit rate:       {rate:.1} %\n\
         GitHub calls:   {calls} made, {saved} saved\n\
         \n\
         GitHub-compatible base URL: {base}/gh\n",
        version = env!("CARGO_PKG_VERSION"),
        peer_id = api.peer_id,
        upstream = api.upstream.as_str().trim_end_matches('/'),
        entries = f.entries,
        mb = f.bytes as f64 / (1024.0 * 1024.0),
        requests = c.requests,
        local = c.local_hits,
        peer = c.peer_hits,
        revalidated = c.revalidated,
        stale = c.stale_served,
        misses = c.misses,
        rate = f.hit_rate() * 100.0,
        calls = c.upstream_calls,
        saved = f.calls_saved(),
        base = api.base_url,
    );
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn links_point_at_the_daemon_and_back() {
        let upstream = Url::parse("https://ghe.example/api/v3").unwrap();
        let base = "http://127.0.0.1:4000/cap";
        let link = r#"<https://ghe.example/api/v3/repos/a/b/issues?page=2>; rel="next", <https://elsewhere.example/x>; rel="help""#;
        let rewritten = rewrite_link(link, &upstream, base);
        assert_eq!(
            rewritten,
            r#"<http://127.0.0.1:4000/cap/gh/repos/a/b/issues?page=2>; rel="next", <https://elsewhere.example/x>; rel="help""#
        );
        assert_eq!(unrewrite_link(&rewritten, &upstream, base), link);
    }
}
