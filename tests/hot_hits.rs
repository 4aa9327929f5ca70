//! Hot hits sent again as they were (issue #16): the daemon keeps the answer a remembered local
//! entry gave to a request head, and sends it again to the same head for as long as all it
//! rested on holds. These tests drive the real binary over real keep-alive connections and
//! check that a kept answer is the full path's answer byte for byte, that it is counted, and
//! that it lapses with the entry's freshness, with a record another process replaced, with the
//! rate-limit figures, and never reaches another token.

mod common;

use std::time::Duration;

use common::keepalive::Connection;
use common::{Daemon, HttpResponse, Sandbox};

const TOKEN_A: &str = "token-of-job-a";
const TOKEN_B: &str = "token-of-job-b";
const PATH: &str = "/repos/octo/hello/contents/a.json";

/// The head without `date`, which is written per second.
fn head_without_date(answer: &HttpResponse) -> Vec<(String, String)> {
    answer
        .headers
        .iter()
        .filter(|(k, _)| k != "date")
        .cloned()
        .collect()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A JSON body with URLs on the API host (so the daemon rewrites them) of about `size` bytes.
fn body_for(api: &str, seed: &str, size: usize) -> Vec<u8> {
    serde_json::json!({
        "name": "a.json",
        "url": format!("{api}{PATH}"),
        "seed": seed,
        "content": "x".repeat(size),
    })
    .to_string()
    .into_bytes()
}

fn replayed(daemon: &Daemon) -> u64 {
    daemon.json("/api/status")["requests"]["replayed_hits"]
        .as_u64()
        .expect("requests.replayed_hits in /api/status")
}

#[test]
fn hot_hits_are_sent_again_byte_for_byte_and_counted_as_local_hits() {
    let sb = Sandbox::new();
    sb.hub
        .put_json(PATH, body_for(&sb.hub.url(), "one", 20_000));
    let daemon = sb.start_daemon(&[], &[]);
    let auth = bearer(TOKEN_A);
    let headers = [("Authorization", auth.as_str())];
    let mut conn = Connection::open(&daemon);
    let first = conn.get(&daemon, PATH, &headers);
    assert_eq!(first.source(), "upstream");
    let hits: Vec<HttpResponse> = (0..8).map(|_| conn.get(&daemon, PATH, &headers)).collect();
    // And on another connection: the kept answer belongs to the request head, not the socket.
    let mut other = Connection::open(&daemon);
    let elsewhere = other.get(&daemon, PATH, &headers);

    let full_path = &hits[0];
    assert_eq!(full_path.status, 200);
    assert_eq!(full_path.source(), "local");
    assert!(
        String::from_utf8_lossy(&full_path.body).contains(&daemon.api),
        "the body's URLs point at the daemon"
    );
    assert!(full_path.header("x-ratelimit-remaining").is_some());
    for answer in hits.iter().chain([&elsewhere]) {
        assert_eq!(answer.status, full_path.status);
        assert_eq!(head_without_date(answer), head_without_date(full_path));
        assert_eq!(answer.body, full_path.body);
        assert!(answer.header("date").is_some(), "every answer is dated");
    }

    // Most of them were sent again without being resolved (one in a second may be, when the
    // rate-limit figures on it are read again), and every one is a local hit.
    let status = daemon.json("/api/status");
    let sent_again = status["requests"]["replayed_hits"].as_u64().unwrap();
    assert!(
        sent_again >= 6,
        "{sent_again} of 9 hits sent again: {status}"
    );
    assert_eq!(status["requests"]["total"], 10);
    assert_eq!(status["requests"]["local_hits"], 9);
    let top = status["endpoints"]["top"].as_array().unwrap();
    let counted = top
        .iter()
        .find(|e| e["endpoint"] == PATH)
        .unwrap_or_else(|| panic!("{PATH} in the top endpoints: {top:?}"));
    assert_eq!(counted["local_hits"], 9, "{counted}");
    let metrics = daemon.get("/metrics", &[]).text();
    assert!(
        metrics.contains(&format!("peercache_replayed_hits_total {sent_again}")),
        "{metrics}"
    );
    assert_eq!(sb.hub.total(), 1);
}

#[test]
fn a_kept_answer_lapses_when_the_entry_is_no_longer_fresh_for_the_request() {
    let sb = Sandbox::new();
    sb.hub.put_json(PATH, body_for(&sb.hub.url(), "one", 100));
    let daemon = sb.start_daemon(&[], &[]);
    let auth = bearer(TOKEN_A);
    let mut conn = Connection::open(&daemon);
    let fetched = std::time::Instant::now();
    let first = conn.get(&daemon, PATH, &[("Authorization", auth.as_str())]);
    assert_eq!(first.source(), "upstream");
    // 1.7 s on, a request whose TTL is 2 s: the entry is fresh for it for 0.3 s more, while
    // the rate-limit figures read now hold for a second (its answer lapses on them 0.7 s on at
    // the earliest). So at 2.15 s, the kept answer must lapse on the entry's freshness alone.
    std::thread::sleep(Duration::from_millis(1_700).saturating_sub(fetched.elapsed()));
    let headers = [("Authorization", auth.as_str()), ("x-peercache-ttl", "2")];
    for _ in 0..3 {
        assert_eq!(conn.get(&daemon, PATH, &headers).source(), "local");
    }
    let before = replayed(&daemon);
    assert!(before >= 1);
    std::thread::sleep(Duration::from_millis(2_150).saturating_sub(fetched.elapsed()));
    assert!(
        fetched.elapsed() < Duration::from_millis(2_350),
        "the machine was too slow to test inside the figures' second"
    );
    let after = conn.get(&daemon, PATH, &headers);
    assert_ne!(after.source(), "local", "a stale entry was sent again");
    assert_eq!(replayed(&daemon), before);
    assert_eq!(sb.hub.total(), 2);
}

#[test]
fn a_kept_answer_lapses_when_its_record_is_replaced_on_disk() {
    const OTHER: &str = "/repos/octo/hello/contents/b.json";
    let sb = Sandbox::new();
    sb.hub.put_json(PATH, body_for(&sb.hub.url(), "one", 100));
    sb.hub.put_json(OTHER, body_for(&sb.hub.url(), "two", 100));
    let daemon = sb.start_daemon(&[], &[]);
    let auth = bearer(TOKEN_A);
    let headers = [("Authorization", auth.as_str())];
    let mut conn = Connection::open(&daemon);
    conn.get(&daemon, PATH, &headers);
    conn.get(&daemon, OTHER, &headers);
    for _ in 0..3 {
        let hit = conn.get(&daemon, PATH, &headers);
        assert!(String::from_utf8_lossy(&hit.body).contains("\"one\""));
    }
    let before = replayed(&daemon);
    assert!(before >= 1);

    // Another process replaces PATH's record, with a rename as the cache does, within the
    // second the kept answer's figures hold. The new record names OTHER's body, so the answer
    // shows which record was read.
    let (record, mut entry) = record_of(&sb, PATH);
    let (_, other) = record_of(&sb, OTHER);
    entry["digest"] = other["digest"].clone();
    entry["size"] = other["size"].clone();
    let fresh = record.with_extension("new");
    std::fs::write(&fresh, serde_json::to_vec(&entry).unwrap()).unwrap();
    std::fs::rename(&fresh, &record).unwrap();

    let after = conn.get(&daemon, PATH, &headers);
    assert_eq!(after.source(), "local");
    assert!(
        String::from_utf8_lossy(&after.body).contains("\"two\""),
        "the old answer was sent again: {}",
        String::from_utf8_lossy(&after.body)
    );
    assert_eq!(replayed(&daemon), before, "not sent again");
}

/// The record file whose URL ends in `path`, and its JSON.
fn record_of(sb: &Sandbox, path: &str) -> (std::path::PathBuf, serde_json::Value) {
    common::records(&sb.cache_dir())
        .into_iter()
        .find(|(_, entry)| entry["url"].as_str().is_some_and(|url| url.ends_with(path)))
        .unwrap_or_else(|| panic!("no record for {path}"))
}

#[test]
fn a_kept_answer_carries_rate_limit_figures_at_most_a_second_old() {
    let sb = Sandbox::new();
    sb.hub.put_json(PATH, body_for(&sb.hub.url(), "one", 100));
    sb.hub
        .put_json("/repos/octo/hello/contents/b.json", b"{}".to_vec());
    let daemon = sb.start_daemon(&[], &[]);
    let auth = bearer(TOKEN_A);
    let headers = [("Authorization", auth.as_str())];
    let mut conn = Connection::open(&daemon);
    let first = conn.get(&daemon, PATH, &headers);
    let remaining: u64 = first
        .header("x-ratelimit-remaining")
        .unwrap()
        .parse()
        .unwrap();
    for _ in 0..3 {
        let hit = conn.get(&daemon, PATH, &headers);
        assert_eq!(
            hit.header("x-ratelimit-remaining"),
            Some(&*remaining.to_string())
        );
    }
    assert!(replayed(&daemon) >= 1);
    // Another call spends one more of the token's quota.
    let other = conn.get(&daemon, "/repos/octo/hello/contents/b.json", &headers);
    assert_eq!(other.source(), "upstream");
    std::thread::sleep(Duration::from_millis(1_100));
    let hit = conn.get(&daemon, PATH, &headers);
    assert_eq!(hit.source(), "local");
    assert_eq!(
        hit.header("x-ratelimit-remaining"),
        Some(&*(remaining - 1).to_string()),
        "figures older than a second were sent again"
    );
}

#[test]
fn another_tokens_request_never_gets_a_kept_answer() {
    // Not the job's own repository (GITHUB_REPOSITORY), so B needs GitHub's word to be served
    // A's copy, and GitHub refuses it.
    const SECRET: &str = "/repos/octo/secret/contents/a.json";
    let sb = Sandbox::new();
    sb.hub.add_repo("octo/secret");
    sb.hub.set_private("octo/secret");
    sb.hub.scope_token(TOKEN_B, &["octo/other"]);
    sb.hub.put_json(SECRET, body_for(&sb.hub.url(), "one", 100));
    let daemon = sb.start_daemon(&[], &[]);
    let a = bearer(TOKEN_A);
    let b = bearer(TOKEN_B);
    let mut conn = Connection::open(&daemon);
    for _ in 0..4 {
        let answer = conn.get(&daemon, SECRET, &[("Authorization", a.as_str())]);
        assert_eq!(answer.status, 200);
    }
    assert!(replayed(&daemon) >= 2);
    // B may not see the repository: GitHub's 404, every time, however hot A's answer is.
    for _ in 0..3 {
        let denied = conn.get(&daemon, SECRET, &[("Authorization", b.as_str())]);
        assert_eq!(
            denied.status,
            404,
            "{}",
            String::from_utf8_lossy(&denied.body)
        );
    }
}
