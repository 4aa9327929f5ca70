//! The live issues API: issues, comments, authorship, pagination, validators, quota.

mod common;

use common::{get, request};
use fakehub::{Failure, FakeHub, login_for};
use serde_json::{Value, json};

const A: &str = "token alice-token";
const B: &str = "token bob-token";

fn send(
    hub: &FakeHub,
    method: &str,
    target: &str,
    auth: Option<&str>,
    body: Value,
) -> common::Resp {
    let text = body.to_string();
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = auth {
        headers.push(("Authorization", auth));
    }
    request(&hub.url(), method, target, &headers, Some(text.as_bytes()))
}

fn hub_with_repo() -> FakeHub {
    let hub = FakeHub::start();
    hub.add_repo("octo/hello");
    hub
}

#[test]
fn issues_are_created_listed_by_state_and_paginated() {
    let hub = hub_with_repo();
    let empty = get(&hub.url(), "/repos/octo/hello/issues?state=open", &[]);
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json(), json!([]));

    for i in 1..=5 {
        let r = send(
            &hub,
            "POST",
            "/repos/octo/hello/issues",
            Some(A),
            json!({"title": format!("issue {i}"), "body": "text"}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json()["number"], i);
        assert_eq!(r.json()["user"]["login"], login_for(A));
        assert_eq!(r.json()["state"], "open");
    }
    assert!(hub.set_issue_open("octo/hello", 2, false));

    // Newest first by default; `direction=asc` oldest first; closed ones left out.
    let page1 = get(
        &hub.url(),
        "/repos/octo/hello/issues?state=open&per_page=2",
        &[],
    );
    let numbers: Vec<u64> = page1
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [5, 4]);
    let link = page1.must("link");
    assert!(
        link.contains("/repos/octo/hello/issues?per_page=2&page=2&state=open>; rel=\"next\""),
        "{link}"
    );
    let asc = get(
        &hub.url(),
        "/repos/octo/hello/issues?state=open&direction=asc&per_page=100",
        &[],
    );
    let numbers: Vec<u64> = asc
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 3, 4, 5]);
    let all = get(&hub.url(), "/repos/octo/hello/issues?state=all", &[]);
    assert_eq!(all.json().as_array().unwrap().len(), 5);

    let one = get(&hub.url(), "/repos/octo/hello/issues/3", &[]);
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["title"], "issue 3");
    assert!(one.header("last-modified").is_some());
    assert!(one.header("etag").is_some());
    assert_eq!(
        get(&hub.url(), "/repos/octo/hello/issues/99", &[]).status,
        404
    );
    assert_eq!(hub.issues("octo/hello").len(), 5);
}

#[test]
fn comments_are_upserted_by_their_author_only() {
    let hub = hub_with_repo();
    send(
        &hub,
        "POST",
        "/repos/octo/hello/issues",
        Some(A),
        json!({"title": "t"}),
    );
    let created = send(
        &hub,
        "POST",
        "/repos/octo/hello/issues/1/comments",
        Some(A),
        json!({"body": "first"}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_u64().unwrap();
    let target = format!("/repos/octo/hello/issues/comments/{id}");

    let edited = send(&hub, "PATCH", &target, Some(A), json!({"body": "second"}));
    assert_eq!(edited.status, 200);
    assert_eq!(edited.json()["body"], "second");

    // Someone else may neither edit nor delete it.
    let r = send(&hub, "PATCH", &target, Some(B), json!({"body": "mine now"}));
    assert_eq!(r.status, 403);
    assert_eq!(
        request(&hub.url(), "DELETE", &target, &[("Authorization", B)], None).status,
        403
    );
    // Without a token, nothing is written.
    assert_eq!(
        send(&hub, "PATCH", &target, None, json!({"body": "x"})).status,
        401
    );
    // Broken JSON and missing fields.
    let broken = request(
        &hub.url(),
        "POST",
        "/repos/octo/hello/issues/1/comments",
        &[("Authorization", A)],
        Some(b"{nope"),
    );
    assert_eq!(broken.status, 400);
    assert_eq!(
        send(
            &hub,
            "POST",
            "/repos/octo/hello/issues/1/comments",
            Some(A),
            json!({})
        )
        .status,
        422
    );
    assert_eq!(
        send(
            &hub,
            "POST",
            "/repos/octo/hello/issues/7/comments",
            Some(A),
            json!({"body": "x"})
        )
        .status,
        404
    );

    let comments = hub.comments("octo/hello", 1);
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0]["body"], "second");
    assert_eq!(comments[0]["user"]["login"], login_for(A));

    let deleted = request(&hub.url(), "DELETE", &target, &[("Authorization", A)], None);
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty());
    assert_eq!(get(&hub.url(), &target, &[]).status, 404);
    assert!(hub.comments("octo/hello", 1).is_empty());
    // Unsupported methods name the allowed ones.
    let r = request(&hub.url(), "PUT", &target, &[("Authorization", A)], None);
    assert_eq!(r.status, 405);
    assert_eq!(r.must("allow"), "GET, HEAD, PATCH, DELETE");
}

