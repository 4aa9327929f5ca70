//! `issue:OWNER/REPO[#N]`: one comment per peer on an open GitHub issue.
//!
//! The issue is the open one titled [`ISSUE_TITLE`] (the oldest, should there be several), or
//! issue `#N` when the spec names it; the first node that publishes creates it when the token
//! may. Each node owns one comment:
//!
//! ````text
//! <!-- peercache-peer-registry:12D3KooW… -->
//! Peer record of a peercache node, signed with the swarm secret and refreshed by the node itself; do not edit.
//!
//! ```json
//! {"record":{"version":1,"peer_id":"12D3KooW…","multiaddrs":[…],…},"mac":"<64 hex digits>"}
//! ```
//! ````
//!
//! `mac` is HMAC-SHA256 over `peercache/v1/registry-record\0` and the exact text of `record`,
//! under a key derived from the swarm secret with HKDF-SHA256 (info `peercache/v1/registry`).
//! Anyone who can comment on the repository can write a comment that looks like a record; only a
//! member of the swarm can write one whose MAC verifies. Comments whose MAC does not verify are
//! ignored (with a warning) and never deleted by peercache.
//!
//! Reads go through the [`Resolver`]: the cache, the swarm (in the daemon), and conditional
//! requests whose 304s cost no quota; a node reading the list again within [`LIST_TTL`] costs
//! nothing. Writes go through [`GitHub::send`] and the same rate-limit state as reads: while
//! GitHub says "wait", no write is sent. `docs/registry.md` computes the budget.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use url::Url;

use super::{Context, ISSUE_INTERVAL, PeerRecord, Registry, Reject};
use crate::cache::{DEFAULT_ACCEPT, DEFAULT_API_VERSION};
use crate::daemon::state::now_secs;
use crate::error::UserError;
use crate::github::ratelimit::{RateLimits, Verdict};
use crate::github::{ApiResponse, GitHub, next_link, on_api_host};
use crate::resolver::{Request, ResolveError, Resolved, Resolver, Source, format_time};
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// The title of the registry issue.
pub const ISSUE_TITLE: &str = "peercache-peer-registry";
/// How a registry comment starts; the peer id and ` -->` follow.
pub const MARKER_PREFIX: &str = "<!-- peercache-peer-registry:";
const MARKER_SUFFIX: &str = " -->";
/// HKDF info of the record MAC key.
const MAC_INFO: &[u8] = b"peercache/v1/registry";
/// What the MAC covers before the record's text.
const MAC_CONTEXT: &[u8] = b"peercache/v1/registry-record\0";
/// How long a found issue number is used before it is looked up again (through the cache: a
/// free 304 when the repository's open issues did not change).
const LOOKUP_TTL: Duration = Duration::from_secs(3600);
/// How long a list of comments (or "no registry issue yet") is used without asking GitHub.
pub const LIST_TTL: Duration = Duration::from_secs(60);
/// Expired records deleted per list, so that a crowd of dead runners cannot blow the budget.
const MAX_DELETIONS_PER_LIST: usize = 1;
/// Pages of open issues searched for the registry issue (100 each).
const MAX_SEARCH_PAGES: usize = 20;
/// Pages of comments read (100 each: 2,000 peers).
const MAX_COMMENT_PAGES: usize = 20;
/// The step `since=` moves in (see [`IssueRegistry::comments_url`]).
const SINCE_GRID: Duration = Duration::from_secs(600);
/// Clock skew between a writer and GitHub allowed for in `since=`.
const SINCE_SLACK: Duration = Duration::from_secs(300);

/// The registry issue's description.
const ISSUE_BODY: &str = "This issue is the peer registry of [peercache](https://github.com/peercache/peercache): \
each comment is the record of one running node (its peer id and the addresses other runners of \
the swarm can dial), signed with the swarm secret and kept up to date by the node itself. \
Records expire on their own; nodes delete their comment when they stop. Please leave the \
comments alone, and keep the issue open (closing it makes the next node open a new one).";

/// An issue-backed registry.
pub struct IssueRegistry {
    owner: String,
    repo: String,
    number: Option<u64>,
    api_url: Url,
    token: Option<Secret>,
    key: [u8; 32],
    /// Reads that may be served by the cache or the swarm.
    shared: Resolver,
    /// Reads that must reflect GitHub now (before a write): no swarm tier.
    direct: Resolver,
    github: GitHub,
    limits: RateLimits,
    list_ttl: Duration,
    /// How far back a comment can have been written and still hold a live record.
    record_window: Duration,
    writes: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The registry issue and when it was found.
    issue: Option<(u64, Instant)>,
    /// This process's comments, by peer id.
    own: HashMap<String, u64>,
    /// Comments already warned about (id and a hash of the body).
    warned: HashSet<(u64, u64)>,
    /// A hash of the unsigned comments last warned about.
    forged_digest: Option<u64>,
    /// Whether the warning about an unlocked registry issue was given.
    warned_unlocked: bool,
}

