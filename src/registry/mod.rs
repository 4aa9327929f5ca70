//! Peer registries: where each node leaves a record of how to reach it, so that other nodes of
//! the swarm can find it without a bootstrap setting.
//!
//! A registry is anything that implements [`Registry`]: publish a [`PeerRecord`], list the live
//! ones, remove one. Two exist, chosen by the `registry` setting ([`parse_specs`]):
//!
//! - [`dir`] (`dir:PATH`): one JSON file per peer in a directory. Host-local: only nodes that
//!   see the same directory find each other, so loopback addresses are fine there.
//! - [`issue`] (`issue:OWNER/REPO[#N]`): one comment per peer on an open GitHub issue, signed
//!   with a key derived from the swarm secret, read through peercache's own cache and
//!   rate-limit handling. Not host-local: only addresses another host could dial.
//!
//! The daemon publishes its record at start and then as a heartbeat, dials the peers it finds,
//! and removes its record on a clean stop ([`heartbeat`]); `peercache register` and
//! `peercache discover` use the same registries from the command line. `docs/registry.md`
//! describes the formats, the address rules and the API budget of the heartbeat.
//!
//! Adding a registry means one new module implementing [`Registry`] and one arm in
//! [`parse_specs`] and [`Spec::open`]; nothing else changes.

pub mod dir;
pub mod heartbeat;
pub mod issue;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::cache::Cache;
use crate::config::{Raw, Settings, SwarmSecret};
use crate::error::UserError;
use crate::secret::Secret;

pub use dir::DirRegistry;
pub use issue::IssueRegistry;

/// The version of the record format written today.
pub const RECORD_VERSION: u32 = 1;

/// The variable that overrides every registry's heartbeat interval, in seconds (for tests, or
/// for a fleet that wants another trade-off).
pub const INTERVAL_VAR: &str = "PEERCACHE_REGISTRY_INTERVAL";

/// Heartbeat of a `dir:` registry: files cost nothing.
pub const DIR_INTERVAL: Duration = Duration::from_secs(30);

/// Heartbeat of an `issue:` registry: two heartbeats an hour, each one PATCH and one
/// conditional list, keep a runner under 10 API calls an hour (see `docs/registry.md`).
pub const ISSUE_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// The longest lifetime `register --ttl` may give a record: a dead node must drop out.
pub const MAX_RECORD_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The shortest record lifetime, whatever the interval.
const MIN_RECORD_TTL: Duration = Duration::from_secs(10);

/// How long a record lives after each heartbeat: two and a half intervals, so that one missed
/// heartbeat does not drop a live node, and a dead node disappears within three intervals.
pub fn record_ttl(interval: Duration) -> Duration {
    (interval * 5 / 2).max(MIN_RECORD_TTL)
}

/// One node's entry in a registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The record format ([`RECORD_VERSION`]).
    #[serde(default = "default_version")]
    pub version: u32,
    /// The node's libp2p peer id.
    pub peer_id: String,
    /// Where to dial it: multiaddrs ending in `/p2p/<peer id>`.
    pub multiaddrs: Vec<String>,
    /// `RUNNER_NAME` of its job.
    #[serde(default)]
    pub runner_name: Option<String>,
    /// `GITHUB_REPOSITORY` of its job.
    #[serde(default)]
    pub repository: Option<String>,
    /// `GITHUB_WORKFLOW` of its job.
    #[serde(default)]
    pub workflow: Option<String>,
    /// Its p2p port (the first TCP port it listens on).
    #[serde(default)]
    pub listen_port: Option<u16>,
    /// When the record was written, in seconds since the Unix epoch.
    pub last_seen: u64,
    /// When the record stops being valid, in seconds since the Unix epoch.
    pub expires_at: u64,
}

fn default_version() -> u32 {
    RECORD_VERSION
}

/// Why a record was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Its `expires_at` has passed: ignore it, and delete it when allowed.
    Expired,
    /// It cannot be used; the reason to show.
    Invalid(String),
}

/// The most addresses a record may list (more is a sign of garbage).
const MAX_ADDRS: usize = 32;

