//! Settings: every value of the contract's settings table, resolved with its precedence
//! (flag > `PEERCACHE_*` variable > legacy alias > `$PEERCACHE_HOME/peercache.yml` > default).
//!
//! Each resolved value remembers where it came from ([`Origin`]) so that a bad value is reported
//! with the name the user actually typed: `--ttl`, `PEERCACHE_TTL`, `CACHE_DEFAULT_TTL` or the
//! `ttl` key of the file.

mod file;
mod parse;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::error::UserError;
use crate::secret::Secret;

pub use file::{ALLOWED_KEYS, FILE_NAME, FileSettings};
pub use parse::{parse_bool, parse_port, parse_size, parse_ttl};

/// The public GitHub API; GitHub Enterprise Server is `https://HOST/api/v3`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// Freshness TTL when nothing else is set, in seconds.
pub const DEFAULT_TTL_SECS: u64 = 300;
/// Cache size bound when nothing else is set.
pub const DEFAULT_MAX_SIZE: u64 = 512 * 1024 * 1024;
/// The largest body stored when nothing else is set (`PEERCACHE_MAX_ENTRY`). Half the largest
/// that members can exchange ([`MAX_ENTRY_LIMIT`]): every answer under the cap is held whole in
/// memory while it is stored or sent to a member, so the default halves that worst case, and
/// ordinary REST answers (100 items a page) stay far below it.
pub const DEFAULT_MAX_ENTRY: u64 = 16 * 1024 * 1024;
/// The largest `PEERCACHE_MAX_ENTRY`: a sealed entry of 32 MiB (plus its record) is the largest
/// response the exchange protocol accepts (`MAX_RESPONSE_BYTES`, 32 MiB + 64 KiB).
pub const MAX_ENTRY_LIMIT: u64 = 32 * 1024 * 1024;
/// [`MAX_ENTRY_LIMIT`] as people write it.
pub const MAX_ENTRY_LIMIT_TEXT: &str = "32MiB";

/// The full-mesh size when nothing else is set (`PEERCACHE_FULL_MESH`): up to 32 members
/// everyone connects to everyone; a larger swarm keeps O(log n) connections per node.
pub const DEFAULT_FULL_MESH: usize = 32;

/// Where a setting's value came from; its `Display` is the name to show the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag such as `--ttl`.
    Flag(&'static str),
    /// An environment variable, current or legacy.
    Env(&'static str),
    /// A key of `peercache.yml`.
    File { path: PathBuf, key: &'static str },
    /// The built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "{name}"),
            Origin::Env(name) => write!(f, "{name}"),
            Origin::File { path, key } => write!(f, "'{key}' in {}", path.display()),
            Origin::Default => write!(f, "the default"),
        }
    }
}

/// A setting's raw text and where it came from.
#[derive(Debug, Clone)]
pub struct Raw {
    /// The value as given.
    pub value: String,
    /// Where it was given.
    pub origin: Origin,
}

/// The p2p port: a fixed number, or `auto` (a per-workflow block chosen by `init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Pick a port from the workflow's block.
    Auto,
    /// This port.
    Fixed(u16),
}

/// Why peer sharing is on or off, as `serve` and `status` report it.
#[derive(Debug, Clone)]
pub enum SwarmSecret {
    /// Sharing is possible: the secret and the variable it came from.
    Set { secret: Secret, origin: Origin },
    /// Sharing is off, with the reason to show.
    Missing { reason: String },
}

/// Who shares one swarm: nodes share entries only when their secret and scope are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Only jobs of one repository (`GITHUB_REPOSITORY`; `None` when it is not set).
    Repository(Option<String>),
    /// Every repository of one owner, with access proofs across tokens.
    Owner(String),
    /// An explicit swarm name.
    Named(String),
}

