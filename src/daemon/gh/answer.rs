//! The answer a client gets for a read: GitHub's, with the daemon's ETag, a 304 when the
//! client's validators still match, the headers of a GitHub answer on cached ones, and URLs
//! pointing back at the daemon; or, for `fetch`, GitHub's bytes and headers as they are.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::super::api::{Api, ERROR_HEADER, SOURCE_HEADER};
use super::super::hot::Ticket;
use super::{RATELIMIT_MARK_HEADER, append, invalid_status, limits, rewrite};
use crate::resolver::{Request, Resolved, Source};

/// Headers never passed on: hyper frames the body itself, and the daemon sets its own.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    SOURCE_HEADER,
    ERROR_HEADER,
    RATELIMIT_MARK_HEADER,
];

/// The answer for `fetch`: status, headers and body as GitHub sent them (`Link` pointing at
/// the daemon, which `fetch` maps back), and `x-peercache-source`.
pub(super) fn respond_raw(api: &Api, base: &str, mut resolved: Resolved) -> Response {
    let Ok(status) = StatusCode::from_u16(resolved.status) else {
        return invalid_status(resolved.status);
    };
    let body = body_of(&mut resolved);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let out = response.headers_mut();
    for (name, value) in &resolved.headers {
        let lower = name.to_ascii_lowercase();
        if NOT_FORWARDED.contains(&lower.as_str()) {
            continue;
        }
        let value = if lower == "link" {
            rewrite::link(value, &api.upstream, base)
        } else {
            value.clone()
        };
        append(out, &lower, &value);
    }
    out.insert(
        SOURCE_HEADER,
        HeaderValue::from_static(resolved.source.as_str()),
    );
    response
}

/// The body to send: the bytes in memory, then, for an answer over the entry cap, the rest as
/// it arrives from GitHub (a break upstream aborts the response, so a client never takes a cut
/// body for a whole one).
fn body_of(resolved: &mut Resolved) -> Body {
    let head = std::mem::take(&mut resolved.body);
    match resolved.overflow.take() {
        None => Body::from(head),
        Some(rest) => {
            let head = futures::stream::once(futures::future::ready(Ok::<_, std::io::Error>(head)));
            Body::from_stream(futures::StreamExt::chain(head, rest.into_stream()))
        }
    }
}

/// The daemon's ETag for a body: the same whoever asks and whichever member stored it (GitHub's
/// own depends on the token).
fn etag_of(resolved: &Resolved) -> String {
    let hashed;
    let digest = match &resolved.entry {
        Some(entry) => entry.digest.as_str(),
        None => {
            hashed = hex::encode(Sha256::digest(&resolved.body));
            hashed.as_str()
        }
    };
    format!("W/\"pc-{}\"", &digest[..digest.len().min(40)])
}

/// The answer for a client: GitHub's answer with the daemon's ETag, a 304 when the client's
/// validators still match, the headers of a GitHub answer on cached ones, and URLs in the body
/// pointing back at the daemon.
pub(super) fn respond(
    api: &Api,
    base: &str,
    request: &Request,
    asked: &HeaderMap,
    resolved: Resolved,
) -> Response {
    let Ok(status) = StatusCode::from_u16(resolved.status) else {
        return invalid_status(resolved.status);
    };
    if resolved.overflow.is_some() {
        // Too large to hold: GitHub's answer as it comes, like a passed-through write (no ETag
        // of the daemon's, which would need the whole body first, no URL rewriting).
        return respond_raw(api, base, resolved);
    }
    let success = resolved.is_success();
    let etag = success.then(|| etag_of(&resolved));
    let header_of = |name: &str| {
        resolved
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let not_modified = etag
        .as_deref()
        .is_some_and(|etag| still_valid(asked, etag, header_of("last-modified")));
    let is_json = header_of("content-type").is_some_and(|t| t.contains("json"));

    let mut out = HeaderMap::new();
    for (name, value) in &resolved.headers {
        let is = |other: &str| name.eq_ignore_ascii_case(other);
        if NOT_FORWARDED.iter().any(|n| is(n)) || (success && is("etag")) {
            continue;
        }
        if not_modified && is("content-type") {
            continue;
        }
        // `append` lowercases the name as HTTP/1.1 sends it anyway.
        if is("link") {
            append(&mut out, name, &rewrite::link(value, &api.upstream, base));
        } else {
            append(&mut out, name, value);
        }
    }
    if let Some(etag) = &etag {
        append(&mut out, "etag", etag);
    }
    let figures_until = (resolved.source != Source::Upstream)
        .then(|| limits::cached_headers(api, request, &mut out));
    out.insert(
        SOURCE_HEADER,
        HeaderValue::from_static(resolved.source.as_str()),
    );
    let rewrite = |body: &[u8]| rewrite::urls(body, &api.upstream, base);
    let body = if not_modified {
        Bytes::new()
    } else if !is_json {
        resolved.body
    } else {
        match &resolved.entry {
            // A stored body: rewritten once for this base, then the same bytes every hit.
            Some(entry) if entry.size == resolved.body.len() as u64 => {
                api.sent
                    .get_or_rewrite(base, &entry.digest, &resolved.body, rewrite)
            }
            _ => rewrite(&resolved.body).map_or(resolved.body, Bytes::from),
        }
    };
    // A hit from memory may be sent again as it is, for as long as all it rested on holds.
    let ticket = match (resolved.replay, figures_until) {
        (Some(replay), Some(figures_until)) => Some(Ticket::new(
            replay,
            figures_until,
            super::endpoint_path(&api.upstream, &request.url).into_owned(),
            body.clone(),
        )),
        _ => None,
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        status
    };
    *response.headers_mut() = out;
    if let Some(ticket) = ticket {
        response.extensions_mut().insert(ticket);
    }
    response
}

/// Whether a client's `If-None-Match` (or, without one, `If-Modified-Since`) still matches.
fn still_valid(asked: &HeaderMap, etag: &str, last_modified: Option<&str>) -> bool {
    let text = |name| asked.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(list) = text("if-none-match") {
        let ours = etag.trim_start_matches("W/");
        return list
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours);
    }
    let since = text("if-modified-since").and_then(|v| httpdate::parse_http_date(v.trim()).ok());
    let modified = last_modified.and_then(|v| httpdate::parse_http_date(v.trim()).ok());
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}
