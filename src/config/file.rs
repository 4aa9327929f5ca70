//! `$PEERCACHE_HOME/peercache.yml`: the settings `init` writes, read with `serde_norway`.
//!
//! The file never holds secrets: unknown keys (such as `token` or `secret`) are refused, so a
//! secret put there by mistake is reported instead of silently used.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::UserError;

/// The settings file's name inside the state dir.
pub const FILE_NAME: &str = "peercache.yml";

/// A scalar or a list of scalars, as YAML lets users write them (`ttl: 300` or `ttl: "300"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Value {
    Text(String),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    List(Vec<Value>),
}

impl Value {
    fn into_text(self) -> String {
        match self {
            Value::Text(s) => s,
            Value::Unsigned(n) => n.to_string(),
            Value::Signed(n) => n.to_string(),
            Value::Float(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::List(items) => items
                .into_iter()
                .map(Value::into_text)
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// The keys `peercache.yml` may hold, each optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Keys {
    cache_dir: Option<Value>,
    api_url: Option<Value>,
    port: Option<Value>,
    bootstrap_peers: Option<Value>,
    ttl: Option<Value>,
    registry: Option<Value>,
    mdns: Option<Value>,
    p2p: Option<Value>,
    log: Option<Value>,
    max_size: Option<Value>,
    max_entry: Option<Value>,
    full_mesh: Option<Value>,
    scope: Option<Value>,
    hub: Option<Value>,
    external_addrs: Option<Value>,
}

/// The parsed settings file: key → text value.
#[derive(Debug, Default, Clone)]
pub struct FileSettings {
    values: BTreeMap<&'static str, String>,
}

impl FileSettings {
    /// Reads the file; a missing file is an empty one, a malformed one is a usage error.
    pub fn read(path: &Path) -> anyhow::Result<FileSettings> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FileSettings::default());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Ok(FileSettings::default());
            }
            Err(e) => {
                return Err(UserError::usage(format!(
                    "cannot read {}: {e}; fix its permissions or set PEERCACHE_HOME to another state dir",
                    path.display()
                ))
                .into());
            }
        };
        Self::parse(&text).map_err(|e| {
            UserError::usage(format!(
                "invalid settings file {}: {}; fix or remove the file (allowed keys: {})",
                path.display(),
                one_line(&e.to_string()),
                ALLOWED_KEYS.join(", ")
            ))
            .into()
        })
    }

    /// Parses the file's text; an empty document is an empty file.
    pub fn parse(text: &str) -> Result<FileSettings, serde_norway::Error> {
        if text.trim().is_empty() {
            return Ok(FileSettings::default());
        }
        let keys: Option<Keys> = serde_norway::from_str(text)?;
        let keys = keys.unwrap_or_default();
        let mut values = BTreeMap::new();
        let pairs = [
            ("cache_dir", keys.cache_dir),
            ("api_url", keys.api_url),
            ("port", keys.port),
            ("bootstrap_peers", keys.bootstrap_peers),
            ("ttl", keys.ttl),
            ("registry", keys.registry),
            ("mdns", keys.mdns),
            ("p2p", keys.p2p),
            ("log", keys.log),
            ("max_size", keys.max_size),
            ("max_entry", keys.max_entry),
            ("full_mesh", keys.full_mesh),
            ("scope", keys.scope),
            ("hub", keys.hub),
            ("external_addrs", keys.external_addrs),
        ];
        for (key, value) in pairs {
            if let Some(value) = value {
                values.insert(key, value.into_text());
            }
        }
        Ok(FileSettings { values })
    }

    /// The text value of a key, if the file sets it.
    pub fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned().filter(|v| !v.is_empty())
    }
}

/// The keys `peercache.yml` may hold.
pub const ALLOWED_KEYS: &[&str] = &[
    "cache_dir",
    "api_url",
    "port",
    "bootstrap_peers",
    "ttl",
    "registry",
    "mdns",
    "p2p",
    "log",
    "max_size",
    "max_entry",
    "full_mesh",
    "scope",
    "hub",
    "external_addrs",
];

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
