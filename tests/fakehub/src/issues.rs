//! Issues and issue comments: the part of the REST API that an issue-backed peer registry needs.
//!
//! Unlike stored resources, these are live objects that requests create, change and delete:
//!
//! | request                                          | answer                                     |
//! |--------------------------------------------------|--------------------------------------------|
//! | `GET /repos/{o}/{r}/issues[?state=open\|closed\|all&direction=asc\|desc]` | issues, paginated, newest first by default |
//! | `POST /repos/{o}/{r}/issues` `{title, body}`     | 201 and the issue                          |
//! | `GET /repos/{o}/{r}/issues/{n}`                  | the issue (`Last-Modified`: its update)    |
//! | `GET /repos/{o}/{r}/issues/{n}/comments[?since=T]` | its comments (updated at or after `T`, ISO 8601, when given), oldest first, paginated |
//! | `PUT /repos/{o}/{r}/issues/{n}/lock` `[{lock_reason}]` | 204; the issue is locked              |
//! | `DELETE /repos/{o}/{r}/issues/{n}/lock`          | 204; unlocked                              |
//! | `POST /repos/{o}/{r}/issues/{n}/comments` `{body}` | 201 and the comment; 403 on a locked issue unless the issue's author or locker |
//! | `GET /repos/{o}/{r}/issues/comments/{id}`        | the comment                                |
//! | `PATCH /repos/{o}/{r}/issues/comments/{id}` `{body}` | 200 and the comment; 403 unless the author |
//! | `DELETE /repos/{o}/{r}/issues/comments/{id}`     | 204; 403 unless the author                 |
//!
//! Only repositories added with [`crate::FakeHub::add_repo`] (or the `add_repos` control key)
//! have issues; the routes of any other repository behave as before (stored resources or 404).
//! On GitHub only users with write access may comment on a locked issue; here, the login that
//! opened the issue and the one that locked it stand for them.
//! The author of what a request writes is [`crate::login_for`] its `Authorization`. Writes need
//! an `Authorization` (401 without) and fail with 403 while writes are forbidden
//! ([`crate::FakeHub::set_writes_forbidden`]), as they do for a token without `issues: write`.
//!
//! Every request is counted, spends quota and is subject to injected failures like any other;
//! a rate-limited write changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::Method;
use serde_json::{Value, json};

use crate::server::{Plan, conditional_answer, paginate};
use crate::state::RequestMeta;
use crate::truncate_to_secs;

/// What a path under `/repos/{o}/{r}/issues` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// `/repos/{o}/{r}/issues`
    Issues,
    /// `/repos/{o}/{r}/issues/{n}`
    Issue(u64),
    /// `/repos/{o}/{r}/issues/{n}/comments`
    Comments(u64),
    /// `/repos/{o}/{r}/issues/comments/{id}`
    Comment(u64),
    /// `/repos/{o}/{r}/issues/{n}/lock`
    Lock(u64),
}

/// A request to the issues API: the repository (`owner/repo`, lowercased) and the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub repo: String,
    pub target: Target,
}

impl Route {
    /// Parses a request path; `None` for anything that is not an issues route.
    pub fn parse(path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/repos/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        let number = |s: &str| s.parse::<u64>().ok().filter(|n| *n > 0);
        let target = match parts.as_slice() {
            [_, _, "issues"] => Target::Issues,
            [_, _, "issues", "comments", id] => Target::Comment(number(id)?),
            [_, _, "issues", n] => Target::Issue(number(n)?),
            [_, _, "issues", n, "comments"] => Target::Comments(number(n)?),
            [_, _, "issues", n, "lock"] => Target::Lock(number(n)?),
            _ => return None,
        };
        if parts[0].is_empty() || parts[1].is_empty() {
            return None;
        }
        Some(Route {
            repo: format!("{}/{}", parts[0], parts[1]).to_ascii_lowercase(),
            target,
        })
    }
}

#[derive(Debug, Clone)]
struct Issue {
    id: u64,
    number: u64,
    title: String,
    body: Option<String>,
    open: bool,
    login: String,
    created: SystemTime,
    updated: SystemTime,
    /// Who locked it and why, while it is locked.
    lock: Option<(String, Option<String>)>,
}

