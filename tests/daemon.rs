//! `peercache serve`, `stop` and the local API end to end: real processes, real sockets, the
//! stand-in GitHub API.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use common::{Run, Sandbox, http_get, http_request, json_body, pid_alive, send_signal, wait_until};

const TOKEN_A: &str = "ghp_tokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const TOKEN_B: &str = "ghp_tokenBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
const DAEMON_TOKEN: &str = "ghp_daemonDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD";
/// A swarm secret strong enough to be accepted (`peercache secret` made it).
const SWARM_SECRET: &str = "A7JS8dPGF22SifG13V18Oqt6VZJjsdj8rvLBjtbignQ=";
const WAIT: Duration = Duration::from_secs(20);

fn keys(value: &serde_json::Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn serve_daemon_prints_the_api_writes_serve_json_and_stop_ends_it() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon(&[], &[]);

    // PEERCACHE_API=http://127.0.0.1:PORT/<32 hex>
    assert!(daemon.port() > 0);
    let cap = daemon.capability();
    assert_eq!(cap.len(), 32, "{}", daemon.api);
    assert!(cap.chars().all(|c| c.is_ascii_hexdigit()), "{}", daemon.api);
    assert_eq!(
        daemon.api,
        format!("http://127.0.0.1:{}/{cap}", daemon.port())
    );

    // The parent has exited; the daemon lives on in its own session.
    assert!(pid_alive(daemon.pid));
    let sid = std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid)).unwrap();
    let fields: Vec<&str> = sid.rsplit_once(')').unwrap().1.split_whitespace().collect();
    assert_eq!(
        fields[3],
        daemon.pid.to_string(),
        "the daemon leads its own session"
    );

    // serve.json: 0600, the contract's fields.
    let path = sb.home().join("serve.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let info = sb.serve_json().unwrap();
    for field in [
        "pid",
        "peer_id",
        "listen_addrs",
        "api_url",
        "started_at",
        "sharing",
        "sharing_reason",
    ] {
        assert!(
            info.get(field).is_some(),
            "serve.json lacks {field}: {info}"
        );
    }
    assert_eq!(info["pid"].as_u64(), Some(u64::from(daemon.pid)));
    assert_eq!(info["api_url"].as_str(), Some(daemon.api.as_str()));
    assert!(
        info["peer_id"].as_str().unwrap().starts_with("12D3KooW"),
        "{info}"
    );
    assert!(info["listen_addrs"].is_array());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let started = info["started_at"].as_u64().expect("epoch seconds");
    assert!(started <= now && now - started < 120, "{started} vs {now}");
    assert_eq!(info["sharing"], false);
    let log = std::fs::read_to_string(sb.home().join("serve.log")).unwrap();
    assert!(log.contains("peer sharing is off"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in the log file");

    // The API answers.
    assert_eq!(daemon.get("/api/peers", &[]).status, 200);

    let stop = sb.run(None, &["stop"]).ok();
    assert!(
        String::from_utf8_lossy(&stop.stdout).contains(&daemon.pid.to_string()),
        "{stop:?}"
    );
    assert!(
        !pid_alive(daemon.pid),
        "stop returns after the daemon exited"
    );
    assert!(!path.exists(), "serve.json is removed");
    let log = std::fs::read_to_string(sb.home().join("serve.log")).unwrap();
    assert!(log.contains("SIGTERM received"), "{log}");

    // Nothing left to stop.
    let again = sb.run(None, &["stop"]).ok();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        format!("no peercache daemon is running for {}", sb.home().display())
    );
}

#[test]
fn without_the_capability_everything_is_404() {
    let sb = Sandbox::new();
    sb.hub
        .put_json("/repos/octo/hello/readme", json_body(1, 100));
    let daemon = sb.start_daemon(&[], &[]);
    let root = format!("http://127.0.0.1:{}", daemon.port());
    let cap = daemon.capability();
    let wrong: String = cap
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();

    for path in [
        "/".to_string(),
        "/api/peers".to_string(),
        "/api/cache/stats".to_string(),
        "/gh/repos/octo/hello/readme".to_string(),
        "/metrics".to_string(),
        format!("/{wrong}/api/peers"),
        format!("/{wrong}/gh/repos/octo/hello/readme"),
        format!("/{}/api/peers", &cap[..31]),
        format!("/{cap}0/api/peers"),
        format!("/{}/api/peers", cap.to_uppercase()),
        format!("/x/{cap}/api/peers"),
    ] {
        let response = http_get(&format!("{root}{path}"), &[]);
        assert_eq!(response.status, 404, "{path}");
        assert!(response.header("x-peercache-source").is_none(), "{path}");
    }
    // With it: the routes answer; unknown routes are 404 too; only GET.
    assert_eq!(daemon.get("/api/peers", &[]).status, 200);
    assert_eq!(daemon.get("", &[]).status, 200);
    assert_eq!(daemon.get("/metrics", &[]).status, 200);
    assert_eq!(daemon.get("/nope", &[]).status, 404);
    let delete = http_request("DELETE", &format!("{}/api/peers", daemon.api), &[]);
    assert_eq!(delete.status, 405);
    assert_eq!(
        sb.hub.total(),
        0,
        "no request without the capability reached GitHub"
    );
    // A write under /gh is passed through (GitHub itself answers 405 for this resource).
    let post = http_request("POST", &format!("{}/gh/repos/octo/hello", daemon.api), &[]);
    assert_eq!(post.status, 405);
    assert_eq!(sb.hub.total(), 1);
}

#[test]
fn the_gh_route_is_github_compatible_and_uses_the_requests_own_authorization() {
    let sb = Sandbox::new();
    let body = json_body(7, 30_000);
    sb.hub.put_json("/repos/octo/hello/readme", body.clone());
    let daemon = sb.start_daemon(&[("PEERCACHE_TOKEN", DAEMON_TOKEN)], &[]);

    let bearer_a = format!("Bearer {TOKEN_A}");
    let first = daemon.get(
        "/gh/repos/octo/hello/readme",
        &[("Authorization", &bearer_a), ("Accept", "*/*")],
    );
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-peercache-source"), Some("upstream"));
    assert_eq!(first.body, body, "byte-identical");
    assert!(
        first
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        first.headers
    );
    assert!(first.header("etag").is_some());

    let token_b = format!("token {TOKEN_B}");
    let second = daemon.get(
        "/gh/repos/octo/hello/readme",
        &[("Authorization", &token_b)],
    );
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-peercache-source"), Some("local"));
    assert_eq!(second.body, body);
    assert_eq!(
        sb.hub.count("/repos/octo/hello/readme"),
        1,
        "the second is local"
    );

    // No Authorization: the daemon's own token; x-peercache-ttl: 0 forces a revalidation.
    let third = daemon.get("/gh/repos/octo/hello/readme", &[("x-peercache-ttl", "0")]);
    assert_eq!(third.status, 200);
    assert_eq!(third.header("x-peercache-source"), Some("revalidated"));
    assert_eq!(third.body, body);

    // Another representation is another entry; its headers reach GitHub.
    let raw = daemon.get(
        "/gh/repos/octo/hello/readme",
        &[
            ("Accept", "application/vnd.github.raw+json"),
            ("X-GitHub-Api-Version", "2022-11-28"),
            ("Authorization", &bearer_a),
        ],
    );
    assert_eq!(raw.header("x-peercache-source"), Some("upstream"));

    let stats = sb.hub.stats();
    let records: Vec<_> = stats
        .requests
        .iter()
        .filter(|r| r.path() == "/repos/octo/hello/readme")
        .collect();
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(
        records[0].authorization.as_deref(),
        Some(bearer_a.as_str()),
        "the request's own Authorization went upstream, not the daemon's token"
    );
    assert_eq!(
        records[0].accept.as_deref(),
        Some("application/vnd.github+json"),
        "*/* is GitHub's default media type"
    );
    assert_eq!(
        records[1].authorization.as_deref(),
        Some(format!("Bearer {DAEMON_TOKEN}").as_str()),
        "without Authorization the daemon's token is used"
    );
    assert_eq!(records[1].status, 304);
    assert_eq!(
        records[2].accept.as_deref(),
        Some("application/vnd.github.raw+json")
    );

    // GitHub's errors pass through with their status and body, and are marked.
    let missing = daemon.get("/gh/repos/octo/none", &[("Authorization", &bearer_a)]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-peercache-source"), Some("upstream"));
    assert!(missing.text().contains("Not Found"), "{}", missing.text());

    let stats = daemon.json("/api/cache/stats");
    assert_eq!(stats["local_hits"], 1, "{stats}");
    assert_eq!(stats["revalidated"], 1, "{stats}");
    assert_eq!(stats["total_entries"], 2, "{stats}");
    assert!(stats["total_size_mb"].as_f64().unwrap() > 0.0, "{stats}");
}

#[test]
fn an_unreachable_upstream_is_a_502_and_fetch_exits_3() {
    let sb = Sandbox::new();
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let daemon = sb.start_daemon(&[("PEERCACHE_API_URL", &dead)], &[]);

    let response = daemon.get("/gh/repos/octo/hello/readme", &[]);
    assert_eq!(response.status, 502);
    assert_eq!(response.header("x-peercache-error"), Some("unreachable"));
    let message: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{message}"
    );

    let mut cmd = sb.command(&["fetch", "repos/octo/hello/readme"]);
    cmd.env("PEERCACHE_API_URL", &dead);
    let run = Run::from(cmd.output().unwrap());
    let line = run.fails_with(3);
    assert!(line.contains("could not be reached"), "{line}");
    let metrics = daemon.get("/metrics", &[]).text();
    assert!(
        metrics.contains("\npeercache_requests_total 2\n"),
        "fetch went through the daemon: {metrics}"
    );
}

#[test]
fn fetch_goes_through_the_daemon_and_falls_back_when_it_is_gone() {
    let sb = Sandbox::new();
    let body = json_body(3, 5000);
    sb.hub.put_json("/repos/octo/hello/readme", body.clone());
    let daemon = sb.start_daemon(&[], &[]);

    let first = sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();
    assert_eq!(first.source(), "upstream");
    assert_eq!(first.body(), body.as_slice());
    let second = sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();
    assert_eq!(second.source(), "local");
    assert_eq!(second.body(), body.as_slice());
    assert!(
        second.header("date").is_none(),
        "the daemon's own Date is not shown"
    );
    assert!(second.header("content-length").is_none());
    assert_eq!(sb.hub.count("/repos/octo/hello/readme"), 1);
    assert_eq!(
        sb.hub.stats().requests[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN_A}").as_str()),
        "fetch's token reached GitHub through the daemon"
    );

    // Both went through the daemon.
    let stats = daemon.json("/api/cache/stats");
    assert_eq!(stats["local_hits"], 1, "{stats}");
    assert_eq!(stats["api_calls_made"], 1, "{stats}");
    assert_eq!(stats["api_calls_saved"], 1, "{stats}");
    assert_eq!(stats["hit_rate"], 0.5, "{stats}");

    // --ttl reaches the daemon: a revalidation.
    let fresh = sb
        .fetch(Some(TOKEN_A), "repos/octo/hello/readme", &["--ttl", "0"])
        .ok();
    assert_eq!(fresh.source(), "revalidated");
    assert_eq!(daemon.json("/api/cache/stats")["revalidated"], 1);

    // --no-daemon: the cache directly; the daemon sees nothing.
    let direct = sb
        .fetch(Some(TOKEN_A), "repos/octo/hello/readme", &["--no-daemon"])
        .ok();
    assert_eq!(direct.source(), "local");
    assert_eq!(daemon.json("/api/cache/stats")["local_hits"], 1);

    // kill -9: serve.json stays behind, naming a dead pid; fetch uses the cache directly.
    send_signal(daemon.pid, libc::SIGKILL);
    assert!(wait_until(WAIT, || !pid_alive(daemon.pid)));
    assert!(sb.serve_json().is_some());
    let after = sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();
    assert_eq!(after.source(), "local");
    assert_eq!(after.body(), body.as_slice());
    assert_eq!(
        sb.hub.count("/repos/octo/hello/readme"),
        2,
        "one call + one 304"
    );
    // `stop` cleans up after the dead daemon.
    let stop = sb.run(None, &["stop"]).ok();
    assert!(String::from_utf8_lossy(&stop.stdout).contains("no peercache daemon"));
    assert!(sb.serve_json().is_none());
}

#[test]
fn fetch_falls_back_silently_when_the_daemons_port_refuses() {
    let sb = Sandbox::new();
    let body = json_body(4, 500);
    sb.hub.put_json("/repos/octo/hello/readme", body.clone());
    let daemon = sb.start_daemon(&[], &[]);

    // The daemon lives, but serve.json points at a port nobody listens on.
    let mut info = sb.serve_json().unwrap();
    info["api_url"] = format!("http://127.0.0.1:{}/{}", closed_port(), daemon.capability()).into();
    std::fs::write(sb.home().join("serve.json"), info.to_string()).unwrap();

    let first = sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();
    assert_eq!(first.source(), "upstream");
    assert_eq!(first.body(), body.as_slice());
    assert_eq!(first.stderr, "", "the fallback is silent");
    let second = sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();
    assert_eq!(second.source(), "local");
    assert_eq!(sb.hub.count("/repos/octo/hello/readme"), 1);

    let stats = daemon.json("/api/cache/stats");
    assert_eq!(
        stats["api_calls_made"], 0,
        "the daemon saw nothing: {stats}"
    );
    assert_eq!(stats["local_hits"], 0, "{stats}");
}

#[test]
fn peers_and_stats_have_the_contract_fields_and_say_why_sharing_is_off() {
    let sb = Sandbox::new();
    // A job token alone never enables sharing.
    let daemon = sb.start_daemon(
        &[("GITHUB_TOKEN", "ghs_jobtokenJJJJJJJJJJJJJJJJJJJJJJJJJJJJ")],
        &[],
    );

    let peers = daemon.json("/api/peers");
    assert_eq!(
        keys(&peers),
        set(&[
            "enabled",
            "active",
            "peer_count",
            "reachability",
            "relays",
            "peers"
        ])
    );
    assert_eq!(peers["enabled"], false);
    assert_eq!(peers["reachability"], "unknown");
    assert_eq!(peers["relays"], serde_json::json!([]));
    assert_eq!(peers["active"], false);
    assert_eq!(peers["peer_count"], 0);
    assert_eq!(peers["peers"], serde_json::json!([]));
    assert_eq!(daemon.json("/api/mcp/peers"), peers);
    // Why sharing is off: in /api/status, which `peercache status` prints.
    let status = daemon.json("/api/status");
    assert_eq!(status["peers"], peers);
    assert_eq!(status["sharing"]["enabled"], false);
    let reason = status["sharing"]["reason"].as_str().unwrap();
    assert!(reason.contains("PEERCACHE_SECRET"), "{reason}");
    assert!(reason.contains("GITHUB_TOKEN"), "{reason}");

    let info = sb.serve_json().unwrap();
    assert_eq!(info["sharing"], false);
    assert_eq!(info["sharing_reason"].as_str(), Some(reason));
    assert_eq!(info["listen_addrs"], serde_json::json!([]));

    let stats = daemon.json("/api/cache/stats");
    assert_eq!(
        keys(&stats),
        set(&[
            "available",
            "total_entries",
            "total_size_mb",
            "hit_rate",
            "p2p_enabled",
            "p2p_peers",
            "api_calls_made",
            "api_calls_saved",
            "local_hits",
            "peer_hits",
            "misses",
            "revalidated",
            "stale_served",
        ])
    );
    assert_eq!(stats["available"], true);
    assert_eq!(stats["p2p_enabled"], false);
    assert_eq!(stats["p2p_peers"], 0);
    assert_eq!(stats["total_entries"], 0);
    assert_eq!(stats["hit_rate"], 0.0);
    assert_eq!(daemon.json("/api/mcp/cache/stats"), stats);
    assert_eq!(status["cache"], stats);

    let metrics = daemon.get("/metrics", &[]);
    assert!(
        metrics.text().contains("peercache_sharing 0"),
        "{}",
        metrics.text()
    );
}

#[test]
fn peercache_p2p_false_turns_sharing_off_even_with_a_secret() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon(
        &[
            ("PEERCACHE_SECRET", SWARM_SECRET),
            ("PEERCACHE_P2P", "false"),
        ],
        &[],
    );
    let peers = daemon.json("/api/peers");
    assert_eq!(peers["enabled"], false);
    let status = daemon.json("/api/status");
    assert_eq!(status["sharing"]["reason"], "PEERCACHE_P2P is false");
}