impl Scope {
    /// The text the swarm's keys are derived from: equal for nodes of one swarm only.
    pub fn key_material(&self) -> String {
        match self {
            Scope::Repository(Some(repo)) => format!("repository:{repo}"),
            Scope::Repository(None) => "repository:".to_string(),
            Scope::Owner(owner) => format!("owner:{owner}"),
            Scope::Named(name) => format!("name:{name}"),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Repository(Some(repo)) => write!(f, "repository {repo}"),
            Scope::Repository(None) => write!(
                f,
                "repository (GITHUB_REPOSITORY is not set: shared with every node that lacks it too)"
            ),
            Scope::Owner(owner) => write!(f, "owner {owner}"),
            Scope::Named(name) => write!(f, "name {name}"),
        }
    }
}

/// The flags that map onto settings; `None` when the flag was not given.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--home`
    pub home: Option<String>,
    /// `--cache-dir`
    pub cache_dir: Option<String>,
    /// `--api-url`
    pub api_url: Option<String>,
    /// `--port`
    pub port: Option<String>,
    /// `--bootstrap`
    pub bootstrap: Option<String>,
    /// `--ttl`
    pub ttl: Option<String>,
    /// `--registry`
    pub registry: Option<String>,
    /// `--mdns`
    pub mdns: Option<String>,
    /// `--log`
    pub log: Option<String>,
    /// `--scope`
    pub scope: Option<String>,
    /// `serve --hub` (`Some("true")` when given)
    pub hub: Option<String>,
    /// `serve --external-addr`, comma-joined
    pub external_addrs: Option<String>,
}

/// Every setting, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// State dir: identity, pid, logs, `peercache.yml`.
    pub home: PathBuf,
    /// Cache dir: objects and entries.
    pub cache_dir: PathBuf,
    /// Upstream API base URL, without a trailing slash.
    pub api_url: Url,
    /// Upstream token, if any.
    pub token: Option<Secret>,
    /// The swarm secret, or why there is none.
    pub secret: SwarmSecret,
    /// The p2p port.
    pub port: Port,
    /// Bootstrap multiaddrs as given (parsed by the p2p layer).
    pub bootstrap_peers: Vec<Raw>,
    /// Freshness TTL.
    pub ttl: Duration,
    /// Registry specs as given (parsed by the registry layer).
    pub registries: Vec<Raw>,
    /// Whether mDNS discovery is on.
    pub mdns: bool,
    /// Whether peer sharing is on.
    pub p2p: bool,
    /// The tracing filter directive.
    pub log: String,
    /// Cache size bound in bytes.
    pub max_size: u64,
    /// The largest body stored and shared; larger answers are passed through.
    pub max_entry: u64,
    /// Up to this many members the swarm is a full mesh; beyond, connections are bounded.
    pub full_mesh: usize,
    /// Who shares the swarm.
    pub scope: Scope,
    /// This job's repository (`GITHUB_REPOSITORY`, lowercase): every request on this runner comes
    /// from a job of it, so its entries need no access proof here.
    pub repository: Option<String>,
    /// Whether this node is a hub (relay and AutoNAT server for members).
    pub hub: bool,
    /// Announced multiaddrs as given (parsed by the p2p layer).
    pub external_addrs: Vec<Raw>,
}

/// Reads one environment variable; empty values count as unset (Actions passes empty inputs so).
pub trait Environment {
    /// The variable's value, `None` when unset or empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Environment for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name).filter(|v| !v.is_empty())
    }
}

/// The layers below the flags: the environment and the settings file.
struct Layers<'a> {
    env: &'a dyn Environment,
    file: FileSettings,
    file_path: PathBuf,
}