#[derive(Debug, Clone)]
struct Comment {
    id: u64,
    issue: u64,
    body: String,
    login: String,
    created: SystemTime,
    updated: SystemTime,
}

#[derive(Debug, Default)]
struct Repo {
    /// The name as first given (for URLs in answers).
    full_name: String,
    issues: BTreeMap<u64, Issue>,
    comments: BTreeMap<u64, Comment>,
}

/// Every repository's issues and comments.
#[derive(Debug)]
pub(crate) struct Store {
    repos: BTreeMap<String, Repo>,
    next_id: u64,
    /// While set, every write answers 403.
    pub writes_forbidden: bool,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            repos: BTreeMap::new(),
            next_id: 1000,
            writes_forbidden: false,
        }
    }
}

/// What a handler needs besides the route.
pub(crate) struct Call<'a> {
    pub method: &'a Method,
    pub meta: &'a RequestMeta,
    pub body: &'a [u8],
    pub query: Option<&'a str>,
    /// For absolute URLs in `Link` headers and answers.
    pub host: &'a str,
}

impl Store {
    /// Gives `owner/repo` an (empty) issue tracker; idempotent.
    pub fn add_repo(&mut self, full_name: &str) {
        let key = full_name.trim_matches('/').to_ascii_lowercase();
        self.repos.entry(key).or_insert_with(|| Repo {
            full_name: full_name.trim_matches('/').to_owned(),
            ..Repo::default()
        });
    }

    /// Whether `repo` (lowercased `owner/repo`) has an issue tracker here.
    pub fn has_repo(&self, repo: &str) -> bool {
        self.repos.contains_key(repo)
    }

    /// Every issue of a repository, as JSON, oldest first.
    pub fn issues_json(&self, repo: &str, host: &str) -> Vec<Value> {
        let Some(r) = self.repos.get(&repo.to_ascii_lowercase()) else {
            return Vec::new();
        };
        r.issues.values().map(|i| issue_json(r, i, host)).collect()
    }

    /// Every comment of an issue, as JSON, oldest first.
    pub fn comments_json(&self, repo: &str, number: u64, host: &str) -> Vec<Value> {
        let Some(r) = self.repos.get(&repo.to_ascii_lowercase()) else {
            return Vec::new();
        };
        r.comments
            .values()
            .filter(|c| c.issue == number)
            .map(|c| comment_json(r, c, host))
            .collect()
    }

    /// Opens or closes an issue; `false` when there is no such issue.
    pub fn set_issue_open(&mut self, repo: &str, number: u64, open: bool) -> bool {
        let Some(issue) = self
            .repos
            .get_mut(&repo.to_ascii_lowercase())
            .and_then(|r| r.issues.get_mut(&number))
        else {
            return false;
        };
        issue.open = open;
        issue.updated = SystemTime::now();
        true
    }

