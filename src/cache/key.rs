//! Cache keys: what makes two requests "the same resource" — exactly when GitHub would answer
//! them the same.
//!
//! The key is a version tag, the method, the normalized URL and the two headers that change the
//! representation, `Accept` (normalized) and `X-GitHub-Api-Version`; and, for answers that
//! depend on who asks (see [`crate::github::sharing`]), a one-way tag of the token. Otherwise
//! never the token: sharing across jobs is the point, and the swarm secret and scope are the
//! trust boundary.
//!
//! URL rules, each what GitHub does:
//! - scheme and host lowercase, default port dropped, no fragment (the `url` crate);
//! - query parameters sorted by name only, a stable sort: distinct names in any order are one
//!   query, but the order of a repeated name is kept (`state=open&state=closed` is answered
//!   with the last value, so it is not `state=closed&state=open`);
//! - `page=1` is the first page, the same as no `page` at all.

use sha2::{Digest, Sha256};
use url::Url;

/// The media type GitHub recommends, used when the caller sends no `Accept`.
pub const DEFAULT_ACCEPT: &str = "application/vnd.github+json";
/// The REST API version sent when the caller names none.
pub const DEFAULT_API_VERSION: &str = "2022-11-28";

/// The version of the key scheme. Entries stored under an older scheme (v1 sorted repeated
/// query names, stored partial and encoded answers, shared identity-bound endpoints) have other
/// ids, so no answer of the old rules is ever found again: they age out through the LRU.
const KEY_SCHEME: &str = "peercache-key v2";

/// A normalized request identity and its SHA-256 id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    canonical: String,
    id: String,
}

impl CacheKey {
    /// The key of a GET of `url` with these representation headers, shared across tokens.
    pub fn new(url: &Url, accept: &str, api_version: &str) -> CacheKey {
        CacheKey::build(url, accept, api_version, None)
    }

    /// The key of a GET whose answer depends on who asks: one entry per token (`token_tag` is
    /// the token's one-way tag, never the token).
    pub fn per_token(url: &Url, accept: &str, api_version: &str, token_tag: &str) -> CacheKey {
        CacheKey::build(url, accept, api_version, Some(token_tag))
    }

    fn build(url: &Url, accept: &str, api_version: &str, token_tag: Option<&str>) -> CacheKey {
        let mut canonical = format!(
            "{KEY_SCHEME}\nGET {}\naccept: {}\nx-github-api-version: {}",
            normalize_url(url),
            normalize_accept(accept),
            api_version.trim()
        );
        if let Some(tag) = token_tag {
            canonical.push_str("\ntoken: ");
            canonical.push_str(tag);
        }
        let id = hex::encode(Sha256::digest(canonical.as_bytes()));
        CacheKey { canonical, id }
    }

    /// The key whose canonical text an entry records (the hub learns keys from the entries it
    /// mirrors; it checks the swarm's key id of the text before trusting it).
    pub fn from_canonical(canonical: &str) -> CacheKey {
        CacheKey {
            canonical: canonical.to_string(),
            id: hex::encode(Sha256::digest(canonical.as_bytes())),
        }
    }

    /// The canonical text the id is the hash of.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Lowercase hex SHA-256 of the canonical text: the entry's file name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether this key is bound to one token (never shared with peers).
    pub fn is_per_token(&self) -> bool {
        self.canonical.contains("\ntoken: ")
    }
}

