//! `fakehub`: a loopback stand-in for the GitHub REST API.
//!
//! peercache's tests and benchmark scripts need a GitHub that is fast,
//! deterministic, observable and breakable on demand. This crate serves stored
//! JSON resources the way api.github.com does: weak ETags that depend on the
//! token, `Last-Modified`, conditional requests answered with 304, per-token
//! rate limits with the `x-ratelimit-*` headers, paginated lists with `Link`
//! headers. On top of that it counts every request it answers and can inject
//! latency and failures.
//!
//! It is used two ways:
//! * in-process, through [`FakeHub`], from synchronous `#[test]` functions or
//!   async code (the server owns its own thread and tokio runtime, so it never
//!   interferes with the caller's runtime);
//! * as the `fakehub` binary, driven over HTTP through the control API.
//!
//! # Control API
//!
//! Requests under `/_fakehub/` are never delayed, failed or counted.
//!
//! | request                                   | effect                                        |
//! |-------------------------------------------|-----------------------------------------------|
//! | `GET /_fakehub/stats[?records=false]`     | the [`Stats`] JSON (optionally without the log) |
//! | `POST /_fakehub/reset`                    | zero the stats (204)                          |
//! | `GET /_fakehub/config`                    | current settings as JSON                      |
//! | `POST /_fakehub/config` + JSON            | change settings, answers the new settings     |
//! | `PUT /_fakehub/resource?path=P[&content_type=T]` + bytes | plain resource, Last-Modified now (204) |
//! | `PUT /_fakehub/list?path=P` + JSON array  | list resource (204; 400 if not an array)      |
//! | `DELETE /_fakehub/resource?path=P`        | remove it (also `DELETE /_fakehub/list?...`)  |
//!
//! `POST /_fakehub/config` accepts any combination of (unknown keys are a 400):
//!
//! ```json
//! {
//!   "latency_ms": 50,
//!   "quota_limit": 5000,
//!   "clear_failures": true,
//!   "fail_next":   {"n": 3, "status": 502, "retry_after": 7, "body": "...", "path": "/only/this"},
//!   "fail_always": {"status": 500, "retry_after": null, "body": null, "path": null},
//!   "reset_quota": true,
//!   "exhaust_quota": {"authorization": "token abc", "reset_in_secs": 60},
//!   "reset_stats": true,
//!   "add_repos": ["octo/hello"],
//!   "forbid_writes": false,
//!   "private_repos": ["octo/secret"],
//!   "scoped_tokens": {"job-token-x": ["octo/x"]},
//!   "admin_tokens": ["pat-of-an-admin"]
//! }
//! ```
//!
//! `clear_failures` is applied before new failure rules in the same body;
//! `n` defaults to 1, `reset_in_secs` to 3600, the other inner fields to null.
//!
//! # Who asks
//!
//! Answers depend on the caller as on GitHub (see the `access` module): `/user` is the caller's
//! identity, `/rate_limit` its own bucket (free), private repositories answer 404 to tokens that
//! may not see them, `GET /repos/{o}/{r}` carries the caller's `permissions`, `Range` gets a
//! 206 and `Accept-Encoding: gzip` a gzip body.
//!
//! # Issues
//!
//! Repositories added with [`FakeHub::add_repo`] (or `add_repos`) have live issues and issue
//! comments that requests create, edit and delete: see the `issues` module for the routes.
//! Their author is [`login_for`] the request's `Authorization`; only the author may change or
//! delete a comment (403 otherwise), and [`FakeHub::set_writes_forbidden`] (`forbid_writes`)
//! makes every write a 403, like a token without `issues: write`.
//!
//! # GraphQL
//!
//! `POST /graphql` answers `{"data":{"viewer":{"login":…}}}` ([`login_for`] the token) to a
//! query that asks for `viewer` (401 without `Authorization`), enough to show that a request
//! was passed through unchanged; it is counted and spends quota like any other.
//!
//! # Matching
//!
//! Resources are looked up by the request path exactly as sent (not
//! percent-decoded); the query string only matters for pagination.

#![warn(missing_docs)]

mod access;
mod generate;
mod graphql;
mod issues;
mod server;
mod state;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub use generate::{GENERATED_REPO, generate_resources, generated_path, repo_body};

use state::Shared;

/// Quota bucket label shared by all requests that carry no `Authorization` header.
pub const ANONYMOUS: &str = "anonymous";

