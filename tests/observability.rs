//! Observability end to end: a scripted swarm whose every figure is known in advance, checked in
//! `/api/cache/stats`, `/metrics`, `peercache status --json` and the Markdown job summary; the
//! status page in a real (headless) browser; GitHub Actions annotations and groups; and no token
//! or secret in any log, output or file.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::swarm::{
    LOOKUP_FALLBACKS, NodeSpec, SECRET, SwarmNode, start_node, swarm_of, wait_for,
};
use common::{PEERCACHE, Run, Sandbox, http_get, json_body};
use fakehub::{Failure, FakeHub};
use serde_json::Value;

const ENDPOINTS: usize = 10;

fn endpoint(e: usize) -> String {
    format!("gh/repos/octo/swarm/contents/r{e}")
}

/// `GET` through a node, asserting the tier that answered.
fn expect_source(node: &SwarmNode, e: usize, ttl: Option<&str>, source: &str) {
    let auth = format!("Bearer token-of-{}", node.name);
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(ttl) = ttl {
        headers.push(("x-peercache-ttl", ttl));
    }
    let response = http_get(&format!("{}/{}", node.api, endpoint(e)), &headers);
    assert_eq!(
        response.status,
        200,
        "{} repo{e}: {}",
        node.name,
        response.text()
    );
    assert_eq!(
        response.source(),
        source,
        "{} repo{e}\n{}",
        node.name,
        node.log()
    );
    assert_eq!(response.body, fakehub::repo_body(e, 2048));
}

/// `peercache ARGS` against a swarm node's home and cache.
fn peercache(node: &SwarmNode, hub: &FakeHub, args: &[&str]) -> Run {
    let out = Command::new(PEERCACHE)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", node.home.parent().unwrap())
        .env("PEERCACHE_HOME", &node.home)
        .env("PEERCACHE_CACHE_DIR", &node.cache)
        .env("PEERCACHE_API_URL", hub.url())
        .output()
        .expect("run peercache");
    Run::from(out)
}

/// Prometheus text as `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// What one node must show.
struct Expected {
    requests: u64,
    local: u64,
    peer: u64,
    revalidated: u64,
    stale: u64,
    upstream: u64,
    calls: u64,
    entries: u64,
}

impl Expected {
    fn hits(&self) -> u64 {
        self.local + self.peer
    }
    fn misses(&self) -> u64 {
        self.requests - self.hits()
    }
    fn hit_rate(&self) -> f64 {
        self.hits() as f64 / self.requests as f64
    }
}