/// The URL with its query in canonical order (see the module docs) and no fragment.
pub fn normalize_url(url: &Url) -> String {
    if url.query().is_none() && url.fragment().is_none() {
        // Nothing to sort or drop: the parsed URL is already in its normal form.
        return url.as_str().to_string();
    }
    let mut url = url.clone();
    url.set_fragment(None);
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let only_first_page = pairs.iter().filter(|(k, _)| k == "page").count() == 1
        && pairs.iter().any(|(k, v)| k == "page" && v.trim() == "1");
    if only_first_page {
        pairs.retain(|(k, _)| k != "page");
    }
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        // Stable: repeated names keep their order, which decides GitHub's answer.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// `Accept` as one name per representation: GitHub answers `application/vnd.github.v3+json`,
/// `application/vnd.github+json`, `application/json`, `*/*` and no `Accept` alike, and
/// `vnd.github.v3.raw` like `vnd.github.raw`. Other formats (`.raw`, `.html`, `.diff`, …) and
/// previews stay distinct.
pub fn normalize_accept(accept: &str) -> String {
    if accept == DEFAULT_ACCEPT {
        // What almost every request sends (or gets when it sends none): its own normal form.
        return DEFAULT_ACCEPT.to_string();
    }
    let types: Vec<String> = accept
        .split(',')
        .map(|t| {
            let t = t.trim().to_ascii_lowercase();
            let t = t.replace("vnd.github.v3+", "vnd.github+");
            t.replace("vnd.github.v3.", "vnd.github.")
        })
        .filter(|t| !t.is_empty())
        .collect();
    let generic = |t: &str| {
        matches!(
            t,
            "application/vnd.github+json" | "application/json" | "*/*" | "application/*"
        ) || t.starts_with("application/json;")
    };
    if types.is_empty() || types.iter().all(|t| generic(t)) {
        return DEFAULT_ACCEPT.to_string();
    }
    types.join(", ")
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

    fn with_accept(accept: &str) -> CacheKey {
        let url = Url::parse("https://api.github.com/repos/a/b").unwrap();
        CacheKey::new(&url, accept, DEFAULT_API_VERSION)
    }

    #[test]
    fn query_order_host_case_and_fragment_do_not_matter() {
        assert_eq!(
            key("https://API.github.com:443/repos/a/b?b=2&a=1#x"),
            key("https://api.github.com/repos/a/b?a=1&b=2")
        );
    }

    #[test]
    fn repeated_query_names_keep_their_order() {
        // GitHub takes the last value of a repeated name: these are two different questions.
        assert_ne!(
            key("https://api.github.com/repos/a/b/issues?state=open&state=closed"),
            key("https://api.github.com/repos/a/b/issues?state=closed&state=open")
        );
        // Distinct names still sort, around the repeated ones too.
        assert_eq!(
            key("https://api.github.com/repos/a/b/issues?state=open&per_page=5&state=closed"),
            key("https://api.github.com/repos/a/b/issues?per_page=5&state=open&state=closed")
        );
    }

    #[test]
    fn the_first_page_is_no_page() {
        assert_eq!(
            key("https://api.github.com/repos/a/b/issues?page=1&per_page=5"),
            key("https://api.github.com/repos/a/b/issues?per_page=5")
        );
        assert_ne!(
            key("https://api.github.com/repos/a/b/issues?page=2"),
            key("https://api.github.com/repos/a/b/issues")
        );
        // Two `page` values are not "the first page".
        assert_ne!(
            key("https://api.github.com/x?page=1&page=3"),
            key("https://api.github.com/x?page=3")
        );
    }

    #[test]
    fn one_key_per_representation() {
        let default = with_accept(DEFAULT_ACCEPT);
        for same in [
            "application/vnd.github.v3+json",
            "application/json",
            "Application/VND.GitHub+JSON",
            "*/*",
            "",
        ] {
            assert_eq!(with_accept(same), default, "{same:?}");
        }
        assert_eq!(
            with_accept("application/vnd.github.v3.raw"),
            with_accept("application/vnd.github.raw")
        );
        for other in [
            "application/vnd.github.raw+json",
            "application/vnd.github.html+json",
            "application/vnd.github.diff",
            "application/vnd.github.squirrel-girl-preview+json",
        ] {
            assert_ne!(with_accept(other), default, "{other:?}");
        }
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
            CacheKey::new(&url, DEFAULT_ACCEPT, "2026-03-10")
        );
    }

    #[test]
    fn per_token_keys_differ_by_token_and_from_the_shared_key() {
        let url = Url::parse("https://api.github.com/user").unwrap();
        let a = CacheKey::per_token(&url, DEFAULT_ACCEPT, DEFAULT_API_VERSION, "aaaa");
        let b = CacheKey::per_token(&url, DEFAULT_ACCEPT, DEFAULT_API_VERSION, "bbbb");
        let shared = CacheKey::new(&url, DEFAULT_ACCEPT, DEFAULT_API_VERSION);
        assert_ne!(a, b);
        assert_ne!(a, shared);
        assert!(a.is_per_token() && !shared.is_per_token());
    }

    #[test]
    fn keys_of_the_old_scheme_are_never_found() {
        // v1's canonical text for the same request: its id must not be the v2 id.
        let v1 = "GET https://api.github.com/x\naccept: application/vnd.github+json\nx-github-api-version: 2022-11-28";
        let v1_id = hex::encode(Sha256::digest(v1.as_bytes()));
        assert_ne!(key("https://api.github.com/x").id(), v1_id);
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
