//! `fetch`'s side of the local API: find a running daemon and resolve a request through it.
//!
//! The answer is turned back into a [`Resolved`] as the direct path would have produced it, so
//! that `fetch` prints the same thing either way: `Link` targets point at GitHub again (and
//! pagination maps them back onto the daemon), and the headers the daemon's HTTP server adds
//! itself are dropped.

use std::time::Duration;

use url::Url;

use super::api::{ERROR_HEADER, SOURCE_HEADER, TTL_HEADER};
use super::client::{self, ClientError, Endpoint};
use super::gh::RAW_HEADER;
use super::gh::rewrite::unlink;
use super::state;
use crate::config::Settings;
use crate::github::authorization_value;
use crate::resolver::{Request, ResolveError, Resolved, Source};

/// How long a request through the daemon may take (it may wait for GitHub, or for another
/// process fetching the same key).
const TIMEOUT: Duration = Duration::from_secs(300);

/// A running daemon that calls the same upstream as this process.
#[derive(Debug, Clone)]
pub struct Remote {
    endpoint: Endpoint,
    base_url: String,
    upstream: Url,
    pid: u32,
}

impl Remote {
    /// The daemon named in `$PEERCACHE_HOME/serve.json`, when it is alive and calls the same
    /// API base as `settings`.
    pub fn find(settings: &Settings) -> Option<Remote> {
        let info = state::live(&settings.home)?;
        let ours = settings.api_url.as_str().trim_end_matches('/');
        if info
            .upstream_url
            .as_deref()
            .map(|u| u.trim_end_matches('/'))
            != Some(ours)
        {
            tracing::debug!(
                "the daemon (pid {}) calls {:?}, not {ours}; not using it",
                info.pid,
                info.upstream_url
            );
            return None;
        }
        let endpoint = Endpoint::parse(&info.api_url)?;
        Some(Remote {
            endpoint,
            base_url: info.api_url.trim_end_matches('/').to_string(),
            upstream: settings.api_url.clone(),
            pid: info.pid,
        })
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves `request` through the daemon.
    ///
    /// The outer `Err` means the daemon gave no usable answer (it is gone, or broke off): the
    /// caller falls back to the direct path. The inner result is the request's own outcome.
    pub fn resolve(
        &self,
        request: &Request,
    ) -> Result<Result<Resolved, ResolveError>, ClientError> {
        let base = self.upstream.as_str().trim_end_matches('/');
        let relative = request
            .url
            .as_str()
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('/').or((rest.is_empty()).then_some("")))
            .ok_or_else(|| ClientError::Broken(format!("{} is not under {base}", request.url)))?;
        let path = format!("/gh/{relative}");

        let authorization = request
            .token
            .as_ref()
            .map(|t| authorization_value(t.expose()));
        let ttl = request.ttl.as_secs().to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            ("Accept", &request.accept),
            ("X-GitHub-Api-Version", &request.api_version),
            (TTL_HEADER, &ttl),
            (RAW_HEADER, "1"),
        ];
        if let Some(value) = &authorization {
            headers.push(("Authorization", value));
        }
        let response = client::get(&self.endpoint, &path, &headers, TIMEOUT)?;

        if response.status == 502 && response.header(ERROR_HEADER) == Some("unreachable") {
            let message = serde_json::from_slice::<serde_json::Value>(&response.body)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(str::to_string))
                .unwrap_or_else(|| "GitHub could not be reached, and nothing is cached".into());
            return Ok(Err(ResolveError::Unreachable(message)));
        }
        if matches!(response.status, 403 | 429)
            && response.header(ERROR_HEADER) == Some("rate-limited")
        {
            let body = serde_json::from_slice::<serde_json::Value>(&response.body).ok();
            let reason = body
                .as_ref()
                .and_then(|v| v.get("peercache")?.as_str().map(str::to_string))
                .unwrap_or_else(|| {
                    "GitHub's rate limit forbids calls, and nothing is cached".into()
                });
            let wait: u64 = response
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let until_ms = crate::cache::now_ms() + wait * 1000;
            return Ok(Err(ResolveError::RateLimited { until_ms, reason }));
        }
        let Some(source) = response.header(SOURCE_HEADER).and_then(parse_source) else {
            // Not an answer of the tiers (a 404 for a stale capability, a 500): unusable.
            return Err(ClientError::Broken(format!(
                "the daemon answered {} without {SOURCE_HEADER}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            )));
        };

        let headers = response
            .headers
            .into_iter()
            .filter(|(name, _)| {
                // hyper adds content-length, and a date where the answer had none (only
                // answers straight from GitHub carry GitHub's own).
                let ours = matches!(
                    name.as_str(),
                    "content-length"
                        | "connection"
                        | "keep-alive"
                        | "transfer-encoding"
                        | SOURCE_HEADER
                );
                let hypers_date = name == "date" && source != Source::Upstream;
                !ours && !hypers_date
            })
            .map(|(name, value)| {
                if name == "link" {
                    let value = unlink(&value, &self.upstream, &self.base_url);
                    (name, value)
                } else {
                    (name, value)
                }
            })
            .collect();
        Ok(Ok(Resolved {
            source,
            status: response.status,
            headers,
            body: response.body.into(),
            overflow: None,
            entry: None,
            replay: None,
        }))
    }
}

fn parse_source(text: &str) -> Option<Source> {
    Some(match text {
        "local" => Source::Local,
        "peer" => Source::Peer,
        "revalidated" => Source::Revalidated,
        "upstream" => Source::Upstream,
        "stale" => Source::Stale,
        _ => return None,
    })
}
