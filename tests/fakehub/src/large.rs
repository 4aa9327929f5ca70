//! Large bodies generated on the fly, for tests of size limits:
//! `GET /repos/{owner}/{repo}/generated/{size}` answers `size` bytes (any size: they are made
//! chunk by chunk as the client reads, never held in memory), with `Content-Length`, or without
//! it (chunked, as GitHub sends many answers) when the query has `chunked=1`. The bytes are
//! deterministic ([`large_body_chunks`]), so a test can hash what it should have received.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

/// The path segment that marks a generated body.
const SEGMENT: &str = "/generated/";
/// Bytes made at a time.
const CHUNK: usize = 64 * 1024;

/// The path of a generated body of `size` bytes in `repo` (`owner/name`).
pub fn large_path(repo: &str, size: u64) -> String {
    format!("/repos/{repo}{SEGMENT}{size}")
}

/// The size a generated-body path asks for.
pub(crate) fn size_of(path: &str) -> Option<u64> {
    let rest = path.strip_prefix("/repos/")?;
    let mut parts = rest.splitn(3, '/');
    let (_owner, _repo, below) = (parts.next()?, parts.next()?, parts.next()?);
    below
        .strip_prefix(SEGMENT.trim_start_matches('/'))?
        .parse()
        .ok()
}

/// The bytes of a generated body of `size` bytes, chunk by chunk: printable ASCII that does
/// not repeat with any short period (so a shifted or duplicated chunk changes the hash).
pub fn large_body_chunks(size: u64) -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut offset = 0u64;
    std::iter::from_fn(move || {
        if offset >= size {
            return None;
        }
        let len = (size - offset).min(CHUNK as u64) as usize;
        let chunk = (offset..offset + len as u64)
            .map(|i| {
                let mixed = i ^ (i >> 7) ^ (i >> 13).wrapping_mul(0x9E37) ^ (i >> 21);
                ALPHABET[(mixed & 63) as usize]
            })
            .collect();
        offset += len as u64;
        Some(chunk)
    })
}

/// The answer for a generated body, with the headers `base` holds (rate limit, request id).
pub(crate) fn response(
    mut headers: HeaderMap,
    path: &str,
    size: u64,
    chunked: bool,
    authorization: Option<&str>,
    head: bool,
) -> Response {
    let etag = crate::server::etag_for(format!("{path}:{size}").as_bytes(), authorization);
    crate::server::put_header(&mut headers, "etag", &etag);
    crate::server::put_header(&mut headers, "content-type", "application/octet-stream");
    if !chunked {
        crate::server::put_header(&mut headers, "content-length", &size.to_string());
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(futures::stream::iter(
            large_body_chunks(size).map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
        ))
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = headers;
    response
}
