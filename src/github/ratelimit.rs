//! Rate-limit bookkeeping shared by every process that uses a cache dir.
//!
//! GitHub's limits are per token (unauthenticated: per IP), so the state is kept per bucket: a
//! hash of the API base and the token. Once GitHub says "no more until T", no process sharing
//! the cache dir calls upstream for that bucket before T; they serve stale entries instead.
//!
//! - Primary limit: `x-ratelimit-remaining: 0` → wait until `x-ratelimit-reset`.
//! - Secondary limit (403/429 with `retry-after`, or a 403/429 whose message names a rate
//!   limit): wait `retry-after` seconds, or at least a minute, doubling for each repeat up to an
//!   hour, as GitHub's documentation asks.
//! - 5xx with `retry-after`: wait that long.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::now_ms;

/// The first wait after a secondary limit without `retry-after`.
const SECONDARY_MIN_WAIT_MS: u64 = 60_000;
/// The longest backoff.
const MAX_WAIT_MS: u64 = 3_600_000;

/// What the last answers of one bucket said.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LimitState {
    /// No upstream call before this time (ms since the epoch); 0 when not blocked.
    pub blocked_until_ms: u64,
    /// Why calls are blocked.
    pub reason: String,
    /// The last `x-ratelimit-limit`.
    pub limit: Option<u64>,
    /// The last `x-ratelimit-remaining`.
    pub remaining: Option<u64>,
    /// The last `x-ratelimit-reset` (epoch seconds).
    pub reset: Option<u64>,
    /// Consecutive secondary-limit answers, for the exponential backoff.
    pub strikes: u32,
}

/// How an upstream answer bears on the rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A normal answer.
    Fine,
    /// A rate-limit refusal: no calls until the time given.
    Limited { until_ms: u64, reason: String },
    /// A server error; `until_ms` is set when it asked us to wait.
    ServerError { until_ms: Option<u64> },
}

/// The rate-limit state file of one bucket.
#[derive(Debug, Clone)]
pub struct RateLimits {
    path: PathBuf,
}

impl RateLimits {
    /// The state of the bucket (API base, token) in `cache_dir/ratelimit/`.
    pub fn new(cache_dir: &Path, api_base: &str, token: Option<&str>) -> RateLimits {
        let mut hasher = Sha256::new();
        hasher.update(b"peercache rate-limit bucket v1\0");
        hasher.update(api_base.as_bytes());
        hasher.update(b"\0");
        hasher.update(token.unwrap_or("").as_bytes());
        let bucket = hex::encode(&hasher.finalize()[..12]);
        RateLimits {
            path: cache_dir.join("ratelimit").join(format!("{bucket}.json")),
        }
    }

    /// The current state (default when none was recorded).
    pub fn state(&self) -> LimitState {
        fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// `Some((until, reason))` while no upstream call may be made.
    pub fn blocked(&self) -> Option<(u64, String)> {
        let state = self.state();
        (state.blocked_until_ms > now_ms()).then_some((state.blocked_until_ms, state.reason))
    }

    /// Records what an answer said about the limits and classifies it.
    pub fn record(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> Verdict {
        let mut verdict = Verdict::Fine;
        let _ = self.update(|state| {
            let now = now_ms();
            let number = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            state.limit = number("x-ratelimit-limit").or(state.limit);
            state.remaining = number("x-ratelimit-remaining").or(state.remaining);
            state.reset = number("x-ratelimit-reset").or(state.reset);
            let retry_after_ms = retry_after_ms(headers, now);
            let reset_ms = number("x-ratelimit-reset").map(|s| s.saturating_mul(1000));
            let exhausted = number("x-ratelimit-remaining") == Some(0);

            verdict = if matches!(status, 403 | 429)
                && (exhausted
                    || retry_after_ms.is_some()
                    || mentions_rate_limit(body)
                    || status == 429)
            {
                let (until_ms, reason) = if let Some(wait) = retry_after_ms {
                    state.strikes = state.strikes.saturating_add(1);
                    (
                        now + wait,
                        format!("GitHub answered {status} with retry-after"),
                    )
                } else if exhausted && reset_ms.is_some_and(|r| r > now) {
                    (
                        reset_ms.unwrap_or(now),
                        format!(
                            "GitHub's rate limit is spent (answered {status}; x-ratelimit-reset)"
                        ),
                    )
                } else {
                    let wait = SECONDARY_MIN_WAIT_MS
                        .saturating_mul(1 << state.strikes.min(6))
                        .min(MAX_WAIT_MS);
                    state.strikes = state.strikes.saturating_add(1);
                    (
                        now + wait,
                        format!("GitHub answered {status} (secondary rate limit)"),
                    )
                };
                Verdict::Limited { until_ms, reason }
            } else if status >= 500 {
                Verdict::ServerError {
                    until_ms: retry_after_ms.map(|wait| now + wait),
                }
            } else {
                if (200..400).contains(&status) {
                    state.strikes = 0;
                }
                // A success that spent the last request still blocks until the reset.
                if exhausted && reset_ms.is_some_and(|r| r > now) {
                    Verdict::Limited {
                        until_ms: reset_ms.unwrap_or(now),
                        reason: "GitHub's rate limit is spent (x-ratelimit-remaining: 0)".into(),
                    }
                } else {
                    Verdict::Fine
                }
            };
            match &verdict {
                Verdict::Limited { until_ms, reason } => {
                    state.blocked_until_ms = state.blocked_until_ms.max(*until_ms);
                    state.reason = reason.clone();
                }
                Verdict::ServerError {
                    until_ms: Some(until_ms),
                } => {
                    state.blocked_until_ms = state.blocked_until_ms.max(*until_ms);
                    state.reason = format!("GitHub answered {status} with retry-after");
                }
                _ => {}
            }
        });
        verdict
    }

    /// Applies `change` to the state under an exclusive lock of its file.
    fn update(&self, change: impl FnOnce(&mut LimitState)) -> std::io::Result<()> {
        if let Some(parent) = self.path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.path)?;
        file.lock()?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)?;
        let mut state: LimitState = serde_json::from_slice(&text).unwrap_or_default();
        change(&mut state);
        let json = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(&json)
    }
}

