//! Turning what the user typed (`repos/{owner}/{repo}/pulls`, `/user`, a full URL) into a URL on
//! the API host.

use url::Url;

use crate::error::UserError;

const FORMS: &str =
    "expected a path such as repos/{owner}/{repo}/issues or /user, or a full URL on the API host";

/// The URL of `endpoint` under the API base `base`.
///
/// `{owner}` and `{repo}` are filled from `repository` (`GITHUB_REPOSITORY`). A full URL must
/// be on the API host and under its path, so that the token is never sent anywhere else.
pub fn endpoint_url(
    base: &Url,
    endpoint: &str,
    repository: Option<&str>,
) -> Result<Url, UserError> {
    let bad =
        |why: &str| UserError::usage(format!("invalid endpoint {endpoint:?}: {why}; {FORMS}"));
    let text = endpoint.trim();
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "it contains spaces or control characters (percent-encode them)",
        ));
    }
    if text.contains('#') {
        return Err(bad("it contains '#'"));
    }
    let url = if text.starts_with("http://") || text.starts_with("https://") {
        let url = Url::parse(text).map_err(|e| bad(&format!("not a valid URL ({e})")))?;
        if !on_api_host(base, &url) {
            return Err(UserError::usage(format!(
                "endpoint {endpoint:?} is not on the API host {}; peercache sends requests (and your token) only there: set PEERCACHE_API_URL to use another host",
                base.as_str().trim_end_matches('/')
            )));
        }
        url
    } else if text.contains("://") {
        return Err(bad("only http(s) URLs are supported"));
    } else {
        let path =
            fill_placeholders(text.trim_start_matches('/'), repository).map_err(|why| bad(&why))?;
        let (path_part, _) = path.split_once('?').unwrap_or((&path, ""));
        // URLs treat `%2e` as a dot in dot segments (`.%2E` is `..`): found by fuzzing, it
        // climbed out of a GitHub Enterprise base path such as /api/v3.
        if path_part.split('/').any(|segment| {
            let dots = segment.to_ascii_lowercase().replace("%2e", ".");
            dots == ".." || dots == "."
        }) {
            return Err(bad("it contains '.' or '..' path segments"));
        }
        let joined = format!("{}/{}", base.as_str().trim_end_matches('/'), path);
        let url = Url::parse(&joined).map_err(|e| bad(&format!("not a valid path ({e})")))?;
        if !on_api_host(base, &url) {
            return Err(bad("it leads out of the API base path"));
        }
        url
    };
    Ok(url)
}

/// Whether `url` has the API base's scheme, host and port and lies under its path.
pub fn on_api_host(base: &Url, url: &Url) -> bool {
    let base_path = base.path().trim_end_matches('/');
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && (url.path() == base_path || url.path().starts_with(&format!("{base_path}/")))
}

fn fill_placeholders(path: &str, repository: Option<&str>) -> Result<String, String> {
    if !path.contains('{') && !path.contains('}') {
        return Ok(path.to_string());
    }
    let mut out = path.to_string();
    if out.contains("{owner}") || out.contains("{repo}") {
        let repository = repository.ok_or_else(|| {
            "it uses {owner}/{repo} but GITHUB_REPOSITORY is not set (set GITHUB_REPOSITORY=OWNER/REPO or write the names out)".to_string()
        })?;
        let (owner, repo) = repository
            .split_once('/')
            .filter(|(o, r)| valid_name(o) && valid_name(r))
            .ok_or_else(|| format!("GITHUB_REPOSITORY {repository:?} is not OWNER/REPO"))?;
        out = out.replace("{owner}", owner).replace("{repo}", repo);
    }
    if let Some(start) = out.find('{') {
        let name: String = out[start..]
            .chars()
            .take_while(|c| *c != '}')
            .chain(Some('}'))
            .collect();
        return Err(format!(
            "the placeholder {name} is not supported (only {{owner}} and {{repo}} are)"
        ));
    }
    if out.contains('}') {
        return Err("it has an unmatched '}'".to_string());
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name != "."
        && name != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://api.github.com").unwrap()
    }

    #[test]
    fn percent_encoded_dot_segments_cannot_leave_the_base_path() {
        // The fuzz target endpoint_link found ".%2E" (fuzz/seeds/endpoint_link/dot-dot).
        let ghes = Url::parse("https://ghe.example/api/v3").unwrap();
        for endpoint in [
            ".%2E",
            "%2e%2e/login",
            "repos/.%2e/.%2E/x",
            "%2E",
            "a/%2e/b",
        ] {
            let err = endpoint_url(&ghes, endpoint, None).unwrap_err();
            assert!(err.message.contains("'..'"), "{endpoint}: {}", err.message);
        }
        assert!(endpoint_url(&ghes, "repos/a/b%2ec", None).is_ok());
    }

    #[test]
    fn forms() {
        let u = endpoint_url(
            &base(),
            "repos/{owner}/{repo}/pulls?state=open",
            Some("octo/hello"),
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "https://api.github.com/repos/octo/hello/pulls?state=open"
        );
        assert_eq!(
            endpoint_url(&base(), "/user", None).unwrap().as_str(),
            "https://api.github.com/user"
        );
        let full = endpoint_url(&base(), "https://api.github.com/repos/a/b", None).unwrap();
        assert_eq!(full.as_str(), "https://api.github.com/repos/a/b");
        let ghes = Url::parse("https://ghe.example/api/v3").unwrap();
        assert_eq!(
            endpoint_url(&ghes, "repos/a/b", None).unwrap().as_str(),
            "https://ghe.example/api/v3/repos/a/b"
        );
        assert!(endpoint_url(&ghes, "https://ghe.example/repos/a/b", None).is_err());
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "  ",
            "repos/a b",
            "repos/../x",
            "repos/{owner}/x",
            "repos/{branch}",
            "https://evil.example/x",
            "ftp://x",
            "a#b",
            "repos/x}",
        ] {
            let err = endpoint_url(&base(), bad, None).expect_err(bad);
            assert!(!err.message.contains('\n'), "{}", err.message);
        }
        let err = endpoint_url(&base(), "repos/{owner}/{repo}", None).unwrap_err();
        assert!(err.message.contains("GITHUB_REPOSITORY"), "{}", err.message);
        assert!(endpoint_url(&base(), "repos/{owner}/{repo}", Some("nope")).is_err());
    }
}
