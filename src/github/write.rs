//! Requests that change something upstream (POST, PATCH, DELETE), for the issue registry.
//!
//! They never go through the cache (only GETs are cached), but they use the same HTTP client,
//! the same headers, and the same rate-limit bookkeeping as GETs: the caller checks
//! [`RateLimits::blocked`](super::ratelimit::RateLimits::blocked) before sending and records the
//! answer with [`RateLimits::record`](super::ratelimit::RateLimits::record) after.

use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use url::Url;

use super::{ApiResponse, GitHub, USER_AGENT_VALUE, authorization_value, describe, header_value};
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
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        headers.insert(ACCEPT, HeaderValue::from_static(DEFAULT_ACCEPT));
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static(DEFAULT_API_VERSION),
        );
        if let Some(token) = token {
            let mut value = header_value(&authorization_value(token.expose()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let mut request = self.http.request(method, url.clone());
        if let Some(body) = body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
            request = request.body(bytes);
        }
        let response = request
            .headers(headers)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| describe(&e))?.to_vec();
        Ok(ApiResponse {
            status,
            headers,
            body,
        })
    }
}