/// The record MAC key of a swarm secret.
pub fn registry_key(secret: &Secret) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"peercache swarm v1"), secret.expose().as_bytes());
    let mut key = [0u8; 32];
    hk.expand(MAC_INFO, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    key
}

fn mac(key: &[u8; 32], record_text: &str) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(MAC_CONTEXT);
    mac.update(record_text.as_bytes());
    mac
}

/// The comment body of a record, signed with `key`.
pub fn format_comment(key: &[u8; 32], record: &PeerRecord) -> anyhow::Result<String> {
    // A backtick inside a string would end the Markdown code block early; `\u0060` is the
    // same JSON string.
    let text = serde_json::to_string(record)?.replace('`', "\\u0060");
    let tag = hex::encode(mac(key, &text).finalize().into_bytes());
    Ok(format!(
        "{MARKER_PREFIX}{peer}{MARKER_SUFFIX}\n\
         Peer record of a peercache node, signed with the swarm secret and refreshed by the node itself; do not edit.\n\n\
         ```json\n{{\"record\":{text},\"mac\":\"{tag}\"}}\n```\n",
        peer = record.peer_id
    ))
}

/// What a comment is, to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a registry comment (no marker at its start): ignored silently.
    Other,
    /// A record whose MAC verifies (not yet checked for expiry or addresses).
    Record(PeerRecord),
    /// A comment that looks like a record but carries no MAC that verifies: not written by a
    /// member of this swarm. Nothing else in it is read (it may be anybody's text).
    Forged,
    /// A comment whose MAC verifies but whose record cannot be used; the reason.
    Broken(String),
}

/// The longest comment body read: GitHub's own limit, and far more than a record needs.
const MAX_COMMENT_BYTES: usize = 65_536;

/// Reads a comment body; the MAC is checked before anything of it is parsed.
///
/// A record comment holds exactly the line `format_comment` writes,
/// `{"record":<text>,"mac":"<64 hex digits>"}`, in a ```` ```json ```` block: the record's
/// text is cut out of that line as bytes, its MAC checked, and only a record that verifies is
/// parsed as JSON. So a stranger's comment costs one HMAC at most, and none of its content
/// reaches a parser or a log line.
pub fn parse_comment(key: &[u8; 32], body: &str) -> Parsed {
    let Some(rest) = body.trim_start().strip_prefix(MARKER_PREFIX) else {
        return Parsed::Other;
    };
    if body.len() > MAX_COMMENT_BYTES {
        return Parsed::Forged;
    }
    let Some(record_text) = signed_record(key, rest) else {
        return Parsed::Forged;
    };
    let marker_peer = rest.split_once(MARKER_SUFFIX).map(|(peer, _)| peer.trim());
    let record: PeerRecord = match serde_json::from_str(record_text) {
        Ok(record) => record,
        Err(e) => return Parsed::Broken(format!("its record does not parse ({e})")),
    };
    if marker_peer != Some(record.peer_id.as_str()) {
        return Parsed::Broken(format!(
            "its marker does not name the peer of its record {:?}",
            record.peer_id
        ));
    }
    Parsed::Record(record)
}

/// The record text of a comment (after its marker prefix) whose MAC verifies.
fn signed_record<'a>(key: &[u8; 32], rest: &'a str) -> Option<&'a str> {
    const HEAD: &str = "{\"record\":";
    const TAIL: &str = ",\"mac\":\"";
    let (_, after) = rest.split_once(MARKER_SUFFIX)?;
    let block = &after[after.find("```json")? + "```json".len()..];
    let block = block
        .strip_prefix("\r")
        .unwrap_or(block)
        .strip_prefix('\n')?;
    let line = block[..block.find('\n')?].trim_end_matches('\r');
    let envelope = line.strip_prefix(HEAD)?.strip_suffix("\"}")?;
    let (record_text, tag) = envelope.rsplit_once(TAIL)?;
    let tag = hex::decode(tag).ok()?;
    mac(key, record_text).verify_slice(&tag).ok()?;
    Some(record_text)
}

#[derive(Debug, Deserialize)]
struct ApiComment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    user: Option<ApiUser>,
}

#[derive(Debug, Deserialize)]
struct ApiUser {
    login: String,
}

impl ApiComment {
    fn author(&self) -> &str {
        self.user.as_ref().map_or("(unknown)", |u| u.login.as_str())
    }
}

/// A page list: the items (and whether every page came from GitHub just now), or "not found"
/// (the issue or repository is gone or hidden).
enum Listed {
    Items { items: Vec<Value>, fresh: bool },
    NotFound,
}

