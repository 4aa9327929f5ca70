//! Shared server state: stored resources, quota buckets, injected failures
//! and request counters.
//!
//! Everything sits behind one `std::sync::Mutex`. It is only ever held for
//! short, non-async stretches (never across an `.await`), and the expensive
//! per-request work (hashing, serialising a page) happens outside it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;

use crate::{ANONYMOUS, Failure, Options, RequestRecord, Resource, Stats, split_query};

/// A stored resource. Kept behind an `Arc` so a request can take it out of
/// the lock cheaply and build its response without blocking others.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A single JSON document (or any bytes), served as stored.
    Plain {
        body: Bytes,
        content_type: String,
        last_modified: Option<SystemTime>,
    },
    /// A paginated collection.
    List(Vec<serde_json::Value>),
}

/// Rate-limit state of one bucket in its current window.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    used: u64,
    /// Epoch second at which the window ends (the `x-ratelimit-reset` value).
    reset_epoch: u64,
}

impl Bucket {
    fn fresh(now: SystemTime, window: Duration) -> Bucket {
        Bucket {
            used: 0,
            reset_epoch: epoch_secs_ceil(now + window),
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        epoch_secs_floor(now) >= self.reset_epoch
    }
}

/// Rate-limit header values for one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateInfo {
    pub limit: u64,
    pub remaining: u64,
    pub used: u64,
    pub reset: u64,
}

/// A failure that only applies to one path.
#[derive(Debug, Clone)]
struct PathFailure {
    path: String,
    /// `None` fails forever; `Some(n)` fails n more times.
    remaining: Option<usize>,
    failure: Failure,
}

/// What the server decided before quota accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cost {
    /// Subject to the rate limit, spends one unit.
    Spend,
    /// Subject to the rate limit but free (authenticated 304).
    Free,
    /// Bypasses the rate limit entirely (injected failures, 405).
    Exempt,
}

/// Everything the request log needs to know about a request.
#[derive(Debug, Clone)]
pub(crate) struct RequestMeta {
    pub method: String,
    pub path: String,
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    pub accept: Option<String>,
}

/// Result of quota accounting for one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settled {
    /// The bucket was empty: answer 403 instead of the planned response.
    pub rate_limited: bool,
    pub rate: RateInfo,
    pub request_id: u64,
}

/// Counters as kept internally (the log is a deque so capping it is cheap).
#[derive(Debug, Default)]
struct Counters {
    total: u64,
    by_status: BTreeMap<u16, u64>,
    by_path: BTreeMap<String, u64>,
    by_path_and_query: BTreeMap<String, u64>,
    quota_spent: BTreeMap<String, u64>,
    requests: VecDeque<RequestRecord>,
    records_dropped: u64,
}

#[derive(Debug)]
struct Inner {
    resources: HashMap<String, Arc<Entry>>,
    latency: Duration,
    quota_limit: u64,
    window: Duration,
    buckets: HashMap<String, Bucket>,
    /// Global "fail the next n" queue: (remaining count, failure).
    fail_queue: VecDeque<(usize, Failure)>,
    fail_always: Option<Failure>,
    path_failures: Vec<PathFailure>,
    counters: Counters,
    record_limit: Option<usize>,
    next_request_id: u64,
    /// Live issues and comments of the repositories that have them.
    issues: crate::issues::Store,
    /// Private repositories, scoped tokens, admins.
    access: crate::access::Access,
}

/// State shared between the [`crate::FakeHub`] handle and the server tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Listening address, used for `Link` URLs when a request has no Host.
    pub addr: SocketAddr,
}

/// Current settings, as reported by the control API.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ConfigView {
    pub latency_ms: u64,
    pub quota_limit: u64,
    pub window_secs: u64,
    pub queued_failures: usize,
    pub fail_always: bool,
    pub path_failures: Vec<String>,
    pub resources: usize,
    pub record_limit: Option<usize>,
    /// Repositories with live issues.
    pub repos: Vec<String>,
    /// Whether writes to the issues API answer 403.
    pub writes_forbidden: bool,
}

