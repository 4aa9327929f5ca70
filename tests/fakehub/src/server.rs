//! HTTP layer: the GitHub-like API and the control API.
//!
//! Every path outside `/_fakehub/` is an API request, answered from the
//! stored resources (GET and HEAD only). The control endpoints are listed in
//! the crate documentation.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::serve::ListenerExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::state::{Cost, Entry, RequestMeta, Settled, Shared, normalize_path};
use crate::{Failure, JSON_CONTENT_TYPE};

/// GitHub's default and maximum page sizes.
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;

const CONTROL_PREFIX: &str = "/_fakehub";

const REQUIRES_AUTH_BODY: &str = r#"{"message":"Requires authentication","documentation_url":"https://docs.github.com/rest/users/users#get-the-authenticated-user","status":"401"}"#;
const NOT_FOUND_BODY: &str =
    r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest"}"#;
const RATE_LIMITED_BODY: &str = r#"{"message":"API rate limit exceeded for this token.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}"#;
const SECONDARY_RATE_LIMIT_BODY: &str = r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"}"#;

/// Builds the application: control routes plus a fallback that serves the API.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_fakehub/stats", get(control_stats))
        .route("/_fakehub/reset", post(control_reset))
        .route(
            "/_fakehub/config",
            get(control_get_config).post(control_config),
        )
        .route(
            "/_fakehub/resource",
            put(control_put_resource).delete(control_delete),
        )
        .route(
            "/_fakehub/list",
            put(control_put_list).delete(control_delete),
        )
        .fallback(api)
        // Benchmarks upload large generated bodies; this is a loopback test
        // server, so axum's 2 MB default would only get in the way.
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

/// Runs the accept loop until the runtime is shut down.
pub(crate) async fn serve(listener: tokio::net::TcpListener, app: Router) {
    // Nagle's algorithm would add delayed-ACK stalls to latency benchmarks.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("fakehub: server stopped: {e}");
    }
}

// ---------------------------------------------------------------------------
// The GitHub-like API
// ---------------------------------------------------------------------------

/// What the request resolved to, before the rate limit is applied.
pub(crate) enum Plan {
    Fail(Failure),
    MethodNotAllowed,
    NotFound,
    /// An answer of the issues API other than a read: a write's result or its refusal
    /// (`None`: no body, as for a 204).
    Reply {
        status: u16,
        body: Option<Bytes>,
    },
    Found {
        body: Bytes,
        content_type: String,
        etag: String,
        last_modified: Option<SystemTime>,
        link: Option<String>,
        /// `Content-Range` of a 206 answer to a `Range` request.
        content_range: Option<String>,
        /// The body is gzip-compressed (`Content-Encoding: gzip`).
        gzipped: bool,
    },
    NotModified {
        etag: String,
        last_modified: Option<SystemTime>,
    },
}

impl Plan {
    /// Status to send if the rate limit lets the request through, and what it costs.
    pub(crate) fn status_and_cost(&self, authenticated: bool) -> (u16, Cost) {
        match self {
            // An injected failure stands in for GitHub never really handling
            // the request, so it neither checks nor spends quota.
            Plan::Fail(f) => (failure_status(f.status).as_u16(), Cost::Exempt),
            Plan::MethodNotAllowed => (405, Cost::Exempt),
            Plan::NotFound => (404, Cost::Spend),
            Plan::Reply { status, .. } => (*status, Cost::Spend),
            Plan::Found {
                content_range: Some(_),
                ..
            } => (206, Cost::Spend),
            Plan::Found { .. } => (200, Cost::Spend),
            // GitHub only waives the cost of a 304 for authenticated requests.
            Plan::NotModified { .. } if authenticated => (304, Cost::Free),
            Plan::NotModified { .. } => (304, Cost::Spend),
        }
    }
}

/// Largest request body the API reads (issue and comment bodies are small).
const MAX_REQUEST_BODY: usize = 1 << 20;

