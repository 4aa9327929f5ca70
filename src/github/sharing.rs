//! Which answers may be shared across tokens, and on what condition: the one place that knows
//! which GitHub endpoints answer differently depending on who asks.
//!
//! GitHub answers most reads the same to everyone who may see the resource; sharing those is
//! the point of peercache. Some answers are about the caller (who it is, its quota, its
//! notifications) or embed the caller's own view (a repository's `permissions`, the private
//! repositories a token can list, search results over what it can see). Those are never shared
//! across tokens. Everything under a repository is shared, but a token is only served another
//! token's copy once it has shown it can see that repository (see [`crate::resolver`]).

use url::Url;

/// How an endpoint's answers may be shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sharing {
    /// Never cached: always asked upstream (`/rate_limit`: free, and it is the caller's own
    /// figure, always changing).
    PassThrough,
    /// Cached per token (the key carries the token's one-way tag), never offered to peers:
    /// the answer is about the caller, or shows only what the caller can see.
    PerToken(&'static str),
    /// Shared across tokens that can see this repository (lowercase `owner/repo`).
    Repository(String),
    /// The same for everyone: shared freely.
    Public,
}

/// Endpoints whose answer depends on who asks, with why. Each entry matches the path itself
/// and everything below it.
const PER_TOKEN_PREFIXES: &[(&str, &str)] = &[
    (
        "/user",
        "the authenticated user and what it owns, follows, stars or can see",
    ),
    (
        "/installation",
        "the installation the token belongs to and its repositories",
    ),
    ("/app", "the GitHub App the JWT belongs to"),
    ("/apps", "apps as the caller may see them"),
    ("/notifications", "the caller's own notifications"),
    ("/authorizations", "the caller's own OAuth authorizations"),
    (
        "/applications",
        "grants and tokens of the caller's OAuth apps",
    ),
    (
        "/search",
        "search results cover what the caller can see, private repositories included",
    ),
    (
        "/orgs",
        "organisation answers depend on membership (members, teams, private repositories, billing)",
    ),
    (
        "/enterprises",
        "enterprise answers depend on the caller's role",
    ),
    (
        "/repositories",
        "repository lists embed the caller's permissions",
    ),
    (
        "/gists",
        "a gist list is the caller's own; starred and secret gists depend on the caller",
    ),
    ("/issues", "issues assigned to the caller"),
    ("/feeds", "the caller's own feed URLs"),
    ("/projects", "classic projects as the caller may see them"),
    (
        "/teams",
        "teams are visible to their organisation's members only",
    ),
    ("/graphql", "the GraphQL API answers per caller"),
];

/// Endpoints whose answer is the same for every caller.
const PUBLIC_PREFIXES: &[&str] = &[
    "/meta",
    "/emojis",
    "/licenses",
    "/gitignore/templates",
    "/codes_of_conduct",
    "/zen",
    "/octocat",
    "/versions",
];

/// Below `/repos/{owner}/{repo}`: answers that embed the caller's own view.
const PER_TOKEN_IN_REPOSITORY: &[(&str, &str)] = &[
    (
        "",
        "the repository object carries the caller's `permissions`",
    ),
    (
        "/forks",
        "forks are repository objects with the caller's `permissions`",
    ),
    ("/subscription", "the caller's own watch state"),
    ("/notifications", "the caller's own notifications"),
    ("/invitations", "invitations as the caller may see them"),
];

/// The path of `url` below the API base (`/repos/a/b` for `https://ghe/api/v3/repos/a/b`).
fn api_path<'a>(api_base: &Url, url: &'a Url) -> &'a str {
    let base = api_base.path().trim_end_matches('/');
    let path = url.path();
    let path = path.strip_prefix(base).unwrap_or(path);
    let path = path.trim_end_matches('/');
    if path.is_empty() { "/" } else { path }
}

/// The repository (lowercase `owner/repo`) of a `/repos/{owner}/{repo}[/…]` URL, and whether the
/// URL is the repository object itself.
pub fn repository_of(api_base: &Url, url: &Url) -> Option<(String, bool)> {
    let rest = api_path(api_base, url).strip_prefix("/repos/")?;
    let mut parts = rest.splitn(3, '/');
    let owner = parts.next().filter(|p| !p.is_empty())?;
    let repo = parts.next().filter(|p| !p.is_empty())?;
    let is_object = parts.next().is_none_or(str::is_empty);
    Some((format!("{owner}/{repo}").to_ascii_lowercase(), is_object))
}

/// How answers of `url` (on the API at `api_base`) may be shared.
pub fn classify(api_base: &Url, url: &Url) -> Sharing {
    let path = api_path(api_base, url);

    if path == "/rate_limit" {
        return Sharing::PassThrough;
    }
    if let Some(rest) = path.strip_prefix("/repos/") {
        let mut parts = rest.splitn(3, '/');
        let (Some(owner), Some(repo)) = (parts.next(), parts.next()) else {
            return Sharing::PerToken("not a repository path");
        };
        if owner.is_empty() || repo.is_empty() {
            return Sharing::PerToken("not a repository path");
        }
        let below = parts.next().map_or(String::new(), |p| format!("/{p}"));
        for (prefix, why) in PER_TOKEN_IN_REPOSITORY {
            if below == *prefix || (!prefix.is_empty() && under(&below, prefix)) {
                return Sharing::PerToken(why);
            }
        }
        return Sharing::Repository(format!("{owner}/{repo}").to_ascii_lowercase());
    }
    for (prefix, why) in PER_TOKEN_PREFIXES {
        if under(path, prefix) {
            return Sharing::PerToken(why);
        }
    }
    if PUBLIC_PREFIXES.iter().any(|prefix| under(path, prefix)) {
        return Sharing::Public;
    }
    if let Some(rest) = path.strip_prefix("/users/") {
        // A user's public profile and public lists; their events include private ones when
        // the caller is that user, and their repositories carry the caller's permissions.
        let mut parts = rest.splitn(2, '/');
        let _login = parts.next();
        return match parts.next() {
            None => Sharing::Public,
            Some(
                "followers" | "following" | "gpg_keys" | "keys" | "orgs" | "social_accounts"
                | "hovercard",
            ) => Sharing::Public,
            Some(_) => Sharing::PerToken("a user's events and repositories depend on the caller"),
        };
    }
    Sharing::PerToken("not known to answer everyone alike")
}

