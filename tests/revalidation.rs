//! Revalidation across the swarm: a node whose lookup finds only stale copies in the swarm
//! revalidates one of them upstream (free with `If-Modified-Since`) instead of a full GET, and
//! the key's claim covers it, so nodes asking at once make one upstream request.
//!
//! The stand-in behaves as GitHub does: single resources carry `Last-Modified` (a conditional
//! request by any token answers 304 for free), ETags are bound to the token that fetched them.

mod common;

use std::time::Duration;

use common::http_get;
use common::swarm::{SwarmNode, serial, swarm_of, wait_for};
use fakehub::{FakeHub, generate_resources, generated_path, repo_body};

/// The requesters' TTL: short, so that entries go stale within the test.
const TTL_SECS: u64 = 2;

/// `GET /gh<path>` on `node` with its own token and the short TTL.
fn ask(node: &SwarmNode, path: &str) -> common::HttpResponse {
    let auth = format!("Bearer token-of-{}", node.name);
    let ttl = TTL_SECS.to_string();
    http_get(
        &format!("{}/gh{path}", node.api),
        &[("authorization", auth.as_str()), ("x-peercache-ttl", &ttl)],
    )
}

fn source(response: &common::HttpResponse) -> String {
    response
        .header("x-peercache-source")
        .unwrap_or_default()
        .to_string()
}

/// Calls that spent quota (GitHub counts a 304 to a conditional request as free).
fn paid(hub: &FakeHub, path_prefix: &str) -> Vec<String> {
    hub.stats()
        .requests
        .iter()
        .filter(|r| r.quota_spent && r.path().starts_with(path_prefix))
        .map(|r| format!("{} {}", r.path(), r.status))
        .collect()
}

fn upstream_calls(hub: &FakeHub, path: &str) -> usize {
    hub.stats()
        .requests
        .iter()
        .filter(|r| r.path() == path)
        .count()
}

/// Waits until every entry fetched at `since` is past the TTL.
fn let_the_ttl_pass() {
    std::thread::sleep(Duration::from_millis(TTL_SECS * 1000 + 1100));
}

/// The path of the `i`-th collection of [`put_collections`].
fn collection_path(i: usize) -> String {
    format!("/repos/octo/swarm/releases/c{i}/assets")
}

/// A collection's items, `version` telling one state of it from the next.
fn collection_items(i: usize, version: usize) -> Vec<serde_json::Value> {
    (0..3)
        .map(|n| serde_json::json!({"id": i * 100 + n, "name": format!("asset-{i}-{n}"), "version": version}))
        .collect()
}

/// `n` collections (no `Last-Modified`, token-bound ETags, as GitHub's lists).
fn put_collections(hub: &FakeHub, n: usize) {
    for i in 0..n {
        hub.put_list(&collection_path(i), collection_items(i, 1));
    }
}

fn items_of(response: &common::HttpResponse) -> Vec<serde_json::Value> {
    serde_json::from_slice(&response.body).unwrap()
}

