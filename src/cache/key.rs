//! Cache keys: what makes two requests "the same resource".
//!
//! The key is the method, the normalized URL (lowercase scheme and host, default port dropped,
//! path as sent, query parameters sorted, no fragment) and the two headers that change the
//! representation, `Accept` and `X-GitHub-Api-Version`. Never the token: sharing across jobs is
//! the point, and the swarm secret is the trust boundary.

use sha2::{Digest, Sha256};
use url::Url;

/// The media type GitHub recommends, used when the caller sends no `Accept`.
pub const DEFAULT_ACCEPT: &str = "application/vnd.github+json";
/// The REST API version sent when the caller names none.
pub const DEFAULT_API_VERSION: &str = "2022-11-28";

/// A normalized request identity and its SHA-256 id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    canonical: String,
    id: String,
}

impl CacheKey {
    /// The key of a GET of `url` with these representation headers.
    pub fn new(url: &Url, accept: &str, api_version: &str) -> CacheKey {
        let canonical = format!(
            "GET {}\naccept: {}\nx-github-api-version: {}",
            normalize_url(url),
            accept.trim().to_ascii_lowercase(),
            api_version.trim()
        );
        let id = hex::encode(Sha256::digest(canonical.as_bytes()));
        CacheKey { canonical, id }
    }

    /// The canonical text the id is the hash of.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Lowercase hex SHA-256 of the canonical text: the entry's file name.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The URL with its query parameters sorted and no fragment; the `url` crate already lowercases
/// the scheme and host and drops default ports.
pub fn normalize_url(url: &Url) -> String {
    let mut url = url.clone();
    url.set_fragment(None);
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        pairs.sort();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(url: &str) -> CacheKey {
        CacheKey::new(
            &Url::parse(url).unwrap(),
            DEFAULT_ACCEPT,
            DEFAULT_API_VERSION,
        )
    }

    #[test]
    fn query_order_host_case_and_fragment_do_not_matter() {
        assert_eq!(
            key("https://API.github.com:443/repos/a/b?b=2&a=1#x"),
            key("https://api.github.com/repos/a/b?a=1&b=2")
        );
    }

    #[test]
    fn path_query_and_headers_do_matter() {
        assert_ne!(
            key("https://api.github.com/repos/a/b"),
            key("https://api.github.com/repos/a/c")
        );
        assert_ne!(
            key("https://api.github.com/repos/a/b?page=2"),
            key("https://api.github.com/repos/a/b")
        );
        let url = Url::parse("https://api.github.com/repos/a/b").unwrap();
        assert_ne!(
            CacheKey::new(&url, DEFAULT_ACCEPT, DEFAULT_API_VERSION),
            CacheKey::new(&url, "application/vnd.github.raw+json", DEFAULT_API_VERSION)
        );
    }

    #[test]
    fn keys_that_sanitize_alike_stay_distinct() {
        // The predecessor turned keys into file names by replacing characters, so these collided.
        assert_ne!(
            key("https://api.github.com/repos/a/b_c"),
            key("https://api.github.com/repos/a/b/c")
        );
        assert_eq!(key("https://api.github.com/x").id().len(), 64);
    }
}
