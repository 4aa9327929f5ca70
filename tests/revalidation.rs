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

#[test]
fn a_node_without_a_copy_revalidates_the_swarms_stale_singles_for_free() {
    let _serial = serial();
    let hub = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    let n = 10;
    generate_resources(&hub, n, 300);
    let nodes = swarm_of(root.path(), &hub, 2, None);
    let (a, b) = (&nodes[0], &nodes[1]);
    for i in 0..n {
        let r = ask(a, &generated_path(i));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // b hears every announcement before the TTL passes.
    wait_for(
        "b to hear a's announcements",
        Duration::from_secs(20),
        || b.swarm()["announcements_received"].as_u64().unwrap_or(0) >= n as u64,
    );
    let_the_ttl_pass();
    // One resource changed meanwhile: its revalidation is a 200 with the new body.
    let changed = generated_path(3);
    let new_body = repo_body(1003, 300);
    hub.put_json(&changed, new_body.clone());
    let before = hub.stats().requests.len();
    for i in 0..n {
        let path = generated_path(i);
        let r = ask(b, &path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        if path == changed {
            assert_eq!(source(&r), "upstream", "{path}");
            assert_eq!(r.body, new_body, "{path}: the changed body");
        } else {
            assert_eq!(source(&r), "revalidated", "{path}");
            assert_eq!(r.body, repo_body(i, 300), "{path}: the current body");
        }
    }
    let round: Vec<_> = hub.stats().requests[before..].to_vec();
    let paid: Vec<_> = round.iter().filter(|r| r.quota_spent).collect();
    assert_eq!(
        paid.len(),
        1,
        "only the changed resource costs quota: {paid:?}"
    );
    assert_eq!(paid[0].path(), changed);
    let conditional = round
        .iter()
        .filter(|r| r.status == 304 && r.if_modified_since.is_some())
        .count();
    assert_eq!(conditional, n - 1, "{round:?}");
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