    /// Moves every comment of an issue `by` into the past; returns how many there are.
    pub fn age_comments(&mut self, repo: &str, number: u64, by: std::time::Duration) -> usize {
        let Some(r) = self.repos.get_mut(&repo.to_ascii_lowercase()) else {
            return 0;
        };
        let mut count = 0;
        for comment in r.comments.values_mut().filter(|c| c.issue == number) {
            comment.created = comment.created.checked_sub(by).unwrap_or(UNIX_EPOCH);
            comment.updated = comment.updated.checked_sub(by).unwrap_or(UNIX_EPOCH);
            count += 1;
        }
        count
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Answers one request to an issues route of a repository that has issues.
    pub fn handle(&mut self, route: &Route, call: &Call<'_>) -> Plan {
        let login = call.meta.authorization.as_deref().map(crate::login_for);
        let write = *call.method != Method::GET && *call.method != Method::HEAD;
        if write {
            let Some(login) = login else {
                return reply(
                    401,
                    json!({"message": "Requires authentication", "documentation_url": "https://docs.github.com/rest"}),
                );
            };
            if self.writes_forbidden {
                return reply(
                    403,
                    json!({"message": "Resource not accessible by integration", "documentation_url": "https://docs.github.com/rest"}),
                );
            }
            return self.write(route, call, login);
        }
        self.read(route, call)
    }

    fn read(&self, route: &Route, call: &Call<'_>) -> Plan {
        let Some(repo) = self.repos.get(&route.repo) else {
            return Plan::NotFound;
        };
        let path = &call.meta.path;
        match route.target {
            Target::Issues => {
                let (state, descending) = list_filters(call.query);
                let mut items: Vec<&Issue> = repo
                    .issues
                    .values()
                    .filter(|i| match state {
                        StateFilter::Open => i.open,
                        StateFilter::Closed => !i.open,
                        StateFilter::All => true,
                    })
                    .collect();
                if descending {
                    items.reverse();
                }
                let values: Vec<Value> = items
                    .into_iter()
                    .map(|i| issue_json(repo, i, call.host))
                    .collect();
                let (body, link) = paginate(&values, path, call.query, call.host);
                found(call.meta, body, None, link)
            }
            Target::Issue(n) => match repo.issues.get(&n) {
                Some(issue) => {
                    let body = Bytes::from(issue_json(repo, issue, call.host).to_string());
                    found(call.meta, body, Some(truncate_to_secs(issue.updated)), None)
                }
                None => Plan::NotFound,
            },
            Target::Comments(n) => {
                if !repo.issues.contains_key(&n) {
                    return Plan::NotFound;
                }
                let since = query_value(call.query, "since").and_then(|t| parse_iso8601(&t));
                let values: Vec<Value> = repo
                    .comments
                    .values()
                    .filter(|c| c.issue == n)
                    .filter(|c| since.is_none_or(|since| truncate_to_secs(c.updated) >= since))
                    .map(|c| comment_json(repo, c, call.host))
                    .collect();
                let (body, link) = paginate(&values, path, call.query, call.host);
                found(call.meta, body, None, link)
            }
            Target::Comment(id) => match repo.comments.get(&id) {
                Some(c) => {
                    let body = Bytes::from(comment_json(repo, c, call.host).to_string());
                    found(call.meta, body, Some(truncate_to_secs(c.updated)), None)
                }
                None => Plan::NotFound,
            },
            Target::Lock(_) => Plan::MethodNotAllowed,
        }
    }

    fn write(&mut self, route: &Route, call: &Call<'_>, login: String) -> Plan {
        let method = call.method.clone();
        let target = route.target.clone();
        let input: Option<Value> = if call.body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            match serde_json::from_slice(call.body) {
                Ok(value) => Some(value),
                Err(_) => {
                    return reply(
                        400,
                        json!({"message": "Problems parsing JSON", "documentation_url": "https://docs.github.com/rest"}),
                    );
                }
            }
        };
        let text = |key: &str| {
            input
                .as_ref()
                .and_then(|v| v.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let now = SystemTime::now();
        let host = call.host.to_owned();
        match (method, target) {
            (Method::POST, Target::Issues) => {
                let Some(title) = text("title").filter(|t| !t.trim().is_empty()) else {
                    return validation_failed("title");
                };
                let id = self.next_id();
                let repo = self.repo_mut(&route.repo);
                let number = repo.issues.keys().next_back().copied().unwrap_or(0) + 1;
                let issue = Issue {
                    id,
                    number,
                    title,
                    body: text("body"),
                    open: true,
                    login,
                    created: now,
                    updated: now,
                    lock: None,
                };
                let value = issue_json(repo, &issue, &host);
                repo.issues.insert(number, issue);
                reply(201, value)
            }
            (Method::POST, Target::Comments(n)) => {
                let Some(body) = text("body") else {
                    return validation_failed("body");
                };
                let Some(issue) = self.repo_mut(&route.repo).issues.get(&n) else {
                    return Plan::NotFound;
                };
                if let Some((locker, _)) = &issue.lock
                    && login != issue.login
                    && &login != locker
                {
                    return reply(
                        403,
                        json!({"message": "Unable to create comment because issue is locked.", "documentation_url": "https://docs.github.com/articles/locking-conversations/"}),
                    );
                }
                let id = self.next_id();
                let repo = self.repo_mut(&route.repo);
                let comment = Comment {
                    id,
                    issue: n,
                    body,
                    login,
                    created: now,
                    updated: now,
                };
                let value = comment_json(repo, &comment, &host);
                repo.comments.insert(id, comment);
                if let Some(issue) = repo.issues.get_mut(&n) {
                    issue.updated = now;
                }
                reply(201, value)
            }
            (Method::PATCH, Target::Issue(n)) => {
                // State only (what the registry needs): its author may close or reopen it.
                let state = text("state");
                let open = match state.as_deref() {
                    Some("open") => true,
                    Some("closed") => false,
                    _ => return validation_failed("state"),
                };
                let repo = self.repo_mut(&route.repo);
                let Some(issue) = repo.issues.get_mut(&n) else {
                    return Plan::NotFound;
                };
                if issue.login != login {
                    return not_author();
                }
                issue.open = open;
                issue.updated = now;
                let issue = issue.clone();
                reply(200, issue_json(repo, &issue, &host))
            }
            (Method::PATCH, Target::Comment(id)) => {
                let Some(body) = text("body") else {
                    return validation_failed("body");
                };
                let repo = self.repo_mut(&route.repo);
                let Some(comment) = repo.comments.get_mut(&id) else {
                    return Plan::NotFound;
                };
                if comment.login != login {
                    return not_author();
                }
                comment.body = body;
                comment.updated = now;
                let comment = comment.clone();
                if let Some(issue) = repo.issues.get_mut(&comment.issue) {
                    issue.updated = now;
                }
                reply(200, comment_json(repo, &comment, &host))
            }
            (Method::DELETE, Target::Comment(id)) => {
                let repo = self.repo_mut(&route.repo);
                let Some(comment) = repo.comments.get(&id) else {
                    return Plan::NotFound;
                };
                if comment.login != login {
                    return not_author();
                }
                let issue = comment.issue;
                repo.comments.remove(&id);
                if let Some(issue) = repo.issues.get_mut(&issue) {
                    issue.updated = now;
                }
                Plan::Reply {
                    status: 204,
                    body: None,
                }
            }
            (Method::PUT, Target::Lock(n)) => {
                let reason = text("lock_reason");
                if reason
                    .as_deref()
                    .is_some_and(|r| !["off-topic", "too heated", "resolved", "spam"].contains(&r))
                {
                    return validation_failed("lock_reason");
                }
                let Some(issue) = self.repo_mut(&route.repo).issues.get_mut(&n) else {
                    return Plan::NotFound;
                };
                issue.lock = Some((login, reason));
                issue.updated = now;
                Plan::Reply {
                    status: 204,
                    body: None,
                }
            }
            (Method::DELETE, Target::Lock(n)) => {
                let Some(issue) = self.repo_mut(&route.repo).issues.get_mut(&n) else {
                    return Plan::NotFound;
                };
                issue.lock = None;
                issue.updated = now;
                Plan::Reply {
                    status: 204,
                    body: None,
                }
            }
            _ => Plan::MethodNotAllowed,
        }
    }

    fn repo_mut(&mut self, repo: &str) -> &mut Repo {
        self.repos.entry(repo.to_owned()).or_default()
    }
}

/// Which methods an issues route accepts (for `Allow` and 405s).
pub(crate) fn allowed(target: &Target) -> &'static [Method] {
    match target {
        Target::Issues | Target::Comments(_) => &[Method::GET, Method::HEAD, Method::POST],
        Target::Issue(_) => &[Method::GET, Method::HEAD, Method::PATCH],
        Target::Comment(_) => &[Method::GET, Method::HEAD, Method::PATCH, Method::DELETE],
        Target::Lock(_) => &[Method::PUT, Method::DELETE],
    }
}

enum StateFilter {
    Open,
    Closed,
    All,
}

/// `state` (default `open`) and `direction` (default `desc`: newest first) of an issue list.
fn list_filters(query: Option<&str>) -> (StateFilter, bool) {
    let mut state = StateFilter::Open;
    let mut descending = true;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "state" => {
                state = match value {
                    "closed" => StateFilter::Closed,
                    "all" => StateFilter::All,
                    _ => StateFilter::Open,
                };
            }
            "direction" => descending = value != "asc",
            _ => {}
        }
    }
    (state, descending)
}