fn check_node(node: &SwarmNode, hub: &FakeHub, others: &[&SwarmNode], want: &Expected) {
    let name = &node.name;
    // /api/cache/stats: exactly the contract's fields, every one the known count.
    let stats = node.json("api/cache/stats");
    let expected_stats = serde_json::json!({
        "available": true,
        "total_entries": want.entries,
        "total_size_mb": ((want.entries * 2048) as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0,
        "hit_rate": (want.hit_rate() * 10_000.0).round() / 10_000.0,
        "p2p_enabled": true,
        "p2p_peers": others.len(),
        "api_calls_made": want.calls,
        "api_calls_saved": want.hits(),
        "local_hits": want.local,
        "peer_hits": want.peer,
        "misses": want.misses(),
        "revalidated": want.revalidated,
        "stale_served": want.stale,
    });
    assert_eq!(stats, expected_stats, "{name}: /api/cache/stats");
    assert_eq!(
        node.json("api/mcp/cache/stats"),
        expected_stats,
        "{name}: the predecessor's path"
    );

    // /api/peers: exactly the contract's fields; the others, never itself.
    let peers = node.json("api/peers");
    let mut keys: Vec<&str> = peers
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "active",
            "enabled",
            "peer_count",
            "peers",
            "reachability",
            "relays"
        ],
        "{name}"
    );
    // On one host every member dials every other directly; nobody needs a relay.
    assert!(peers["relays"].as_array().unwrap().is_empty(), "{name}");
    assert_eq!(peers["peer_count"], others.len(), "{name}");
    let mut ids: Vec<&str> = peers["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut fields: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
            fields.sort();
            assert_eq!(
                fields,
                [
                    "connection",
                    "last_seen",
                    "listen_port",
                    "multiaddrs",
                    "peer_id",
                    "runner_name"
                ],
                "{name}"
            );
            assert_eq!(p["connection"], "direct", "{name}");
            p["peer_id"].as_str().unwrap()
        })
        .collect();
    ids.sort();
    let mut want_ids: Vec<&str> = others.iter().map(|o| o.peer_id.as_str()).collect();
    want_ids.sort();
    assert_eq!(ids, want_ids, "{name}");
    assert_eq!(
        node.json("api/mcp/peers"),
        peers,
        "{name}: the predecessor's path"
    );

    // /metrics.
    let response = node.get("metrics");
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        response.headers
    );
    let text = response.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let m = samples(&text);
    let swarm = node.swarm();
    let rate = hub.remaining(Some(&format!("Bearer token-of-{name}")));
    let mut expected_metrics = vec![
        ("peercache_requests_total".to_string(), want.requests as f64),
        (
            "peercache_answers_total{source=\"local\"}".into(),
            want.local as f64,
        ),
        (
            "peercache_answers_total{source=\"peer\"}".into(),
            want.peer as f64,
        ),
        (
            "peercache_answers_total{source=\"revalidated\"}".into(),
            want.revalidated as f64,
        ),
        (
            "peercache_answers_total{source=\"stale\"}".into(),
            want.stale as f64,
        ),
        (
            "peercache_answers_total{source=\"upstream\"}".into(),
            want.upstream as f64,
        ),
        ("peercache_errors_total".into(), 0.0),
        ("peercache_hits_total".into(), want.hits() as f64),
        ("peercache_misses_total".into(), want.misses() as f64),
        ("peercache_hit_ratio".into(), want.hit_rate()),
        ("peercache_upstream_calls_total".into(), want.calls as f64),
        (
            "peercache_upstream_calls_saved_total".into(),
            want.hits() as f64,
        ),
        (
            "peercache_requests_with_upstream_call_total".into(),
            (want.upstream + want.revalidated + want.stale) as f64,
        ),
        ("peercache_cache_entries".into(), want.entries as f64),
        ("peercache_cache_bytes".into(), (want.entries * 2048) as f64),
        ("peercache_cache_integrity_failures_total".into(), 0.0),
        ("peercache_cache_evictions_total".into(), 0.0),
        ("peercache_sharing".into(), 1.0),
        ("peercache_peers".into(), others.len() as f64),
    ];
    for field in [
        "entries_received",
        "entries_rejected",
        "entries_served",
        "auth_failures",
        "announcements_received",
        "have_notices_sent",
        "have_notices_received",
        "claims_won",
        "claims_waited",
        "claims_granted",
    ]
    .into_iter()
    .chain(LOOKUP_FALLBACKS)
    {
        expected_metrics.push((
            format!("peercache_swarm_{field}_total"),
            swarm[field].as_u64().unwrap() as f64,
        ));
    }
    if want.calls > 0 {
        expected_metrics.push(("peercache_ratelimit_remaining".into(), rate as f64));
        expected_metrics.push(("peercache_ratelimit_limit".into(), 5000.0));
    } else {
        assert!(!m.contains_key("peercache_ratelimit_remaining"), "{name}");
    }
    for (metric, value) in &expected_metrics {
        assert_eq!(m.get(metric), Some(value), "{name}: {metric}\n{text}");
    }
    // libp2p's own metrics, recorded from the swarm's events.
    let established: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("libp2p_swarm_connections_established_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(established >= others.len() as f64, "{name}\n{text}");
    assert!(
        m.keys().any(|k| k.starts_with("libp2p_identify_")),
        "{name}\n{text}"
    );
    assert!(
        m.keys().any(|k| k.starts_with("libp2p_gossipsub_")),
        "{name}\n{text}"
    );

    // `status --json`: /api/status, which holds both contract objects as they are.
    let run = peercache(node, hub, &["status", "--json"]).ok();
    let status: Value = serde_json::from_slice(&run.stdout).expect("status --json is JSON");
    assert_eq!(status["cache"], expected_stats, "{name}: status --json");
    assert_eq!(status["peers"]["peer_count"], others.len());
    assert_eq!(status["peer_id"], node.peer_id.as_str());
    let requests = &status["requests"];
    for (field, value) in [
        ("total", want.requests),
        ("hits", want.hits()),
        ("local_hits", want.local),
        ("peer_hits", want.peer),
        ("revalidated", want.revalidated),
        ("stale_served", want.stale),
        ("upstream", want.upstream),
        ("errors", 0),
        ("misses", want.misses()),
        ("upstream_calls", want.calls),
        ("upstream_calls_saved", want.hits()),
    ] {
        assert_eq!(
            requests[field], value,
            "{name}: requests.{field}: {requests}"
        );
    }
    for (field, value) in status["swarm"].as_object().unwrap() {
        assert_eq!(&swarm[field], value, "{name}: swarm.{field}");
    }
    if want.calls > 0 {
        assert_eq!(status["rate_limit"]["remaining"], rate, "{name}");
        assert_eq!(status["rate_limit"]["limit"], 5000, "{name}");
    } else {
        assert_eq!(status["rate_limit"], Value::Null, "{name}");
    }
    assert!(
        !String::from_utf8_lossy(&run.stdout).contains(&node.api),
        "the capability is never printed"
    );

    // The job summary.
    let run = peercache(node, hub, &["status", "--markdown"]).ok();
    let md = String::from_utf8(run.stdout).unwrap();
    let has = |line: &str| {
        assert!(
            md.lines().any(|l| l == line),
            "{name}: the summary lacks {line:?}:\n{md}"
        )
    };
    has(&format!(
        "| {} | {} | {:.1} % | {} |",
        want.requests,
        want.hits(),
        want.hit_rate() * 100.0,
        want.misses()
    ));
    has(&format!("| local cache (hit) | {} |", want.local));
    has(&format!("| peer (hit) | {} |", want.peer));
    has(&format!(
        "| revalidated (304 from GitHub) | {} |",
        want.revalidated
    ));
    has(&format!("| stale (GitHub unusable) | {} |", want.stale));
    has(&format!("| GitHub | {} |", want.upstream));
    has(&format!("### Peers ({})", others.len()));
    let calls_line = format!("| {} | {} | ", want.calls, want.hits());
    let calls = md
        .lines()
        .find(|l| l.starts_with(&calls_line))
        .unwrap_or_else(|| panic!("{name}: no calls line {calls_line:?}:\n{md}"));
    if want.calls > 0 {
        assert!(
            calls.contains(&format!("| {rate} of 5000, resets")),
            "{calls}"
        );
    } else {
        assert!(calls.contains("not seen yet"), "{calls}");
    }
    for other in others {
        assert!(
            md.lines().any(|l| l.starts_with(&format!(
                "| `{}` | {} | direct | `/ip4/127.0.0.1/tcp/",
                other.peer_id, other.name
            ))),
            "{name}: the summary lacks peer {}:\n{md}",
            other.name
        );
    }
}