async fn api(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path();
    if path == CONTROL_PREFIX || path.starts_with("/_fakehub/") {
        return text_response(StatusCode::NOT_FOUND, "unknown fakehub control endpoint\n");
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(body) => body,
        Err(_) => return text_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
    };
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    answer(&shared, &parts.method, &parts.uri, &parts.headers, &body)
}

/// Answers one API request; all the GitHub semantics live here.
fn answer(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let path = uri.path();
    let meta = RequestMeta {
        method: method.as_str().to_owned(),
        path: path.to_owned(),
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| path.to_owned(), |pq| pq.as_str().to_owned()),
        authorization: header_string(headers, &header::AUTHORIZATION),
        if_none_match: header_string(headers, &header::IF_NONE_MATCH),
        if_modified_since: header_string(headers, &header::IF_MODIFIED_SINCE),
        accept: header_string(headers, &header::ACCEPT),
    };
    let authenticated = meta.authorization.is_some();
    let is_get = method == Method::GET || method == Method::HEAD;

    if is_get && path == "/rate_limit" {
        // Free, and about the caller's own bucket.
        let settled = shared.settle(meta, 200, Cost::Exempt);
        let rate = settled.rate;
        let body =
            crate::access::rate_limit_body(rate.limit, rate.remaining, rate.used, rate.reset);
        let plan = Plan::Reply {
            status: 200,
            body: Some(body),
        };
        return build_response(plan, &settled, authenticated);
    }
    if is_get && path == "/user" {
        let plan = match meta.authorization.as_deref() {
            None => Plan::Reply {
                status: 401,
                body: Some(Bytes::from_static(REQUIRES_AUTH_BODY.as_bytes())),
            },
            Some(authorization) => conditional_answer(
                &meta,
                crate::access::user_body(authorization),
                crate::JSON_CONTENT_TYPE.to_owned(),
                None,
                None,
            ),
        };
        let (status, cost) = plan.status_and_cost(authenticated);
        let settled = shared.settle(meta, status, cost);
        return build_response(plan, &settled, authenticated);
    }
    let repository = crate::access::repository_of(path);
    if let Some((repo, _)) = &repository
        && !shared.can_see(meta.authorization.as_deref(), repo)
    {
        // GitHub hides a private repository from whoever may not see it: 404, not 403.
        let plan = Plan::NotFound;
        let (status, cost) = plan.status_and_cost(authenticated);
        let settled = shared.settle(meta, status, cost);
        return build_response(plan, &settled, authenticated);
    }

    if is_get && let Some(size) = crate::large::size_of(path) {
        let authorization = meta.authorization.clone();
        let settled = shared.settle(meta, 200, Cost::Spend);
        if settled.rate_limited {
            return build_response(Plan::NotFound, &settled, authenticated);
        }
        let chunked = uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "chunked=1"));
        return crate::large::response(
            rate_headers(&settled),
            path,
            size,
            chunked,
            authorization.as_deref(),
            method == Method::HEAD,
        );
    }

    let (failure, entry) = shared.begin(path);
    if failure.is_none() && path == "/graphql" && method == Method::POST {
        let plan = crate::graphql::plan(&meta, body);
        let (status, cost) = plan.status_and_cost(authenticated);
        let settled = shared.settle(meta, status, cost);
        return build_response_allowing(plan, &settled, authenticated, &[Method::POST]);
    }
    // The repository object carries the caller's own permissions.
    let entry = match (&repository, entry) {
        (Some((repo, true)), Some(entry)) => {
            Some(shared.personalise(&entry, meta.authorization.as_deref(), repo))
        }
        (_, entry) => entry,
    };
    let is_read = method == Method::GET || method == Method::HEAD;
    // Live issues and comments, unless a stored resource answers the read.
    if failure.is_none()
        && !(is_read && entry.is_some())
        && let Some(route) = crate::issues::Route::parse(path)
    {
        let host = request_host(headers, uri, shared);
        let call = crate::issues::Call {
            method,
            meta: &meta,
            body,
            query: uri.query(),
            host: &host,
        };
        if let Some((plan, settled)) = shared.issues_request(&route, &call) {
            let allow = crate::issues::allowed(&route.target);
            return build_response_allowing(plan, &settled, authenticated, allow);
        }
    }
    let plan = match (failure, entry) {
        (Some(failure), _) => Plan::Fail(failure),
        _ if method != Method::GET && method != Method::HEAD => Plan::MethodNotAllowed,
        (None, None) => Plan::NotFound,
        (None, Some(entry)) => {
            let host = request_host(headers, uri, shared);
            represent(evaluate(&entry, &meta, uri.query(), &host), headers)
        }
    };
    let (status, cost) = plan.status_and_cost(authenticated);
    let settled = shared.settle(meta, status, cost);
    build_response(plan, &settled, authenticated)
}

