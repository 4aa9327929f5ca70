//! Rate-limit figures on answers: the caller's `x-ratelimit-*` on cached answers (with
//! GitHub's `cache-control` and `vary`), and GitHub's own 403/429 during a block.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::super::api::{Api, ERROR_HEADER};
use super::{RATELIMIT_MARK_HEADER, append, limits_of};
use crate::github::ratelimit::LimitState;
use crate::resolver::Request;
use crate::secret::Secret;

/// The rate-limit headers of each token's bucket as last read from the cache dir, re-read at
/// most once a second: cached answers carry them, and reading the state file for every hit
/// would cost more than the hit itself. They are kept as header values, so that a hit only
/// clones references to them.
#[derive(Debug, Default)]
pub struct LimitFigures {
    seen: std::sync::Mutex<std::collections::HashMap<String, (Instant, Figures)>>,
}

/// A bucket's `x-ratelimit-*` headers (and the mark), ready to send; empty when none were seen.
type Figures = Arc<[(HeaderName, HeaderValue)]>;

/// How old the figures on a cached answer may be.
const FIGURES_MAX_AGE: Duration = Duration::from_secs(1);
/// Buckets remembered at most (then the memory starts over).
const FIGURES_MAX_BUCKETS: usize = 1024;

impl LimitFigures {
    /// The bucket's headers, at most [`FIGURES_MAX_AGE`] old (`tag`: the token's one-way tag),
    /// and when they are read again.
    fn get(&self, api: &Api, token: Option<&Secret>, tag: &str) -> (Instant, Figures) {
        let now = Instant::now();
        if let Ok(seen) = self.seen.lock()
            && let Some((at, figures)) = seen.get(tag)
            && now.duration_since(*at) < FIGURES_MAX_AGE
        {
            return (*at + FIGURES_MAX_AGE, Arc::clone(figures));
        }
        let mut headers = HeaderMap::new();
        if ratelimit_headers(&limits_of(api, token).state(), &mut headers) {
            append(&mut headers, RATELIMIT_MARK_HEADER, "cached");
        }
        let figures: Figures = headers
            .into_iter()
            .filter_map(|(name, value)| Some((name?, value)))
            .collect();
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= FIGURES_MAX_BUCKETS {
                seen.clear();
            }
            seen.insert(tag.to_string(), (now, Arc::clone(&figures)));
        }
        (now + FIGURES_MAX_AGE, figures)
    }
}

/// What GitHub sends on every 200 and 304 of the REST API.
const GITHUB_VARY: &str = "Accept, Authorization, Cookie, X-GitHub-OTP";

/// What GitHub sends with every answer and the cache does not store: `cache-control`, `vary`,
/// and the caller's rate-limit figures as last seen (marked as such); returns when those
/// figures are read again (until then, the same request gets the same headers).
pub(super) fn cached_headers(api: &Api, request: &Request, out: &mut HeaderMap) -> Instant {
    if !out.contains_key(header::CACHE_CONTROL) {
        out.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(if request.token.is_some() {
                "private, max-age=60, s-maxage=60"
            } else {
                "public, max-age=60, s-maxage=60"
            }),
        );
    }
    if !out.contains_key(header::VARY) {
        out.insert(header::VARY, HeaderValue::from_static(GITHUB_VARY));
    }
    let (until, figures) = api
        .limit_figures
        .get(api, request.token.as_ref(), request.tag());
    for (name, value) in figures.iter() {
        out.append(name.clone(), value.clone());
    }
    until
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
pub(super) fn rate_limited(api: &Api, request: &Request, until_ms: u64, reason: &str) -> Response {
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
