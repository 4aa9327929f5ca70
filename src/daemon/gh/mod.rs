//! `<base>/gh/…`: a base URL that behaves like `https://api.github.com` for real clients.
//!
//! - `GET` and `HEAD` go through the cache tiers ([`read`]); the answer keeps the headers
//!   clients rely on, carries an ETag of the daemon's own (the same for every token), answers
//!   a matching `If-None-Match`/`If-Modified-Since` with 304, and has the upstream API's URLs
//!   in its body and `Link` pointing back at the daemon ([`rewrite`]).
//! - Every other method, and `POST /graphql`, is passed through uncached ([`passthrough`]).
//!
//! `fetch` asks with `x-peercache-raw: 1` and gets GitHub's bytes and headers unchanged.

mod passthrough;
pub mod rewrite;

use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use url::Url;

use super::api::{Api, ERROR_HEADER, SOURCE_HEADER, TTL_HEADER, json_error};
use super::metrics::Outcome;
use crate::cache::{DEFAULT_ACCEPT, DEFAULT_API_VERSION};
use crate::github::on_api_host;
use crate::github::ratelimit::{LimitState, RateLimits};
use crate::resolver::{Request, ResolveError, Resolved, Source};
use crate::secret::Secret;

/// The request header with which `fetch` asks for GitHub's bytes and headers as they are.
pub const RAW_HEADER: &str = "x-peercache-raw";
/// The response header that marks `x-ratelimit-*` as the last figures seen for the caller's
/// bucket (the answer itself came from the cache, not from GitHub).
pub const RATELIMIT_MARK_HEADER: &str = "x-peercache-ratelimit";

/// Answers one request under `<base>/gh/`; `base` is the daemon's base URL as this client
/// addresses it (with the capability prefix, or without it in header mode).
pub async fn handle(api: &Api, base: &str, endpoint: &str, parts: &Parts, body: Body) -> Response {
    if parts.method == Method::GET || parts.method == Method::HEAD {
        read(api, base, endpoint, parts).await
    } else {
        passthrough::forward(api, base, endpoint, parts, body).await
    }
}

/// The URL on the upstream API for `<base>/gh/<endpoint>?<query>`, refusing anything that
/// leaves the API base.
pub fn upstream_url(upstream: &Url, endpoint: &str, query: Option<&str>) -> Result<Url, String> {
    let mut text = format!("{}/{}", upstream.as_str().trim_end_matches('/'), endpoint);
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        text.push('?');
        text.push_str(query);
    }
    let url = Url::parse(&text).map_err(|e| format!("invalid endpoint {endpoint:?}: {e}"))?;
    if !on_api_host(upstream, &url) {
        return Err(format!(
            "invalid endpoint {endpoint:?}: it leaves the API base {upstream}"
        ));
    }
    Ok(url)
}

/// `GET`/`HEAD <base>/gh/<endpoint>`: the request resolved through the tiers. A `HEAD` is
/// resolved as the `GET` it stands for; hyper sends its headers and no body.
async fn read(api: &Api, base: &str, endpoint: &str, parts: &Parts) -> Response {
    let request = match to_request(api, endpoint, parts.uri.query(), &parts.headers) {
        Ok(request) => request,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    let result = api.resolver.resolve(&request).await;
    observe(api, &request, &result).await;
    let raw = parts.headers.contains_key(RAW_HEADER);
    match result {
        Ok(resolved) if raw => respond_raw(api, base, resolved),
        Ok(resolved) => respond(api, base, &request, &parts.headers, resolved),
        Err(ResolveError::Unreachable(message)) => {
            let mut response = json_error(StatusCode::BAD_GATEWAY, &message);
            response
                .headers_mut()
                .insert(ERROR_HEADER, HeaderValue::from_static("unreachable"));
            response
        }
        Err(ResolveError::RateLimited { until_ms, reason }) => {
            rate_limited(api, &request, until_ms, &reason)
        }
        Err(ResolveError::Local(error)) => {
            let message = format!("{error:#}");
            tracing::error!("cannot answer {}: {message}", request.url);
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &message)
        }
    }
}

/// Counts a resolved request for its endpoint and, when GitHub may have been called, keeps the
/// rate-limit figures the resolver recorded for the request's token.
async fn observe(api: &Api, request: &Request, result: &Result<Resolved, ResolveError>) {
    let outcome = match result {
        Ok(resolved) => Outcome::Answered(resolved.source),
        Err(_) => Outcome::Failed,
    };
    api.observer
        .record(&endpoint_path(&api.upstream, &request.url), outcome);
    if matches!(outcome, Outcome::Answered(Source::Local | Source::Peer)) {
        return;
    }
    let limits = limits_of(api, request.token.as_ref());
    if let Ok(state) = tokio::task::spawn_blocking(move || limits.state()).await {
        api.observer.record_rate_limit(&state);
    }
}

/// The rate-limit figures of each token's bucket as last read from the cache dir, re-read at
/// most once a second: cached answers carry them, and reading the state file for every hit
/// would cost more than the hit itself.
#[derive(Debug, Default)]
pub struct LimitFigures {
    seen: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, LimitState)>>,
}