#[test]
fn a_node_without_a_copy_revalidates_the_swarms_stale_copies_for_free() {
    let _serial = serial();
    let hub = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    let n = 10;
    generate_resources(&hub, n, 300);
    put_collections(&hub, n);
    let nodes = swarm_of(root.path(), &hub, 2, None);
    let (a, b) = (&nodes[0], &nodes[1]);
    for i in 0..n {
        for path in [generated_path(i), collection_path(i)] {
            let r = ask(a, &path);
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }
    }
    // b hears every announcement before the TTL passes.
    wait_for(
        "b to hear a's announcements",
        Duration::from_secs(20),
        || b.swarm()["announcements_received"].as_u64().unwrap_or(0) >= 2 * n as u64,
    );
    let_the_ttl_pass();
    // One single and one collection changed meanwhile: their answers carry the new bodies.
    let changed_single = generated_path(3);
    let new_body = repo_body(1003, 300);
    hub.put_json(&changed_single, new_body.clone());
    let changed_list = collection_path(4);
    hub.put_list(&changed_list, collection_items(4, 2));
    let before = hub.stats().requests.len();
    for i in 0..n {
        let path = generated_path(i);
        let r = ask(b, &path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        if path == changed_single {
            assert_eq!(source(&r), "upstream", "{path}");
            assert_eq!(r.body, new_body, "{path}: the changed body");
        } else {
            assert_eq!(source(&r), "revalidated", "{path}");
            assert_eq!(r.body, repo_body(i, 300), "{path}: the current body");
        }
        let path = collection_path(i);
        let r = ask(b, &path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        if path == changed_list {
            assert_eq!(
                items_of(&r),
                collection_items(i, 2),
                "{path}: the changed list"
            );
        } else {
            assert_eq!(source(&r), "revalidated", "{path}");
            assert_eq!(items_of(&r), collection_items(i, 1), "{path}");
        }
    }
    let round: Vec<_> = hub.stats().requests[before..].to_vec();
    let paid: Vec<String> = round
        .iter()
        .filter(|r| r.quota_spent)
        .map(|r| r.path().to_string())
        .collect();
    assert_eq!(
        paid,
        vec![changed_single.clone(), changed_list.clone()],
        "only the changed resources cost quota"
    );
    // Singles by b's If-Modified-Since, collections by a's own token and ETag.
    let singles_free = round
        .iter()
        .filter(|r| r.status == 304 && r.path().contains("/contents/"))
        .filter(|r| r.authorization.as_deref() == Some("Bearer token-of-node1"))
        .count();
    assert_eq!(singles_free, n - 1, "{round:?}");
    let lists_free = round
        .iter()
        .filter(|r| r.status == 304 && r.path().contains("/releases/"))
        .filter(|r| r.authorization.as_deref() == Some("Bearer token-of-node0"))
        .filter(|r| r.if_none_match.is_some())
        .count();
    assert_eq!(lists_free, n - 1, "{round:?}");
    assert!(
        !round.iter().any(|r| r.path().contains("/releases/")
            && r.authorization.as_deref() == Some("Bearer token-of-node1")),
        "b's token never goes upstream for a collection a revalidates: {round:?}"
    );
    assert_eq!(a.swarm()["revalidations_for_others"], n as u64);
}

#[test]
fn when_the_etag_owner_is_gone_the_requester_pays_once_and_its_etag_serves_the_next() {
    let _serial = serial();
    let hub = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    put_collections(&hub, 1);
    let path = collection_path(0);
    let nodes = swarm_of(root.path(), &hub, 3, None);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let first = ask(a, &path);
    assert_eq!(first.status, 200, "{}", first.text());
    // c takes a copy of a's entry (a's ETag) while it is fresh.
    wait_for(
        "c to hear a's announcement",
        Duration::from_secs(20),
        || c.swarm()["announcements_received"].as_u64().unwrap_or(0) >= 1,
    );
    assert_eq!(source(&ask(c, &path)), "peer");
    let_the_ttl_pass();
    a.kill(libc::SIGKILL);
    wait_for("b and c to see a gone", Duration::from_secs(30), || {
        b.peer_count() == 1 && c.peer_count() == 1
    });

    let before = hub.stats().requests.len();
    let r = ask(b, &path);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(source(&r), "upstream");
    assert_eq!(items_of(&r), collection_items(0, 1));
    let round: Vec<_> = hub.stats().requests[before..].to_vec();
    let paid: Vec<_> = round.iter().filter(|r| r.quota_spent).collect();
    assert_eq!(paid.len(), 1, "one full GET: {round:?}");
    assert_eq!(
        paid[0].authorization.as_deref(),
        Some("Bearer token-of-node1"),
        "with the requester's own token"
    );

    // The next node revalidates against b's new ETag, through b, for free.
    wait_for(
        "c to hear b's announcement",
        Duration::from_secs(20),
        || c.swarm()["announcements_received"].as_u64().unwrap_or(0) >= 2,
    );
    let_the_ttl_pass();
    let before = hub.stats().requests.len();
    let r = ask(c, &path);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(source(&r), "revalidated");
    assert_eq!(items_of(&r), collection_items(0, 1));
    let round: Vec<_> = hub.stats().requests[before..].to_vec();
    assert!(round.iter().all(|r| !r.quota_spent), "{round:?}");
    assert!(
        round.iter().any(|r| r.status == 304
            && r.authorization.as_deref() == Some("Bearer token-of-node1")),
        "b revalidated with its own token: {round:?}"
    );
}

#[test]
fn five_nodes_asking_at_once_for_a_stale_entry_make_one_upstream_request() {
    let _serial = serial();
    let hub = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    generate_resources(&hub, 1, 300);
    let nodes = swarm_of(root.path(), &hub, 6, None);
    let path = generated_path(0);
    let first = ask(&nodes[0], &path);
    assert_eq!(first.status, 200, "{}", first.text());
    for node in &nodes[1..] {
        wait_for(
            &format!("{} to hear the announcement", node.name),
            Duration::from_secs(20),
            || node.swarm()["announcements_received"].as_u64().unwrap_or(0) >= 1,
        );
    }
    let_the_ttl_pass();
    let before = upstream_calls(&hub, &path);
    let answers: Vec<common::HttpResponse> = std::thread::scope(|scope| {
        let asks: Vec<_> = nodes[1..]
            .iter()
            .map(|node| scope.spawn(|| ask(node, &path)))
            .collect();
        asks.into_iter().map(|a| a.join().unwrap()).collect()
    });
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.body, repo_body(0, 300));
    }
    let sources: Vec<String> = answers.iter().map(source).collect();
    assert_eq!(
        upstream_calls(&hub, &path) - before,
        1,
        "one revalidation for the five: {sources:?}"
    );
    assert_eq!(
        sources.iter().filter(|s| *s == "revalidated").count(),
        1,
        "{sources:?}"
    );
    assert_eq!(
        sources.iter().filter(|s| *s == "peer").count(),
        4,
        "{sources:?}"
    );
    assert!(
        paid(&hub, "/repos/octo/swarm/contents").len() == 1,
        "only the first fetch paid"
    );
}