/// The (first) value of `key` in a query string, percent-decoded.
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))?;
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `2024-05-01T12:34:56Z` (the form GitHub takes for `since`) as a time.
pub(crate) fn parse_iso8601(text: &str) -> Option<SystemTime> {
    let b = text.trim().as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |from: usize, to: usize| std::str::from_utf8(&b[from..to]).ok()?.parse::<i64>().ok();
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).ok()?))
}

/// A 200 (or 304 when the request's validators match) for a read.
fn found(
    meta: &RequestMeta,
    body: Bytes,
    last_modified: Option<SystemTime>,
    link: Option<String>,
) -> Plan {
    let content_type = crate::JSON_CONTENT_TYPE.to_owned();
    conditional_answer(meta, body, content_type, last_modified, link)
}

fn reply(status: u16, value: Value) -> Plan {
    Plan::Reply {
        status,
        body: Some(Bytes::from(value.to_string())),
    }
}

fn validation_failed(field: &str) -> Plan {
    reply(
        422,
        json!({
            "message": "Validation Failed",
            "errors": [{"resource": "Issue", "code": "missing_field", "field": field}],
            "documentation_url": "https://docs.github.com/rest",
        }),
    )
}

fn not_author() -> Plan {
    reply(
        403,
        json!({
            "message": "You must be the author of this comment to change it",
            "documentation_url": "https://docs.github.com/rest",
        }),
    )
}