#[test]
fn with_a_secret_sharing_is_on() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon(
        &[
            ("PEERCACHE_SECRET", SWARM_SECRET),
            ("PEERCACHE_MDNS", "false"),
        ],
        &["--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let peers = daemon.json("/api/peers");
    assert_eq!(peers["enabled"], true, "{peers}");
    assert_eq!(peers["active"], false, "{peers}");
    assert_eq!(peers["peer_count"], 0, "{peers}");
    let status = daemon.json("/api/status");
    assert_eq!(status["sharing"]["enabled"], true, "{status}");
    assert_eq!(
        status["sharing"]["reason"],
        serde_json::Value::Null,
        "{status}"
    );
    let info = sb.serve_json().unwrap();
    assert_eq!(info["sharing"], true);
    assert_eq!(info["sharing_reason"], serde_json::Value::Null);
    let addrs = info["listen_addrs"].as_array().unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.as_str().unwrap().starts_with("/ip4/127.0.0.1/tcp/")),
        "{info}"
    );
    let stats = daemon.json("/api/cache/stats");
    assert_eq!(stats["p2p_enabled"], true);
    sb.run(None, &["stop"]).ok();
    assert!(!pid_alive(daemon.pid));
    assert!(sb.serve_json().is_none());
}

#[test]
fn sigterm_stops_a_foreground_serve_and_a_second_serve_is_refused() {
    let sb = Sandbox::new();
    let mut child = sb
        .command(&["serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ready = wait_until(WAIT, || {
        sb.serve_json().is_some_and(|info| {
            info["pid"].as_u64() == Some(u64::from(pid))
                && info["api_url"].as_str().is_some_and(|api| {
                    std::net::TcpStream::connect(
                        api.trim_start_matches("http://").split('/').next().unwrap(),
                    )
                    .is_ok()
                })
        })
    });
    assert!(ready, "the foreground serve did not become ready");
    let api = sb.serve_json().unwrap()["api_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(http_get(&format!("{api}/api/peers"), &[]).status, 200);

    // A second one for the same home: refused, one line, exit 2 — detached or not.
    let second = sb.run(None, &["serve", "--daemon"]);
    let line = second.fails_with(2);
    assert!(line.contains("already running"), "{line}");
    assert!(line.contains(&pid.to_string()), "{line}");
    let third = sb.run(None, &["serve"]);
    assert!(third.fails_with(2).contains("already running"));
    assert_eq!(
        sb.serve_json().unwrap()["pid"].as_u64(),
        Some(u64::from(pid))
    );

    send_signal(pid, libc::SIGTERM);
    let mut status = None;
    assert!(
        wait_until(WAIT, || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "serve did not stop on SIGTERM"
    );
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.unwrap().code(), Some(0), "{stderr}");
    assert!(sb.serve_json().is_none(), "serve.json is removed");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    // Log lines carry their time (RFC 3339).
    assert!(
        stderr
            .lines()
            .next()
            .unwrap()
            .chars()
            .take(4)
            .all(|c| c.is_ascii_digit()),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.trim(), format!("PEERCACHE_API={api}"));

    // The home is free again.
    let daemon = sb.start_daemon(&[], &[]);
    assert_ne!(daemon.pid, pid);
    sb.run(None, &["stop"]).ok();
}

#[test]
fn links_point_at_the_daemon_and_fetch_paginate_merges_every_page_through_it() {
    let sb = Sandbox::new();
    let items: Vec<serde_json::Value> = (0..250)
        .map(|i| serde_json::json!({"number": i, "title": format!("issue {i}")}))
        .collect();
    sb.hub.put_list("/repos/octo/hello/issues", items.clone());
    let daemon = sb.start_daemon(&[], &[]);

    let page1 = daemon.get("/gh/repos/octo/hello/issues?per_page=100", &[]);
    assert_eq!(page1.status, 200);
    let link = page1.header("link").expect("a Link header").to_string();
    let next = format!(
        "<{}/gh/repos/octo/hello/issues?per_page=100&page=2>; rel=\"next\"",
        daemon.api
    );
    assert!(link.contains(&next), "{link}");
    assert!(
        !link.contains(&sb.hub.url()),
        "no link leaves the daemon: {link}"
    );
    let page1_items: Vec<serde_json::Value> = serde_json::from_slice(&page1.body).unwrap();
    assert_eq!(page1_items, items[..100]);

    // Following the rewritten link, as octokit would.
    let target = link
        .split(',')
        .find(|l| l.contains("rel=\"next\""))
        .unwrap()
        .trim()
        .split(';')
        .next()
        .unwrap()
        .trim_matches(|c| c == '<' || c == '>' || c == ' ')
        .to_string();
    let page2 = http_get(&target, &[]);
    assert_eq!(page2.status, 200);
    assert_eq!(page2.header("x-peercache-source"), Some("upstream"));
    let page2_items: Vec<serde_json::Value> = serde_json::from_slice(&page2.body).unwrap();
    assert_eq!(page2_items, items[100..200]);
    assert_eq!(sb.hub.total(), 2);

    // fetch --paginate through the daemon: pages 1 and 2 are local, page 3 is fetched.
    let run = sb
        .fetch(None, "repos/octo/hello/issues", &["--paginate"])
        .ok();
    let merged: Vec<serde_json::Value> = serde_json::from_slice(run.body()).unwrap();
    assert_eq!(merged, items);
    assert_eq!(run.source(), "upstream", "the least cached page's source");
    assert_eq!(sb.hub.total(), 3, "only page 3 reached GitHub");
    // -i shows GitHub's links, as the direct path does.
    let shown = run.header("link").unwrap();
    assert!(shown.contains(&sb.hub.url()), "{shown}");
    let stats = daemon.json("/api/cache/stats");
    assert_eq!(stats["local_hits"], 2, "{stats}");
    assert_eq!(stats["api_calls_made"], 3, "{stats}");

    let again = sb
        .fetch(None, "repos/octo/hello/issues", &["--paginate"])
        .ok();
    assert_eq!(again.source(), "local");
    assert_eq!(again.body(), run.body());
    assert_eq!(sb.hub.total(), 3);
    assert_eq!(daemon.json("/api/cache/stats")["local_hits"], 5);
}

#[test]
fn bad_serve_flags_exit_2_and_a_failed_start_shows_the_logs_tail() {
    let sb = Sandbox::new();
    for addr in ["0.0.0.0:0", "10.0.0.1:8080", "nonsense"] {
        let run = sb.run(None, &["serve", "--daemon", "--api-addr", addr]);
        assert!(run.fails_with(2).contains("--api-addr"), "{}", run.stderr);
    }
    assert!(sb.serve_json().is_none());

    // The port is taken: the detached child fails, and the parent shows why.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = sb.run(None, &["serve", "--daemon", "--api-addr", &addr]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("serve.log"), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot listen on --api-addr"),
        "{}",
        run.stderr
    );
    assert!(sb.serve_json().is_none());
    assert!(
        !std::fs::read_to_string(sb.home().join("serve.log"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_daemon_hashes_a_hot_entry_once_and_a_body_changed_on_disk_never_reaches_an_answer() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon(&[("PEERCACHE_TOKEN", DAEMON_TOKEN)], &[]);
    let body = json_body(4, 20_000);
    sb.hub.put_json("/repos/octo/hot/readme", body.clone());
    let first = daemon.get("/gh/repos/octo/hot/readme", &[]);
    assert_eq!((first.status, first.source().as_str()), (200, "upstream"));

    // A bit flips in the stored body after the daemon verified it.
    let objects = common::object_files(&sb.cache_dir());
    assert_eq!(objects.len(), 1);
    let mut bytes = std::fs::read(&objects[0]).unwrap();
    bytes[10_000] ^= 0x20;
    std::fs::write(&objects[0], &bytes).unwrap();

    // The daemon answers with the bytes it verified, not the changed ones, without GitHub.
    for _ in 0..3 {
        let hit = daemon.get("/gh/repos/octo/hot/readme", &[]);
        assert_eq!((hit.status, hit.source().as_str()), (200, "local"));
        assert_eq!(hit.body, body, "the verified body, byte for byte");
    }
    assert_eq!(sb.hub.count("/repos/octo/hot/readme"), 1);

    // A process without that memory reads the disk, finds the flip, and fetches again.
    let direct = sb
        .fetch(Some(TOKEN_A), "repos/octo/hot/readme", &["--no-daemon"])
        .ok();
    assert_eq!(direct.source(), "upstream");
    assert!(
        direct.stderr.contains("failed verification"),
        "{}",
        direct.stderr
    );
    assert_eq!(direct.body(), body.as_slice());
}