/// Startup options for [`FakeHub::start_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Delay applied before answering every non-control request.
    pub latency: Duration,
    /// Requests allowed per rate-limit window, per `Authorization` value.
    pub quota_limit: u64,
    /// Length of a rate-limit window (GitHub: one hour).
    pub window: Duration,
    /// Loopback address to listen on; `None` means 127.0.0.1 on a random port.
    pub listen: Option<SocketAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            latency: Duration::ZERO,
            quota_limit: 5000,
            window: Duration::from_secs(3600),
            listen: None,
        }
    }
}

/// A plain (non-list) resource: body bytes served exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Response body, served byte-for-byte.
    pub body: Vec<u8>,
    /// Value of the `content-type` header.
    pub content_type: String,
    /// Value of the `Last-Modified` header (truncated to whole seconds), if any.
    pub last_modified: Option<SystemTime>,
}

impl Resource {
    /// A JSON resource (`application/json; charset=utf-8`) last modified now.
    pub fn json(body: impl Into<Vec<u8>>) -> Resource {
        Resource::new(body, JSON_CONTENT_TYPE)
    }

    /// A resource with the given content type, last modified now.
    pub fn new(body: impl Into<Vec<u8>>, content_type: impl Into<String>) -> Resource {
        Resource {
            body: body.into(),
            content_type: content_type.into(),
            last_modified: Some(SystemTime::now()),
        }
    }

    /// Replaces the `Last-Modified` time (`None` sends no such header).
    pub fn with_last_modified(mut self, last_modified: Option<SystemTime>) -> Resource {
        self.last_modified = last_modified;
        self
    }
}

/// An injected failure response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status to answer with; anything outside 200..=599 is sent as 500.
    pub status: u16,
    /// Value of a `retry-after` header in seconds, if any.
    pub retry_after: Option<u64>,
    /// Response body; `None` sends a GitHub-style JSON message for the status.
    pub body: Option<Vec<u8>>,
}

impl Failure {
    /// A failure with this status, no `retry-after` and the default body.
    pub fn status(status: u16) -> Failure {
        Failure {
            status,
            retry_after: None,
            body: None,
        }
    }

    /// Adds a `retry-after: secs` header.
    pub fn with_retry_after(mut self, secs: u64) -> Failure {
        self.retry_after = Some(secs);
        self
    }

    /// Replaces the default body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Failure {
        self.body = Some(body.into());
        self
    }
}

/// One answered (non-control) request, as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Request target path plus `?query` when there was one.
    pub path_and_query: String,
    /// Status code sent back.
    pub status: u16,
    /// `Authorization` header as given.
    pub authorization: Option<String>,
    /// `If-None-Match` header as given.
    pub if_none_match: Option<String>,
    /// `If-Modified-Since` header as given.
    pub if_modified_since: Option<String>,
    /// `Accept` header as given.
    pub accept: Option<String>,
    /// Whether this request used up one unit of its bucket's quota.
    #[serde(default)]
    pub quota_spent: bool,
}

impl RequestRecord {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        split_query(&self.path_and_query).0
    }
}

/// Snapshot of the request counters (see [`FakeHub::stats`] and `GET /_fakehub/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Requests answered, of any status.
    pub total: u64,
    /// Requests answered, by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests answered, by path without query.
    pub by_path: BTreeMap<String, u64>,
    /// Requests answered, by path plus `?query`.
    pub by_path_and_query: BTreeMap<String, u64>,
    /// Quota units spent, by bucket (`"anonymous"` or the `Authorization` value).
    pub quota_spent: BTreeMap<String, u64>,
    /// Every answered request in arrival order (oldest dropped past the record limit).
    pub requests: Vec<RequestRecord>,
    /// Records dropped from `requests` because of the record limit.
    #[serde(default)]
    pub records_dropped: u64,
}

impl Stats {
    /// Requests answered for a path (with a `?`, for that exact path and query).
    pub fn count(&self, path: &str) -> u64 {
        let map = if path.contains('?') {
            &self.by_path_and_query
        } else {
            &self.by_path
        };
        map.get(path).copied().unwrap_or(0)
    }