impl PeerRecord {
    /// This node's record: the addresses given, the job's names from the environment, valid
    /// for `ttl` from now.
    pub fn new(peer_id: &PeerId, multiaddrs: Vec<String>, ttl: Duration) -> PeerRecord {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let now = crate::daemon::state::now_secs();
        let listen_port = multiaddrs
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .find_map(|a| {
                a.iter().find_map(|p| match p {
                    Protocol::Tcp(port) => Some(port),
                    _ => None,
                })
            });
        PeerRecord {
            version: RECORD_VERSION,
            peer_id: peer_id.to_string(),
            multiaddrs,
            runner_name: env("RUNNER_NAME"),
            repository: env("GITHUB_REPOSITORY"),
            workflow: env("GITHUB_WORKFLOW"),
            listen_port,
            last_seen: now,
            expires_at: now.saturating_add(ttl.as_secs().max(1)),
        }
    }

    /// Checks a record read from a registry at time `now` (epoch seconds).
    ///
    /// Addresses that do not parse, do not end in this record's `/p2p/<peer id>`, or could not
    /// be dialed by anyone (`0.0.0.0`, `::`) are dropped, each with its reason in the second
    /// value; a record left without any address is [`Reject::Invalid`].
    pub fn validate(mut self, now: u64) -> Result<(PeerRecord, Vec<String>), Reject> {
        if self.version != RECORD_VERSION {
            return Err(Reject::Invalid(format!(
                "record version {} is not {RECORD_VERSION} (written by another peercache release)",
                self.version
            )));
        }
        let Ok(peer) = self.peer_id.parse::<PeerId>() else {
            return Err(Reject::Invalid(format!(
                "peer_id {:?} is not a libp2p peer id",
                self.peer_id
            )));
        };
        if self.expires_at <= now {
            return Err(Reject::Expired);
        }
        let mut problems = Vec::new();
        let mut good: Vec<String> = Vec::new();
        for text in self.multiaddrs.iter().take(MAX_ADDRS) {
            match check_peer_addr(text, &peer) {
                Ok(addr) => {
                    if !good.contains(&addr) {
                        good.push(addr);
                    }
                }
                Err(why) => problems.push(format!("address {text:?}: {why}")),
            }
        }
        if self.multiaddrs.len() > MAX_ADDRS {
            problems.push(format!(
                "{} addresses beyond the first {MAX_ADDRS} ignored",
                self.multiaddrs.len() - MAX_ADDRS
            ));
        }
        if good.is_empty() {
            let why = if problems.is_empty() {
                "it lists no address".to_string()
            } else {
                format!("no usable address ({})", problems.join("; "))
            };
            return Err(Reject::Invalid(why));
        }
        self.multiaddrs = good;
        Ok((self, problems))
    }
}

/// A multiaddr that ends in `/p2p/<peer>`, is dialable at all, and is safe to put on one line
/// of `$GITHUB_ENV` or a comma-separated list; its canonical text.
pub fn check_peer_addr(text: &str, peer: &PeerId) -> Result<String, String> {
    if text.is_empty()
        || text.len() > 512
        || text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err("not a multiaddr (empty, too long, or holds spaces or commas)".into());
    }
    let (id, addr) = crate::p2p::parse_peer_addr(text)?;
    if id != *peer {
        return Err(format!("it names another peer ({id})"));
    }
    if addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    }) {
        return Err("an unspecified address (0.0.0.0 or ::) cannot be dialed".into());
    }
    let canonical = addr.to_string();
    if canonical.chars().any(|c| c.is_whitespace() || c == ',') {
        return Err("not a multiaddr that fits on one line".into());
    }
    Ok(canonical)
}

/// The addresses of `listen` that a peer reading a registry could dial, each ending in
/// `/p2p/<peer id>`.
///
/// Never `0.0.0.0` or `::`. Loopback (`127.0.0.0/8`, `::1`, `localhost`) and link-local
/// (`169.254.0.0/16`, `fe80::/10`) addresses only when the registry is host-local: a reader of
/// a host-local registry is on the same host, anyone else would reach itself or nothing.
pub fn dialable_addrs(listen: &[Multiaddr], peer: &PeerId, host_local: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for addr in listen {
        let mut addr = addr.clone();
        match addr.iter().last() {
            Some(Protocol::P2p(id)) if id == *peer => {
                addr.pop();
            }
            Some(Protocol::P2p(_)) => continue,
            _ => {}
        }
        let mut usable = addr.iter().next().is_some();
        for p in addr.iter() {
            let ok = match p {
                Protocol::Ip4(ip) => ip4_usable(ip, host_local),
                Protocol::Ip6(ip) => ip6_usable(ip, host_local),
                Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name) => {
                    host_local || !name.eq_ignore_ascii_case("localhost")
                }
                // A relay circuit (`…/p2p/<hub>/p2p-circuit`): how a runner behind NAT is reached.
                Protocol::P2pCircuit => true,
                _ => true,
            };
            usable &= ok;
        }
        if !usable {
            continue;
        }
        addr.push(Protocol::P2p(*peer));
        let text = addr.to_string();
        if !out.contains(&text) {
            out.push(text);
        }
    }
    out
}