fn user_json(login: &str) -> Value {
    json!({"login": login, "type": if login.ends_with("[bot]") { "Bot" } else { "User" }})
}

fn issue_json(repo: &Repo, issue: &Issue, host: &str) -> Value {
    let comments = repo
        .comments
        .values()
        .filter(|c| c.issue == issue.number)
        .count();
    json!({
        "id": issue.id,
        "number": issue.number,
        "url": format!("http://{host}/repos/{}/issues/{}", repo.full_name, issue.number),
        "comments_url": format!("http://{host}/repos/{}/issues/{}/comments", repo.full_name, issue.number),
        "title": issue.title,
        "body": issue.body,
        "state": if issue.open { "open" } else { "closed" },
        "locked": issue.lock.is_some(),
        "active_lock_reason": issue.lock.as_ref().and_then(|(_, reason)| reason.clone()),
        "user": user_json(&issue.login),
        "comments": comments,
        "created_at": iso8601(issue.created),
        "updated_at": iso8601(issue.updated),
    })
}

fn comment_json(repo: &Repo, comment: &Comment, host: &str) -> Value {
    json!({
        "id": comment.id,
        "url": format!("http://{host}/repos/{}/issues/comments/{}", repo.full_name, comment.id),
        "issue_url": format!("http://{host}/repos/{}/issues/{}", repo.full_name, comment.issue),
        "body": comment.body,
        "user": user_json(&comment.login),
        "created_at": iso8601(comment.created),
        "updated_at": iso8601(comment.updated),
    })
}

/// `2024-05-01T12:34:56Z`, as GitHub writes times.
pub(crate) fn iso8601(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
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

/// Names of the repositories with issues (for the control API's config view).
pub(crate) fn repo_names(store: &Store) -> BTreeSet<String> {
    store.repos.values().map(|r| r.full_name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn routes() {
        let r = |p: &str| Route::parse(p).map(|r| (r.repo, r.target));
        assert_eq!(
            r("/repos/Octo/Hello/issues"),
            Some(("octo/hello".into(), Target::Issues))
        );
        assert_eq!(
            r("/repos/o/r/issues/7"),
            Some(("o/r".into(), Target::Issue(7)))
        );
        assert_eq!(
            r("/repos/o/r/issues/7/comments"),
            Some(("o/r".into(), Target::Comments(7)))
        );
        assert_eq!(
            r("/repos/o/r/issues/comments/9"),
            Some(("o/r".into(), Target::Comment(9)))
        );
        assert_eq!(r("/repos/o/r/issues/x"), None);
        assert_eq!(r("/repos/o/r/pulls"), None);
        assert_eq!(r("/repos/o/r/issues/0"), None);
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(1_714_566_896)),
            "2024-05-01T12:34:56Z"
        );
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        for secs in [0, 951_782_400, 1_714_566_896, 4_102_444_799] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_iso8601(&iso8601(t)), Some(t));
        }
        assert_eq!(parse_iso8601("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_iso8601("yesterday"), None);
    }
}
