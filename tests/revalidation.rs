//! Revalidation across the swarm: a node whose lookup finds only stale copies in the swarm
//! revalidates one of them upstream (free with `If-Modified-Since`) instead of a full GET, and
//! the key's claim covers it, so nodes asking at once make one upstream request.
//!
//! The stand-in behaves as GitHub does: single resources carry `Last-Modified` (a conditional
//! request by any token answers 304 for free), ETags are bound to the token that fetched them.

mod common;

use std::time::Duration;

use common::http_get;
use common::swarm::{NodeSpec, SwarmNode, serial, start_node, swarm_of, wait_for};
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

/// The 40 endpoints of a round: 20 singles (with `Last-Modified`), 20 collections (ETag only).
fn round_paths() -> Vec<String> {
    (0..20)
        .map(generated_path)
        .chain((0..20).map(collection_path))
        .collect()
}

/// Starts jobs `names`, each bootstrapping to `seeds`, and waits until each sees `members`.
fn start_jobs(
    root: &std::path::Path,
    api: &FakeHub,
    names: &[&str],
    seeds: &[&SwarmNode],
    members: u64,
) -> Vec<SwarmNode> {
    let mut jobs: Vec<SwarmNode> = Vec::new();
    for name in names {
        let bootstrap = seeds
            .iter()
            .copied()
            .chain(jobs.iter())
            .map(SwarmNode::bootstrap_addr)
            .collect();
        let spec = NodeSpec {
            bootstrap,
            ..NodeSpec::default()
        };
        jobs.push(start_node(root, name, api, spec));
    }
    for job in &jobs {
        wait_for(
            &format!("{} to verify {members} members", job.name),
            Duration::from_secs(60),
            || job.peer_count() >= members,
        );
    }
    jobs
}

/// Every job asks for every path at once; every answer must be 200 with the current body.
fn run_round(jobs: &[SwarmNode], paths: &[String], current: &(dyn Fn(&str) -> Vec<u8> + Sync)) {
    std::thread::scope(|scope| {
        for job in jobs {
            scope.spawn(move || {
                for path in paths {
                    let r = ask(job, path);
                    assert_eq!(r.status, 200, "{} {path}: {}", job.name, r.text());
                    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    let expected: serde_json::Value =
                        serde_json::from_slice(&current(path)).unwrap();
                    assert_eq!(body, expected, "{} {path}: the current body", job.name);
                }
            });
        }
    });
}

/// The current body of a round's path, after `changed` of them changed.
fn current_body(path: &str, changed: &[String]) -> Vec<u8> {
    let is_changed = changed.iter().any(|c| c == path);
    if let Some(i) = path.strip_prefix("/repos/octo/swarm/contents/r") {
        let i: usize = i.parse().unwrap();
        repo_body(if is_changed { 1000 + i } else { i }, 300)
    } else {
        let i: usize = path
            .trim_start_matches("/repos/octo/swarm/releases/c")
            .trim_end_matches("/assets")
            .parse()
            .unwrap();
        serde_json::to_vec(&collection_items(i, if is_changed { 2 } else { 1 })).unwrap()
    }
}

/// Changes 2 singles and 2 collections; returns their paths.
fn change_four(api: &FakeHub) -> Vec<String> {
    let changed = vec![
        generated_path(0),
        generated_path(1),
        collection_path(0),
        collection_path(1),
    ];
    for i in 0..2 {
        api.put_json(&generated_path(i), repo_body(1000 + i, 300));
        api.put_list(&collection_path(i), collection_items(i, 2));
    }
    changed
}