fn ip4_usable(ip: Ipv4Addr, host_local: bool) -> bool {
    !ip.is_unspecified()
        && !ip.is_broadcast()
        && !ip.is_multicast()
        && (host_local || !(ip.is_loopback() || ip.is_link_local()))
}

fn ip6_usable(ip: Ipv6Addr, host_local: bool) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return ip4_usable(v4, host_local);
    }
    let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
    !ip.is_unspecified() && !ip.is_multicast() && (host_local || !(ip.is_loopback() || link_local))
}

/// Whether an IP address is loopback or link-local (for docs and tests).
pub fn is_host_only(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !ip4_usable(v4, false) && ip4_usable(v4, true),
        IpAddr::V6(v6) => !ip6_usable(v6, false) && ip6_usable(v6, true),
    }
}

/// What a registry does; every method reports failures instead of panicking, and `list`
/// skips (with a warning) whatever it cannot use.
pub trait Registry: Send + Sync {
    /// The spec it was made from, e.g. `dir:/home/runner/.cache/peercache/peers`.
    fn name(&self) -> String;

    /// Whether only processes on this host read it (then loopback addresses are published).
    fn is_host_local(&self) -> bool;

    /// The heartbeat interval when [`INTERVAL_VAR`] does not set one.
    fn default_interval(&self) -> Duration;

    /// Creates or replaces the record of `record.peer_id`.
    fn publish<'a>(&'a self, record: &'a PeerRecord) -> BoxFuture<'a, anyhow::Result<()>>;

    /// The live, valid records (this node's own included); expired and malformed ones are
    /// skipped with a warning, and expired ones deleted when the registry allows.
    fn list(&self) -> BoxFuture<'_, anyhow::Result<Vec<PeerRecord>>>;

    /// Removes the record of `peer_id` (nothing to remove is not an error).
    fn remove<'a>(&'a self, peer_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>>;

    /// API calls made so far (for registries that spend a budget; others say 0).
    fn api_calls(&self) -> u64 {
        0
    }
}

/// A parsed registry spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// `dir:PATH`
    Dir(PathBuf),
    /// `issue:OWNER/REPO[#N]`
    Issue {
        /// The repository owner.
        owner: String,
        /// The repository name.
        repo: String,
        /// A fixed issue number; `None` finds (or creates) the issue by its title.
        number: Option<u64>,
    },
}

const SPEC_HELP: &str = "expected a comma-separated list of dir:PATH, issue:OWNER/REPO or issue:OWNER/REPO#NUMBER, or none";

/// Parses the `registry` setting. `none` (alone) means no registry; anything malformed is a
/// usage error that names the setting it came from.
pub fn parse_specs(raw: &[Raw]) -> anyhow::Result<Vec<Spec>> {
    let invalid = |item: &Raw, why: &str| -> anyhow::Error {
        UserError::usage(format!(
            "invalid {} entry {:?}: {why}",
            item.origin, item.value
        ))
        .into()
    };
    let mut specs = Vec::new();
    let mut none = None;
    for item in raw {
        let value = item.value.trim();
        if value.eq_ignore_ascii_case("none") {
            none = Some(item);
            continue;
        }
        if let Some(path) = value.strip_prefix("dir:") {
            let path = absolute_path(path.trim()).map_err(|why| invalid(item, &why))?;
            specs.push(Spec::Dir(path));
        } else if let Some(rest) = value.strip_prefix("issue:") {
            let spec = parse_issue(rest.trim()).map_err(|why| invalid(item, &why))?;
            specs.push(spec);
        } else {
            return Err(invalid(item, SPEC_HELP));
        }
    }
    if let Some(item) = none
        && !specs.is_empty()
    {
        return Err(invalid(
            item,
            "'none' turns registries off and cannot be combined with others",
        ));
    }
    specs.dedup();
    Ok(specs)
}