/// The representation the request's headers ask for: a 206 slice for `Range`, gzip for
/// `Accept-Encoding: gzip` (the ETag stays the plain body's, as GitHub's weak ETags do).
fn represent(plan: Plan, headers: &HeaderMap) -> Plan {
    let Plan::Found {
        body,
        content_type,
        etag,
        last_modified,
        link,
        ..
    } = plan
    else {
        return plan;
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (body, content_range) = match crate::access::byte_range(text("range"), &body) {
        Some((slice, range)) => (slice, Some(range)),
        None => (body, None),
    };
    let gzipped = crate::access::wants_gzip(text("accept-encoding"));
    let body = if gzipped {
        crate::access::gzip(&body)
    } else {
        body
    };
    Plan::Found {
        body,
        content_type,
        etag,
        last_modified,
        link,
        content_range,
        gzipped,
    }
}

/// Resolves a found resource to a full response or a 304.
fn evaluate(entry: &Entry, meta: &RequestMeta, query: Option<&str>, host: &str) -> Plan {
    let (body, content_type, last_modified, link) = match entry {
        Entry::Plain {
            body,
            content_type,
            last_modified,
        } => (body.clone(), content_type.clone(), *last_modified, None),
        // GitHub sends no Last-Modified on collections, so only ETags can
        // revalidate them.
        Entry::List(items) => {
            let (body, link) = paginate(items, &meta.path, query, host);
            (body, JSON_CONTENT_TYPE.to_owned(), None, link)
        }
    };
    conditional_answer(meta, body, content_type, last_modified, link)
}

/// The answer to a GET of a resource that exists: 304 when the request's `If-None-Match` or
/// `If-Modified-Since` still matches, else the body with its ETag and validators.
pub(crate) fn conditional_answer(
    meta: &RequestMeta,
    body: Bytes,
    content_type: String,
    last_modified: Option<SystemTime>,
    link: Option<String>,
) -> Plan {
    let etag = etag_for(&body, meta.authorization.as_deref());
    if not_modified(meta, &etag, last_modified) {
        Plan::NotModified {
            etag,
            last_modified,
        }
    } else {
        Plan::Found {
            body,
            content_type,
            etag,
            last_modified,
            link,
            content_range: None,
            gzipped: false,
        }
    }
}

/// GitHub's ETags vary with the token (the same body fetched with another
/// token gets another ETag), which is exactly what makes sharing cached
/// responses between tokens interesting; reproduce that.
pub(crate) fn etag_for(body: &[u8], authorization: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(body);
    hasher.update(authorization.unwrap_or("").as_bytes());
    format!("W/\"{}\"", hex::encode(hasher.finalize()))
}

/// Conditional-request check as GitHub's Rails stack does it: each validator
/// the client sent must pass, so a stale ETag is not rescued by a valid
/// If-Modified-Since. An unparseable date counts as not sent (RFC 9110).
pub(crate) fn not_modified(
    meta: &RequestMeta,
    etag: &str,
    last_modified: Option<SystemTime>,
) -> bool {
    let if_none_match = meta.if_none_match.as_deref();
    let if_modified_since = meta
        .if_modified_since
        .as_deref()
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok());
    if if_none_match.is_none() && if_modified_since.is_none() {
        return false;
    }
    let etag_ok = if_none_match.is_none_or(|v| etag_listed(v, etag));
    let date_ok = if_modified_since.is_none_or(|since| last_modified.is_some_and(|lm| since >= lm));
    etag_ok && date_ok
}

