//! Behaviour of the GitHub-like API, over real loopback HTTP.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{get, request};
use fakehub::{Failure, FakeHub, Options, Resource, generate_resources, repo_body};
use serde_json::json;
use sha2::{Digest, Sha256};

const REPO: &[u8] = br#"{"id":1,"full_name":"octo/hello",  "weird spacing":true}"#;

fn expected_etag(body: &[u8], auth: &str) -> String {
    let mut h = Sha256::new();
    h.update(body);
    h.update(auth.as_bytes());
    format!("W/\"{}\"", hex::encode(h.finalize()))
}

fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn plain_resource_is_served_byte_for_byte_with_github_headers() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    let before = now_epoch();
    let r = get(
        &hub.url(),
        "/repos/octo/hello/readme",
        &[("Authorization", "token t1")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, REPO);
    assert_eq!(r.must("content-type"), "application/json; charset=utf-8");
    assert_eq!(r.must("etag"), expected_etag(REPO, "token t1"));
    let lm = httpdate::parse_http_date(r.must("last-modified")).unwrap();
    let lm = lm.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(lm <= before && before - lm < 5, "last-modified is put time");
    assert_eq!(r.num("x-ratelimit-limit"), 5000);
    assert_eq!(r.num("x-ratelimit-remaining"), 4999);
    assert_eq!(r.num("x-ratelimit-used"), 1);
    assert_eq!(r.must("x-ratelimit-resource"), "core");
    let reset = r.num("x-ratelimit-reset");
    assert!(
        reset >= before + 3600 && reset <= now_epoch() + 3601,
        "reset {reset}"
    );
    assert!(r.must("cache-control").starts_with("private"));
}

#[test]
fn query_strings_do_not_change_the_resource_but_are_counted() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    let r = get(&hub.url(), "/repos/octo/hello/readme?foo=bar", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, REPO);
    assert_eq!(hub.count("/repos/octo/hello/readme"), 1);
    assert_eq!(hub.count("/repos/octo/hello/readme?foo=bar"), 1);
    let stats = hub.stats();
    assert_eq!(
        stats.by_path_and_query["/repos/octo/hello/readme?foo=bar"],
        1
    );
    assert_eq!(stats.requests[0].path(), "/repos/octo/hello/readme");
}

#[test]
fn etag_depends_on_authorization() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    let url = hub.url();
    let a1 = get(
        &url,
        "/repos/octo/hello/readme",
        &[("Authorization", "token aaa")],
    );
    let a2 = get(
        &url,
        "/repos/octo/hello/readme",
        &[("Authorization", "token aaa")],
    );
    let b = get(
        &url,
        "/repos/octo/hello/readme",
        &[("Authorization", "token bbb")],
    );
    let anon = get(&url, "/repos/octo/hello/readme", &[]);
    assert_eq!(a1.must("etag"), a2.must("etag"));
    assert_ne!(a1.must("etag"), b.must("etag"));
    assert_ne!(a1.must("etag"), anon.must("etag"));
    assert_eq!(anon.must("etag"), expected_etag(REPO, ""));
    assert_eq!(b.must("etag"), expected_etag(REPO, "token bbb"));
    // Same body for everybody, though.
    assert_eq!(a1.body, b.body);
    assert_eq!(a1.body, anon.body);
}

#[test]
fn if_none_match_gives_304_without_spending_quota_when_authenticated() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    let url = hub.url();
    let auth = ("Authorization", "Bearer ghp_fake");
    let first = get(&url, "/repos/octo/hello/readme", &[auth]);
    let etag = first.must("etag").to_owned();
    assert_eq!(first.num("x-ratelimit-remaining"), 4999);

    let second = get(
        &url,
        "/repos/octo/hello/readme",
        &[auth, ("If-None-Match", &etag)],
    );
    assert_eq!(second.status, 304);
    assert!(second.body.is_empty());
    assert_eq!(second.must("etag"), etag);
    assert_eq!(second.must("last-modified"), first.must("last-modified"));
    assert_eq!(second.num("x-ratelimit-remaining"), 4999);
    assert_eq!(second.num("x-ratelimit-used"), 1);

    // A list of candidates, one of them ours, also matches.
    let listed = format!("W/\"nope\", {etag}");
    let third = get(
        &url,
        "/repos/octo/hello/readme",
        &[auth, ("If-None-Match", &listed)],
    );
    assert_eq!(third.status, 304);

    let stats = hub.stats();
    assert_eq!(stats.total, 3);
    assert_eq!(stats.status_count(304), 2);
    assert_eq!(stats.spent(Some("Bearer ghp_fake")), 1);
    let rec = &stats.requests[1];
    assert_eq!(rec.status, 304);
    assert_eq!(rec.if_none_match.as_deref(), Some(etag.as_str()));
    assert_eq!(rec.authorization.as_deref(), Some("Bearer ghp_fake"));
    assert!(!rec.quota_spent);
    assert_eq!(hub.remaining(Some("Bearer ghp_fake")), 4999);
}