/// The longest `retry-after` honoured, in either form: a day.
const MAX_RETRY_AFTER_MS: u64 = MAX_WAIT_MS * 24;

/// `retry-after` as a wait in ms: delta-seconds or an HTTP date, capped at
/// [`MAX_RETRY_AFTER_MS`] either way (a date in the year 9999 must not stop all upstream calls).
fn retry_after_ms(headers: &HeaderMap, now_ms: u64) -> Option<u64> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.saturating_mul(1000).min(MAX_RETRY_AFTER_MS));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    let when_ms = u64::try_from(when.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis())
        .unwrap_or(u64::MAX);
    Some(when_ms.saturating_sub(now_ms).min(MAX_RETRY_AFTER_MS))
}

fn mentions_rate_limit(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).to_ascii_lowercase();
    text.contains("rate limit")
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn primary_limit_blocks_until_reset() {
        let dir = tempfile::tempdir().unwrap();
        let limits = RateLimits::new(dir.path(), "https://api.github.com", Some("t"));
        let reset = now_ms() / 1000 + 120;
        let v = limits.record(
            403,
            &headers(&[
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", reset.to_string()),
            ]),
            b"{}",
        );
        assert!(matches!(v, Verdict::Limited { .. }));
        let (until, _) = limits.blocked().expect("blocked");
        assert_eq!(until, reset * 1000);
        // Another token's bucket is not blocked.
        assert!(
            RateLimits::new(dir.path(), "https://api.github.com", Some("u"))
                .blocked()
                .is_none()
        );
    }

    #[test]
    fn secondary_limit_uses_retry_after_or_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let limits = RateLimits::new(dir.path(), "b", None);
        limits.record(429, &headers(&[("retry-after", "30".into())]), b"");
        let (until, _) = limits.blocked().unwrap();
        assert!(until > now_ms() + 25_000 && until <= now_ms() + 30_000);

        let other = RateLimits::new(dir.path(), "c", None);
        other.record(
            403,
            &HeaderMap::new(),
            b"{\"message\":\"You have exceeded a secondary rate limit\"}",
        );
        let (first, _) = other.blocked().unwrap();
        other.record(403, &HeaderMap::new(), b"secondary rate limit");
        let (second, _) = other.blocked().unwrap();
        assert!(
            second - now_ms() > first - now_ms() + 50_000,
            "backoff doubles"
        );
    }

    #[test]
    fn retry_after_dates_are_capped_like_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let limits = RateLimits::new(dir.path(), "d", None);
        limits.record(
            429,
            &headers(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT".into())]),
            b"",
        );
        let (until, _) = limits.blocked().unwrap();
        assert!(until <= now_ms() + MAX_RETRY_AFTER_MS, "{until}");
        let seconds = RateLimits::new(dir.path(), "e", None);
        seconds.record(429, &headers(&[("retry-after", "99999999999".into())]), b"");
        assert!(seconds.blocked().unwrap().0 <= now_ms() + MAX_RETRY_AFTER_MS);
    }

    #[test]
    fn plain_forbidden_and_server_errors() {
        let dir = tempfile::tempdir().unwrap();
        let limits = RateLimits::new(dir.path(), "b", None);
        assert_eq!(
            limits.record(
                403,
                &HeaderMap::new(),
                b"{\"message\":\"Resource not accessible\"}"
            ),
            Verdict::Fine
        );
        assert!(limits.blocked().is_none());
        assert_eq!(
            limits.record(502, &HeaderMap::new(), b""),
            Verdict::ServerError { until_ms: None }
        );
        assert!(limits.blocked().is_none());
        assert!(matches!(
            limits.record(503, &headers(&[("retry-after", "5".into())]), b""),
            Verdict::ServerError { until_ms: Some(_) }
        ));
        assert!(limits.blocked().is_some());
    }
}