/// Weak comparison against a comma-separated If-None-Match list.
fn etag_listed(header: &str, etag: &str) -> bool {
    let ours = strip_weak(etag);
    header
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || strip_weak(candidate) == ours)
}

fn strip_weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// Slices one page out of a list and builds GitHub's `Link` header for it.
pub(crate) fn paginate(
    items: &[serde_json::Value],
    path: &str,
    query: Option<&str>,
    host: &str,
) -> (Bytes, Option<String>) {
    let mut per_page = DEFAULT_PER_PAGE;
    let mut page = 1usize;
    // Other parameters (state=all, sort=...) are echoed into the links in
    // their original, still-encoded form, as GitHub does.
    let mut others: Vec<&str> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            // Nonsense values fall back to the defaults instead of erroring.
            "per_page" => {
                per_page = value
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .map_or(DEFAULT_PER_PAGE, |n| n.min(MAX_PER_PAGE));
            }
            "page" => {
                page = value.parse::<usize>().ok().filter(|&n| n > 0).unwrap_or(1);
            }
            _ => others.push(pair),
        }
    }

    let start = (page - 1).saturating_mul(per_page);
    let slice = items
        .get(start..)
        .map_or(&[][..], |rest| &rest[..rest.len().min(per_page)]);
    let body = serde_json::to_vec(slice).unwrap_or_else(|_| b"[]".to_vec());

    if items.is_empty() {
        return (Bytes::from(body), None);
    }
    let last = items.len().div_ceil(per_page);
    let url = |k: usize| {
        let mut url = format!("http://{host}{path}?per_page={per_page}&page={k}");
        for pair in &others {
            url.push('&');
            url.push_str(pair);
        }
        url
    };
    // GitHub's order: prev, next, last, first.
    let mut rels = Vec::new();
    if page > 1 {
        rels.push(format!("<{}>; rel=\"prev\"", url(page - 1)));
    }
    if page < last {
        rels.push(format!("<{}>; rel=\"next\"", url(page + 1)));
        rels.push(format!("<{}>; rel=\"last\"", url(last)));
    }
    if page > 1 {
        rels.push(format!("<{}>; rel=\"first\"", url(1)));
    }
    let link = (!rels.is_empty()).then(|| rels.join(", "));
    (Bytes::from(body), link)
}

/// Host for `Link` URLs: what the client addressed, so links work through
/// whatever name or port mapping it used.
fn request_host(headers: &HeaderMap, uri: &Uri, shared: &Shared) -> String {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_else(|| shared.addr.to_string())
}