#[test]
fn a_scripted_swarm_shows_the_known_figures_everywhere() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, ENDPOINTS, 2048);
    let nodes = swarm_of(root.path(), &hub, 3, None);
    let (n0, n1, n2) = (&nodes[0], &nodes[1], &nodes[2]);

    // node0: every endpoint from GitHub, then five again from its cache.
    for e in 0..ENDPOINTS {
        expect_source(n0, e, None, "upstream");
    }
    // Announcements are not hits: the others count them, nothing else.
    for node in [n1, n2] {
        wait_for(
            &format!("{} to hear 10 announcements", node.name),
            Duration::from_secs(20),
            || node.swarm()["announcements_received"].as_u64().unwrap() >= ENDPOINTS as u64,
        );
        let stats = node.json("api/cache/stats");
        assert_eq!(stats["peer_hits"], 0, "{stats}");
        assert_eq!(stats["local_hits"], 0, "{stats}");
        assert_eq!(stats["misses"], 0, "{stats}");
    }
    for e in 0..5 {
        expect_source(n0, e, None, "local");
    }
    // node1: six from a peer, three of them again from its own cache.
    for e in 0..6 {
        expect_source(n1, e, None, "peer");
    }
    for e in 0..3 {
        expect_source(n1, e, None, "local");
    }
    // node0 serving node1 is not a hit of node0's.
    assert_eq!(n0.json("api/cache/stats")["local_hits"], 5);
    assert!(n0.swarm()["entries_served"].as_u64().unwrap() >= 6);

    // One revalidation (node0, TTL 0: a 304), one stale answer (node1, GitHub answers 502).
    expect_source(n0, 9, Some("0"), "revalidated");
    hub.fail_always(Failure::status(502));
    expect_source(n1, 1, Some("0"), "stale");
    hub.clear_failures();

    // node2: all ten from peers.
    for e in 0..ENDPOINTS {
        expect_source(n2, e, None, "peer");
    }

    // GitHub saw exactly the calls the nodes say they made.
    let hub_stats = hub.stats();
    assert_eq!(hub_stats.total, 12);
    assert_eq!(hub_stats.status_count(200), 10);
    assert_eq!(hub_stats.status_count(304), 1);
    assert_eq!(hub_stats.status_count(502), 1);

    check_node(
        n0,
        &hub,
        &[n1, n2],
        &Expected {
            requests: 16,
            local: 5,
            peer: 0,
            revalidated: 1,
            stale: 0,
            upstream: 10,
            calls: 11,
            entries: 10,
        },
    );
    check_node(
        n1,
        &hub,
        &[n0, n2],
        &Expected {
            requests: 10,
            local: 3,
            peer: 6,
            revalidated: 0,
            stale: 1,
            upstream: 0,
            calls: 1,
            entries: 6,
        },
    );
    check_node(
        n2,
        &hub,
        &[n0, n1],
        &Expected {
            requests: 10,
            local: 0,
            peer: 10,
            revalidated: 0,
            stale: 0,
            upstream: 0,
            calls: 0,
            entries: 10,
        },
    );
    assert_eq!(hub.remaining(Some("Bearer token-of-node0")), 4990);

    // Top endpoints by hits: node0's five local hits first, node2's ten peer hits.
    let top0 = peercache(n0, &hub, &["status", "--json"]).ok();
    let top0: Value = serde_json::from_slice(&top0.stdout).unwrap();
    let top0 = top0["endpoints"]["top"].as_array().unwrap().clone();
    assert_eq!(top0.len(), 10);
    for (i, row) in top0.iter().take(5).enumerate() {
        assert_eq!(
            row["endpoint"],
            format!("/repos/octo/swarm/contents/r{i}"),
            "{row}"
        );
        assert_eq!(row["hits"], 1, "{row}");
        assert_eq!(row["requests"], 2, "{row}");
    }
    assert_eq!(
        top0[5]["endpoint"], "/repos/octo/swarm/contents/r9",
        "two requests, no hit"
    );
    assert_eq!(top0[5]["revalidated"], 1);
    let md = String::from_utf8(peercache(n0, &hub, &["status", "--markdown"]).ok().stdout).unwrap();
    assert!(
        md.contains("| `/repos/octo/swarm/contents/r0` | 1 | 2 | 1 | 0 | 0 | 0 | 1 | 0 |"),
        "{md}"
    );
    let md2 =
        String::from_utf8(peercache(n2, &hub, &["status", "--markdown"]).ok().stdout).unwrap();
    assert!(
        md2.contains("| `/repos/octo/swarm/contents/r0` | 1 | 1 | 0 | 1 | 0 | 0 | 0 | 0 |"),
        "{md2}"
    );
    // The plain output names the same figures.
    let plain = String::from_utf8(peercache(n1, &hub, &["status"]).ok().stdout).unwrap();
    assert!(
        plain.contains(
            "requests:      10 (9 hits: 3 local, 6 peer; 0 revalidated, 1 stale, 0 from GitHub, 0 failed)"
        ),
        "{plain}"
    );
    assert!(plain.contains("hit rate:      90.0 %"), "{plain}");
}

