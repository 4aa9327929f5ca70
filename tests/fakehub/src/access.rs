//! Who may see what, and answers that depend on who asks — as GitHub does it.
//!
//! * `GET /user` answers the caller's own identity ([`crate::login_for`] its token); without a
//!   token, 401.
//! * `GET /rate_limit` answers the caller's own bucket and costs nothing.
//! * Private repositories ([`crate::FakeHub::set_private`]) answer 404 to a request without a
//!   token and to a token scoped to other repositories ([`crate::FakeHub::scope_token`]), like a
//!   `GITHUB_TOKEN` of another repository. A token that is not scoped sees every repository.
//! * `GET /repos/{o}/{r}` carries the caller's `permissions` (admin only for tokens made admin
//!   with [`crate::FakeHub::set_admin`]), so its body — and its ETag — differ per token.
//! * `Range: bytes=A-B` on a plain resource answers 206 with that slice; `Accept-Encoding:
//!   gzip` answers the body gzip-compressed with `Content-Encoding: gzip`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use axum::body::Bytes;

/// The visibility and permission rules (part of the server's state).
#[derive(Debug, Default, Clone)]
pub(crate) struct Access {
    /// Lowercase `owner/repo` of private repositories.
    private: BTreeSet<String>,
    /// Bare token → the lowercase repositories it is limited to.
    scoped: BTreeMap<String, BTreeSet<String>>,
    /// Bare tokens with admin permission on the repositories they can see.
    admins: BTreeSet<String>,
}

/// The token of an `Authorization` value, without its scheme.
pub(crate) fn bare_token(authorization: &str) -> &str {
    let value = authorization.trim();
    ["Bearer ", "bearer ", "token ", "Token "]
        .iter()
        .find_map(|scheme| value.strip_prefix(scheme))
        .unwrap_or(value)
        .trim()
}

/// `owner/repo` (lowercase) of a `/repos/{owner}/{repo}[/…]` path, and whether the path is the
/// repository object itself.
pub(crate) fn repository_of(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/repos/")?;
    let mut parts = rest.splitn(3, '/');
    let owner = parts.next().filter(|s| !s.is_empty())?;
    let repo = parts.next().filter(|s| !s.is_empty())?;
    let is_object = parts.next().is_none_or(str::is_empty);
    Some((format!("{owner}/{repo}").to_ascii_lowercase(), is_object))
}

impl Access {
    pub fn set_private(&mut self, repo: &str, private: bool) {
        let repo = repo.to_ascii_lowercase();
        if private {
            self.private.insert(repo);
        } else {
            self.private.remove(&repo);
        }
    }

    pub fn scope_token(&mut self, token: &str, repos: &[String]) {
        self.scoped.insert(
            token.to_owned(),
            repos.iter().map(|r| r.to_ascii_lowercase()).collect(),
        );
    }

    pub fn set_admin(&mut self, token: &str, admin: bool) {
        if admin {
            self.admins.insert(token.to_owned());
        } else {
            self.admins.remove(token);
        }
    }

    /// Whether a request with this `Authorization` may see `repo` (lowercase `owner/repo`).
    pub fn can_see(&self, authorization: Option<&str>, repo: &str) -> bool {
        if !self.private.contains(repo) {
            return true;
        }
        let Some(authorization) = authorization else {
            return false;
        };
        match self.scoped.get(bare_token(authorization)) {
            Some(repos) => repos.contains(repo),
            None => true,
        }
    }

    /// The caller's `permissions` object on a repository it can see (`None` without a token).
    pub fn permissions(
        &self,
        authorization: Option<&str>,
        repo: &str,
    ) -> Option<serde_json::Value> {
        let token = bare_token(authorization?);
        let admin = self.admins.contains(token);
        let push = admin
            || self
                .scoped
                .get(token)
                .is_none_or(|repos| repos.contains(repo));
        Some(serde_json::json!({
            "admin": admin,
            "maintain": admin,
            "push": push,
            "triage": push,
            "pull": true,
        }))
    }