/// Injected statuses outside 200..=599 would confuse hyper (1xx) or be
/// invalid; they become 500.
fn failure_status(status: u16) -> StatusCode {
    StatusCode::from_u16(status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn default_failure_body(status: StatusCode) -> Vec<u8> {
    match status.as_u16() {
        // What GitHub says for a secondary (abuse) rate limit.
        403 | 429 => SECONDARY_RATE_LIMIT_BODY.as_bytes().to_vec(),
        _ => serde_json::json!({
            "message": status.canonical_reason().unwrap_or("Error"),
            "documentation_url": "https://docs.github.com/rest",
        })
        .to_string()
        .into_bytes(),
    }
}

fn build_response(plan: Plan, settled: &Settled, authenticated: bool) -> Response {
    build_response_allowing(plan, settled, authenticated, &[Method::GET, Method::HEAD])
}

/// [`build_response`] for a route that accepts `allow` (named in a 405's `Allow`).
fn build_response_allowing(
    plan: Plan,
    settled: &Settled,
    authenticated: bool,
    allow: &[Method],
) -> Response {
    let mut headers = rate_headers(settled);

    if settled.rate_limited {
        put_header(&mut headers, "content-type", JSON_CONTENT_TYPE);
        return finish(
            StatusCode::FORBIDDEN,
            headers,
            Bytes::from_static(RATE_LIMITED_BODY.as_bytes()),
        );
    }

    match plan {
        Plan::Fail(failure) => {
            let status = failure_status(failure.status);
            if let Some(secs) = failure.retry_after {
                put_header(&mut headers, "retry-after", &secs.to_string());
            }
            let body = failure.body.unwrap_or_else(|| default_failure_body(status));
            // A custom body may be an HTML error page, like GitHub's 502s.
            let content_type = if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok() {
                JSON_CONTENT_TYPE
            } else {
                "text/html; charset=utf-8"
            };
            put_header(&mut headers, "content-type", content_type);
            finish(status, headers, Bytes::from(body))
        }
        Plan::MethodNotAllowed => {
            let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
            put_header(&mut headers, "allow", &allow.join(", "));
            put_header(&mut headers, "content-type", JSON_CONTENT_TYPE);
            let body = r#"{"message":"Method Not Allowed","documentation_url":"https://docs.github.com/rest"}"#;
            finish(
                StatusCode::METHOD_NOT_ALLOWED,
                headers,
                Bytes::from_static(body.as_bytes()),
            )
        }
        Plan::NotFound => {
            put_header(&mut headers, "content-type", JSON_CONTENT_TYPE);
            finish(
                StatusCode::NOT_FOUND,
                headers,
                Bytes::from_static(NOT_FOUND_BODY.as_bytes()),
            )
        }
        Plan::Reply { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match body {
                Some(body) => {
                    put_header(&mut headers, "content-type", JSON_CONTENT_TYPE);
                    finish(status, headers, body)
                }
                None => finish(status, headers, Bytes::new()),
            }
        }
        Plan::Found {
            body,
            content_type,
            etag,
            last_modified,
            link,
            content_range,
            gzipped,
        } => {
            put_header(&mut headers, "content-type", &content_type);
            put_cache_headers(&mut headers, &etag, last_modified, authenticated);
            if let Some(link) = link {
                put_header(&mut headers, "link", &link);
            }
            if gzipped {
                put_header(&mut headers, "content-encoding", "gzip");
            }
            match content_range {
                Some(range) => {
                    put_header(&mut headers, "content-range", &range);
                    finish(StatusCode::PARTIAL_CONTENT, headers, body)
                }
                None => finish(StatusCode::OK, headers, body),
            }
        }
        Plan::NotModified {
            etag,
            last_modified,
        } => {
            put_cache_headers(&mut headers, &etag, last_modified, authenticated);
            finish(StatusCode::NOT_MODIFIED, headers, Bytes::new())
        }
    }
}

/// The headers of every API answer: the caller's rate-limit figures and a request id.
fn rate_headers(settled: &Settled) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let rate = settled.rate;
    put_header(&mut headers, "x-ratelimit-limit", &rate.limit.to_string());
    put_header(
        &mut headers,
        "x-ratelimit-remaining",
        &rate.remaining.to_string(),
    );
    put_header(&mut headers, "x-ratelimit-used", &rate.used.to_string());
    put_header(&mut headers, "x-ratelimit-reset", &rate.reset.to_string());
    put_header(&mut headers, "x-ratelimit-resource", "core");
    put_header(
        &mut headers,
        "x-github-request-id",
        &format!("FAKE:{:08X}", settled.request_id),
    );
    put_header(
        &mut headers,
        "x-github-media-type",
        "github.v3; format=json",
    );
    headers
}

/// Validators plus the caching headers GitHub sends on 200s and 304s.
fn put_cache_headers(
    headers: &mut HeaderMap,
    etag: &str,
    last_modified: Option<SystemTime>,
    authenticated: bool,
) {
    put_header(headers, "etag", etag);
    if let Some(lm) = last_modified {
        put_header(headers, "last-modified", &httpdate::fmt_http_date(lm));
    }
    let cache_control = if authenticated {
        "private, max-age=60, s-maxage=60"
    } else {
        "public, max-age=60, s-maxage=60"
    };
    put_header(headers, "cache-control", cache_control);
    put_header(
        headers,
        "vary",
        "Accept, Authorization, Cookie, X-GitHub-OTP",
    );
}

// ---------------------------------------------------------------------------
// Control API
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct StatsQuery {
    records: Option<String>,
}

/// `records=false` skips the request log, which can be huge after a benchmark.
async fn control_stats(State(shared): State<Arc<Shared>>, Query(q): Query<StatsQuery>) -> Response {
    let with_records = !matches!(q.records.as_deref(), Some("0" | "false" | "no"));
    json_response(StatusCode::OK, &shared.stats(with_records))
}

async fn control_reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.reset_stats();
    empty_response(StatusCode::NO_CONTENT)
}