#[test]
fn unauthenticated_304_spends_quota() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    let url = hub.url();
    let etag = get(&url, "/repos/octo/hello/readme", &[])
        .must("etag")
        .to_owned();
    let r = get(
        &url,
        "/repos/octo/hello/readme",
        &[("If-None-Match", &etag)],
    );
    assert_eq!(r.status, 304);
    assert_eq!(r.num("x-ratelimit-remaining"), 4998);
    assert_eq!(hub.stats().quota_spent["anonymous"], 2);
}

#[test]
fn etag_of_another_token_does_not_match() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    let url = hub.url();
    let etag = get(
        &url,
        "/repos/octo/hello/readme",
        &[("Authorization", "token a")],
    )
    .must("etag")
    .to_owned();
    let r = get(
        &url,
        "/repos/octo/hello/readme",
        &[("Authorization", "token b"), ("If-None-Match", &etag)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, REPO);
}

#[test]
fn if_modified_since_gives_304_across_tokens() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    let url = hub.url();
    let first = get(
        &url,
        "/repos/octo/hello/readme",
        &[("Authorization", "token a")],
    );
    let lm = first.must("last-modified").to_owned();

    let r = get(
        &url,
        "/repos/octo/hello/readme",
        &[("Authorization", "token b"), ("If-Modified-Since", &lm)],
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.must("etag"), expected_etag(REPO, "token b"));
    assert_eq!(r.must("last-modified"), lm);
    assert_eq!(hub.stats().spent(Some("token b")), 0);

    // A later date also counts as "not modified since".
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
    let r = get(
        &url,
        "/repos/octo/hello/readme",
        &[("If-Modified-Since", &later)],
    );
    assert_eq!(r.status, 304);

    // An older date, a malformed one: full response.
    let older = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
    let r = get(
        &url,
        "/repos/octo/hello/readme",
        &[("If-Modified-Since", &older)],
    );
    assert_eq!(r.status, 200);
    let r = get(
        &url,
        "/repos/octo/hello/readme",
        &[("If-Modified-Since", "yesterday-ish")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, REPO);

    let stats = hub.stats();
    let rec = &stats.requests[1];
    assert_eq!(rec.status, 304);
    assert_eq!(rec.if_modified_since.as_deref(), Some(lm.as_str()));
    assert_eq!(rec.if_none_match, None);
}

#[test]
fn both_validators_must_match() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    let url = hub.url();
    let first = get(
        &url,
        "/repos/octo/hello/readme",
        &[("Authorization", "token a")],
    );
    let etag = first.must("etag").to_owned();
    let lm = first.must("last-modified").to_owned();
    let both = |auth| {
        get(
            &url,
            "/repos/octo/hello/readme",
            &[
                ("Authorization", auth),
                ("If-None-Match", &etag),
                ("If-Modified-Since", &lm),
            ],
        )
    };
    assert_eq!(both("token a").status, 304);
    // Token b: the date passes but the ETag (token a's) does not.
    assert_eq!(both("token b").status, 200);
}