/// Whether `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether a repository answer's body embeds the caller's own view after all: a repository
/// object (or a list of them) with `permissions`. A safety net for endpoints the lists above do
/// not name: such an answer is not shared.
pub fn embeds_caller_permissions(body: &[u8]) -> bool {
    fn is_repo_with_permissions(value: &serde_json::Value) -> bool {
        value.get("permissions").is_some_and(|p| p.is_object()) && value.get("full_name").is_some()
    }
    // Cheap first: most bodies never mention it.
    if !body.windows(13).any(|w| w == b"\"permissions\"") {
        return false;
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(items)) => items.iter().any(is_repo_with_permissions),
        // An object, or an object holding lists of them (`{"repositories": [...]}`).
        Ok(value @ serde_json::Value::Object(_)) => {
            is_repo_with_permissions(&value)
                || value.as_object().is_some_and(|map| {
                    map.values()
                        .filter_map(|v| v.as_array())
                        .flatten()
                        .any(is_repo_with_permissions)
                })
        }
        _ => false,
    }
}

/// Whether a repository object's body says the repository is public.
pub fn says_public(body: &[u8]) -> Option<bool> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    if let Some(private) = value.get("private").and_then(|p| p.as_bool()) {
        return Some(!private);
    }
    value
        .get("visibility")
        .and_then(|v| v.as_str())
        .map(|v| v == "public")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(path: &str) -> Sharing {
        let base = Url::parse("https://api.github.com").unwrap();
        classify(
            &base,
            &Url::parse(&format!("https://api.github.com{path}")).unwrap(),
        )
    }

    #[test]
    fn identity_bound_endpoints_are_per_token() {
        for path in [
            "/user",
            "/user/repos",
            "/user/installations",
            "/installation/repositories",
            "/app",
            "/app/installations",
            "/notifications",
            "/notifications/threads/1",
            "/authorizations",
            "/search/issues",
            "/orgs/octo/repos",
            "/orgs/octo",
            "/repos/octo/hello",
            "/repos/octo/hello/",
            "/repos/octo/hello/forks",
            "/users/octo/events",
            "/users/octo/repos",
            "/somewhere/unknown",
        ] {
            assert!(matches!(class(path), Sharing::PerToken(_)), "{path}");
        }
    }

    #[test]
    fn rate_limit_passes_through() {
        assert_eq!(class("/rate_limit"), Sharing::PassThrough);
    }

    #[test]
    fn repository_paths_name_their_repository() {
        assert_eq!(
            class("/repos/Octo/Hello/issues"),
            Sharing::Repository("octo/hello".into())
        );
        assert_eq!(
            class("/repos/octo/hello/releases/latest"),
            Sharing::Repository("octo/hello".into())
        );
        // "/usery" is not under "/user"; "/repos/a/b/forksy" not under "/forks".
        assert!(matches!(class("/usery"), Sharing::PerToken(_)));
        assert_eq!(
            class("/repos/a/b/forksy"),
            Sharing::Repository("a/b".into())
        );
    }

    #[test]
    fn public_endpoints() {
        for path in [
            "/meta",
            "/emojis",
            "/licenses/mit",
            "/users/octo",
            "/users/octo/followers",
        ] {
            assert_eq!(class(path), Sharing::Public, "{path}");
        }
    }

    #[test]
    fn enterprise_base_paths_are_stripped() {
        let base = Url::parse("https://ghe.example/api/v3").unwrap();
        let url = Url::parse("https://ghe.example/api/v3/repos/a/b/pulls").unwrap();
        assert_eq!(classify(&base, &url), Sharing::Repository("a/b".into()));
        let url = Url::parse("https://ghe.example/api/v3/user").unwrap();
        assert!(matches!(classify(&base, &url), Sharing::PerToken(_)));
    }

    #[test]
    fn permissions_in_bodies_are_found() {
        assert!(embeds_caller_permissions(
            br#"{"full_name":"a/b","permissions":{"admin":true}}"#
        ));
        assert!(embeds_caller_permissions(
            br#"[{"full_name":"a/b","permissions":{"admin":true}}]"#
        ));
        assert!(embeds_caller_permissions(
            br#"{"total_count":1,"repositories":[{"full_name":"a/b","permissions":{"pull":true}}]}"#
        ));
        // A collaborator's permissions are the collaborator's, the same for every caller.
        assert!(!embeds_caller_permissions(
            br#"[{"login":"x","permissions":{"admin":true}}]"#
        ));
        assert!(!embeds_caller_permissions(br#"[{"number":1}]"#));
    }

    #[test]
    fn visibility_of_a_repository_object() {
        assert_eq!(says_public(br#"{"private":false}"#), Some(true));
        assert_eq!(says_public(br#"{"private":true}"#), Some(false));
        assert_eq!(says_public(br#"{"visibility":"internal"}"#), Some(false));
        assert_eq!(says_public(b"[]"), None);
    }
}