fn absolute_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("dir: needs a directory path, e.g. dir:/tmp/peercache-peers".into());
    }
    let path = match text.strip_prefix("~/") {
        Some(rest) => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(rest),
            None => return Err("'~' needs HOME to be set; give an absolute path".into()),
        },
        None => PathBuf::from(text),
    };
    if path.is_absolute() {
        Ok(path)
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .map_err(|e| format!("a relative path needs a current directory ({e})"))
    }
}

fn parse_issue(text: &str) -> Result<Spec, String> {
    const EXPECTED: &str = "expected issue:OWNER/REPO or issue:OWNER/REPO#NUMBER";
    let (repo_part, number) = match text.split_once('#') {
        Some((repo, n)) => match n.trim().parse::<u64>() {
            Ok(n) if n > 0 => (repo, Some(n)),
            _ => {
                return Err(format!(
                    "{EXPECTED} (the issue number must be a positive integer)"
                ));
            }
        },
        None => (text, None),
    };
    let Some((owner, repo)) = repo_part.trim().split_once('/') else {
        return Err(EXPECTED.into());
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !valid(owner) || !valid(repo) {
        return Err(format!(
            "{EXPECTED} (owner and repository are letters, digits, '-', '_' and '.')"
        ));
    }
    Ok(Spec::Issue {
        owner: owner.to_string(),
        repo: repo.to_string(),
        number,
    })
}

/// What opening a registry may need.
#[derive(Clone)]
pub struct Context {
    /// The cache: the issue registry reads through it, and keeps rate-limit state in its dir.
    pub cache: Cache,
    /// The upstream API base.
    pub api_url: Url,
    /// The upstream token.
    pub token: Option<Secret>,
    /// The swarm secret, or why there is none.
    pub secret: Result<Secret, String>,
    /// The swarm, in the daemon: entries of the registry's lists may come from peers.
    pub peers: Option<crate::p2p::Handle>,
    /// [`INTERVAL_VAR`], when set.
    pub interval_override: Option<Duration>,
    /// This job's repository (its entries need no access proof here).
    pub home_repository: Option<String>,
}

impl Context {
    /// The context of these settings, with this cache (and the swarm, in the daemon).
    pub fn new(
        settings: &Settings,
        cache: Cache,
        peers: Option<crate::p2p::Handle>,
    ) -> anyhow::Result<Context> {
        Ok(Context {
            cache,
            api_url: settings.api_url.clone(),
            token: settings.token.clone(),
            secret: match &settings.secret {
                SwarmSecret::Set { secret, .. } => Ok(secret.clone()),
                SwarmSecret::Missing { reason } => Err(reason.clone()),
            },
            peers,
            interval_override: interval_override()?,
            home_repository: settings.repository.clone(),
        })
    }
}

impl Spec {
    /// Opens the registry; fails (usage error) when it cannot work with this context, e.g. an
    /// issue registry without a swarm secret.
    pub fn open(&self, ctx: &Context) -> anyhow::Result<Box<dyn Registry>> {
        Ok(match self {
            Spec::Dir(path) => Box::new(DirRegistry::new(path.clone())),
            Spec::Issue {
                owner,
                repo,
                number,
            } => Box::new(IssueRegistry::new(owner, repo, *number, ctx)?),
        })
    }
}

/// Parses the `registry` setting and opens every registry.
pub fn open_all(raw: &[Raw], ctx: &Context) -> anyhow::Result<Vec<Box<dyn Registry>>> {
    parse_specs(raw)?
        .iter()
        .map(|spec| spec.open(ctx))
        .collect()
}

/// [`INTERVAL_VAR`]: seconds (fractions allowed, at least 0.1); `None` when unset.
pub fn interval_override() -> anyhow::Result<Option<Duration>> {
    let Some(value) = std::env::var(INTERVAL_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(None);
    };
    match value.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.1..=7.0 * 86_400.0).contains(&secs) => {
            Ok(Some(Duration::from_secs_f64(secs)))
        }
        _ => Err(UserError::usage(format!(
            "invalid {INTERVAL_VAR} {value:?}: expected the heartbeat interval in seconds, e.g. 30 (at least 0.1)"
        ))
        .into()),
    }
}

/// The heartbeat interval of a registry: [`INTERVAL_VAR`] or its default.
pub fn interval_of(registry: &dyn Registry, interval_override: Option<Duration>) -> Duration {
    interval_override.unwrap_or_else(|| registry.default_interval())
}