/// How old the figures on a cached answer may be.
const FIGURES_MAX_AGE: Duration = Duration::from_secs(1);
/// Buckets remembered at most (then the memory starts over).
const FIGURES_MAX_BUCKETS: usize = 1024;

impl LimitFigures {
    /// The bucket's figures, at most [`FIGURES_MAX_AGE`] old.
    fn get(&self, api: &Api, token: Option<&Secret>) -> LimitState {
        let tag = crate::cache::token_tag(token.map(Secret::expose));
        let now = std::time::Instant::now();
        if let Ok(seen) = self.seen.lock()
            && let Some((at, state)) = seen.get(&tag)
            && now.duration_since(*at) < FIGURES_MAX_AGE
        {
            return state.clone();
        }
        let state = limits_of(api, token).state();
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= FIGURES_MAX_BUCKETS {
                seen.clear();
            }
            seen.insert(tag, (now, state.clone()));
        }
        state
    }
}

fn limits_of(api: &Api, token: Option<&Secret>) -> RateLimits {
    RateLimits::new(
        api.cache.dir(),
        api.upstream.as_str().trim_end_matches('/'),
        token.map(Secret::expose),
    )
}

/// The path of `url` under the API base, with a leading `/` and without the query:
/// `/repos/octo/hello` for `https://ghe.example/api/v3/repos/octo/hello?page=2`.
fn endpoint_path(upstream: &Url, url: &Url) -> String {
    let base = upstream.path().trim_end_matches('/');
    let path = url.path();
    let relative = path.strip_prefix(base).unwrap_or(path);
    if relative.starts_with('/') {
        relative.to_string()
    } else {
        format!("/{relative}")
    }
}

/// Request headers that never reach `Request::extra_headers`: the ones the request's fields
/// carry (Authorization, Accept, X-GitHub-Api-Version), hop-by-hop ones, the conditionals the
/// daemon answers itself, the daemon's own, and what only describes the client (the daemon
/// answers with identity encoding, which every client accepts).
const NOT_PASSED_UPSTREAM: &[&str] = &[
    "authorization",
    "accept",
    "x-github-api-version",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
    "content-type",
    "user-agent",
    "accept-encoding",
    "accept-language",
    "if-none-match",
    "if-modified-since",
    "cookie",
    "origin",
    "referer",
    "sec-fetch-mode",
    "sec-fetch-site",
    "sec-fetch-dest",
];

/// The resolver's request for `<base>/gh/<endpoint>?<query>` and the request's headers.
fn to_request(
    api: &Api,
    endpoint: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Request, String> {
    let url = upstream_url(&api.upstream, endpoint, query)?;
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
    let extra_headers = headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !NOT_PASSED_UPSTREAM.contains(&name) && !name.starts_with("x-peercache-")
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    Ok(Request {
        url,
        accept: accept.to_string(),
        api_version: api_version.to_string(),
        token,
        extra_headers,
        ttl,
    })
}

/// Headers never passed on: hyper frames the body itself, and the daemon sets its own.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    SOURCE_HEADER,
    ERROR_HEADER,
    RATELIMIT_MARK_HEADER,
];

/// What GitHub sends on every 200 and 304 of the REST API.
const GITHUB_VARY: &str = "Accept, Authorization, Cookie, X-GitHub-OTP";

/// The answer for `fetch`: status, headers and body as GitHub sent them (`Link` pointing at
/// the daemon, which `fetch` maps back), and `x-peercache-source`.
fn respond_raw(api: &Api, base: &str, resolved: Resolved) -> Response {
    let Ok(status) = StatusCode::from_u16(resolved.status) else {
        return invalid_status(resolved.status);
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
            rewrite::link(value, &api.upstream, base)
        } else {
            value.clone()
        };
        append(out, &lower, &value);
    }
    out.insert(
        SOURCE_HEADER,
        HeaderValue::from_static(resolved.source.as_str()),
    );
    response
}

fn invalid_status(status: u16) -> Response {
    json_error(
        StatusCode::BAD_GATEWAY,
        &format!("GitHub answered an invalid status {status}"),
    )
}

fn append(out: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        out.append(name, value);
    }
}

/// The daemon's ETag for a body: the same whoever asks and whichever member stored it (GitHub's
/// own depends on the token).
pub fn etag_of(resolved: &Resolved) -> String {
    let digest = match &resolved.entry {
        Some(entry) => entry.digest.clone(),
        None => hex::encode(Sha256::digest(&resolved.body)),
    };
    format!("W/\"pc-{}\"", &digest[..digest.len().min(40)])
}