    /// A repository object's body with the caller's `permissions` put in (taken out without a
    /// token) and `private` set for private repositories; otherwise the bytes as stored.
    pub fn personalise(&self, body: &Bytes, authorization: Option<&str>, repo: &str) -> Bytes {
        let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice(body) else {
            return body.clone();
        };
        let mut changed = match self.permissions(authorization, repo) {
            Some(permissions) => {
                object.insert("permissions".into(), permissions);
                true
            }
            None => object.remove("permissions").is_some(),
        };
        if self.private.contains(repo) {
            object.insert("private".into(), serde_json::Value::Bool(true));
            changed = true;
        }
        if !changed {
            return body.clone();
        }
        Bytes::from(serde_json::to_vec(&serde_json::Value::Object(object)).unwrap_or_default())
    }
}

/// The identity `GET /user` answers for this token.
pub(crate) fn user_body(authorization: &str) -> Bytes {
    let login = crate::login_for(authorization);
    let id = u64::from_str_radix(&login[5..13], 16).unwrap_or(1);
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "login": login,
            "id": id,
            "type": "User",
            "url": format!("https://api.github.com/users/{login}"),
        }))
        .unwrap_or_default(),
    )
}

/// The `GET /rate_limit` body for a bucket's figures.
pub(crate) fn rate_limit_body(limit: u64, remaining: u64, used: u64, reset: u64) -> Bytes {
    let core = serde_json::json!({
        "limit": limit, "remaining": remaining, "used": used, "reset": reset, "resource": "core"
    });
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "resources": { "core": core },
            "rate": core,
        }))
        .unwrap_or_default(),
    )
}

/// The slice a `Range: bytes=A-B` (or `A-`, or `-N`) header asks for, and its `Content-Range`;
/// `None` when the header is absent, not a single byte range, or unsatisfiable.
pub(crate) fn byte_range(range: Option<&str>, body: &Bytes) -> Option<(Bytes, String)> {
    let spec = range?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || body.is_empty() {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let len = body.len() as u64;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (len.saturating_sub(n), len - 1)
        }
        (start, "") => (start.parse().ok()?, len - 1),
        (start, end) => (start.parse().ok()?, end.parse::<u64>().ok()?.min(len - 1)),
    };
    if start > end || start >= len {
        return None;
    }
    let slice = body.slice(start as usize..=end as usize);
    Some((slice, format!("bytes {start}-{end}/{len}")))
}

/// Whether an `Accept-Encoding` value accepts gzip.
pub(crate) fn wants_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|value| {
        value.split(',').any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            name.eq_ignore_ascii_case("gzip") && !refused
        })
    })
}

/// The body gzip-compressed.
pub(crate) fn gzip(body: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = encoder.write_all(body);
    Bytes::from(encoder.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let body = Bytes::from_static(b"0123456789abcdef");
        let (slice, range) = byte_range(Some("bytes=0-9"), &body).unwrap();
        assert_eq!(&slice[..], b"0123456789");
        assert_eq!(range, "bytes 0-9/16");
        assert_eq!(&byte_range(Some("bytes=-3"), &body).unwrap().0[..], b"def");
        assert_eq!(&byte_range(Some("bytes=14-"), &body).unwrap().0[..], b"ef");
        assert!(byte_range(Some("bytes=20-30"), &body).is_none());
        assert!(byte_range(Some("items=1-2"), &body).is_none());
        assert!(byte_range(None, &body).is_none());
    }

    #[test]
    fn visibility() {
        let mut access = Access::default();
        access.set_private("Octo/Secret", true);
        access.scope_token("job-x", &["octo/x".to_string()]);
        assert!(access.can_see(None, "octo/public"));
        assert!(!access.can_see(None, "octo/secret"));
        assert!(!access.can_see(Some("Bearer job-x"), "octo/secret"));
        assert!(access.can_see(Some("Bearer job-x"), "octo/public"));
        assert!(access.can_see(Some("token pat"), "octo/secret"));
        assert_eq!(repository_of("/repos/a/b"), Some(("a/b".into(), true)));
        assert_eq!(
            repository_of("/repos/A/b/issues"),
            Some(("a/b".into(), false))
        );
        assert_eq!(repository_of("/repos/a"), None);
    }

    #[test]
    fn gzip_is_negotiated() {
        assert!(wants_gzip(Some("gzip, deflate")));
        assert!(!wants_gzip(Some("gzip;q=0")));
        assert!(!wants_gzip(Some("identity")));
        assert!(!wants_gzip(None));
    }
}