/// Round 1's jobs end and their dirs are deleted; the hub keeps the swarm's cache. After the
/// TTL, 4 of the 40 change, and round 2's new jobs (new tokens, empty caches) pay only for those.
///
/// How the quota is counted: the hub has a token of its own (`token-of-hub`). In round 1 it
/// fetches each collection once with it, in the background (20 calls of the hub's quota, counted
/// here apart from the jobs'), so that its ETags are its own. In round 2 the singles are
/// revalidated by the jobs' `If-Modified-Since` (a changed one is a 200 to the job's token) and the
/// collections by the hub with its own ETag (a changed one is a 200 to the hub's token): 4 paid
/// calls in all, 2 of the jobs' tokens and 2 of the hub's, every other call a free 304.
#[test]
fn ephemeral_rounds_with_a_hub_pay_only_for_what_changed() {
    let _serial = serial();
    let api = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    generate_resources(&api, 20, 300);
    put_collections(&api, 20);
    let paths = round_paths();
    let hub = start_node(
        root.path(),
        "hub",
        &api,
        NodeSpec {
            env: vec![("PEERCACHE_HUB", "true".into())],
            ..NodeSpec::default()
        },
    );
    let round1 = start_jobs(root.path(), &api, &["job0", "job1", "job2"], &[&hub], 3);
    run_round(&round1, &paths, &|p| current_body(p, &[]));
    wait_for(
        "the hub to keep all 40 entries and fetch the 20 collections with its own token",
        Duration::from_secs(60),
        || {
            let s = hub.swarm();
            s["entries_mirrored"].as_u64().unwrap_or(0) >= 40
                && s["own_token_fetches"].as_u64().unwrap_or(0) >= 20
        },
    );
    let hub_calls = |requests: &[fakehub::RequestRecord]| {
        requests
            .iter()
            .filter(|r| r.quota_spent && r.authorization.as_deref() == Some("Bearer token-of-hub"))
            .count()
    };
    assert_eq!(
        hub_calls(&api.stats().requests),
        20,
        "one own-token fetch per collection"
    );
    for job in round1 {
        job.kill(libc::SIGTERM);
        wait_for("a job to end", Duration::from_secs(20), || !job.alive());
        std::fs::remove_dir_all(root.path().join(&job.name)).unwrap();
    }
    wait_for(
        "the hub to see the jobs gone",
        Duration::from_secs(30),
        || hub.peer_count() == 0,
    );
    let_the_ttl_pass();
    let changed = change_four(&api);

    let before = api.stats().requests.len();
    let round2 = start_jobs(root.path(), &api, &["job3", "job4", "job5"], &[&hub], 3);
    run_round(&round2, &paths, &|p| current_body(p, &changed));
    let requests: Vec<_> = api.stats().requests[before..].to_vec();
    let mut paid: Vec<String> = requests
        .iter()
        .filter(|r| r.quota_spent)
        .map(|r| r.path().to_string())
        .collect();
    paid.sort();
    let mut expected = changed.clone();
    expected.sort();
    assert_eq!(paid, expected, "paid = changed: {requests:?}");
    assert_eq!(
        hub_calls(&requests),
        2,
        "the changed collections, by the hub's revalidation"
    );
    let free = requests.iter().filter(|r| r.status == 304).count();
    assert_eq!(
        free, 36,
        "every unchanged endpoint a free 304: {requests:?}"
    );
    assert!(hub.swarm()["revalidations_for_others"].as_u64().unwrap() >= 20);
    // The hub's figures: /api/status, /metrics and the status page.
    let status = hub.json("api/status");
    assert!(
        status["swarm"]["entries_mirrored"].as_u64().unwrap() >= 40,
        "{status}"
    );
    assert!(
        status["swarm"]["revalidations_unchanged"].as_u64().unwrap() >= 18,
        "{status}"
    );
    assert!(
        status["store"]["entries"].as_u64().unwrap() >= 40,
        "{status}"
    );
    let metrics = hub.get("metrics").text();
    assert!(
        metrics.contains("peercache_hub_own_token_fetches_total 20"),
        "{metrics}"
    );
    let page = hub.get("").text();
    assert!(page.contains("Revalidations for the swarm"), "{page}");
}

/// Without a hub but with round 1's jobs still running: the new jobs revalidate the collections
/// free through the members whose tokens fetched their ETags.
#[test]
fn without_a_hub_collections_revalidate_free_through_their_live_owners() {
    let _serial = serial();
    let api = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    generate_resources(&api, 20, 300);
    put_collections(&api, 20);
    let paths = round_paths();
    let round1 = start_jobs(root.path(), &api, &["job0", "job1", "job2"], &[], 2);
    run_round(&round1, &paths, &|p| current_body(p, &[]));
    let_the_ttl_pass();
    let changed = change_four(&api);

    let before = api.stats().requests.len();
    let seeds: Vec<&SwarmNode> = round1.iter().collect();
    let round2 = start_jobs(root.path(), &api, &["job3", "job4", "job5"], &seeds, 5);
    run_round(&round2, &paths, &|p| current_body(p, &changed));
    let requests: Vec<_> = api.stats().requests[before..].to_vec();
    let mut paid: Vec<String> = requests
        .iter()
        .filter(|r| r.quota_spent)
        .map(|r| r.path().to_string())
        .collect();
    paid.sort();
    let mut expected = changed.clone();
    expected.sort();
    assert_eq!(paid, expected, "paid = changed: {requests:?}");
    let round1_tokens = [
        "Bearer token-of-job0",
        "Bearer token-of-job1",
        "Bearer token-of-job2",
    ];
    let lists_free = requests
        .iter()
        .filter(|r| r.status == 304 && r.path().contains("/releases/"))
        .filter(|r| round1_tokens.contains(&r.authorization.as_deref().unwrap_or("")))
        .count();
    assert_eq!(
        lists_free, 18,
        "collections by their owners' tokens: {requests:?}"
    );
}