/// The answer for a client: GitHub's answer with the daemon's ETag, a 304 when the client's
/// validators still match, the headers of a GitHub answer on cached ones, and URLs in the body
/// pointing back at the daemon.
fn respond(
    api: &Api,
    base: &str,
    request: &Request,
    asked: &HeaderMap,
    resolved: Resolved,
) -> Response {
    let Ok(status) = StatusCode::from_u16(resolved.status) else {
        return invalid_status(resolved.status);
    };
    let success = resolved.is_success();
    let etag = success.then(|| etag_of(&resolved));
    let header_of = |name: &str| {
        resolved
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let not_modified = etag
        .as_deref()
        .is_some_and(|etag| still_valid(asked, etag, header_of("last-modified")));
    let is_json = header_of("content-type").is_some_and(|t| t.contains("json"));

    let mut out = HeaderMap::new();
    for (name, value) in &resolved.headers {
        let lower = name.to_ascii_lowercase();
        if NOT_FORWARDED.contains(&lower.as_str()) || (success && lower == "etag") {
            continue;
        }
        if not_modified && lower == "content-type" {
            continue;
        }
        let value = if lower == "link" {
            rewrite::link(value, &api.upstream, base)
        } else {
            value.clone()
        };
        append(&mut out, &lower, &value);
    }
    if let Some(etag) = &etag {
        append(&mut out, "etag", etag);
    }
    if resolved.source != Source::Upstream {
        cached_headers(api, request, &mut out);
    }
    out.insert(
        SOURCE_HEADER,
        HeaderValue::from_static(resolved.source.as_str()),
    );
    let body = if not_modified {
        Vec::new()
    } else if is_json {
        rewrite::urls(&resolved.body, &api.upstream, base).unwrap_or(resolved.body)
    } else {
        resolved.body
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        status
    };
    *response.headers_mut() = out;
    response
}

/// Whether a client's `If-None-Match` (or, without one, `If-Modified-Since`) still matches.
fn still_valid(asked: &HeaderMap, etag: &str, last_modified: Option<&str>) -> bool {
    let text = |name| asked.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(list) = text("if-none-match") {
        let ours = etag.trim_start_matches("W/");
        return list
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours);
    }
    let since = text("if-modified-since").and_then(|v| httpdate::parse_http_date(v.trim()).ok());
    let modified = last_modified.and_then(|v| httpdate::parse_http_date(v.trim()).ok());
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// What GitHub sends with every answer and the cache does not store: `cache-control`, `vary`,
/// and the caller's rate-limit figures as last seen (marked as such).
fn cached_headers(api: &Api, request: &Request, out: &mut HeaderMap) {
    if !out.contains_key("cache-control") {
        let scope = if request.token.is_some() {
            "private"
        } else {
            "public"
        };
        append(
            out,
            "cache-control",
            &format!("{scope}, max-age=60, s-maxage=60"),
        );
    }
    if !out.contains_key("vary") {
        append(out, "vary", GITHUB_VARY);
    }
    let state = api.limit_figures.get(api, request.token.as_ref());
    if ratelimit_headers(&state, out) {
        append(out, RATELIMIT_MARK_HEADER, "cached");
    }
}

/// `x-ratelimit-*` from a bucket's last figures; false when none were ever seen.
fn ratelimit_headers(state: &LimitState, out: &mut HeaderMap) -> bool {
    let (Some(limit), Some(remaining)) = (state.limit, state.remaining) else {
        return false;
    };
    append(out, "x-ratelimit-limit", &limit.to_string());
    append(out, "x-ratelimit-remaining", &remaining.to_string());
    append(
        out,
        "x-ratelimit-used",
        &limit.saturating_sub(remaining).to_string(),
    );
    if let Some(reset) = state.reset {
        append(out, "x-ratelimit-reset", &reset.to_string());
    }
    append(out, "x-ratelimit-resource", "core");
    true
}

/// During a rate-limit block, with nothing cached: what GitHub itself answers — 403 with
/// `x-ratelimit-remaining: 0` when the primary limit is spent, else 429 (a secondary limit) —
/// with `retry-after` and `x-ratelimit-reset`, so throttling plugins know when to retry.
fn rate_limited(api: &Api, request: &Request, until_ms: u64, reason: &str) -> Response {
    let state = limits_of(api, request.token.as_ref()).state();
    let now = crate::cache::now_ms();
    let wait_secs = until_ms.saturating_sub(now).div_ceil(1000).max(1);
    let primary = state.remaining == Some(0);
    let (status, message, docs) = if primary {
        (
            StatusCode::FORBIDDEN,
            "API rate limit exceeded. (peercache makes no call to GitHub before the reset.)",
            "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
        )
    } else {
        (
            StatusCode::TOO_MANY_REQUESTS,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
        )
    };
    let mut response = (
        status,
        axum::Json(json!({
            "message": message,
            "documentation_url": docs,
            "peercache": reason,
        })),
    )
        .into_response();
    let out = response.headers_mut();
    append(out, "retry-after", &wait_secs.to_string());
    let reset = state.reset.unwrap_or(until_ms / 1000).max(until_ms / 1000);
    if let Some(limit) = state.limit {
        append(out, "x-ratelimit-limit", &limit.to_string());
    }
    if primary {
        append(out, "x-ratelimit-remaining", "0");
    }
    append(out, "x-ratelimit-reset", &reset.to_string());
    append(out, "x-ratelimit-resource", "core");
    append(out, ERROR_HEADER, "rate-limited");
    response
}
