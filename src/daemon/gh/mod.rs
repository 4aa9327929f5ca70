//! `<base>/gh/…`: a base URL that behaves like `https://api.github.com` for real clients.
//!
//! - `GET` and `HEAD` go through the cache tiers (`read`, `answer`, `limits`); the answer keeps the headers
//!   clients rely on, carries an ETag of the daemon's own (the same for every token), answers
//!   a matching `If-None-Match`/`If-Modified-Since` with 304, and has the upstream API's URLs
//!   in its body and `Link` pointing back at the daemon ([`rewrite`]).
//! - Every other method, and `POST /graphql`, is passed through uncached (`passthrough`).
//!
//! `fetch` asks with `x-peercache-raw: 1` and gets GitHub's bytes and headers unchanged.

mod answer;
mod limits;
mod passthrough;
pub mod rewrite;
mod sent;

pub use limits::LimitFigures;
pub use sent::SentBodies;

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use url::Url;

use super::api::{Api, ERROR_HEADER, TTL_HEADER, json_error};
use super::metrics::Outcome;
use crate::cache::{DEFAULT_ACCEPT, DEFAULT_API_VERSION};
use crate::github::on_api_host;
use crate::github::ratelimit::RateLimits;
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
    // An answer over PEERCACHE_MAX_ENTRY comes with its rest unread: it is streamed on.
    let result = api.resolver.resolve_streamed(&request).await;
    observe(api, &request, &result).await;
    let raw = parts.headers.contains_key(RAW_HEADER);
    match result {
        Ok(resolved) if raw => answer::respond_raw(api, base, resolved),
        Ok(resolved) => answer::respond(api, base, &request, &parts.headers, resolved),
        Err(ResolveError::Unreachable(message)) => {
            let mut response = json_error(StatusCode::BAD_GATEWAY, &message);
            response
                .headers_mut()
                .insert(ERROR_HEADER, HeaderValue::from_static("unreachable"));
            response
        }
        Err(ResolveError::RateLimited { until_ms, reason }) => {
            limits::rate_limited(api, &request, until_ms, &reason)
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

fn limits_of(api: &Api, token: Option<&Secret>) -> RateLimits {
    RateLimits::new(
        api.cache.dir(),
        api.upstream.as_str().trim_end_matches('/'),
        token.map(Secret::expose),
    )
}

/// The path of `url` under the API base, with a leading `/` and without the query:
/// `/repos/octo/hello` for `https://ghe.example/api/v3/repos/octo/hello?page=2` (borrowed from
/// the URL but for that `/`).
fn endpoint_path<'a>(upstream: &Url, url: &'a Url) -> Cow<'a, str> {
    let base = upstream.path().trim_end_matches('/');
    let path = url.path();
    let relative = path.strip_prefix(base).unwrap_or(path);
    if relative.starts_with('/') {
        Cow::Borrowed(relative)
    } else {
        Cow::Owned(format!("/{relative}"))
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