    /// Requests answered with this status.
    pub fn status_count(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Quota spent by an `Authorization` value (`None`: the anonymous bucket).
    pub fn spent(&self, authorization: Option<&str>) -> u64 {
        self.quota_spent
            .get(authorization.unwrap_or(ANONYMOUS))
            .copied()
            .unwrap_or(0)
    }
}

/// A running fake GitHub; dropping it shuts the server down.
pub struct FakeHub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    /// Starts a server on 127.0.0.1 (random port); returns once it is listening.
    pub fn start() -> FakeHub {
        FakeHub::start_with(Options::default())
    }

    /// Starts a server with these options; panics if it cannot (see [`FakeHub::try_start_with`]).
    pub fn start_with(opts: Options) -> FakeHub {
        match FakeHub::try_start_with(opts) {
            Ok(hub) => hub,
            Err(e) => panic!("fakehub failed to start: {e:#}"),
        }
    }

    /// Starts a server with these options, or explains why it could not.
    pub fn try_start_with(opts: Options) -> anyhow::Result<FakeHub> {
        let listen = opts
            .listen
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        if !listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {listen}: fakehub only serves loopback addresses \
                 (127.0.0.0/8 or ::1)"
            );
        }
        // Bind on the caller's thread so the port is known, and already
        // accepting into the backlog, by the time we return.
        let listener = std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot listen on {listen}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(&opts, addr));

        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let app = server::router(Arc::clone(&shared));
        // The runtime is created, used and dropped on this thread only: that
        // keeps FakeHub usable (and droppable) from inside someone else's
        // async context, where creating or dropping a runtime would panic.
        let thread = std::thread::Builder::new()
            .name(format!("fakehub-{}", addr.port()))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("fakehub-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let listener = {
                    let _guard = rt.enter();
                    tokio::net::TcpListener::from_std(listener)
                };
                match listener {
                    Ok(listener) => {
                        rt.spawn(server::serve(listener, app));
                        let _ = ready_tx.send(Ok(()));
                        // Either an explicit shutdown or the FakeHub vanishing
                        // without Drop running (sender dropped) ends the wait.
                        let _ = rt.block_on(shutdown_rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                    }
                }
                // Cancels the accept loop and every connection task, which
                // closes their sockets; no graceful drain is wanted in tests.
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .context("cannot spawn the fakehub server thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e.context("cannot start the fakehub runtime"));
            }
            Err(_) => {
                let _ = thread.join();
                bail!("the fakehub server thread exited during startup");
            }
        }
        Ok(FakeHub {
            shared,
            addr,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:34567` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stores a plain JSON resource at `path`, last modified now.
    pub fn put_json(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.put_resource(path, Resource::json(body));
    }

    /// Stores a plain resource at `path` (a leading `/` is added, a `?query` dropped).
    pub fn put_resource(&self, path: &str, res: Resource) {
        self.shared.put_resource(path, res);
    }

    /// Stores a paginated list resource at `path`.
    pub fn put_list(&self, path: &str, items: Vec<serde_json::Value>) {
        self.shared.put_list(path, items);
    }

    /// Removes the resource at `path`; it answers 404 afterwards.
    pub fn remove(&self, path: &str) {
        self.shared.remove(path);
    }

    /// Sets the delay applied before answering every non-control request.
    pub fn set_latency(&self, d: Duration) {
        self.shared.set_latency(d);
    }

    /// Fails the next `n` requests (any path) with `failure`, after already queued ones.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        self.shared.fail_next(n, failure);
    }

    /// Fails every request with `failure` until [`FakeHub::clear_failures`].
    pub fn fail_always(&self, failure: Failure) {
        self.shared.fail_always(failure);
    }

    /// Fails every request for `path` (query ignored) until [`FakeHub::clear_failures`].
    pub fn fail_path(&self, path: &str, failure: Failure) {
        self.shared.fail_path(path, None, failure);
    }

    /// Fails the next `n` requests for `path` (query ignored).
    pub fn fail_path_next(&self, path: &str, n: usize, failure: Failure) {
        self.shared.fail_path(path, Some(n), failure);
    }

    /// Removes every queued, permanent and path-scoped failure.
    pub fn clear_failures(&self) {
        self.shared.clear_failures();
    }

    /// Sets the per-window request limit of every bucket.
    pub fn set_quota_limit(&self, limit: u64) {
        self.shared.set_quota_limit(limit);
    }

    /// Empties a bucket (`None`: anonymous) until `reset_in` from now.
    pub fn exhaust_quota(&self, authorization: Option<&str>, reset_in: Duration) {
        self.shared.exhaust_quota(authorization, reset_in);
    }

    /// Forgets every rate-limit bucket, so all start a fresh window.
    pub fn reset_quota(&self) {
        self.shared.reset_quota();
    }

    /// Quota left in a bucket (`None`: anonymous) in its current window.
    pub fn remaining(&self, authorization: Option<&str>) -> u64 {
        self.shared.remaining(authorization)
    }

    /// Makes `owner/repo` private: 404 to requests without a token and to tokens scoped to
    /// other repositories.
    pub fn set_private(&self, full_name: &str) {
        self.shared.with_access(|a| a.set_private(full_name, true));
    }

    /// Limits a token (bare, without its scheme) to these repositories, like a `GITHUB_TOKEN`
    /// of one repository: other private repositories answer it 404.
    pub fn scope_token(&self, token: &str, repos: &[&str]) {
        let repos: Vec<String> = repos.iter().map(|r| r.to_string()).collect();
        self.shared.with_access(|a| a.scope_token(token, &repos));
    }

    /// Gives a token (bare) admin permission in the `permissions` of the repositories it sees.
    pub fn set_admin(&self, token: &str, admin: bool) {
        self.shared.with_access(|a| a.set_admin(token, admin));
    }

    /// Gives `owner/repo` live issues and comments (see the crate docs); idempotent.
    pub fn add_repo(&self, full_name: &str) {
        self.shared.add_repo(full_name);
    }

    /// While `true`, every write to the issues API answers 403 ("Resource not accessible by
    /// integration"), as for a token that may not write issues.
    pub fn set_writes_forbidden(&self, forbidden: bool) {
        self.shared.set_writes_forbidden(forbidden);
    }

    /// Every issue of a repository added with [`FakeHub::add_repo`], as the API shows it,
    /// oldest first (not counted as requests).
    pub fn issues(&self, repo: &str) -> Vec<serde_json::Value> {
        self.shared.issues_json(repo)
    }

    /// Every comment of an issue, as the API shows it, oldest first (not counted).
    pub fn comments(&self, repo: &str, number: u64) -> Vec<serde_json::Value> {
        self.shared.comments_json(repo, number)
    }

    /// Opens or closes an issue; `false` when there is no such issue.
    pub fn set_issue_open(&self, repo: &str, number: u64, open: bool) -> bool {
        self.shared.set_issue_open(repo, number, open)
    }

    /// Moves the creation and update times of every comment of an issue `by` into the past
    /// (as if they were written that long ago); returns how many there are.
    pub fn age_comments(&self, repo: &str, number: u64, by: std::time::Duration) -> usize {
        self.shared.age_comments(repo, number, by)
    }

    /// Caps the request log (oldest records dropped first); `None` keeps everything.
    pub fn set_record_limit(&self, limit: Option<usize>) {
        self.shared.set_record_limit(limit);
    }

    /// Snapshot of the request counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats(true)
    }

    /// Requests answered for a path, any status (with a `?`, that exact path and query).
    pub fn count(&self, path: &str) -> u64 {
        self.shared.count(path)
    }

    /// Requests answered in total.
    pub fn total(&self) -> u64 {
        self.shared.total()
    }

    /// Zeroes the request counters (quota buckets are left alone).
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for FakeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHub").field("addr", &self.addr).finish()
    }
}

/// The `user.login` of whoever sends this `Authorization` value (or bare token): `user-` and 10
/// hex digits of the token's SHA-256, so that each token is its own user.
pub fn login_for(authorization: &str) -> String {
    use sha2::{Digest, Sha256};
    let value = authorization.trim();
    let token = ["Bearer ", "bearer ", "token ", "Token "]
        .iter()
        .find_map(|scheme| value.strip_prefix(scheme))
        .unwrap_or(value)
        .trim();
    let digest = Sha256::digest(token.as_bytes());
    format!("user-{}", &hex::encode(digest)[..10])
}

/// Content type GitHub sends on its JSON responses.
pub(crate) const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Splits `path?query` into the path and the optional query.
pub(crate) fn split_query(path_and_query: &str) -> (&str, Option<&str>) {
    match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    }
}

/// Drops sub-second precision, as HTTP dates cannot carry it; comparisons
/// against a parsed `If-Modified-Since` would otherwise never be equal.
pub(crate) fn truncate_to_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        // Pre-1970 times are nonsense here; keep them as given.
        Err(_) => t,
    }
}