impl Shared {
    pub fn new(opts: &Options, addr: SocketAddr) -> Shared {
        Shared {
            inner: Mutex::new(Inner {
                resources: HashMap::new(),
                latency: opts.latency,
                quota_limit: opts.quota_limit,
                window: opts.window,
                buckets: HashMap::new(),
                fail_queue: VecDeque::new(),
                fail_always: None,
                path_failures: Vec::new(),
                counters: Counters::default(),
                record_limit: None,
                next_request_id: 1,
                issues: crate::issues::Store::default(),
                access: crate::access::Access::default(),
            }),
            addr,
        }
    }

    /// A panic elsewhere while holding the lock must not take the whole fake
    /// down with it: the state is still usable for tests.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn put_resource(&self, path: &str, res: Resource) {
        let entry = Entry::Plain {
            body: Bytes::from(res.body),
            content_type: res.content_type,
            last_modified: res.last_modified.map(crate::truncate_to_secs),
        };
        self.lock()
            .resources
            .insert(normalize_path(path), Arc::new(entry));
    }

    /// Changes the visibility and permission rules.
    pub fn with_access<T>(&self, change: impl FnOnce(&mut crate::access::Access) -> T) -> T {
        change(&mut self.lock().access)
    }

    /// Whether a request with this `Authorization` may see `repo`.
    pub fn can_see(&self, authorization: Option<&str>, repo: &str) -> bool {
        self.lock().access.can_see(authorization, repo)
    }

    /// A repository object's entry as this caller sees it (its own `permissions`).
    pub fn personalise(
        &self,
        entry: &Arc<Entry>,
        authorization: Option<&str>,
        repo: &str,
    ) -> Arc<Entry> {
        match &**entry {
            Entry::Plain {
                body,
                content_type,
                last_modified,
            } => Arc::new(Entry::Plain {
                body: self.lock().access.personalise(body, authorization, repo),
                content_type: content_type.clone(),
                last_modified: *last_modified,
            }),
            Entry::List(_) => entry.clone(),
        }
    }

    pub fn put_list(&self, path: &str, items: Vec<serde_json::Value>) {
        self.lock()
            .resources
            .insert(normalize_path(path), Arc::new(Entry::List(items)));
    }

    pub fn remove(&self, path: &str) {
        self.lock().resources.remove(&normalize_path(path));
    }

    pub fn latency(&self) -> Duration {
        self.lock().latency
    }

    pub fn set_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    pub fn fail_next(&self, n: usize, failure: Failure) {
        if n > 0 {
            self.lock().fail_queue.push_back((n, failure));
        }
    }

    pub fn fail_always(&self, failure: Failure) {
        self.lock().fail_always = Some(failure);
    }

    pub fn fail_path(&self, path: &str, n: Option<usize>, failure: Failure) {
        if n == Some(0) {
            return;
        }
        self.lock().path_failures.push(PathFailure {
            path: normalize_path(path),
            remaining: n,
            failure,
        });
    }

    pub fn clear_failures(&self) {
        let mut inner = self.lock();
        inner.fail_queue.clear();
        inner.fail_always = None;
        inner.path_failures.clear();
    }

    pub fn set_quota_limit(&self, limit: u64) {
        self.lock().quota_limit = limit;
    }

    pub fn exhaust_quota(&self, authorization: Option<&str>, reset_in: Duration) {
        let mut inner = self.lock();
        let used = inner.quota_limit;
        let bucket = Bucket {
            used,
            reset_epoch: epoch_secs_ceil(SystemTime::now() + reset_in),
        };
        inner
            .buckets
            .insert(authorization.unwrap_or(ANONYMOUS).to_owned(), bucket);
    }

    pub fn reset_quota(&self) {
        self.lock().buckets.clear();
    }

    pub fn remaining(&self, authorization: Option<&str>) -> u64 {
        let mut inner = self.lock();
        let (bucket, limit) = inner.bucket(authorization.unwrap_or(ANONYMOUS), SystemTime::now());
        limit.saturating_sub(bucket.used)
    }

    pub fn set_record_limit(&self, limit: Option<usize>) {
        let mut inner = self.lock();
        inner.record_limit = limit;
        inner.trim_records();
    }

    pub fn stats(&self, with_records: bool) -> Stats {
        let inner = self.lock();
        let c = &inner.counters;
        Stats {
            total: c.total,
            by_status: c.by_status.clone(),
            by_path: c.by_path.clone(),
            by_path_and_query: c.by_path_and_query.clone(),
            quota_spent: c.quota_spent.clone(),
            requests: if with_records {
                c.requests.iter().cloned().collect()
            } else {
                Vec::new()
            },
            records_dropped: c.records_dropped,
        }
    }

    pub fn count(&self, path: &str) -> u64 {
        let inner = self.lock();
        let map = if path.contains('?') {
            &inner.counters.by_path_and_query
        } else {
            &inner.counters.by_path
        };
        map.get(path).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.lock().counters.total
    }

    pub fn reset_stats(&self) {
        self.lock().counters = Counters::default();
    }

    pub fn config_view(&self) -> ConfigView {
        let inner = self.lock();
        ConfigView {
            latency_ms: u64::try_from(inner.latency.as_millis()).unwrap_or(u64::MAX),
            quota_limit: inner.quota_limit,
            window_secs: inner.window.as_secs(),
            queued_failures: inner.fail_queue.iter().map(|(n, _)| *n).sum(),
            fail_always: inner.fail_always.is_some(),
            path_failures: inner.path_failures.iter().map(|p| p.path.clone()).collect(),
            resources: inner.resources.len(),
            record_limit: inner.record_limit,
            repos: crate::issues::repo_names(&inner.issues)
                .into_iter()
                .collect(),
            writes_forbidden: inner.issues.writes_forbidden,
        }
    }

    /// Gives a repository live issues; it exists, so its repository object answers too.
    pub fn add_repo(&self, full_name: &str) {
        let mut inner = self.lock();
        inner.issues.add_repo(full_name);
        let path = normalize_path(&format!("/repos/{full_name}"));
        inner.resources.entry(path).or_insert_with(|| {
            let body = serde_json::json!({
                "full_name": full_name,
                "private": false,
                "has_issues": true,
            });
            Arc::new(Entry::Plain {
                body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
                content_type: crate::JSON_CONTENT_TYPE.to_owned(),
                last_modified: Some(crate::truncate_to_secs(SystemTime::now())),
            })
        });
    }

    pub fn set_writes_forbidden(&self, forbidden: bool) {
        self.lock().issues.writes_forbidden = forbidden;
    }

    pub fn issues_json(&self, repo: &str) -> Vec<serde_json::Value> {
        let host = self.addr.to_string();
        self.lock().issues.issues_json(repo, &host)
    }

    pub fn comments_json(&self, repo: &str, number: u64) -> Vec<serde_json::Value> {
        let host = self.addr.to_string();
        self.lock().issues.comments_json(repo, number, &host)
    }

    pub fn set_issue_open(&self, repo: &str, number: u64, open: bool) -> bool {
        self.lock().issues.set_issue_open(repo, number, open)
    }

    pub fn age_comments(&self, repo: &str, number: u64, by: std::time::Duration) -> usize {
        self.lock().issues.age_comments(repo, number, by)
    }

    /// An issues API request, decided, applied and settled under one lock, so that a
    /// rate-limited write changes nothing. `None` when the repository has no issues here.
    pub fn issues_request(
        &self,
        route: &crate::issues::Route,
        call: &crate::issues::Call<'_>,
    ) -> Option<(crate::server::Plan, Settled)> {
        let mut inner = self.lock();
        if !inner.issues.has_repo(&route.repo) {
            return None;
        }
        let label = call
            .meta
            .authorization
            .as_deref()
            .unwrap_or(ANONYMOUS)
            .to_owned();
        let (bucket, limit) = inner.bucket(&label, SystemTime::now());
        let plan = if bucket.used >= limit {
            // Answered 403 by the settlement below; nothing changes.
            crate::server::Plan::NotFound
        } else {
            inner.issues.handle(route, call)
        };
        let (status, cost) = plan.status_and_cost(call.meta.authorization.is_some());
        let settled = inner.settle(call.meta.clone(), status, cost);
        Some((plan, settled))
    }

    /// First phase of a request: decides (and consumes) any injected failure
    /// and fetches the resource, so the response can be built unlocked.
    pub fn begin(&self, path: &str) -> (Option<Failure>, Option<Arc<Entry>>) {
        let mut inner = self.lock();
        let failure = inner.take_failure(path);
        let entry = if failure.is_none() {
            inner.resources.get(path).cloned()
        } else {
            None
        };
        (failure, entry)
    }

    /// Second phase: rate-limit check, quota accounting and logging, all
    /// under one lock so concurrent requests cannot overspend a bucket.
    /// `status` is the planned status; the logged one is 403 if rate limited.
    pub fn settle(&self, meta: RequestMeta, status: u16, cost: Cost) -> Settled {
        self.lock().settle(meta, status, cost)
    }
}