async fn control_get_config(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &shared.config_view())
}

/// Body of `POST /_fakehub/config` (documented in the crate docs); every field is optional. Unknown fields
/// are rejected so a typo in a script fails loudly instead of doing nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigRequest {
    /// Delay before every API answer.
    latency_ms: Option<u64>,
    /// Per-window limit of every bucket.
    quota_limit: Option<u64>,
    /// Drop all failure rules (applied before any new ones in the same body).
    #[serde(default)]
    clear_failures: bool,
    /// Fail the next `n` requests (only those for `path`, if given).
    fail_next: Option<FailNextSpec>,
    /// Fail every request (only those for `path`, if given) until cleared.
    fail_always: Option<FailureSpec>,
    /// Forget all rate-limit buckets.
    #[serde(default)]
    reset_quota: bool,
    /// Empty one bucket for a while.
    exhaust_quota: Option<ExhaustSpec>,
    /// Zero the stats, like `POST /_fakehub/reset`.
    #[serde(default)]
    reset_stats: bool,
    /// Give these `owner/repo` live issues.
    #[serde(default)]
    add_repos: Vec<String>,
    /// Make every write to the issues API a 403 (or allow writes again).
    forbid_writes: Option<bool>,
    /// Make these `owner/repo` private (404 to tokens that may not see them).
    #[serde(default)]
    private_repos: Vec<String>,
    /// Limit these bare tokens to these repositories (like a job's `GITHUB_TOKEN`).
    #[serde(default)]
    scoped_tokens: std::collections::BTreeMap<String, Vec<String>>,
    /// Give these bare tokens admin `permissions`.
    #[serde(default)]
    admin_tokens: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailNextSpec {
    #[serde(default = "one")]
    n: usize,
    status: u16,
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailureSpec {
    status: u16,
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExhaustSpec {
    #[serde(default)]
    authorization: Option<String>,
    #[serde(default = "hour")]
    reset_in_secs: u64,
}

fn one() -> usize {
    1
}

fn hour() -> u64 {
    3600
}

fn to_failure(status: u16, retry_after: Option<u64>, body: Option<String>) -> Failure {
    Failure {
        status,
        retry_after,
        body: body.map(String::into_bytes),
    }
}

async fn control_config(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    // An empty body is a harmless "just show me the config".
    let req: ConfigRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ConfigRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(req) => req,
            Err(e) => return text_response(StatusCode::BAD_REQUEST, &format!("bad config: {e}\n")),
        }
    };
    if req.clear_failures {
        shared.clear_failures();
    }
    if let Some(ms) = req.latency_ms {
        shared.set_latency(std::time::Duration::from_millis(ms));
    }
    if let Some(limit) = req.quota_limit {
        shared.set_quota_limit(limit);
    }
    if let Some(spec) = req.fail_next {
        let failure = to_failure(spec.status, spec.retry_after, spec.body);
        match spec.path {
            Some(path) => shared.fail_path(&path, Some(spec.n), failure),
            None => shared.fail_next(spec.n, failure),
        }
    }
    if let Some(spec) = req.fail_always {
        let failure = to_failure(spec.status, spec.retry_after, spec.body);
        match spec.path {
            Some(path) => shared.fail_path(&path, None, failure),
            None => shared.fail_always(failure),
        }
    }
    if req.reset_quota {
        shared.reset_quota();
    }
    shared.with_access(|access| {
        for repo in &req.private_repos {
            access.set_private(repo, true);
        }
        for (token, repos) in &req.scoped_tokens {
            access.scope_token(token, repos);
        }
        for token in &req.admin_tokens {
            access.set_admin(token, true);
        }
    });
    if let Some(spec) = req.exhaust_quota {
        shared.exhaust_quota(
            spec.authorization.as_deref(),
            std::time::Duration::from_secs(spec.reset_in_secs),
        );
    }
    if req.reset_stats {
        shared.reset_stats();
    }
    for repo in &req.add_repos {
        shared.add_repo(repo);
    }
    if let Some(forbidden) = req.forbid_writes {
        shared.set_writes_forbidden(forbidden);
    }
    json_response(StatusCode::OK, &shared.config_view())
}