#[test]
fn resources_without_last_modified_ignore_if_modified_since() {
    let hub = FakeHub::start();
    hub.put_resource(
        "/repos/octo/plain",
        Resource::new("hello", "text/plain").with_last_modified(None),
    );
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
    let r = get(
        &hub.url(),
        "/repos/octo/plain",
        &[("If-Modified-Since", &later)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    assert_eq!(r.must("content-type"), "text/plain");
    assert_eq!(r.header("last-modified"), None);
}

#[test]
fn explicit_last_modified_is_sent() {
    let hub = FakeHub::start();
    let when = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    hub.put_resource(
        "/x",
        Resource::json("{}").with_last_modified(Some(when + Duration::from_millis(400))),
    );
    let r = get(&hub.url(), "/x", &[]);
    assert_eq!(r.must("last-modified"), "Tue, 14 Nov 2023 22:13:20 GMT");
    let r = get(
        &hub.url(),
        "/x",
        &[("If-Modified-Since", "Tue, 14 Nov 2023 22:13:20 GMT")],
    );
    assert_eq!(r.status, 304);
}

fn items(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| json!({"id": i, "name": format!("item{i}")}))
        .collect()
}

#[test]
fn lists_are_paginated_with_github_link_headers() {
    let hub = FakeHub::start();
    hub.put_list("/repos/octo/hello/issues", items(5));
    let url = hub.url();
    let host = url.strip_prefix("http://").unwrap().to_owned();
    let base = format!("http://{host}/repos/octo/hello/issues");

    let p1 = get(&url, "/repos/octo/hello/issues?per_page=2", &[]);
    assert_eq!(p1.status, 200);
    assert_eq!(p1.body, serde_json::to_vec(&items(5)[0..2]).unwrap());
    assert_eq!(
        p1.must("link"),
        format!(
            "<{base}?per_page=2&page=2>; rel=\"next\", <{base}?per_page=2&page=3>; rel=\"last\""
        )
    );
    assert_eq!(p1.header("last-modified"), None);
    assert_eq!(p1.must("content-type"), "application/json; charset=utf-8");
    assert!(p1.must("etag").starts_with("W/\""));

    let p2 = get(&url, "/repos/octo/hello/issues?per_page=2&page=2", &[]);
    assert_eq!(p2.body, serde_json::to_vec(&items(5)[2..4]).unwrap());
    assert_eq!(
        p2.must("link"),
        format!(
            "<{base}?per_page=2&page=1>; rel=\"prev\", <{base}?per_page=2&page=3>; rel=\"next\", \
             <{base}?per_page=2&page=3>; rel=\"last\", <{base}?per_page=2&page=1>; rel=\"first\""
        )
    );
    assert_ne!(p1.must("etag"), p2.must("etag"));

    let p3 = get(&url, "/repos/octo/hello/issues?page=3&per_page=2", &[]);
    assert_eq!(p3.json(), json!([{"id": 4, "name": "item4"}]));
    assert_eq!(
        p3.must("link"),
        format!(
            "<{base}?per_page=2&page=2>; rel=\"prev\", <{base}?per_page=2&page=1>; rel=\"first\""
        )
    );

    // Beyond the end: an empty page that still points back.
    let p9 = get(&url, "/repos/octo/hello/issues?per_page=2&page=9", &[]);
    assert_eq!(p9.body, b"[]");

    // Conditional requests work on pages too.
    let etag = p2.must("etag").to_owned();
    let again = get(
        &url,
        "/repos/octo/hello/issues?per_page=2&page=2",
        &[("If-None-Match", &etag)],
    );
    assert_eq!(again.status, 304);

    assert_eq!(hub.count("/repos/octo/hello/issues"), 5);
    assert_eq!(hub.count("/repos/octo/hello/issues?per_page=2&page=2"), 2);
}

#[test]
fn pagination_defaults_limits_and_extra_params() {
    let hub = FakeHub::start();
    hub.put_list("/orgs/octo/repos", items(250));
    let url = hub.url();

    let r = get(&url, "/orgs/octo/repos", &[("Host", "api.example.test")]);
    assert_eq!(r.json().as_array().unwrap().len(), 30);
    assert_eq!(
        r.must("link"),
        "<http://api.example.test/orgs/octo/repos?per_page=30&page=2>; rel=\"next\", \
         <http://api.example.test/orgs/octo/repos?per_page=30&page=9>; rel=\"last\""
    );

    let r = get(
        &url,
        "/orgs/octo/repos?per_page=500&type=all&page=3",
        &[("Host", "h")],
    );
    let body = r.json();
    assert_eq!(body.as_array().unwrap().len(), 50);
    assert_eq!(body[0]["id"], 200);
    assert_eq!(
        r.must("link"),
        "<http://h/orgs/octo/repos?per_page=100&page=2&type=all>; rel=\"prev\", \
         <http://h/orgs/octo/repos?per_page=100&page=1&type=all>; rel=\"first\""
    );

    // Garbage parameters fall back to the defaults.
    let r = get(&url, "/orgs/octo/repos?per_page=abc&page=-1", &[]);
    assert_eq!(r.json()[0]["id"], 0);
    assert_eq!(r.json().as_array().unwrap().len(), 30);
}

#[test]
fn empty_and_single_page_lists_have_no_link() {
    let hub = FakeHub::start();
    hub.put_list("/empty", vec![]);
    hub.put_list("/small", items(3));
    let r = get(&hub.url(), "/empty", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"[]");
    assert_eq!(r.header("link"), None);
    let r = get(&hub.url(), "/small", &[]);
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    assert_eq!(r.header("link"), None);
}

#[test]
fn quota_exhaustion_gives_403_with_zero_remaining() {
    let hub = FakeHub::start_with(Options {
        quota_limit: 3,
        ..Options::default()
    });
    hub.put_json("/r", "{}");
    let url = hub.url();
    let auth = ("Authorization", "token small");
    for i in 0..3 {
        let r = get(&url, "/r", &[auth]);
        assert_eq!(r.status, 200);
        assert_eq!(r.num("x-ratelimit-remaining"), 2 - i);
    }
    let r = get(&url, "/r", &[auth]);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.text(),
        r#"{"message":"API rate limit exceeded for this token.","documentation_url":"https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}"#
    );
    assert_eq!(r.num("x-ratelimit-remaining"), 0);
    assert_eq!(r.num("x-ratelimit-limit"), 3);
    assert_eq!(r.num("x-ratelimit-used"), 3);
    assert_eq!(r.must("content-type"), "application/json; charset=utf-8");
    // Unknown paths are rate limited as well.
    assert_eq!(get(&url, "/nope", &[auth]).status, 403);

    // Other buckets are unaffected.
    assert_eq!(
        get(&url, "/r", &[("Authorization", "token other")]).status,
        200
    );
    assert_eq!(get(&url, "/r", &[]).status, 200);

    let stats = hub.stats();
    assert_eq!(
        stats.spent(Some("token small")),
        3,
        "rejections spend nothing"
    );
    assert_eq!(stats.status_count(403), 2);
    assert_eq!(stats.total, 7);

    // Raising the limit lets the bucket continue.
    hub.set_quota_limit(10);
    let r = get(&url, "/r", &[auth]);
    assert_eq!(r.status, 200);
    assert_eq!(r.num("x-ratelimit-remaining"), 6);
}