impl Inner {
    /// [`Shared::settle`] with the lock held.
    fn settle(&mut self, meta: RequestMeta, status: u16, cost: Cost) -> Settled {
        let inner = self;
        let now = SystemTime::now();
        let label = meta
            .authorization
            .as_deref()
            .unwrap_or(ANONYMOUS)
            .to_owned();
        let (bucket, limit) = inner.bucket(&label, now);
        let rate_limited = cost != Cost::Exempt && bucket.used >= limit;
        let spend = !rate_limited && cost == Cost::Spend;
        if spend {
            bucket.used += 1;
        }
        let rate = RateInfo {
            limit,
            remaining: limit.saturating_sub(bucket.used),
            used: bucket.used,
            reset: bucket.reset_epoch,
        };
        let status = if rate_limited { 403 } else { status };

        let c = &mut inner.counters;
        c.total += 1;
        *c.by_status.entry(status).or_insert(0) += 1;
        *c.by_path.entry(meta.path).or_insert(0) += 1;
        *c.by_path_and_query
            .entry(meta.path_and_query.clone())
            .or_insert(0) += 1;
        *c.quota_spent.entry(label).or_insert(0) += u64::from(spend);
        c.requests.push_back(RequestRecord {
            method: meta.method,
            path_and_query: meta.path_and_query,
            status,
            authorization: meta.authorization,
            if_none_match: meta.if_none_match,
            if_modified_since: meta.if_modified_since,
            accept: meta.accept,
            quota_spent: spend,
        });
        inner.trim_records();

        let request_id = inner.next_request_id;
        inner.next_request_id += 1;
        Settled {
            rate_limited,
            rate,
            request_id,
        }
    }