impl IssueRegistry {
    /// The registry of `owner/repo` (issue `number`, or found by title). Fails without a swarm
    /// secret: records are signed with it.
    pub fn new(
        owner: &str,
        repo: &str,
        number: Option<u64>,
        ctx: &Context,
    ) -> anyhow::Result<IssueRegistry> {
        let name = spec_name(owner, repo, number);
        let secret = ctx.secret.as_ref().map_err(|reason| {
            UserError::usage(format!(
                "the {name} registry needs the swarm secret, which signs its records so that strangers who can comment cannot add peers: {reason}"
            ))
        })?;
        let github = GitHub::new()?;
        let base = ctx.api_url.as_str().trim_end_matches('/').to_string();
        let mut shared = Resolver::new(ctx.cache.clone(), github.clone(), &ctx.api_url)
            .with_home_repository(ctx.home_repository.clone());
        if let Some(peers) = &ctx.peers {
            shared = shared.with_peers(peers.clone());
        }
        let interval = ctx.interval_override.unwrap_or(ISSUE_INTERVAL);
        Ok(IssueRegistry {
            owner: owner.to_string(),
            repo: repo.to_string(),
            number,
            api_url: ctx.api_url.clone(),
            token: ctx.token.clone(),
            key: registry_key(secret),
            shared,
            direct: Resolver::new(ctx.cache.clone(), github.clone(), &ctx.api_url)
                .with_home_repository(ctx.home_repository.clone()),
            github,
            limits: RateLimits::new(
                ctx.cache.dir(),
                &base,
                ctx.token.as_ref().map(Secret::expose),
            ),
            list_ttl: LIST_TTL.min(interval / 2),
            // A member heartbeats at least every ISSUE_INTERVAL (or this node's interval when
            // it is longer): its comment is never older than one record lifetime.
            record_window: super::record_ttl(interval.max(ISSUE_INTERVAL)) + SINCE_SLACK,
            writes: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn url(&self, path_and_query: &str) -> anyhow::Result<Url> {
        let text = format!(
            "{}/repos/{}/{}/{path_and_query}",
            self.api_url.as_str().trim_end_matches('/'),
            self.owner,
            self.repo
        );
        Ok(Url::parse(&text)?)
    }

    /// The comments that can hold a live record: those updated within the longest record
    /// lifetime (`since=`), so that old comments, however many, cost no page. The time is
    /// rounded down to [`SINCE_GRID`] so that the URL, and with it the cached answer and its
    /// free 304s, stays the same for a while.
    fn comments_url(&self, issue: u64) -> anyhow::Result<Url> {
        let grid = SINCE_GRID.as_secs();
        let since = now_secs().saturating_sub(self.record_window.as_secs()) / grid * grid;
        self.url(&format!(
            "issues/{issue}/comments?since={}&per_page=100",
            iso8601(since)
        ))
    }

    fn comment_url(&self, id: u64) -> anyhow::Result<Url> {
        self.url(&format!("issues/comments/{id}"))
    }

    fn label(&self) -> String {
        spec_name(&self.owner, &self.repo, self.number)
    }

    /// One GET through the tiers.
    async fn get(&self, url: Url, ttl: Duration, direct: bool) -> anyhow::Result<Resolved> {
        let request = Request {
            url,
            accept: DEFAULT_ACCEPT.to_string(),
            api_version: DEFAULT_API_VERSION.to_string(),
            token: self.token.clone(),
            extra_headers: Vec::new(),
            ttl,
        };
        let resolver = if direct { &self.direct } else { &self.shared };
        match resolver.resolve(&request).await {
            Ok(resolved) => Ok(resolved),
            Err(ResolveError::Unreachable(message)) => Err(anyhow::anyhow!(message)),
            Err(ResolveError::RateLimited { reason, .. }) => Err(anyhow::anyhow!(reason)),
            Err(ResolveError::Local(error)) => Err(error),
        }
    }

    /// Every page of a list, following `Link: rel="next"`, until `done` says an item is the one
    /// looked for or `max_pages` were read.
    async fn get_list(
        &self,
        first: Url,
        ttl: Duration,
        direct: bool,
        max_pages: usize,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Listed> {
        let mut items = Vec::new();
        let mut fresh = true;
        let mut url = first;
        for _ in 0..max_pages {
            let resolved = self.get(url.clone(), ttl, direct).await?;
            fresh &= matches!(resolved.source, Source::Upstream | Source::Revalidated);
            match resolved.status {
                200..=299 => {}
                404 | 410 => return Ok(Listed::NotFound),
                status => anyhow::bail!(
                    "GitHub answered {status} to GET {}: {}",
                    url.path(),
                    api_message(&resolved.body)
                ),
            }
            let page: Vec<Value> = serde_json::from_slice(&resolved.body).map_err(|e| {
                anyhow::anyhow!("GitHub's answer to GET {} is not a list ({e})", url.path())
            })?;
            let found = page.iter().any(&done);
            items.extend(page);
            if found {
                break;
            }
            let Some(next) = resolved.link().and_then(next_link) else {
                break;
            };
            match Url::parse(&next) {
                Ok(next) if on_api_host(&self.api_url, &next) => url = next,
                _ => anyhow::bail!("GitHub's Link header points off the API host ({next})"),
            }
        }
        Ok(Listed::Items { items, fresh })
    }

    /// The registry issue, searched with this TTL: the open *locked* issue with the title and
    /// the lowest number (only users with write access can lock one, or comment on it), else
    /// the lowest unlocked one (anyone may have opened it: warned about once); and whether the
    /// answer came from GitHub just now.
    async fn search(&self, ttl: Duration, direct: bool) -> anyhow::Result<(Option<u64>, bool)> {
        let url = self.url("issues?state=open&sort=created&direction=asc&per_page=100")?;
        let is_registry = |issue: &Value| {
            issue.get("title").and_then(Value::as_str) == Some(ISSUE_TITLE)
                && issue.get("pull_request").is_none()
                && issue.get("state").and_then(Value::as_str).unwrap_or("open") == "open"
        };
        let is_locked = |issue: &Value| issue.get("locked").and_then(Value::as_bool) == Some(true);
        match self
            .get_list(url, ttl, direct, MAX_SEARCH_PAGES, |i| {
                is_registry(i) && is_locked(i)
            })
            .await?
        {
            Listed::Items { items, fresh } => {
                let lowest = |locked: bool| {
                    items
                        .iter()
                        .filter(|i| is_registry(i) && (!locked || is_locked(i)))
                        .filter_map(|i| i.get("number").and_then(Value::as_u64))
                        .min()
                };
                let found = lowest(true).or_else(|| {
                    let unlocked = lowest(false)?;
                    if !std::mem::replace(&mut self.state().warned_unlocked, true) {
                        tracing::warn!(
                            "the {} registry uses issue #{unlocked}, which is not locked: anyone who can open issues may have opened it and can comment on it; lock it, and name it in the setting (issue:{}/{}#{unlocked})",
                            self.label(),
                            self.owner,
                            self.repo
                        );
                    }
                    Some(unlocked)
                });
                Ok((found, fresh))
            }
            Listed::NotFound => Err(UserError::usage(format!(
                "the {} registry: repository {}/{} was not found (or the token cannot see it)",
                self.label(),
                self.owner,
                self.repo
            ))
            .into()),
        }
    }

    /// The registry issue; created (when `create` and the token may) if there is none.
    async fn find_issue(&self, create: bool) -> anyhow::Result<Option<u64>> {
        if let Some(number) = self.number {
            return Ok(Some(number));
        }
        if let Some((number, found_at)) = self.state().issue
            && found_at.elapsed() < LOOKUP_TTL
        {
            return Ok(Some(number));
        }
        let (mut found, fresh) = self.search(LOOKUP_TTL, false).await?;
        if found.is_none() && !fresh {
            // A cached "none" is trusted for a short while only: someone may have opened it
            // since. Asking again costs a free 304 when nothing changed.
            found = self
                .search(if create { Duration::ZERO } else { LIST_TTL }, create)
                .await?
                .0;
        }
        if found.is_none() && create {
            let created = self.create_issue().await?;
            // Should two nodes have raced, everyone settles on the lowest number, and whoever
            // opened another closes its own, so that one registry issue stays open.
            let lowest = self
                .search(Duration::ZERO, true)
                .await
                .ok()
                .and_then(|(found, _)| found)
                .unwrap_or(created);
            if lowest != created {
                self.close_issue(created, lowest).await;
            }
            found = Some(lowest);
        }
        if let Some(number) = found {
            self.state().issue = Some((number, Instant::now()));
        }
        Ok(found)
    }

    async fn create_issue(&self) -> anyhow::Result<u64> {
        let url = self.url("issues")?;
        let body = serde_json::json!({ "title": ISSUE_TITLE, "body": ISSUE_BODY });
        let how_to_fix = format!(
            "give the token 'issues: write' (in a workflow: permissions: issues: write), or open an issue titled {ISSUE_TITLE:?} in {o}/{r} yourself and use issue:{o}/{r}#NUMBER",
            o = self.owner,
            r = self.repo
        );
        let response = self
            .write(Method::POST, url, Some(&body))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the registry issue in {}/{}: {e:#}; {how_to_fix}",
                    self.owner,
                    self.repo
                )
            })?;
        match response.status {
            201 | 200 => {
                let number = serde_json::from_slice::<Value>(&response.body)
                    .ok()
                    .and_then(|v| v.get("number").and_then(Value::as_u64))
                    .ok_or_else(|| anyhow::anyhow!("GitHub created the registry issue but did not say its number"))?;
                tracing::info!(
                    "opened the peer registry issue {}/{}#{number}; name it in the setting (issue:{}/{}#{number}) so that nobody's look-alike issue can take its place",
                    self.owner,
                    self.repo,
                    self.owner,
                    self.repo
                );
                self.lock_issue(number).await;
                Ok(number)
            }
            status => Err(UserError::usage(format!(
                "cannot create the registry issue in {}/{}: GitHub answered {status} ({}); {how_to_fix}",
                self.owner,
                self.repo,
                api_message(&response.body)
            ))
            .into()),
        }
    }

    /// Locks the registry issue it opened, so that only users with write access (the
    /// fleet's token) can comment: strangers can neither flood it nor add look-alike records.
    /// Failing to lock is a warning: the MACs still keep strangers' records out.
    /// Closes a registry issue this node opened in a race that another node's won.
    async fn close_issue(&self, number: u64, kept: u64) {
        let result = match self.url(&format!("issues/{number}")) {
            Ok(url) => {
                let body = serde_json::json!({ "state": "closed", "state_reason": "not_planned" });
                self.write(Method::PATCH, url, Some(&body)).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(response) if (200..300).contains(&response.status) => {
                tracing::info!(
                    "closed the registry issue #{number} this node opened at the same time as #{kept}, which the swarm uses"
                );
            }
            Ok(response) => tracing::warn!(
                "cannot close the duplicate registry issue {}/{}#{number} (the swarm uses #{kept}): GitHub answered {} ({}); close it by hand",
                self.owner,
                self.repo,
                response.status,
                api_message(&response.body)
            ),
            Err(e) => tracing::warn!(
                "cannot close the duplicate registry issue {}/{}#{number} (the swarm uses #{kept}): {e:#}; close it by hand",
                self.owner,
                self.repo
            ),
        }
    }

    async fn lock_issue(&self, number: u64) {
        let result = match self.url(&format!("issues/{number}/lock")) {
            Ok(url) => {
                self.write(Method::PUT, url, Some(&serde_json::json!({})))
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(response) if (200..300).contains(&response.status) => {
                tracing::debug!("locked the registry issue #{number}");
            }
            Ok(response) => tracing::warn!(
                "cannot lock the registry issue {}/{}#{number}: GitHub answered {} ({}); lock it by hand so that only the fleet can comment",
                self.owner,
                self.repo,
                response.status,
                api_message(&response.body)
            ),
            Err(e) => tracing::warn!(
                "cannot lock the registry issue {}/{}#{number}: {e:#}; lock it by hand so that only the fleet can comment",
                self.owner,
                self.repo
            ),
        }
    }

    /// One write, unless GitHub asked us to wait; its answer is recorded for the rate limits.
    async fn write(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> anyhow::Result<ApiResponse> {
        let Some(token) = &self.token else {
            anyhow::bail!(
                "writing to the {} registry needs a token: set PEERCACHE_TOKEN (or GH_TOKEN, GITHUB_TOKEN)",
                self.label()
            );
        };
        if let Some((until_ms, reason)) = self.limits.blocked() {
            anyhow::bail!(
                "{reason}; no call to GitHub before {}",
                format_time(until_ms)
            );
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        let response = self
            .github
            .send(method.clone(), &url, Some(token), body)
            .await
            .map_err(|e| anyhow::anyhow!("GitHub could not be reached ({e})"))?;
        if let Verdict::Limited { reason, .. } =
            self.limits
                .record(response.status, &response.headers, &response.body)
            && !(200..400).contains(&response.status)
        {
            anyhow::bail!("{reason}");
        }
        tracing::debug!("{method} {} → {}", url.path(), response.status);
        Ok(response)
    }

    /// The comments of the issue; `None` when the issue is gone.
    async fn comments(
        &self,
        issue: u64,
        ttl: Duration,
        direct: bool,
    ) -> anyhow::Result<Option<Vec<ApiComment>>> {
        let url = self.comments_url(issue)?;
        match self
            .get_list(url, ttl, direct, MAX_COMMENT_PAGES, |_| false)
            .await?
        {
            Listed::Items { items, .. } => Ok(Some(
                items
                    .into_iter()
                    .filter_map(|v| serde_json::from_value::<ApiComment>(v).ok())
                    .collect(),
            )),
            Listed::NotFound => {
                self.state().issue = None;
                Ok(None)
            }
        }
    }

    fn warn_once(&self, comment: &ApiComment, why: &str) {
        let mut hasher = std::hash::DefaultHasher::new();
        comment.body.hash(&mut hasher);
        if self.state().warned.insert((comment.id, hasher.finish())) {
            tracing::warn!(
                "skipping comment {} by {} in the {} registry: {why}",
                comment.id,
                comment.author(),
                self.label()
            );
        }
    }

    /// One warning for every comment that looks like a record but is not signed by this swarm
    /// (a flood of them must not flood the log), when the set of them changed.
    fn warn_forged(&self, forged: &[&ApiComment]) {
        let mut hasher = std::hash::DefaultHasher::new();
        for comment in forged {
            (comment.id, &comment.body).hash(&mut hasher);
        }
        let digest = hasher.finish();
        if forged.is_empty() || self.state().forged_digest == Some(digest) {
            return;
        }
        self.state().forged_digest = Some(digest);
        let named: Vec<String> = forged
            .iter()
            .take(5)
            .map(|c| format!("{} by {}", c.id, c.author()))
            .collect();
        let more = forged.len().saturating_sub(named.len());
        tracing::warn!(
            "ignoring {} comment(s) in the {} registry that look like records but whose MAC does not verify (not written by a member of this swarm): {}{}",
            forged.len(),
            self.label(),
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }

    /// The comments holding a verified record of `peer_id`: their ids and records.
    fn comments_of(&self, comments: &[ApiComment], peer_id: &str) -> Vec<(u64, PeerRecord)> {
        comments
            .iter()
            .filter_map(
                |c| match parse_comment(&self.key, c.body.as_deref().unwrap_or("")) {
                    Parsed::Record(r) if r.peer_id == peer_id => Some((c.id, r)),
                    _ => None,
                },
            )
            .collect()
    }

    /// Deletes a comment; a 403 (not ours to delete) or 404 (already gone) is not an error.
    async fn delete_comment(&self, id: u64) -> anyhow::Result<bool> {
        let response = self
            .write(Method::DELETE, self.comment_url(id)?, None)
            .await?;
        match response.status {
            200..=299 => Ok(true),
            403 | 404 => {
                tracing::debug!(
                    "comment {id} not deleted: GitHub answered {}",
                    response.status
                );
                Ok(false)
            }
            status => anyhow::bail!(
                "GitHub answered {status} to deleting comment {id}: {}",
                api_message(&response.body)
            ),
        }
    }

    async fn publish_record(&self, record: &PeerRecord) -> anyhow::Result<()> {
        let issue = self
            .find_issue(true)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no registry issue"))?;
        let body = serde_json::json!({ "body": format_comment(&self.key, record)? });

        // The comment this process wrote last time: one PATCH.
        let known = self.state().own.get(&record.peer_id).copied();
        if let Some(id) = known {
            let response = self
                .write(Method::PATCH, self.comment_url(id)?, Some(&body))
                .await?;
            match response.status {
                200..=299 => return Ok(()),
                403 | 404 | 410 => {
                    self.state().own.remove(&record.peer_id);
                }
                status => anyhow::bail!(
                    "GitHub answered {status} to updating comment {id}: {}",
                    api_message(&response.body)
                ),
            }
        }

        // Otherwise find it (a restarted node, or `peercache register`), fresh from GitHub.
        let Some(comments) = self.comments(issue, Duration::ZERO, true).await? else {
            anyhow::bail!(
                "the registry issue #{issue} of {}/{} is gone; the next heartbeat looks for another",
                self.owner,
                self.repo
            );
        };
        let mine = self.comments_of(&comments, &record.peer_id);
        // Just written by the daemon (`register` right after `serve`): nothing to change.
        if let Some((id, _)) = mine
            .iter()
            .find(|(_, existing)| same_record(existing, record))
        {
            tracing::debug!("comment {id} already holds this record; not rewriting it");
            self.state().own.insert(record.peer_id.clone(), *id);
            return Ok(());
        }
        let mine: Vec<u64> = mine.into_iter().map(|(id, _)| id).collect();
        let mut kept = None;
        for &id in &mine {
            let response = self
                .write(Method::PATCH, self.comment_url(id)?, Some(&body))
                .await?;
            match response.status {
                200..=299 => {
                    kept = Some(id);
                    break;
                }
                // Written under another login (another token), or just deleted.
                403 | 404 | 410 => continue,
                status => anyhow::bail!(
                    "GitHub answered {status} to updating comment {id}: {}",
                    api_message(&response.body)
                ),
            }
        }
        let id = match kept {
            Some(id) => {
                // Duplicates (two writers raced once): keep one.
                for &other in mine.iter().filter(|&&other| other != id) {
                    let _ = self.delete_comment(other).await;
                }
                id
            }
            None => {
                let url = self.url(&format!("issues/{issue}/comments"))?;
                let response = self.write(Method::POST, url, Some(&body)).await?;
                match response.status {
                    200..=299 => serde_json::from_slice::<ApiComment>(&response.body)
                        .map(|c| c.id)
                        .map_err(|_| {
                            anyhow::anyhow!("GitHub created the comment but did not say its id")
                        })?,
                    404 | 410 => {
                        self.state().issue = None;
                        anyhow::bail!(
                            "the registry issue #{issue} of {}/{} is gone; the next heartbeat looks for another",
                            self.owner,
                            self.repo
                        )
                    }
                    status => anyhow::bail!(
                        "cannot comment on {}/{}#{issue}: GitHub answered {status} ({}); the token needs 'issues: write', and the issue must not be locked",
                        self.owner,
                        self.repo,
                        api_message(&response.body)
                    ),
                }
            }
        };
        self.state().own.insert(record.peer_id.clone(), id);
        Ok(())
    }

    async fn list_records(&self) -> anyhow::Result<Vec<PeerRecord>> {
        let Some(issue) = self.find_issue(false).await? else {
            tracing::debug!("the {} registry has no issue yet", self.label());
            return Ok(Vec::new());
        };
        let Some(comments) = self.comments(issue, self.list_ttl, false).await? else {
            return Ok(Vec::new());
        };
        let now = now_secs();
        let own = self.state().own.clone();
        let mut records = Vec::new();
        // Second copies of this process's own records (a `register` that raced the daemon's
        // first publish), then expired records: deleted, a few per list.
        let mut doomed = Vec::new();
        let mut expired = Vec::new();
        let mut forged = Vec::new();
        for comment in &comments {
            match parse_comment(&self.key, comment.body.as_deref().unwrap_or("")) {
                Parsed::Other => {}
                Parsed::Forged => forged.push(comment),
                Parsed::Broken(why) => self.warn_once(comment, &why),
                Parsed::Record(record)
                    if own.get(&record.peer_id).is_some_and(|&id| id != comment.id) =>
                {
                    doomed.push(comment.id);
                }
                Parsed::Record(record) => match record.validate(now) {
                    Ok((record, problems)) => {
                        for problem in problems {
                            self.warn_once(comment, &format!("skipping {problem}"));
                        }
                        records.push(record);
                    }
                    Err(Reject::Expired) => expired.push(comment.id),
                    Err(Reject::Invalid(why)) => self.warn_once(comment, &why),
                },
            }
        }
        self.warn_forged(&forged);
        doomed.extend(expired);
        if self.token.is_some() {
            for id in doomed.into_iter().take(MAX_DELETIONS_PER_LIST) {
                match self.delete_comment(id).await {
                    Ok(true) => tracing::debug!(
                        "deleted the expired or duplicate record in comment {id} of the {} registry",
                        self.label()
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::debug!("cannot delete comment {id}: {e:#}"),
                }
            }
        }
        Ok(records)
    }

    async fn remove_record(&self, peer_id: &str) -> anyhow::Result<()> {
        let known = self.state().own.remove(peer_id);
        let ids = match known {
            Some(id) => vec![id],
            None => {
                let Some(issue) = self.find_issue(false).await? else {
                    return Ok(());
                };
                match self.comments(issue, Duration::ZERO, true).await? {
                    Some(comments) => self
                        .comments_of(&comments, peer_id)
                        .into_iter()
                        .map(|(id, _)| id)
                        .collect(),
                    None => return Ok(()),
                }
            }
        };
        for id in ids {
            if !self.delete_comment(id).await? {
                tracing::warn!(
                    "could not delete comment {id} of the {} registry (not ours to delete, or already gone)",
                    self.label()
                );
            }
        }
        Ok(())
    }
}

impl Registry for IssueRegistry {
    fn name(&self) -> String {
        self.label()
    }

    fn is_host_local(&self) -> bool {
        false
    }

    fn default_interval(&self) -> Duration {
        ISSUE_INTERVAL
    }

    fn publish<'a>(&'a self, record: &'a PeerRecord) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.publish_record(record))
    }

    fn list(&self) -> BoxFuture<'_, anyhow::Result<Vec<PeerRecord>>> {
        Box::pin(self.list_records())
    }

    fn remove<'a>(&'a self, peer_id: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.remove_record(peer_id))
    }

    fn api_calls(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
            + self.shared.counters().upstream_calls
            + self.direct.counters().upstream_calls
    }
}

/// Epoch seconds as `2024-05-01T12:34:56Z`, the form of GitHub's `since=`.
fn iso8601(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Whether `existing` already says what `new` would: the same addresses and job, and an expiry
/// within a tenth of the new lifetime (at least a minute) of the new one.
fn same_record(existing: &PeerRecord, new: &PeerRecord) -> bool {
    let lifetime = new.expires_at.saturating_sub(new.last_seen);
    let slack = (lifetime / 10).max(60);
    existing.multiaddrs == new.multiaddrs
        && existing.runner_name == new.runner_name
        && existing.repository == new.repository
        && existing.workflow == new.workflow
        && existing.listen_port == new.listen_port
        && existing.expires_at.abs_diff(new.expires_at) <= slack
}

fn spec_name(owner: &str, repo: &str, number: Option<u64>) -> String {
    match number {
        Some(n) => format!("issue:{owner}/{repo}#{n}"),
        None => format!("issue:{owner}/{repo}"),
    }
}

/// GitHub's `message`, or the start of the body.
fn api_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::PeerId;

    fn record(name: &str) -> PeerRecord {
        let peer = PeerId::random();
        PeerRecord {
            version: 1,
            peer_id: peer.to_string(),
            multiaddrs: vec![format!("/ip4/10.0.0.1/tcp/9000/p2p/{peer}")],
            runner_name: Some(name.into()),
            repository: Some("o/r".into()),
            workflow: Some("CI".into()),
            listen_port: Some(9000),
            last_seen: 1,
            expires_at: 2,
        }
    }

    #[test]
    fn comments_round_trip_and_need_the_secret() {
        let key = registry_key(&Secret::new("s3cret"));
        let other = registry_key(&Secret::new("other"));
        assert_ne!(key, other);
        let rec = record("runner ```with``` backticks");
        let body = format_comment(&key, &rec).unwrap();
        assert!(body.starts_with(&format!("{MARKER_PREFIX}{} -->\n", rec.peer_id)));
        assert_eq!(body.matches("```").count(), 2, "{body}");
        assert_eq!(parse_comment(&key, &body), Parsed::Record(rec.clone()));
        assert!(matches!(parse_comment(&other, &body), Parsed::Forged));
        // GitHub may hand back CRLF line ends.
        assert_eq!(
            parse_comment(&key, &body.replace('\n', "\r\n")),
            Parsed::Record(rec.clone())
        );
    }

    #[test]
    fn since_is_iso_8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_714_566_896), "2024-05-01T12:34:56Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn a_current_record_is_not_rewritten() {
        let mut old = record("a");
        old.last_seen = 1000;
        old.expires_at = 1000 + 4500;
        let mut new = old.clone();
        new.last_seen = 1001;
        new.expires_at = 1001 + 4500;
        assert!(same_record(&old, &new));
        // A much shorter lifetime (register --ttl 1) is written.
        new.expires_at = 1002;
        assert!(!same_record(&old, &new));
        let mut moved = old.clone();
        moved.multiaddrs.push("/ip4/10.0.0.2/tcp/1".into());
        assert!(!same_record(&old, &moved));
    }

    #[test]
    fn tampering_and_garbage_are_recognised() {
        let key = registry_key(&Secret::new("s3cret"));
        let rec = record("a");
        let body = format_comment(&key, &rec).unwrap();
        let tampered = body.replace("10.0.0.1", "10.6.6.6");
        assert!(matches!(parse_comment(&key, &tampered), Parsed::Forged));
        assert_eq!(parse_comment(&key, "just a human comment"), Parsed::Other);
        assert_eq!(
            parse_comment(&key, &format!("hello\n{body}")),
            Parsed::Other,
            "the marker must start the comment"
        );
        let broken = format!(
            "{MARKER_PREFIX}{} -->\n```json\n{{\"record\": {{ nope\n```",
            rec.peer_id
        );
        // Without a MAC that verifies, nothing else of a comment is looked at.
        assert_eq!(parse_comment(&key, &broken), Parsed::Forged);
        let unclosed = format!("{MARKER_PREFIX}{} -->\n```json\n{{}}", rec.peer_id);
        assert_eq!(parse_comment(&key, &unclosed), Parsed::Forged);
        let huge = format!("{body}{}", " ".repeat(MAX_COMMENT_BYTES));
        assert_eq!(parse_comment(&key, &huge), Parsed::Forged);
        // A member's signed text that is not a record.
        let text = "{\"peer_id\": 1}";
        let tag = hex::encode(mac(&key, text).finalize().into_bytes());
        let signed_garbage = format!(
            "{MARKER_PREFIX}x -->\n```json\n{{\"record\":{text},\"mac\":\"{tag}\"}}\n```\n"
        );
        assert!(matches!(
            parse_comment(&key, &signed_garbage),
            Parsed::Broken(_)
        ));
        // A member's record under another peer's marker.
        let other = PeerId::random().to_string();
        let swapped = body.replacen(&rec.peer_id, &other, 1);
        assert!(matches!(parse_comment(&key, &swapped), Parsed::Broken(_)));
    }
}
