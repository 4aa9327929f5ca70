//! URLs of the upstream API in answers, pointed back at the daemon's `/gh` base on the way out.
//!
//! Clients build follow-up requests from the URLs in bodies (`url`, `*_url`, hypermedia
//! templates such as `issues_url: ".../issues{/number}"`) and from `Link`. The cache stores
//! GitHub's bytes (so digests and peers are untouched); only the copy sent to a client is
//! rewritten.

use url::Url;

/// The upstream base as it appears in answers, without a trailing slash.
fn upstream_base(upstream: &Url) -> &str {
    upstream.as_str().trim_end_matches('/')
}

/// Points `Link` targets under the upstream base at `<base>/gh`, so that pagination by octokit
/// or curl stays on the daemon.
pub fn link(link: &str, upstream: &Url, base: &str) -> String {
    let from = format!("<{}/", upstream_base(upstream));
    let to = format!("<{}/gh/", base.trim_end_matches('/'));
    link.replace(&from, &to)
}

/// A `Location` (GitHub sends one with a 201) under the upstream base, pointed at `<base>/gh`.
pub fn location(value: &str, upstream: &Url, base: &str) -> String {
    let from = upstream_base(upstream);
    match value.strip_prefix(from) {
        Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => {
            format!("{}/gh{rest}", base.trim_end_matches('/'))
        }
        _ => value.to_string(),
    }
}

/// The inverse of [`link`], for `fetch`, which shows and follows upstream URLs.
pub fn unlink(link: &str, upstream: &Url, base: &str) -> String {
    let from = format!("<{}/gh/", base.trim_end_matches('/'));
    let to = format!("<{}/", upstream_base(upstream));
    link.replace(&from, &to)
}

/// A JSON body with every string that starts with the upstream base (followed by `/`, `?`, `{`
/// or the string's end) starting with `<base>/gh` instead; `None` when nothing changes or the
/// body is not UTF-8. A URL is only ever rewritten at the start of a JSON string, so text that
/// merely mentions the API inside a sentence stays as GitHub wrote it.
pub fn urls(body: &[u8], upstream: &Url, base: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let from = format!("\"{}", upstream_base(upstream));
    let to = format!("\"{}/gh", base.trim_end_matches('/'));
    let mut out = String::new();
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find(&from) {
        let after = &rest[at + from.len()..];
        let boundary = matches!(after.as_bytes().first(), Some(b'/' | b'?' | b'{' | b'"'));
        out.push_str(&rest[..at]);
        if boundary {
            out.push_str(&to);
            changed = true;
        } else {
            out.push_str(&from);
        }
        rest = after;
    }
    if !changed {
        return None;
    }
    out.push_str(rest);
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_point_at_the_daemon_and_back() {
        let upstream = Url::parse("https://ghe.example/api/v3").unwrap();
        let base = "http://127.0.0.1:4000/cap";
        let header = r#"<https://ghe.example/api/v3/repos/a/b/issues?page=2>; rel="next", <https://elsewhere.example/x>; rel="help""#;
        let rewritten = link(header, &upstream, base);
        assert_eq!(
            rewritten,
            r#"<http://127.0.0.1:4000/cap/gh/repos/a/b/issues?page=2>; rel="next", <https://elsewhere.example/x>; rel="help""#
        );
        assert_eq!(unlink(&rewritten, &upstream, base), header);
        assert_eq!(
            location(
                "https://ghe.example/api/v3/repos/a/b/issues/5",
                &upstream,
                base
            ),
            "http://127.0.0.1:4000/cap/gh/repos/a/b/issues/5"
        );
        assert_eq!(
            location("https://ghe.example/api/v3x/elsewhere", &upstream, base),
            "https://ghe.example/api/v3x/elsewhere"
        );
    }

    #[test]
    fn body_urls_point_at_the_daemon() {
        let upstream = Url::parse("https://api.github.com").unwrap();
        let base = "http://127.0.0.1:4000/cap";
        let body = br#"{"url":"https://api.github.com/repos/a/b","issues_url":"https://api.github.com/repos/a/b/issues{/number}","root":"https://api.github.com","html_url":"https://github.com/a/b","evil":"https://api.github.com.attacker.example/x","text":"see https://api.github.com/x"}"#;
        let out = String::from_utf8(urls(body, &upstream, base).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"url":"http://127.0.0.1:4000/cap/gh/repos/a/b","issues_url":"http://127.0.0.1:4000/cap/gh/repos/a/b/issues{/number}","root":"http://127.0.0.1:4000/cap/gh","html_url":"https://github.com/a/b","evil":"https://api.github.com.attacker.example/x","text":"see https://api.github.com/x"}"#
        );
        assert_eq!(urls(br#"{"a":"b"}"#, &upstream, base), None);
        assert_eq!(urls(&[0xff, 0xfe], &upstream, base), None);
    }
}