    /// The bucket for `label`, starting a new window if the old one ended.
    /// Like GitHub, a window starts with the first request that needs one.
    fn bucket(&mut self, label: &str, now: SystemTime) -> (&mut Bucket, u64) {
        let window = self.window;
        let limit = self.quota_limit;
        let bucket = self
            .buckets
            .entry(label.to_owned())
            .or_insert_with(|| Bucket::fresh(now, window));
        if bucket.expired(now) {
            *bucket = Bucket::fresh(now, window);
        }
        (bucket, limit)
    }

    /// Most specific first: a path-scoped failure, then "always", then the
    /// global queue. Only the rule that fires is consumed.
    fn take_failure(&mut self, path: &str) -> Option<Failure> {
        if let Some(i) = self.path_failures.iter().position(|p| p.path == path) {
            let rule = &mut self.path_failures[i];
            let failure = rule.failure.clone();
            if let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
                if *n == 0 {
                    self.path_failures.remove(i);
                }
            }
            return Some(failure);
        }
        if let Some(f) = &self.fail_always {
            return Some(f.clone());
        }
        let (n, failure) = self.fail_queue.front_mut()?;
        let failure = failure.clone();
        *n -= 1;
        if *n == 0 {
            self.fail_queue.pop_front();
        }
        Some(failure)
    }

    fn trim_records(&mut self) {
        if let Some(limit) = self.record_limit {
            let c = &mut self.counters;
            while c.requests.len() > limit {
                c.requests.pop_front();
                c.records_dropped += 1;
            }
        }
    }
}

/// Resources are keyed by path alone; tolerate a missing leading slash or a
/// stray query string from callers rather than storing something unreachable.
pub(crate) fn normalize_path(path: &str) -> String {
    let path = split_query(path).0;
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

fn epoch_secs_floor(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Rounded up so that a client sleeping until `x-ratelimit-reset` really
/// finds a fresh window, never one that ends a fraction of a second later.
fn epoch_secs_ceil(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
}