impl Layers<'_> {
    /// The first of: the flag, each variable in order, the file key.
    fn pick(
        &self,
        flag: (&'static str, &Option<String>),
        vars: &[&'static str],
        file_key: &'static str,
    ) -> Option<Raw> {
        if let Some(value) = flag.1.as_ref().filter(|v| !v.is_empty()) {
            return Some(Raw {
                value: value.clone(),
                origin: Origin::Flag(flag.0),
            });
        }
        self.pick_env(vars).or_else(|| self.file_value(file_key))
    }

    fn pick_env(&self, vars: &[&'static str]) -> Option<Raw> {
        vars.iter().find_map(|name| {
            self.env.var(name).map(|value| Raw {
                value,
                origin: Origin::Env(name),
            })
        })
    }

    fn file_value(&self, key: &'static str) -> Option<Raw> {
        self.file.get(key).map(|value| Raw {
            value,
            origin: Origin::File {
                path: self.file_path.clone(),
                key,
            },
        })
    }
}

impl Settings {
    /// Resolves every setting from the process environment.
    pub fn load(flags: &Flags) -> anyhow::Result<Settings> {
        Self::load_from(flags, &ProcessEnv)
    }

    /// Resolves every setting from the given environment (tests pass their own).
    pub fn load_from(flags: &Flags, env: &dyn Environment) -> anyhow::Result<Settings> {
        let home = resolve_home(flags, env)?;
        let file_path = home.join(FILE_NAME);
        let file = FileSettings::read(&file_path)?;
        let r = Layers {
            env,
            file,
            file_path,
        };

        let cache_dir = match r.pick(
            ("--cache-dir", &flags.cache_dir),
            CACHE_DIR_VARS,
            "cache_dir",
        ) {
            Some(raw) => parse::absolute_dir(&raw)?,
            None => xdg_dir(env, "XDG_CACHE_HOME", ".cache")?.join("peercache"),
        };

        let api_url = match r.pick(
            ("--api-url", &flags.api_url),
            &["PEERCACHE_API_URL", "GITHUB_API_URL"],
            "api_url",
        ) {
            Some(raw) => parse::api_url(&raw)?,
            None => Url::parse(DEFAULT_API_URL).expect("the default API URL parses"),
        };

        let token = r
            .pick_env(&["PEERCACHE_TOKEN", "GH_TOKEN", "GITHUB_TOKEN"])
            .map(|raw| Secret::new(raw.value.trim()));
        let secret = resolve_secret(env)?;

        let port = match r.pick(
            ("--port", &flags.port),
            &["PEERCACHE_PORT", "CACHE_LISTEN_PORT", "P2P_LISTEN_PORT"],
            "port",
        ) {
            Some(raw) => parse_port(&raw)?,
            None => Port::Auto,
        };

        let bootstrap_peers = r
            .pick(
                ("--bootstrap", &flags.bootstrap),
                &[
                    "PEERCACHE_BOOTSTRAP_PEERS",
                    "CACHE_BOOTSTRAP_PEERS",
                    "P2P_BOOTSTRAP_PEERS",
                ],
                "bootstrap_peers",
            )
            .map(|raw| split_list(&raw))
            .unwrap_or_default();

        let ttl = match r.pick(
            ("--ttl", &flags.ttl),
            &["PEERCACHE_TTL", "CACHE_DEFAULT_TTL"],
            "ttl",
        ) {
            Some(raw) => parse_ttl(&raw)?,
            None => Duration::from_secs(DEFAULT_TTL_SECS),
        };

        let registries = match r.pick(
            ("--registry", &flags.registry),
            &["PEERCACHE_REGISTRY"],
            "registry",
        ) {
            Some(raw) => split_list(&raw),
            None => {
                // Without XDG_CACHE_HOME or HOME, the peers dir sits in the cache dir.
                let dir = xdg_dir(env, "XDG_CACHE_HOME", ".cache")
                    .map(|base| base.join("peercache").join("peers"))
                    .unwrap_or_else(|_| cache_dir.join("peers"));
                vec![Raw {
                    value: format!("dir:{}", dir.display()),
                    origin: Origin::Default,
                }]
            }
        };

        let mdns = match r.pick(("--mdns", &flags.mdns), &["PEERCACHE_MDNS"], "mdns") {
            Some(raw) => parse_bool(&raw)?,
            None => true,
        };
        let p2p = match r.pick(("", &None), &["PEERCACHE_P2P", "CACHE_ENABLE_P2P"], "p2p") {
            Some(raw) => parse_bool(&raw)?,
            None => true,
        };

        let log = match r.pick(("--log", &flags.log), &["PEERCACHE_LOG", "RUST_LOG"], "log") {
            Some(raw) => parse::log_filter(&raw)?,
            None => "info".to_string(),
        };

        let hub = match r.pick(("--hub", &flags.hub), &["PEERCACHE_HUB"], "hub") {
            Some(raw) => parse_bool(&raw)?,
            None => false,
        };
        let external_addrs = r
            .pick(
                ("--external-addr", &flags.external_addrs),
                &["PEERCACHE_EXTERNAL_ADDRS"],
                "external_addrs",
            )
            .map(|raw| split_list(&raw))
            .unwrap_or_default();

        let max_size = match r.pick(("", &None), &["PEERCACHE_MAX_SIZE"], "max_size") {
            Some(raw) => parse_size(&raw)?,
            None => DEFAULT_MAX_SIZE,
        };
        let max_entry = match r.pick(("", &None), &["PEERCACHE_MAX_ENTRY"], "max_entry") {
            Some(raw) => parse::max_entry(&raw)?,
            None => DEFAULT_MAX_ENTRY,
        };
        let full_mesh = match r.pick(("", &None), &["PEERCACHE_FULL_MESH"], "full_mesh") {
            Some(raw) => parse::full_mesh(&raw)?,
            None => DEFAULT_FULL_MESH,
        };

        let repository = Settings::repository(env)
            .map(|r| r.trim().to_ascii_lowercase())
            .filter(|r| parse::is_owner_repo(r));
        let scope = match r.pick(("--scope", &flags.scope), &["PEERCACHE_SCOPE"], "scope") {
            Some(raw) => parse::scope(&raw, repository.as_deref(), env)?,
            None => Scope::Repository(repository.clone()),
        };

        Ok(Settings {
            home,
            cache_dir,
            api_url,
            token,
            secret,
            port,
            bootstrap_peers,
            ttl,
            registries,
            mdns,
            p2p,
            log,
            max_size,
            max_entry,
            full_mesh,
            scope,
            repository,
            hub,
            external_addrs,
        })
    }

    /// The repository `OWNER/REPO` of this job, from `GITHUB_REPOSITORY`.
    pub fn repository(env: &dyn Environment) -> Option<String> {
        env.var("GITHUB_REPOSITORY")
    }
}

const CACHE_DIR_VARS: &[&str] = &[
    "PEERCACHE_CACHE_DIR",
    "CACHE_DIR",
    "IPFS_ACCELERATE_CACHE_DIR",
];

/// The state dir: `--home`, `PEERCACHE_HOME`, `$RUNNER_TEMP/peercache` in Actions, else XDG state.
fn resolve_home(flags: &Flags, env: &dyn Environment) -> anyhow::Result<PathBuf> {
    if let Some(value) = flags.home.as_ref().filter(|v| !v.is_empty()) {
        return parse::absolute_dir(&Raw {
            value: value.clone(),
            origin: Origin::Flag("--home"),
        });
    }
    if let Some(value) = env.var("PEERCACHE_HOME") {
        return parse::absolute_dir(&Raw {
            value,
            origin: Origin::Env("PEERCACHE_HOME"),
        });
    }
    if env.var("GITHUB_ACTIONS").as_deref() == Some("true")
        && let Some(temp) = env.var("RUNNER_TEMP")
    {
        return Ok(PathBuf::from(temp).join("peercache"));
    }
    Ok(xdg_dir(env, "XDG_STATE_HOME", ".local/state")?.join("peercache"))
}

/// `$VAR` when set and absolute (as the XDG spec demands), else `$HOME/fallback`.
fn xdg_dir(env: &dyn Environment, var: &str, fallback: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = env.var(var).map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(dir);
    }
    match env.var("HOME") {
        Some(home) => Ok(Path::new(&home).join(fallback)),
        None => Err(UserError::usage(format!(
            "cannot place peercache's directories: neither {var} nor HOME is set; set PEERCACHE_HOME and PEERCACHE_CACHE_DIR"
        ))
        .into()),
    }
}

/// The variable that lets a long-lived `GH_TOKEN`/`GITHUB_TOKEN` serve as the swarm secret.
pub const SECRET_FROM_TOKEN_VAR: &str = "PEERCACHE_SECRET_FROM_TOKEN";

/// The swarm secret: `PEERCACHE_SECRET`, `CACHE_P2P_SHARED_SECRET`, or, when
/// [`SECRET_FROM_TOKEN_VAR`] opts in, a long-lived token.
///
/// A token is set for the API; if it silently became the secret, setting `GH_TOKEN` for `gh`
/// would open p2p ports and share the cache with everyone holding that token. So a long-lived
/// token serves only on request (the contract allows it, never demands it), and a job token
/// (`ghs_`) differs in every job, so two jobs could never share with it: it is never used. The
/// reason for sharing being off names whichever applies. A secret weaker than
/// [`crate::secret::MIN_SECRET_BITS`] is an error (exit 2) that says how to make one.
fn resolve_secret(env: &dyn Environment) -> anyhow::Result<SwarmSecret> {
    for name in ["PEERCACHE_SECRET", "CACHE_P2P_SHARED_SECRET"] {
        if let Some(value) = env.var(name) {
            if let Err(bits) = crate::secret::check_strength(&value) {
                return Err(UserError::usage(format!(
                    "{name} is too weak to be a swarm secret (about {bits:.0} bits of entropy, at least {:.0} needed); make one with 'peercache secret' (or 'openssl rand -base64 32') and set it on every runner of the swarm",
                    crate::secret::MIN_SECRET_BITS
                ))
                .into());
            }
            return Ok(SwarmSecret::Set {
                secret: Secret::new(value),
                origin: Origin::Env(name),
            });
        }
    }
    let from_token = match env.var(SECRET_FROM_TOKEN_VAR) {
        Some(value) => parse_bool(&Raw {
            value,
            origin: Origin::Env(SECRET_FROM_TOKEN_VAR),
        })?,
        None => false,
    };
    let mut job_token = None;
    let mut unused_token = None;
    for name in ["GH_TOKEN", "GITHUB_TOKEN"] {
        if let Some(token) = env.var(name) {
            let token = token.trim().to_string();
            if ["ghp_", "github_pat_", "gho_"]
                .iter()
                .any(|p| token.starts_with(p))
            {
                if from_token {
                    if crate::secret::check_strength(&token).is_err() {
                        return Err(UserError::usage(format!(
                            "{name} is too short to be a swarm secret; set PEERCACHE_SECRET instead (make one with 'peercache secret')"
                        ))
                        .into());
                    }
                    return Ok(SwarmSecret::Set {
                        secret: Secret::new(token),
                        origin: Origin::Env(name),
                    });
                }
                unused_token.get_or_insert(name);
            }
            if token.starts_with("ghs_") {
                job_token.get_or_insert(name);
            }
        }
    }
    let fix = "set PEERCACHE_SECRET to the same value on every runner of the swarm (make one with 'peercache secret')";
    let reason = match (unused_token, job_token) {
        (Some(name), _) if !from_token => format!(
            "no PEERCACHE_SECRET is set, and {name} (a long-lived token) serves as the swarm secret only with {SECRET_FROM_TOKEN_VAR}=true; {fix}"
        ),
        (_, Some(name)) => format!(
            "no PEERCACHE_SECRET is set, and {name} is a job token (ghs_) that differs in every job, so it cannot be shared; {fix}"
        ),
        _ => format!("no PEERCACHE_SECRET is set; {fix}"),
    };
    Ok(SwarmSecret::Missing { reason })
}

/// Splits a comma-separated setting into its non-empty, trimmed items, keeping the origin.
fn split_list(raw: &Raw) -> Vec<Raw> {
    raw.value
        .split([',', '\n'])
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| Raw {
            value: item.to_string(),
            origin: raw.origin.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests;
