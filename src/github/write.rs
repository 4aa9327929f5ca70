//! Requests that change something upstream (POST, PATCH, DELETE), for the issue registry.
//!
//! They never go through the cache (only GETs are cached), but they use the same HTTP client,
//! the same headers, and the same rate-limit bookkeeping as GETs: the caller checks
//! [`RateLimits::blocked`](super::ratelimit::RateLimits::blocked) before sending and records the
//! answer with [`RateLimits::record`](super::ratelimit::RateLimits::record) after.

use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use url::Url;

use super::{ApiResponse, GitHub, api_headers, execute};
use crate::cache::{DEFAULT_ACCEPT, DEFAULT_API_VERSION};
use crate::secret::Secret;

impl GitHub {
    /// Sends one request with an optional JSON body; `Err` only when no HTTP answer came back
    /// (network, TLS, timeout). The status is the caller's to judge.
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        token: Option<&Secret>,
        body: Option<&serde_json::Value>,
    ) -> Result<ApiResponse, String> {
        let mut headers = api_headers(DEFAULT_ACCEPT, DEFAULT_API_VERSION, token)?;
        let mut request = self.http()?.request(method, url.clone());
        if let Some(body) = body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
            request = request.body(bytes);
        }
        execute(request.headers(headers)).await
    }
}