/// A peer found by `discover`: its (merged) record and where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discovered {
    /// The record; for a static peer from the bootstrap setting, only `peer_id` and
    /// `multiaddrs` are known (`last_seen` and `expires_at` are 0).
    #[serde(flatten)]
    pub record: PeerRecord,
    /// The registries (and `bootstrap`) that named it.
    pub sources: Vec<String>,
}

/// Peers by peer id, merged across sources.
#[derive(Debug, Default)]
pub struct Merged {
    peers: BTreeMap<String, Discovered>,
}

impl Merged {
    /// Adds a record found in `source`: the newest record's details win; addresses are the
    /// union, the newest record's first.
    pub fn add(&mut self, record: PeerRecord, source: &str) {
        match self.peers.get_mut(&record.peer_id) {
            None => {
                self.peers.insert(
                    record.peer_id.clone(),
                    Discovered {
                        record,
                        sources: vec![source.to_string()],
                    },
                );
            }
            Some(found) => {
                if !found.sources.iter().any(|s| s == source) {
                    found.sources.push(source.to_string());
                }
                let (mut newer, older) = if record.last_seen > found.record.last_seen {
                    (record, found.record.clone())
                } else {
                    (found.record.clone(), record)
                };
                for addr in older.multiaddrs {
                    if !newer.multiaddrs.contains(&addr) {
                        newer.multiaddrs.push(addr);
                    }
                }
                newer.expires_at = newer.expires_at.max(older.expires_at);
                found.record = newer;
            }
        }
    }