#[test]
fn comment_lists_paginate_and_revalidate_for_free() {
    let hub = hub_with_repo();
    send(
        &hub,
        "POST",
        "/repos/octo/hello/issues",
        Some(A),
        json!({"title": "t"}),
    );
    for i in 0..5 {
        send(
            &hub,
            "POST",
            "/repos/octo/hello/issues/1/comments",
            Some(A),
            json!({"body": format!("c{i}")}),
        );
    }
    let p1 = get(
        &hub.url(),
        "/repos/octo/hello/issues/1/comments?per_page=3",
        &[("Authorization", B)],
    );
    assert_eq!(p1.json().as_array().unwrap().len(), 3);
    assert_eq!(p1.json()[0]["body"], "c0", "oldest first");
    assert!(p1.must("link").contains("page=2>; rel=\"next\""));
    let etag = p1.must("etag").to_string();

    let spent = hub.stats().spent(Some(B));
    let again = get(
        &hub.url(),
        "/repos/octo/hello/issues/1/comments?per_page=3",
        &[("Authorization", B), ("If-None-Match", &etag)],
    );
    assert_eq!(again.status, 304);
    assert_eq!(
        hub.stats().spent(Some(B)),
        spent,
        "an authenticated 304 is free"
    );

    // A change gives a new ETag.
    send(
        &hub,
        "POST",
        "/repos/octo/hello/issues/1/comments",
        Some(A),
        json!({"body": "c5"}),
    );
    let p2 = get(
        &hub.url(),
        "/repos/octo/hello/issues/1/comments?per_page=100",
        &[("Authorization", B), ("If-None-Match", &etag)],
    );
    assert_eq!(p2.status, 200);
    assert_eq!(p2.json().as_array().unwrap().len(), 6);
}

#[test]
fn writes_can_be_forbidden_and_are_counted_and_limited() {
    let hub = hub_with_repo();
    hub.set_writes_forbidden(true);
    let r = send(
        &hub,
        "POST",
        "/repos/octo/hello/issues",
        Some(A),
        json!({"title": "t"}),
    );
    assert_eq!(r.status, 403);
    assert!(r.text().contains("not accessible"));
    assert!(hub.issues("octo/hello").is_empty());
    hub.set_writes_forbidden(false);
    assert_eq!(
        send(
            &hub,
            "POST",
            "/repos/octo/hello/issues",
            Some(A),
            json!({"title": "t"})
        )
        .status,
        201
    );

    let stats = hub.stats();
    assert_eq!(stats.count("/repos/octo/hello/issues"), 2);
    assert_eq!(stats.spent(Some(A)), 2);
    assert_eq!(stats.requests[1].method, "POST");

    // A spent quota refuses writes without applying them.
    hub.set_quota_limit(2);
    let r = send(
        &hub,
        "POST",
        "/repos/octo/hello/issues/1/comments",
        Some(A),
        json!({"body": "x"}),
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.num("x-ratelimit-remaining"), 0);
    assert!(hub.comments("octo/hello", 1).is_empty());

    // Injected failures apply as everywhere.
    hub.set_quota_limit(100);
    hub.fail_next(1, Failure::status(502));
    let r = send(
        &hub,
        "POST",
        "/repos/octo/hello/issues/1/comments",
        Some(A),
        json!({"body": "x"}),
    );
    assert_eq!(r.status, 502);
    assert!(hub.comments("octo/hello", 1).is_empty());
}

#[test]
fn repositories_without_issues_and_stored_lists_behave_as_before() {
    let hub = FakeHub::start();
    assert_eq!(get(&hub.url(), "/repos/octo/other/issues", &[]).status, 404);
    let r = send(
        &hub,
        "POST",
        "/repos/octo/other/issues",
        Some(A),
        json!({"title": "t"}),
    );
    assert_eq!(r.status, 405);
    // A stored list answers reads even in a repository with live issues.
    hub.add_repo("octo/hello");
    hub.put_list("/repos/octo/hello/issues", vec![json!({"number": 42})]);
    let r = get(&hub.url(), "/repos/octo/hello/issues", &[]);
    assert_eq!(r.json(), json!([{"number": 42}]));
}

#[test]
fn control_api_adds_repos_and_forbids_writes() {
    let hub = FakeHub::start();
    let r = request(
        &hub.url(),
        "POST",
        "/_fakehub/config",
        &[],
        Some(br#"{"add_repos": ["octo/hello"], "forbid_writes": true}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["repos"], json!(["octo/hello"]));
    assert_eq!(r.json()["writes_forbidden"], true);
    assert_eq!(
        send(
            &hub,
            "POST",
            "/repos/octo/hello/issues",
            Some(A),
            json!({"title": "t"})
        )
        .status,
        403
    );
}

#[test]
fn logins_are_derived_from_tokens() {
    assert_eq!(login_for("token abc"), login_for("Bearer abc"));
    assert_eq!(login_for("abc"), login_for("token abc"));
    assert_ne!(login_for("token abc"), login_for("token abd"));
    assert!(login_for("x").starts_with("user-"));
}