#[test]
fn status_without_a_daemon_exits_3_and_says_why_sharing_is_off() {
    let sb = Sandbox::new();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "--markdown"],
    ] {
        let run = sb.run(None, args);
        let line = run.fails_with(3);
        assert!(line.contains("no peercache daemon is running"), "{line}");
        assert!(run.stdout.is_empty(), "nothing for the job summary");
    }
    let bad = sb.run(None, &["status", "--json", "--markdown"]);
    bad.fails_with(2);

    let daemon = sb.start_daemon(&[], &[]);
    let status: Value =
        serde_json::from_slice(&sb.run(None, &["status", "--json"]).ok().stdout).unwrap();
    assert_eq!(status["sharing"]["enabled"], false);
    assert!(
        status["sharing"]["reason"]
            .as_str()
            .unwrap()
            .contains("PEERCACHE_SECRET"),
        "{status}"
    );
    assert_eq!(status["peers"], daemon.json("/api/peers"));
    let md = String::from_utf8(sb.run(None, &["status", "--markdown"]).ok().stdout).unwrap();
    assert!(md.contains("### Peers (0)\n\nNo verified peers."), "{md}");
    assert!(md.contains("No requests yet."), "{md}");
    let metrics = daemon.get("/metrics", &[]).text();
    assert!(metrics.contains("\npeercache_sharing 0\n"), "{metrics}");
    assert!(
        !metrics.contains("libp2p_"),
        "no libp2p metrics without a swarm"
    );
    sb.run(None, &["stop"]).ok();
}