#[test]
fn exhausted_quota_resets_after_the_window() {
    let hub = FakeHub::start();
    hub.put_json("/r", "{}");
    let url = hub.url();
    hub.exhaust_quota(Some("token x"), Duration::from_secs(1));
    let r = get(&url, "/r", &[("Authorization", "token x")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.num("x-ratelimit-remaining"), 0);
    let reset = r.num("x-ratelimit-reset");
    assert!(reset <= now_epoch() + 2);
    assert_eq!(hub.remaining(Some("token x")), 0);
    // Anonymous is a separate bucket.
    assert_eq!(get(&url, "/r", &[]).status, 200);

    // Sleeping until the advertised reset is enough.
    while now_epoch() < reset {
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = get(&url, "/r", &[("Authorization", "token x")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.num("x-ratelimit-remaining"), 4999);
}

#[test]
fn short_windows_roll_over() {
    let hub = FakeHub::start_with(Options {
        quota_limit: 1,
        window: Duration::from_secs(1),
        ..Options::default()
    });
    hub.put_json("/r", "{}");
    let url = hub.url();
    assert_eq!(get(&url, "/r", &[]).status, 200);
    let r = get(&url, "/r", &[]);
    assert_eq!(r.status, 403);
    let reset = r.num("x-ratelimit-reset");
    while now_epoch() < reset {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&url, "/r", &[]).status, 200);
}

#[test]
fn anonymous_bucket_can_be_exhausted() {
    let hub = FakeHub::start();
    hub.put_json("/r", "{}");
    hub.exhaust_quota(None, Duration::from_secs(600));
    assert_eq!(get(&hub.url(), "/r", &[]).status, 403);
    assert_eq!(
        get(&hub.url(), "/r", &[("Authorization", "token y")]).status,
        200
    );
    hub.reset_quota();
    assert_eq!(get(&hub.url(), "/r", &[]).status, 200);
}

#[test]
fn fail_next_with_502_and_retry_after() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    let url = hub.url();
    hub.fail_next(2, Failure::status(502).with_retry_after(7));
    for _ in 0..2 {
        let r = get(
            &url,
            "/repos/octo/hello/readme",
            &[("Authorization", "token f")],
        );
        assert_eq!(r.status, 502);
        assert_eq!(r.must("retry-after"), "7");
        assert_eq!(r.json()["message"], "Bad Gateway");
        assert_eq!(
            r.num("x-ratelimit-remaining"),
            5000,
            "failures spend nothing"
        );
        assert_eq!(r.header("etag"), None);
    }
    let r = get(
        &url,
        "/repos/octo/hello/readme",
        &[("Authorization", "token f")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, REPO);

    let stats = hub.stats();
    assert_eq!(stats.total, 3);
    assert_eq!(stats.status_count(502), 2);
    assert_eq!(stats.status_count(200), 1);
    assert_eq!(stats.spent(Some("token f")), 1);
    assert_eq!(hub.count("/repos/octo/hello/readme"), 3);
}

#[test]
fn queued_failures_run_in_order_with_custom_bodies() {
    let hub = FakeHub::start();
    hub.put_json("/r", "{}");
    let url = hub.url();
    hub.fail_next(1, Failure::status(500));
    hub.fail_next(1, Failure::status(429).with_retry_after(1));
    hub.fail_next(1, Failure::status(502).with_body("<html>unicorn</html>"));
    let r = get(&url, "/r", &[]);
    assert_eq!(r.status, 500);
    let r = get(&url, "/r", &[]);
    assert_eq!(r.status, 429);
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("secondary rate limit")
    );
    let r = get(&url, "/r", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.body, b"<html>unicorn</html>");
    assert!(r.must("content-type").starts_with("text/html"));
    assert_eq!(get(&url, "/r", &[]).status, 200);
    // Failures even hit unknown paths (GitHub being down is GitHub being down).
    hub.fail_next(1, Failure::status(503));
    assert_eq!(get(&url, "/nope", &[]).status, 503);
    // Out-of-range statuses become 500 rather than breaking the connection.
    hub.fail_next(1, Failure::status(42));
    assert_eq!(get(&url, "/r", &[]).status, 500);
}

#[test]
fn fail_always_until_cleared_and_path_scoped_failures() {
    let hub = FakeHub::start();
    hub.put_json("/a", "{}");
    hub.put_json("/b", "{}");
    let url = hub.url();
    hub.fail_always(Failure::status(500));
    for _ in 0..3 {
        assert_eq!(get(&url, "/a", &[]).status, 500);
    }
    hub.clear_failures();
    assert_eq!(get(&url, "/a", &[]).status, 200);

    hub.fail_path("/b", Failure::status(403).with_retry_after(60));
    assert_eq!(get(&url, "/a", &[]).status, 200);
    let r = get(&url, "/b?x=1", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.must("retry-after"), "60");
    assert_eq!(get(&url, "/b", &[]).status, 403);
    hub.clear_failures();
    assert_eq!(get(&url, "/b", &[]).status, 200);

    hub.fail_path_next("/b", 1, Failure::status(502));
    assert_eq!(get(&url, "/a", &[]).status, 200);
    assert_eq!(get(&url, "/b", &[]).status, 502);
    assert_eq!(get(&url, "/b", &[]).status, 200);
}

#[test]
fn unknown_paths_are_404_and_spend_quota() {
    let hub = FakeHub::start();
    let r = get(
        &hub.url(),
        "/repos/octo/missing",
        &[("Authorization", "token z")],
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest"}"#
    );
    assert_eq!(r.num("x-ratelimit-remaining"), 4999);
    assert_eq!(hub.count("/repos/octo/missing"), 1);

    hub.put_json("/repos/octo/gone", "{}");
    assert_eq!(get(&hub.url(), "/repos/octo/gone", &[]).status, 200);
    hub.remove("/repos/octo/gone");
    assert_eq!(get(&hub.url(), "/repos/octo/gone", &[]).status, 404);
}

#[test]
fn other_methods_are_405_and_head_works() {
    let hub = FakeHub::start();
    hub.put_json("/r", REPO);
    let url = hub.url();
    let r = request(&url, "POST", "/r", &[], Some(b"{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.must("allow"), "GET, HEAD");
    let r = request(&url, "DELETE", "/r", &[], None);
    assert_eq!(r.status, 405);

    let r = request(&url, "HEAD", "/r", &[], None);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.num("content-length"), REPO.len() as u64);
    assert!(r.header("etag").is_some());

    let stats = hub.stats();
    assert_eq!(stats.total, 3);
    assert_eq!(stats.status_count(405), 2);
    assert_eq!(stats.requests[2].method, "HEAD");
}

#[test]
fn counting_and_reset() {
    let hub = FakeHub::start();
    hub.put_json("/a", "{}");
    let url = hub.url();
    for _ in 0..20 {
        get(&url, "/a", &[("Accept", "application/vnd.github+json")]);
    }
    get(&url, "/b", &[]);
    // Control endpoints are never counted.
    get(&url, "/_fakehub/stats", &[]);
    assert_eq!(hub.total(), 21);
    assert_eq!(hub.count("/a"), 20);
    assert_eq!(hub.count("/b"), 1);
    let stats = hub.stats();
    assert_eq!(stats.requests.len(), 21);
    assert_eq!(
        stats.requests[0].accept.as_deref(),
        Some("application/vnd.github+json")
    );
    assert_eq!(stats.requests[0].authorization, None);
    assert_eq!(stats.quota_spent["anonymous"], 21);

    hub.reset_stats();
    assert_eq!(hub.total(), 0);
    assert_eq!(hub.stats(), fakehub::Stats::default());
    // Quota is not part of the stats.
    assert_eq!(hub.remaining(None), 5000 - 21);
}

#[test]
fn record_limit_keeps_the_newest() {
    let hub = FakeHub::start();
    hub.set_record_limit(Some(2));
    for i in 0..5 {
        get(&hub.url(), &format!("/p{i}"), &[]);
    }
    let stats = hub.stats();
    assert_eq!(stats.total, 5);
    assert_eq!(stats.records_dropped, 3);
    let paths: Vec<_> = stats.requests.iter().map(|r| r.path()).collect();
    assert_eq!(paths, ["/p3", "/p4"]);
}

#[test]
fn latency_is_applied() {
    let hub = FakeHub::start_with(Options {
        latency: Duration::from_millis(150),
        ..Options::default()
    });
    hub.put_json("/r", "{}");
    let t = Instant::now();
    assert_eq!(get(&hub.url(), "/r", &[]).status, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));

    // Control requests are not delayed.
    let t = Instant::now();
    get(&hub.url(), "/_fakehub/stats", &[]);
    assert!(t.elapsed() < Duration::from_millis(150));

    hub.set_latency(Duration::ZERO);
    let t = Instant::now();
    get(&hub.url(), "/r", &[]);
    assert!(t.elapsed() < Duration::from_millis(150));
}

#[test]
fn concurrent_requests_never_overspend() {
    let hub = FakeHub::start_with(Options {
        quota_limit: 25,
        latency: Duration::from_millis(20),
        ..Options::default()
    });
    hub.put_json("/r", "{}");
    let url = hub.url();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|_| s.spawn(|| get(&url, "/r", &[("Authorization", "token c")]).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 25);
    assert_eq!(statuses.iter().filter(|&&s| s == 403).count(), 15);
    assert_eq!(hub.stats().spent(Some("token c")), 25);
}

#[test]
fn generated_resources_are_deterministic_json_of_the_requested_size() {
    let hub = FakeHub::start();
    generate_resources(&hub, 3, 4096);
    for i in 0..3 {
        let r = get(&hub.url(), &format!("/repos/octo/swarm/contents/r{i}"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 4096);
        assert_eq!(r.body, repo_body(i, 4096));
        let v = r.json();
        assert_eq!(v["full_name"], format!("octo/repo{i}"));
        assert_eq!(v["owner"]["login"], "octo");
    }
    assert_ne!(repo_body(0, 4096), repo_body(1, 4096));
    assert_eq!(
        get(&hub.url(), "/repos/octo/swarm/contents/r3", &[]).status,
        404
    );
    // Too small a size: the bare document, still valid JSON.
    let small = repo_body(5, 10);
    assert!(small.len() > 10);
    let v: serde_json::Value = serde_json::from_slice(&small).unwrap();
    assert_eq!(v["padding"], "");
}

#[test]
fn drop_shuts_the_server_down() {
    let hub = FakeHub::start();
    let addr = hub.addr();
    assert_eq!(get(&hub.url(), "/x", &[]).status, 404);
    drop(hub);
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn non_loopback_listen_is_refused() {
    let err = FakeHub::try_start_with(Options {
        listen: Some("0.0.0.0:0".parse().unwrap()),
        ..Options::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn usable_and_droppable_from_async_code() {
    let hub = FakeHub::start();
    hub.put_json("/r", "{}");
    let url = hub.url();
    let status = tokio::task::spawn_blocking(move || get(&url, "/r", &[]).status)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(hub.total(), 1);
    drop(hub);
}

#[test]
fn handle_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FakeHub>();
    assert_send_sync::<fakehub::Stats>();
}

#[test]
fn user_is_the_callers_own_identity() {
    let hub = FakeHub::start();
    let a = get(&hub.url(), "/user", &[("Authorization", "Bearer tok-a")]);
    let b = get(&hub.url(), "/user", &[("Authorization", "token tok-b")]);
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["login"], fakehub::login_for("tok-a"));
    assert_eq!(b.json()["login"], fakehub::login_for("tok-b"));
    assert_ne!(a.json()["login"], b.json()["login"]);
    assert_eq!(get(&hub.url(), "/user", &[]).status, 401);
}

#[test]
fn rate_limit_is_the_callers_bucket_and_free() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    get(
        &hub.url(),
        "/repos/octo/hello/readme",
        &[("Authorization", "token t1")],
    );
    let r = get(&hub.url(), "/rate_limit", &[("Authorization", "token t1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["resources"]["core"]["used"], 1);
    let other = get(&hub.url(), "/rate_limit", &[("Authorization", "token t2")]);
    assert_eq!(other.json()["rate"]["used"], 0);
    assert_eq!(
        hub.stats().spent(Some("token t1")),
        1,
        "/rate_limit costs nothing"
    );
}

#[test]
fn private_repositories_are_hidden_from_tokens_of_other_repositories() {
    let hub = FakeHub::start();
    hub.put_json(
        "/repos/octo/secret",
        br#"{"full_name":"octo/secret"}"#.to_vec(),
    );
    hub.put_json("/repos/octo/secret/readme", REPO);
    hub.set_private("octo/secret");
    hub.scope_token("job-x", &["octo/x"]);
    hub.scope_token("job-secret", &["octo/secret"]);
    let as_x = get(
        &hub.url(),
        "/repos/octo/secret/readme",
        &[("Authorization", "Bearer job-x")],
    );
    assert_eq!(as_x.status, 404);
    assert_eq!(
        get(&hub.url(), "/repos/octo/secret/readme", &[]).status,
        404
    );
    let own = get(
        &hub.url(),
        "/repos/octo/secret/readme",
        &[("Authorization", "Bearer job-secret")],
    );
    assert_eq!(own.status, 200);
    // A token that is not scoped (a PAT of a member) sees it.
    assert_eq!(
        get(
            &hub.url(),
            "/repos/octo/secret/readme",
            &[("Authorization", "token pat")]
        )
        .status,
        200
    );
}

#[test]
fn repository_objects_carry_the_callers_permissions() {
    let hub = FakeHub::start();
    hub.put_json(
        "/repos/octo/hello",
        br#"{"full_name":"octo/hello","private":false}"#.to_vec(),
    );
    hub.set_admin("admin-token", true);
    let admin = get(
        &hub.url(),
        "/repos/octo/hello",
        &[("Authorization", "Bearer admin-token")],
    );
    let other = get(
        &hub.url(),
        "/repos/octo/hello",
        &[("Authorization", "Bearer other")],
    );
    assert_eq!(admin.json()["permissions"]["admin"], true);
    assert_eq!(other.json()["permissions"]["admin"], false);
    assert!(
        get(&hub.url(), "/repos/octo/hello", &[])
            .json()
            .get("permissions")
            .is_none()
    );
}

#[test]
fn range_and_gzip_change_the_representation() {
    let hub = FakeHub::start();
    hub.put_json("/repos/octo/hello/readme", REPO);
    let r = get(
        &hub.url(),
        "/repos/octo/hello/readme",
        &[("Range", "bytes=0-9")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &REPO[..10]);
    assert_eq!(r.must("content-range"), format!("bytes 0-9/{}", REPO.len()));
    let z = get(
        &hub.url(),
        "/repos/octo/hello/readme",
        &[("Accept-Encoding", "gzip")],
    );
    assert_eq!(z.status, 200);
    assert_eq!(z.must("content-encoding"), "gzip");
    assert_ne!(z.body, REPO);
    assert_eq!(&z.body[..2], &[0x1f, 0x8b], "a gzip stream");
}