    /// Adds the static peers of the bootstrap setting (already parsed).
    pub fn add_static(&mut self, addrs: &[Multiaddr]) {
        for addr in addrs {
            let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                continue;
            };
            let Ok(text) = check_peer_addr(&addr.to_string(), &peer) else {
                tracing::warn!("skipping bootstrap address {addr}: it cannot be dialed");
                continue;
            };
            self.add(
                PeerRecord {
                    version: RECORD_VERSION,
                    peer_id: peer.to_string(),
                    multiaddrs: vec![text],
                    runner_name: None,
                    repository: None,
                    workflow: None,
                    listen_port: None,
                    last_seen: 0,
                    expires_at: 0,
                },
                "bootstrap",
            );
        }
    }

    /// Every peer but `own`, in peer id order.
    pub fn without(mut self, own: Option<&str>) -> Vec<Discovered> {
        if let Some(own) = own {
            self.peers.remove(own);
        }
        self.peers.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    fn raw(value: &str) -> Raw {
        Raw {
            value: value.to_string(),
            origin: Origin::Env("PEERCACHE_REGISTRY"),
        }
    }

    #[test]
    fn specs_parse_and_bad_ones_name_the_setting() {
        let specs = parse_specs(&[raw("dir:/tmp/peers"), raw("issue:octo/hello#12")]).unwrap();
        assert_eq!(
            specs,
            [
                Spec::Dir("/tmp/peers".into()),
                Spec::Issue {
                    owner: "octo".into(),
                    repo: "hello".into(),
                    number: Some(12)
                }
            ]
        );
        assert_eq!(
            parse_specs(&[raw("issue:a/b")]).unwrap(),
            [Spec::Issue {
                owner: "a".into(),
                repo: "b".into(),
                number: None
            }]
        );
        assert!(parse_specs(&[raw("none")]).unwrap().is_empty());
        for bad in [
            "ftp:x",
            "issue:nope",
            "issue:a/b#x",
            "issue:a/b#0",
            "issue:a/b/c",
            "issue:../b",
            "dir:",
        ] {
            let err = parse_specs(&[raw(bad)]).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("PEERCACHE_REGISTRY"), "{text}");
            assert!(err.downcast_ref::<UserError>().is_some());
        }
        assert!(parse_specs(&[raw("none"), raw("dir:/x")]).is_err());
    }

    #[test]
    fn published_addresses_follow_the_rules() {
        let peer = PeerId::random();
        let listen: Vec<Multiaddr> = [
            "/ip4/0.0.0.0/tcp/9000",
            "/ip4/127.0.0.1/tcp/9000",
            "/ip4/10.1.2.3/tcp/9000",
            "/ip4/169.254.1.1/tcp/9000",
            "/ip6/::/tcp/9000",
            "/ip6/::1/tcp/9000",
            "/ip6/fe80::1/tcp/9000",
            "/ip6/fd00::2/udp/9000/quic-v1",
            "/dns4/localhost/tcp/9000",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let remote = dialable_addrs(&listen, &peer, false);
        assert_eq!(
            remote,
            [
                format!("/ip4/10.1.2.3/tcp/9000/p2p/{peer}"),
                format!("/ip6/fd00::2/udp/9000/quic-v1/p2p/{peer}"),
            ]
        );
        let local = dialable_addrs(&listen, &peer, true);
        assert!(local.contains(&format!("/ip4/127.0.0.1/tcp/9000/p2p/{peer}")));
        assert!(local.contains(&format!("/ip6/::1/tcp/9000/p2p/{peer}")));
        assert!(
            !local
                .iter()
                .any(|a| a.contains("0.0.0.0") || a.contains("/ip6/::/"))
        );
        // An address that already names the peer is not suffixed twice.
        let named: Multiaddr = format!("/ip4/10.0.0.1/tcp/1/p2p/{peer}").parse().unwrap();
        assert_eq!(
            dialable_addrs(std::slice::from_ref(&named), &peer, false),
            [named.to_string()]
        );
        assert!(is_host_only("127.0.0.1".parse().unwrap()));
        assert!(!is_host_only("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn records_are_validated() {
        let peer = PeerId::random();
        let other = PeerId::random();
        let good = format!("/ip4/10.0.0.1/tcp/9000/p2p/{peer}");
        let record = PeerRecord {
            version: 1,
            peer_id: peer.to_string(),
            multiaddrs: vec![
                good.clone(),
                "garbage".into(),
                format!("/ip4/10.0.0.1/tcp/9000/p2p/{other}"),
                format!("/ip4/0.0.0.0/tcp/9000/p2p/{peer}"),
                "/ip4/10.0.0.1/tcp/9000".into(),
            ],
            runner_name: None,
            repository: None,
            workflow: None,
            listen_port: None,
            last_seen: 100,
            expires_at: 200,
        };
        let (checked, problems) = record.clone().validate(150).unwrap();
        assert_eq!(checked.multiaddrs, [good]);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert_eq!(record.clone().validate(200).unwrap_err(), Reject::Expired);
        let mut none = record.clone();
        none.multiaddrs = vec!["garbage".into()];
        assert!(matches!(none.validate(150), Err(Reject::Invalid(_))));
        let mut bad_id = record.clone();
        bad_id.peer_id = "nope".into();
        assert!(matches!(bad_id.validate(150), Err(Reject::Invalid(_))));
        let mut newer = record;
        newer.version = 2;
        assert!(matches!(newer.validate(150), Err(Reject::Invalid(_))));
    }

    #[test]
    fn merged_peers_keep_the_newest_details_and_every_address() {
        let peer = PeerId::random();
        let record = |addr: &str, seen: u64, name: &str| PeerRecord {
            version: 1,
            peer_id: peer.to_string(),
            multiaddrs: vec![format!("{addr}/p2p/{peer}")],
            runner_name: Some(name.into()),
            repository: None,
            workflow: None,
            listen_port: None,
            last_seen: seen,
            expires_at: seen + 10,
        };
        let mut merged = Merged::default();
        merged.add(record("/ip4/127.0.0.1/tcp/1", 5, "old"), "dir:/a");
        merged.add(record("/ip4/10.0.0.1/tcp/1", 9, "new"), "issue:o/r");
        let addr: Multiaddr = format!("/ip4/10.0.0.2/tcp/2/p2p/{peer}").parse().unwrap();
        merged.add_static(&[addr]);
        let peers = merged.without(None);
        assert_eq!(peers.len(), 1);
        let found = &peers[0];
        assert_eq!(found.record.runner_name.as_deref(), Some("new"));
        assert_eq!(found.record.multiaddrs.len(), 3);
        assert!(found.record.multiaddrs[0].starts_with("/ip4/10.0.0.1/"));
        assert_eq!(found.sources, ["dir:/a", "issue:o/r", "bootstrap"]);
        assert_eq!(found.record.expires_at, 19);
        let mut merged = Merged::default();
        merged.add(record("/ip4/127.0.0.1/tcp/1", 5, "x"), "dir:/a");
        assert!(merged.without(Some(&peer.to_string())).is_empty());
    }

    #[test]
    fn record_ttls_outlive_a_missed_heartbeat() {
        assert_eq!(record_ttl(DIR_INTERVAL), Duration::from_secs(75));
        assert_eq!(record_ttl(ISSUE_INTERVAL), Duration::from_secs(75 * 60));
        assert_eq!(record_ttl(Duration::from_secs(1)), MIN_RECORD_TTL);
    }
}