// ---------------------------------------------------------------------------------------------
// The status page in a browser.

/// The headless browser, or `None` (outside CI only) to skip with a message.
fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        }) {
            return Some(path);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium is not installed, and CI is set: run scripts/ensure-tools.sh"
    );
    eprintln!(
        "SKIPPED: chromium is not installed (scripts/ensure-tools.sh installs it); the status page was not tested in a browser"
    );
    None
}

/// The page's DOM after its script ran, as headless Chromium serializes it.
fn dump_dom(browser: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with this id (no nested elements).
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("id=\"{id}\"");
    let at = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    &dom[start..end]
}

#[test]
fn the_status_page_shows_peers_and_figures_in_a_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 3, 2048);
    let watched = start_node(root.path(), "watched", &hub, NodeSpec::default());
    // A peer whose runner name is markup: it must show as text.
    let hostile = "evil<img src=x onerror=\"document.title='pwned'\">&amp;";
    let other = start_node(
        root.path(),
        "other",
        &hub,
        NodeSpec {
            bootstrap: vec![watched.bootstrap_addr()],
            env: vec![("RUNNER_NAME", hostile.to_string())],
            ..NodeSpec::default()
        },
    );
    wait_for(
        "the two nodes to verify each other",
        Duration::from_secs(30),
        || watched.peer_count() == 1 && other.peer_count() == 1,
    );
    // Known figures: two from GitHub, one local hit.
    expect_source(&watched, 0, None, "upstream");
    expect_source(&watched, 1, None, "upstream");
    expect_source(&watched, 0, None, "local");

    // The page as served: already readable, every figure filled in and escaped.
    let served = watched.get("");
    assert_eq!(served.status, 200);
    let csp = served.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'nonce-"), "{csp}");
    let html = served.text();
    assert!(!html.contains("{{"), "a placeholder was left: {html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(html.contains("evil&lt;img src=x onerror=&quot;"), "{html}");

    // A request after the page was served: only the script can show it.
    expect_source(&watched, 1, None, "local");

    for url in [format!("{}/", watched.api), watched.api.clone()] {
        let dom = dump_dom(&browser, &url);
        let updates: u32 = dom
            .split("data-updates=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(
            updates >= 1,
            "the script never refreshed the page ({url}):\n{dom}"
        );
        assert!(!dom.contains("class=\"offline\""), "{dom}");
        assert!(
            element_text(&dom, "updated").starts_with("live, updated "),
            "{dom}"
        );
        assert_eq!(element_text(&dom, "peer-count"), "1", "{dom}");
        let reach = element_text(&dom, "reach");
        assert!(
            reach.starts_with("Reachability: ") && reach.ends_with("1 peer(s) direct, 0 relayed"),
            "{reach}"
        );
        assert_eq!(element_text(&dom, "requests"), "4", "{dom}");
        assert_eq!(element_text(&dom, "hits"), "2", "{dom}");
        assert_eq!(element_text(&dom, "hit-rate"), "50.0 %", "{dom}");
        assert_eq!(element_text(&dom, "local-hits"), "2", "{dom}");
        assert_eq!(element_text(&dom, "peer-hits"), "0", "{dom}");
        assert_eq!(element_text(&dom, "misses"), "2", "{dom}");
        assert_eq!(element_text(&dom, "calls-made"), "2", "{dom}");
        assert_eq!(element_text(&dom, "calls-saved"), "2", "{dom}");
        assert_eq!(element_text(&dom, "entries"), "2", "{dom}");
        assert!(
            dom.contains(&format!("<tr data-peer-id=\"{}\">", other.peer_id)),
            "{dom}"
        );
        // Each peer's row says how it is connected (loopback: direct).
        assert!(
            dom.contains("<td>direct</td>"),
            "no connection column: {dom}"
        );
        assert_eq!(
            dom.matches(&watched.peer_id).count(),
            1,
            "only the header names the node itself"
        );
        // The hostile name is text, not markup: no <img> element, the title untouched.
        assert!(
            dom.contains(
                "<td>evil&lt;img src=x onerror=\"document.title='pwned'\"&gt;&amp;amp;</td>"
            ),
            "{dom}"
        );
        assert!(!dom.contains("<img"), "{dom}");
        assert!(dom.contains("<title>peercache status</title>"), "{dom}");
    }
}