#[derive(Debug, Deserialize)]
struct ResourceQuery {
    path: String,
    content_type: Option<String>,
}

/// Rejects paths that could never be served (control space, empty).
fn check_resource_path(path: &str) -> Option<String> {
    let path = normalize_path(path);
    let reachable = path != "/" && path != CONTROL_PREFIX && !path.starts_with("/_fakehub/");
    reachable.then_some(path)
}

fn bad_path(path: &str) -> Response {
    text_response(
        StatusCode::BAD_REQUEST,
        &format!("cannot store a resource at {path:?}\n"),
    )
}

async fn control_put_resource(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ResourceQuery>,
    body: Bytes,
) -> Response {
    let Some(path) = check_resource_path(&q.path) else {
        return bad_path(&q.path);
    };
    let content_type = q
        .content_type
        .unwrap_or_else(|| JSON_CONTENT_TYPE.to_owned());
    shared.put_resource(&path, crate::Resource::new(body.to_vec(), content_type));
    empty_response(StatusCode::NO_CONTENT)
}

async fn control_put_list(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ResourceQuery>,
    body: Bytes,
) -> Response {
    let Some(path) = check_resource_path(&q.path) else {
        return bad_path(&q.path);
    };
    match serde_json::from_slice::<Vec<serde_json::Value>>(&body) {
        Ok(items) => {
            shared.put_list(&path, items);
            empty_response(StatusCode::NO_CONTENT)
        }
        Err(e) => text_response(
            StatusCode::BAD_REQUEST,
            &format!("list body must be a JSON array: {e}\n"),
        ),
    }
}

async fn control_delete(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ResourceQuery>,
) -> Response {
    shared.remove(&q.path);
    empty_response(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Header value as given; non-UTF-8 bytes are replaced rather than dropped,
/// so the log still shows that the header was there.
fn header_string(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Values come partly from requests (the Host in `Link`); one that is not a
/// valid header value is left out instead of failing the response.
pub(crate) fn put_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fn finish(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut headers = HeaderMap::new();
            put_header(&mut headers, "content-type", JSON_CONTENT_TYPE);
            finish(status, headers, Bytes::from(body))
        }
        Err(e) => text_response(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
    }
}

fn text_response(status: StatusCode, text: &str) -> Response {
    let mut headers = HeaderMap::new();
    put_header(&mut headers, "content-type", "text/plain; charset=utf-8");
    finish(status, headers, Bytes::from(text.to_owned()))
}

fn empty_response(status: StatusCode) -> Response {
    finish(status, HeaderMap::new(), Bytes::new())
}
