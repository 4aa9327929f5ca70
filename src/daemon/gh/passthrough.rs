//! Everything under `/gh` that is not a cacheable read: `POST`, `PATCH`, `PUT`, `DELETE`, and
//! `POST /graphql`. Sent upstream uncached with the caller's own `Authorization` (the daemon's
//! token only when the request brings none), the request body streamed (capped), the answer
//! streamed back; JSON answers have their URLs pointed at the daemon like cached ones. A
//! successful write expires the cache entries it obviously changed: the resource and its
//! collection.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures::TryStreamExt;
use url::Url;

use super::super::api::{Api, ERROR_HEADER, json_error};
use super::{RAW_HEADER, append, limits_of, rewrite, upstream_url};
use crate::cache::{DEFAULT_ACCEPT, DEFAULT_API_VERSION};
use crate::github::authorization_value;
use crate::resolver::Request;
use crate::secret::Secret;

/// Most bytes of a request body passed upstream (GitHub's own limit for a REST body is far lower).
pub const MAX_FORWARD_BODY: u64 = 32 << 20;
/// JSON answers up to this size are read whole so that their URLs can be rewritten; larger
/// ones, and every other type, are streamed as they are.
const MAX_REWRITTEN_ANSWER: u64 = 8 << 20;

/// Client headers not sent upstream: hop-by-hop ones, `Host`, the daemon's own, and
/// `Accept-Encoding` (the answer is rewritten, so it must come unencoded).
const NOT_SENT: &[&str] = &[
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
    "accept-encoding",
];

/// Answer headers not passed back: hyper frames the body itself.
const NOT_RETURNED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "set-cookie",
];

/// The URL of GitHub's GraphQL endpoint for an API base: `https://api.github.com/graphql`, and
/// `https://HOST/api/graphql` for GitHub Enterprise Server's `https://HOST/api/v3`.
fn graphql_url(upstream: &Url) -> Option<Url> {
    let base = upstream.as_str().trim_end_matches('/');
    let text = match base.strip_suffix("/api/v3") {
        Some(host) => format!("{host}/api/graphql"),
        None => format!("{base}/graphql"),
    };
    Url::parse(&text).ok()
}

/// Passes one request through to GitHub.
pub async fn forward(api: &Api, base: &str, endpoint: &str, parts: &Parts, body: Body) -> Response {
    let is_graphql = endpoint.trim_end_matches('/') == "graphql";
    let url = if is_graphql {
        graphql_url(&api.upstream).ok_or_else(|| "no GraphQL endpoint for this API base".into())
    } else {
        upstream_url(&api.upstream, endpoint, parts.uri.query())
    };
    let url = match url {
        Ok(url) => url,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORWARD_BODY) {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request bodies are passed upstream up to {MAX_FORWARD_BODY} bytes"),
        );
    }

    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        let lower = name.as_str();
        if NOT_SENT.contains(&lower) || lower.starts_with("x-peercache-") {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    // The caller's own token; the daemon's only when the request names none.
    let token = match parts.headers.get("authorization") {
        Some(value) => value.to_str().ok().map(Secret::new),
        None => match &api.default_token {
            Some(token) => {
                if let Ok(mut value) = HeaderValue::from_str(&authorization_value(token.expose())) {
                    value.set_sensitive(true);
                    headers.insert("authorization", value);
                }
                Some(token.clone())
            }
            None => None,
        },
    };
    if !headers.contains_key("accept") {
        headers.insert("accept", HeaderValue::from_static(DEFAULT_ACCEPT));
    }

    // A body only where the request has one (a bodiless DELETE stays bodiless upstream).
    let has_body =
        declared.is_some_and(|n| n > 0) || parts.headers.contains_key("transfer-encoding");
    let upstream_body = has_body.then(|| {
        let stream = body.into_data_stream().map_err(std::io::Error::other);
        reqwest::Body::wrap_stream(cap(stream, MAX_FORWARD_BODY))
    });
    let method = parts.method.clone();
    let limits = limits_of(api, token.as_ref());
    let answer = match api
        .github
        .forward(method.clone(), &url, headers, upstream_body)
        .await
    {
        Ok(answer) => answer,
        Err(why) => {
            let mut response = json_error(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "no answer from GitHub to {method} {} ({why}); a write may or may not have been applied",
                    url.path()
                ),
            );
            response
                .headers_mut()
                .insert(ERROR_HEADER, HeaderValue::from_static("unreachable"));
            return response;
        }
    };
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let is_json = answer_headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    let small = answer
        .content_length()
        .is_none_or(|n| n <= MAX_REWRITTEN_ANSWER);
    let raw = parts.headers.contains_key(RAW_HEADER);

    let mut out = HeaderMap::new();
    for (name, value) in &answer_headers {
        let lower = name.as_str();
        if NOT_RETURNED.contains(&lower) {
            continue;
        }
        match (lower, value.to_str()) {
            ("link", Ok(text)) => {
                append(&mut out, "link", &rewrite::link(text, &api.upstream, base))
            }
            ("location", Ok(text)) if !raw => append(
                &mut out,
                "location",
                &rewrite::location(text, &api.upstream, base),
            ),
            _ => {
                out.append(name.clone(), value.clone());
            }
        }
    }

    let body = if is_json && small && !raw {
        let bytes = match read_capped(answer, MAX_REWRITTEN_ANSWER).await {
            Ok(bytes) => bytes,
            Err(why) => {
                return json_error(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "GitHub's answer to {method} {} broke off: {why}",
                        url.path()
                    ),
                );
            }
        };
        record(limits, status.as_u16(), &answer_headers, Some(&bytes)).await;
        let bytes = rewrite::urls(&bytes, &api.upstream, base).unwrap_or(bytes);
        Body::from(bytes)
    } else {
        record(limits, status.as_u16(), &answer_headers, None).await;
        Body::from_stream(answer.bytes_stream())
    };

    if status.is_success() && !is_graphql {
        let written = Request {
            url: url.clone(),
            accept: DEFAULT_ACCEPT.to_string(),
            api_version: DEFAULT_API_VERSION.to_string(),
            token,
            extra_headers: Vec::new(),
            ttl: api.default_ttl,
        };
        api.resolver.invalidate(&written).await;
    }

    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = out;
    response
}

/// Keeps what the answer says about the caller's rate limit (the state file is locked and
/// written, so off the async threads); `body`, when read, lets a refusal be recognised by its
/// message.
async fn record(
    limits: crate::github::ratelimit::RateLimits,
    status: u16,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) {
    let headers = headers.clone();
    let body = body
        .map(|b| b[..b.len().min(4096)].to_vec())
        .unwrap_or_default();
    let _ = tokio::task::spawn_blocking(move || limits.record(status, &headers, &body)).await;
}

/// A body stream that fails once more than `max` bytes went through it.
fn cap<S>(
    stream: S,
    max: u64,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static
where
    S: futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static,
{
    let mut seen = 0u64;
    stream.and_then(move |chunk| {
        seen += chunk.len() as u64;
        let result = if seen > max {
            Err(std::io::Error::other(format!(
                "the request body is larger than {max} bytes"
            )))
        } else {
            Ok(chunk)
        };
        futures::future::ready(result)
    })
}

/// The whole answer body, refused past `max` bytes.
async fn read_capped(answer: reqwest::Response, max: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut stream = answer.bytes_stream();
    while let Some(chunk) = stream.try_next().await.map_err(|e| e.to_string())? {
        if out.len() as u64 + chunk.len() as u64 > max {
            return Err(format!("larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