// ---------------------------------------------------------------------------------------------
// Logs.

#[test]
fn in_actions_warnings_become_escaped_annotations_and_the_startup_is_a_group() {
    let sb = Sandbox::new();
    sb.hub
        .put_json("/repos/octo/hello/readme", json_body(1, 300));
    let run = |extra: &[&str]| {
        let mut args = vec!["fetch", "--no-daemon", "repos/octo/hello/readme?q=100%25"];
        args.extend_from_slice(extra);
        let mut cmd = sb.command(&args);
        cmd.env("GITHUB_ACTIONS", "true");
        Run::from(cmd.output().unwrap())
    };
    run(&[]).ok();
    sb.hub.fail_always(Failure::status(502));
    let stale = run(&["--ttl", "0"]).ok();
    sb.hub.clear_failures();
    let annotation = stale
        .stderr
        .lines()
        .find(|l| l.starts_with("::warning::"))
        .unwrap_or_else(|| panic!("no annotation in {:?}", stale.stderr));
    assert!(
        annotation.starts_with("::warning::peercache: serving a stale cache entry for "),
        "{annotation}"
    );
    assert!(
        annotation.contains("q=100%2525"),
        "'%' is escaped: {annotation}"
    );
    // The plain line is still there, for people reading the log.
    assert!(
        stale
            .stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("serving a stale cache entry")),
        "{}",
        stale.stderr
    );
    // Outside Actions: no workflow commands.
    let mut cmd = sb.command(&[
        "fetch",
        "--no-daemon",
        "repos/octo/hello/readme?q=100%25",
        "--ttl",
        "0",
    ]);
    sb.hub.fail_always(Failure::status(502));
    let quiet = Run::from(cmd.output().unwrap()).ok();
    sb.hub.clear_failures();
    assert!(!quiet.stderr.contains("::"), "{}", quiet.stderr);

    // The daemon's startup sits in a group that ends at "ready".
    let daemon = sb.start_daemon(&[("GITHUB_ACTIONS", "true")], &[]);
    let log = std::fs::read_to_string(sb.home().join("serve.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let open = lines
        .iter()
        .position(|l| *l == "::group::peercache serve: starting the daemon")
        .unwrap_or_else(|| panic!("{log}"));
    let ready = lines.iter().position(|l| l.contains("ready (pid")).unwrap();
    let close = lines.iter().position(|l| *l == "::endgroup::").unwrap();
    assert!(open < ready && ready < close, "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("::warning::peercache: peer sharing is off")),
        "{log}"
    );
    drop(daemon);
}

/// Every file under `dir` (recursively) except the identity keys.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != "identity.key") {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn no_token_or_secret_reaches_a_log_an_output_or_a_file() {
    const TOKEN: &str = "ghp_LEAKCHECKdaemonTOKEN0123456789abcdefAB";
    const REQUEST_TOKEN: &str = "ghp_LEAKCHECKrequestTOKEN0123456789abcdef";
    const FETCH_TOKEN: &str = "github_pat_LEAKCHECKfetchTOKEN0123456789";
    const LEAK_SECRET: &str = "LEAKCHECK-9hVNZu4ndJ61XappswKRSyTMnNENGt5NRDDiDmN5WMo";
    let needles = [TOKEN, REQUEST_TOKEN, FETCH_TOKEN, LEAK_SECRET, "LEAKCHECK"];

    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 3, 1024);
    let env = |token: &str| {
        vec![
            ("PEERCACHE_TOKEN", token.to_string()),
            ("PEERCACHE_SECRET", LEAK_SECRET.to_string()),
            ("PEERCACHE_LOG", "trace".to_string()),
            ("GITHUB_ACTIONS", "true".to_string()),
        ]
    };
    let a = start_node(
        root.path(),
        "a",
        &hub,
        NodeSpec {
            secret: Some(LEAK_SECRET),
            env: env(TOKEN),
            ..NodeSpec::default()
        },
    );
    let b = start_node(
        root.path(),
        "b",
        &hub,
        NodeSpec {
            secret: Some(LEAK_SECRET),
            bootstrap: vec![a.bootstrap_addr()],
            env: env(TOKEN),
            ..NodeSpec::default()
        },
    );
    wait_for(
        "the nodes to verify each other",
        Duration::from_secs(30),
        || a.peer_count() == 1 && b.peer_count() == 1,
    );
    assert_ne!(SECRET, LEAK_SECRET);

    let mut outputs: Vec<(String, String)> = Vec::new();
    // Through the daemon with the daemon's token, with a request's own token, from a peer,
    // a stale answer after a 502, and an unreachable upstream.
    let own = format!("token {REQUEST_TOKEN}");
    for (node, path, auth) in [
        (&a, "gh/repos/octo/swarm/contents/r0", None),
        (&a, "gh/repos/octo/swarm/contents/r1", Some(own.as_str())),
        (&b, "gh/repos/octo/swarm/contents/r0", None),
        (&a, "gh/repos/octo/missing", Some(own.as_str())),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|v| ("authorization", v)).into_iter().collect();
        let response = http_get(&format!("{}/{path}", node.api), &headers);
        outputs.push((format!("GET {path}"), format!("{:?}", response.headers)));
        outputs.push((format!("GET {path} body"), response.text()));
    }
    hub.fail_always(Failure::status(502));
    let response = http_get(
        &format!("{}/gh/repos/octo/swarm/contents/r0", a.api),
        &[("x-peercache-ttl", "0")],
    );
    assert_eq!(response.source(), "stale");
    hub.clear_failures();

    // fetch (through the daemon and directly), status in every format, stop.
    let cli = |node: &SwarmNode, args: &[&str]| -> Run {
        let mut cmd = Command::new(PEERCACHE);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", node.home.parent().unwrap())
            .env("PEERCACHE_HOME", &node.home)
            .env("PEERCACHE_CACHE_DIR", &node.cache)
            .env("PEERCACHE_API_URL", hub.url())
            .env("PEERCACHE_REGISTRY", "none")
            .env("GH_TOKEN", FETCH_TOKEN)
            .env("PEERCACHE_SECRET", LEAK_SECRET)
            .env("PEERCACHE_LOG", "trace")
            .env("GITHUB_ACTIONS", "true");
        Run::from(cmd.output().unwrap())
    };
    for (node, args) in [
        (&a, &["fetch", "-i", "repos/octo/swarm/contents/r2"][..]),
        (
            &b,
            &["fetch", "-i", "--no-daemon", "repos/octo/swarm/contents/r2"],
        ),
        (
            &b,
            &["fetch", "-i", "--no-daemon", "repos/octo/nothing-here"],
        ),
        (&a, &["status"]),
        (&a, &["status", "--json"]),
        (&a, &["status", "--markdown"]),
        (&a, &["stop"]),
        (&b, &["stop"]),
        (&a, &["status"]),
    ] {
        let run = cli(node, args);
        outputs.push((
            format!("{args:?} stdout"),
            String::from_utf8_lossy(&run.stdout).into_owned(),
        ));
        outputs.push((format!("{args:?} stderr"), run.stderr));
    }
    // The tokens were really used (so their absence below means something).
    let used: Vec<String> = hub
        .stats()
        .requests
        .iter()
        .filter_map(|r| r.authorization.clone())
        .collect();
    for token in [TOKEN, REQUEST_TOKEN, FETCH_TOKEN] {
        assert!(
            used.iter().any(|a| a.contains(token)),
            "{token} never reached GitHub: {used:?}"
        );
    }
    // Trace logging was on: the logs are long.
    assert!(a.log().lines().count() > 100, "{}", a.log());

    for (what, text) in &outputs {
        for needle in needles {
            assert!(!text.contains(needle), "{what} contains {needle}:\n{text}");
        }
    }
    let files = files_under(root.path());
    assert!(files.iter().any(|f| f.ends_with("serve.log")));
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for needle in needles {
            assert!(
                !text.contains(needle),
                "{} contains {needle}",
                file.display()
            );
        }
    }
}
