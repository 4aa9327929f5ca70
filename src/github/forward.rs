//! Requests passed through as a client made them (the local API's `/gh` writes and GraphQL):
//! method, headers and a streamed body in, the answer unread out.

use reqwest::Method;
use reqwest::header::HeaderMap;
use url::Url;

use super::{GitHub, describe};

impl GitHub {
    /// Sends one request with the caller's headers (its `Authorization` included) and body;
    /// `Err` only when no HTTP answer came back. The body of the answer is left to the caller
    /// to stream.
    pub async fn forward(
        &self,
        method: Method,
        url: &Url,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, String> {
        let mut request = self.http()?.request(method, url.clone()).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        request.send().await.map_err(|e| describe(&e))
    }
}
