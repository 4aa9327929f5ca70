//! Parsers for setting values; every error names the setting and says how to fix it.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::{Environment, Port, Raw, Scope};
use crate::error::UserError;

fn invalid(raw: &Raw, expected: &str) -> anyhow::Error {
    UserError::usage(format!(
        "invalid {} {:?}: {expected}",
        raw.origin, raw.value
    ))
    .into()
}

/// A TTL in whole seconds.
pub fn parse_ttl(raw: &Raw) -> anyhow::Result<Duration> {
    raw.value
        .trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| invalid(raw, "expected a whole number of seconds, e.g. 300"))
}

/// `auto` or a port number from 1 to 65535.
pub fn parse_port(raw: &Raw) -> anyhow::Result<Port> {
    let value = raw.value.trim();
    if value.eq_ignore_ascii_case("auto") {
        return Ok(Port::Auto);
    }
    match value.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(Port::Fixed(port as u16)),
        _ => Err(invalid(
            raw,
            "expected 'auto' or a port number from 1 to 65535",
        )),
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
pub fn parse_bool(raw: &Raw) -> anyhow::Result<bool> {
    match raw.value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(raw, "expected true or false")),
    }
}

/// `PEERCACHE_MAX_ENTRY`: a size ([`parse_size`]) no larger than members can exchange.
pub fn max_entry(raw: &Raw) -> anyhow::Result<u64> {
    let size = parse_size(raw)?;
    if size > super::MAX_ENTRY_LIMIT {
        return Err(invalid(
            raw,
            &format!(
                "at most {} (the largest entry members can exchange); larger answers are passed through uncached whatever the setting, so set {} to a size such as 16MiB",
                super::MAX_ENTRY_LIMIT_TEXT,
                raw.origin
            ),
        ));
    }
    Ok(size)
}

/// `PEERCACHE_FULL_MESH`: how many members a swarm may have before connections are bounded.
pub fn full_mesh(raw: &Raw) -> anyhow::Result<usize> {
    match raw.value.trim().parse::<usize>() {
        Ok(n) if (2..=1024).contains(&n) => Ok(n),
        _ => Err(invalid(
            raw,
            &format!(
                "expected a number of members from 2 to 1024 (up to it every member connects to every other; beyond, each keeps O(log n) connections); set {} to a number such as 32",
                raw.origin
            ),
        )),
    }
}

/// A size in bytes, with an optional unit: `536870912`, `512M`, `512MiB`, `1G`, `64KB`.
///
/// Units are binary (1K = 1024) because the cache bound is about disk blocks, not marketing.
pub fn parse_size(raw: &Raw) -> anyhow::Result<u64> {
    let text = raw.value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(invalid(
                raw,
                "expected a size such as 536870912, 512MiB or 2G",
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            invalid(
                raw,
                "expected a size greater than zero such as 512MiB or 2G",
            )
        })
}

/// An absolute directory path; `~/` is expanded because users write it in YAML.
pub fn absolute_dir(raw: &Raw) -> anyhow::Result<PathBuf> {
    let value = raw.value.trim();
    let path = match value.strip_prefix("~/") {
        Some(rest) => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest),
            None => {
                return Err(invalid(
                    raw,
                    "'~' needs HOME to be set; give an absolute path",
                ));
            }
        },
        None => PathBuf::from(value),
    };
    if path.as_os_str().is_empty() {
        return Err(invalid(raw, "expected a directory path"));
    }
    if path.is_absolute() {
        Ok(path)
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .map_err(|e| {
                invalid(
                    raw,
                    &format!(
                        "a relative path needs a current directory ({e}); give an absolute path"
                    ),
                )
            })
    }
}

/// The upstream API base: an http(s) URL with a host and no query, trailing slash removed.
pub fn api_url(raw: &Raw) -> anyhow::Result<Url> {
    const EXPECTED: &str =
        "expected an http(s) URL such as https://api.github.com or https://HOST/api/v3";
    let mut url = Url::parse(raw.value.trim()).map_err(|_| invalid(raw, EXPECTED))?;
    let usable = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    if !usable {
        return Err(invalid(raw, EXPECTED));
    }
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Ok(url)
}

/// A tracing filter directive such as `info` or `peercache=debug,libp2p=warn`.
pub fn log_filter(raw: &Raw) -> anyhow::Result<String> {
    let value = raw.value.trim();
    tracing_subscriber::EnvFilter::try_new(value)
        .map(|_| value.to_string())
        .map_err(|_| {
            invalid(
                raw,
                "expected a log filter such as info, debug or peercache=debug",
            )
        })
}

/// Whether `text` looks like `owner/repo` (GitHub's name characters).
pub fn is_owner_repo(text: &str) -> bool {
    let name_ok = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    matches!(text.split_once('/'), Some((owner, repo)) if name_ok(owner) && name_ok(repo))
}

/// `repository`, `owner`, or an explicit swarm name (letters, digits, `-`, `_`, `.`, `/`).
pub fn scope(raw: &Raw, repository: Option<&str>, env: &dyn Environment) -> anyhow::Result<Scope> {
    let value = raw.value.trim();
    match value.to_ascii_lowercase().as_str() {
        "repository" | "repo" => return Ok(Scope::Repository(repository.map(str::to_string))),
        "owner" => {
            let owner = env
                .var("GITHUB_REPOSITORY_OWNER")
                .map(|o| o.trim().to_ascii_lowercase())
                .or_else(|| {
                    repository
                        .and_then(|r| r.split_once('/'))
                        .map(|(o, _)| o.to_string())
                });
            return match owner {
                Some(owner) if !owner.is_empty() => Ok(Scope::Owner(owner)),
                _ => Err(invalid(
                    raw,
                    "scope 'owner' needs GITHUB_REPOSITORY_OWNER or GITHUB_REPOSITORY (set in Actions); outside Actions name the swarm instead, e.g. PEERCACHE_SCOPE=my-fleet",
                )),
            };
        }
        _ => {}
    }
    let valid = !value.is_empty()
        && value.len() <= 100
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if !valid {
        return Err(invalid(
            raw,
            "expected 'repository', 'owner' or a swarm name of up to 100 letters, digits, '-', '_', '.' or '/'",
        ));
    }
    Ok(Scope::Named(value.to_string()))
}
