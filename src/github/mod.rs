//! The GitHub REST API client: reqwest over rustls (no OpenSSL), GitHub's recommended headers,
//! conditional requests, and pagination links.

mod endpoint;
mod forward;
pub mod ratelimit;
pub mod sharing;
mod write;

use std::time::Duration;

use reqwest::header::{
    ACCEPT, AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    USER_AGENT,
};
use url::Url;

use crate::secret::Secret;

pub use endpoint::{endpoint_url, on_api_host};

/// The `User-Agent` GitHub requires on every request.
pub const USER_AGENT_VALUE: &str = concat!("peercache/", env!("CARGO_PKG_VERSION"));

/// One GET to send upstream.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The full URL (on the API host).
    pub url: Url,
    /// `Accept`.
    pub accept: String,
    /// `X-GitHub-Api-Version`.
    pub api_version: String,
    /// The token for `Authorization`, if any.
    pub token: Option<Secret>,
    /// Other headers the caller asked for (`-H`), sent as given.
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// `If-Modified-Since`, when revalidating.
    pub if_modified_since: Option<String>,
    /// `If-None-Match`, when revalidating under the token the ETag came with.
    pub if_none_match: Option<String>,
}

/// An upstream answer, body as received.
#[derive(Debug)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body, byte for byte; with [`ApiResponse::overflow`], only its beginning.
    pub body: Vec<u8>,
    /// The rest of a body larger than the cap it was read with ([`GitHub::get_capped`]):
    /// `body` then this is the whole answer.
    pub overflow: Option<Overflow>,
}

/// The unread rest of an upstream body that was too large to hold in memory: it is passed on
/// as it arrives, never stored.
pub struct Overflow {
    response: reqwest::Response,
}

impl std::fmt::Debug for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overflow")
            .field("content_length", &self.response.content_length())
            .finish()
    }
}

impl Overflow {
    /// The rest of the body as it arrives; an `Err` item means the answer broke off.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<hyper::body::Bytes, std::io::Error>> + Send + 'static
    {
        use futures::TryStreamExt;
        self.response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(describe(&e)))
    }

    /// The whole body's size, when GitHub declared it.
    pub fn content_length(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// Reads the rest of the body onto `body` (for callers that need it whole, such as a
    /// one-shot `fetch` printing it).
    pub async fn read_into(mut self, body: &mut Vec<u8>) -> Result<(), String> {
        while let Some(chunk) = self.response.chunk().await.map_err(|e| describe(&e))? {
            body.extend_from_slice(&chunk);
        }
        Ok(())
    }
}

impl ApiResponse {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// A client for the REST API. Cheap to make: the HTTP client (rustls, which reads the system's
/// CA certificates — ~10 ms) is built on the first call upstream, so a cache hit never pays it.
#[derive(Debug, Clone, Default)]
pub struct GitHub {
    http: std::sync::Arc<std::sync::OnceLock<reqwest::Client>>,
}

impl GitHub {
    /// A client; the connection pool and TLS set-up come with the first request.
    pub fn new() -> anyhow::Result<GitHub> {
        Ok(GitHub::default())
    }

    /// The HTTP client (rustls, HTTP/2, timeouts), built once.
    fn http(&self) -> Result<&reqwest::Client, String> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT_VALUE)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(self.http.get_or_init(|| client))
    }

    /// Sends one GET and reads the whole answer; `Err` only when no HTTP answer came back
    /// (network, TLS, timeout).
    pub async fn get(&self, request: &ApiRequest) -> Result<ApiResponse, String> {
        self.get_capped(request, u64::MAX).await
    }

    /// Sends one GET and reads at most about `cap` bytes of the body into memory: a larger
    /// answer comes back with its beginning in `body` and the rest unread in `overflow`.
    pub async fn get_capped(&self, request: &ApiRequest, cap: u64) -> Result<ApiResponse, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in &request.extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.extend(api_headers(
            &request.accept,
            &request.api_version,
            request.token.as_ref(),
        )?);
        // The bytes stored and shared must be the plain representation: ask for no encoding
        // unless the caller asked for one (and then the answer is passed through, not stored).
        if !headers.contains_key(reqwest::header::ACCEPT_ENCODING) {
            headers.insert(
                reqwest::header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if let Some(since) = &request.if_modified_since {
            headers.insert(IF_MODIFIED_SINCE, header_value(since)?);
        }
        if let Some(etag) = &request.if_none_match {
            headers.insert(IF_NONE_MATCH, header_value(etag)?);
        }
        execute_capped(self.http()?.get(request.url.clone()).headers(headers), cap).await
    }
}

/// The headers GitHub asks for on every request: `User-Agent`, `Accept`,
/// `X-GitHub-Api-Version`, and `Authorization` (marked sensitive, so it is never logged).
fn api_headers(
    accept: &str,
    api_version: &str,
    token: Option<&Secret>,
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    headers.insert(ACCEPT, header_value(accept)?);
    headers.insert("x-github-api-version", header_value(api_version)?);
    if let Some(token) = token {
        let mut value = header_value(&authorization_value(token.expose()))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Ok(headers)
}

/// Sends a request and reads the whole answer.
async fn execute(request: reqwest::RequestBuilder) -> Result<ApiResponse, String> {
    execute_capped(request, u64::MAX).await
}

/// Sends a request and reads its body chunk by chunk, stopping once more than `cap` bytes came
/// (or at once when `Content-Length` says it will be more): memory holds at most the cap and
/// one chunk, whatever GitHub sends.
async fn execute_capped(request: reqwest::RequestBuilder, cap: u64) -> Result<ApiResponse, String> {
    let mut response = request.send().await.map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let declared = response.content_length();
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(cap).min(1 << 20) as usize);
    let overflowing = |len: u64| len > cap;
    if declared.is_some_and(overflowing) {
        return Ok(ApiResponse {
            status,
            headers,
            body,
            overflow: Some(Overflow { response }),
        });
    }
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        body.extend_from_slice(&chunk);
        if overflowing(body.len() as u64) {
            return Ok(ApiResponse {
                status,
                headers,
                body,
                overflow: Some(Overflow { response }),
            });
        }
    }
    Ok(ApiResponse {
        status,
        headers,
        body,
        overflow: None,
    })
}

/// `Authorization` for a token: `token X` for bare tokens, as given when it names a scheme.
pub fn authorization_value(token: &str) -> String {
    let token = token.trim();
    if token.contains(' ') {
        token.to_string()
    } else {
        format!("Bearer {token}")
    }
}

fn header_value(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(text)
        .map_err(|_| "a header value contains characters HTTP does not allow".to_string())
}

/// The error without the URL's query or any header (reqwest never includes headers).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "the answer was cut off"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {cause}")
    }
}

/// The `rel="next"` target of a `Link` header.
pub fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim();
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim();
        (is_next && target.starts_with('<') && target.ends_with('>'))
            .then(|| target[1..target.len() - 1].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        let link = r#"<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last""#;
        assert_eq!(
            next_link(link).as_deref(),
            Some("https://api.github.com/x?page=2")
        );
        let last = r#"<https://api.github.com/x?page=1>; rel="prev", <https://api.github.com/x?page=1>; rel="first""#;
        assert_eq!(next_link(last), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn authorization_forms() {
        assert_eq!(authorization_value("abc"), "Bearer abc");
        assert_eq!(authorization_value("token abc"), "token abc");
    }
}
