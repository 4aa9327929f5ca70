//! Registries end to end: real `peercache serve --daemon` processes, `peercache register` and
//! `peercache discover`, a `dir:` registry on one host and an `issue:` registry on the stand-in
//! GitHub API.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::swarm::{NodeSpec, SECRET, SwarmNode, start_node, wait_for};
use common::{PEERCACHE, Run};
use fakehub::FakeHub;
use libp2p::PeerId;
use serde_json::{Value, json};

/// The repository whose issue is the registry in these tests.
const REPO: &str = "octo/fleet";
/// One token for the whole fleet, as `GITHUB_TOKEN` is one bot for every job of a repository.
const FLEET_TOKEN: &str = "token-of-the-fleet";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `peercache ARGS` with the environment of `node`'s job (its home, cache, token, secret),
/// plus `env`.
fn cli(node: &SwarmNode, hub: &FakeHub, env: &[(&str, &str)], args: &[&str]) -> Run {
    cli_at(&node.home, &node.cache, hub, env, args)
}

fn cli_at(home: &Path, cache: &Path, hub: &FakeHub, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = Command::new(PEERCACHE);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.parent().unwrap())
        .env("PEERCACHE_HOME", home)
        .env("PEERCACHE_CACHE_DIR", cache)
        .env("PEERCACHE_API_URL", hub.url())
        .env("PEERCACHE_SECRET", SECRET)
        .env("PEERCACHE_TOKEN", FLEET_TOKEN)
        .env("PEERCACHE_MDNS", "false")
        .envs(env.iter().copied());
    Run::from(cmd.output().expect("run peercache"))
}

fn stdout(run: &Run) -> String {
    String::from_utf8_lossy(&run.stdout).into_owned()
}

/// A daemon on loopback whose registry is `registry`.
fn node(root: &Path, name: &str, hub: &FakeHub, registry: &str, interval: &str) -> SwarmNode {
    node_with(
        root,
        name,
        hub,
        registry,
        interval,
        vec!["/ip4/127.0.0.1/tcp/0".into()],
    )
}

fn node_with(
    root: &Path,
    name: &str,
    hub: &FakeHub,
    registry: &str,
    interval: &str,
    listen: Vec<String>,
) -> SwarmNode {
    start_node(
        root,
        name,
        hub,
        NodeSpec {
            listen,
            env: vec![
                ("PEERCACHE_REGISTRY", registry.to_string()),
                ("PEERCACHE_REGISTRY_INTERVAL", interval.to_string()),
                ("PEERCACHE_TOKEN", FLEET_TOKEN.to_string()),
                ("GITHUB_REPOSITORY", REPO.to_string()),
                ("GITHUB_WORKFLOW", "CI".to_string()),
            ],
            ..NodeSpec::default()
        },
    )
}

/// The records of a `dir:` registry, by file name.
fn dir_records(dir: &Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(value) = serde_json::from_slice(&std::fs::read(entry.path()).unwrap_or_default())
        {
            out.push((name, value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn record_file(dir: &Path, peer: &str) -> PathBuf {
    dir.join(format!("peer_{peer}.json"))
}

/// A record as the dir registry stores it.
fn record_json(peer: &str, addrs: &[String], expires_at: u64) -> Value {
    json!({
        "version": 1,
        "peer_id": peer,
        "multiaddrs": addrs,
        "runner_name": "hand-written",
        "last_seen": now(),
        "expires_at": expires_at,
    })
}

/// The lines `NAME=VALUE` of a `$GITHUB_ENV`/`$GITHUB_OUTPUT` file, checked to hold no
/// multi-line form.
fn runner_file(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            assert!(!line.contains("<<"), "unexpected heredoc in {line:?}");
            let (name, value) = line.split_once('=').expect("NAME=VALUE");
            (name.to_string(), value.to_string())
        })
        .collect()
}

/// Each comma-separated item is a multiaddr ending in `/p2p/<peer id>`.
fn assert_peer_addrs(joined: &str) -> Vec<String> {
    let items: Vec<String> = joined
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for item in &items {
        let addr: libp2p::Multiaddr = item
            .parse()
            .unwrap_or_else(|e| panic!("{item:?} is not a multiaddr: {e}"));
        assert!(
            matches!(
                addr.iter().last(),
                Some(libp2p::multiaddr::Protocol::P2p(_))
            ),
            "{item} does not end in /p2p/"
        );
    }
    items
}

// ---------------------------------------------------------------------------------------------
// dir: registries

#[test]
fn three_daemons_on_one_host_find_each_other_through_a_dir_registry_and_share() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    hub.put_json(
        "/repos/octo/fleet/contents/hello",
        br#"{"id":1,"name":"hello"}"#.to_vec(),
    );
    let peers = root.path().join("peers");
    let registry = format!("dir:{}", peers.display());
    // No bootstrap setting: the registry is the only way they can meet.
    let nodes: Vec<SwarmNode> = ["a", "b", "c"]
        .iter()
        .map(|name| node(root.path(), name, &hub, &registry, "1"))
        .collect();
    for n in &nodes {
        wait_for(
            &format!("{} to verify 2 peers", n.name),
            Duration::from_secs(30),
            || n.peer_count() == 2,
        );
    }

    // One file per peer, loopback addresses allowed (host-local), each ending in its own id.
    let records = dir_records(&peers);
    assert_eq!(records.len(), 3, "{records:?}");
    for n in &nodes {
        let record = &serde_json::from_slice::<Value>(
            &std::fs::read(record_file(&peers, &n.peer_id)).unwrap(),
        )
        .unwrap();
        assert_eq!(record["version"], 1);
        assert_eq!(record["runner_name"], n.name.as_str());
        assert_eq!(record["repository"], REPO);
        assert_eq!(record["workflow"], "CI");
        assert!(record["expires_at"].as_u64().unwrap() > now());
        let addrs: Vec<&str> = record["multiaddrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(addrs, [n.bootstrap_addr().as_str()]);
    }

    // discover lists the others, never itself.
    let run = cli(
        &nodes[0],
        &hub,
        &[("PEERCACHE_REGISTRY", &registry)],
        &["discover"],
    )
    .ok();
    let lines: Vec<String> = stdout(&run).lines().map(str::to_string).collect();
    assert_eq!(
        lines.len(),
        2,
        "stdout: {:?}, stderr: {}",
        lines,
        run.stderr
    );
    assert!(lines.contains(&nodes[1].bootstrap_addr()));
    assert!(lines.contains(&nodes[2].bootstrap_addr()));
    assert!(!stdout(&run).contains(&nodes[0].peer_id));

    // They share: one call upstream, the others answered by a peer.
    assert_eq!(
        nodes[0].get("gh/repos/octo/fleet/contents/hello").source(),
        "upstream"
    );
    assert_eq!(
        nodes[1].get("gh/repos/octo/fleet/contents/hello").source(),
        "peer"
    );
    assert_eq!(
        nodes[2].get("gh/repos/octo/fleet/contents/hello").source(),
        "peer"
    );
    assert_eq!(hub.count("/repos/octo/fleet/contents/hello"), 1);

    // A fourth node with a registry of its own (so it cannot read theirs) that knows only one of
    // them: Kademlia brings it to all three.
    let elsewhere = format!("dir:{}", root.path().join("other-peers").display());
    let fourth = start_node(
        root.path(),
        "d",
        &hub,
        NodeSpec {
            bootstrap: vec![nodes[2].bootstrap_addr()],
            // Another job of the same repository: the same scope.
            env: vec![
                ("PEERCACHE_REGISTRY", elsewhere),
                ("GITHUB_REPOSITORY", REPO.to_string()),
            ],
            ..NodeSpec::default()
        },
    );
    wait_for(
        "the fourth node to find all three through Kademlia",
        Duration::from_secs(30),
        || fourth.peer_count() == 3,
    );
    for n in &nodes {
        wait_for(
            &format!("{} to see the fourth", n.name),
            Duration::from_secs(10),
            || n.peer_count() == 3,
        );
    }
    assert_eq!(
        fourth.get("gh/repos/octo/fleet/contents/hello").source(),
        "peer"
    );
    assert_eq!(hub.count("/repos/octo/fleet/contents/hello"), 1);
}

#[test]
fn expired_corrupted_and_malformed_records_are_skipped_and_github_env_stays_clean() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    let peers = root.path().join("peers");
    std::fs::create_dir_all(&peers).unwrap();
    let home = root.path().join("me").join("home");
    let cache = root.path().join("me").join("cache");

    let good = PeerId::random().to_string();
    let good_addr = format!("/ip4/10.0.0.5/tcp/9000/p2p/{good}");
    std::fs::write(
        record_file(&peers, &good),
        record_json(
            &good,
            &[good_addr.clone(), "not-a-multiaddr".into()],
            now() + 600,
        )
        .to_string(),
    )
    .unwrap();
    // Expired: ignored and deleted.
    let expired = PeerId::random().to_string();
    let expired_file = record_file(&peers, &expired);
    std::fs::write(
        &expired_file,
        record_json(
            &expired,
            &[format!("/ip4/10.0.0.6/tcp/9000/p2p/{expired}")],
            now() - 5,
        )
        .to_string(),
    )
    .unwrap();
    // Corrupted (truncated) file.
    let corrupted = PeerId::random().to_string();
    let full = record_json(
        &corrupted,
        &[format!("/ip4/10.0.0.7/tcp/9000/p2p/{corrupted}")],
        now() + 600,
    )
    .to_string();
    std::fs::write(record_file(&peers, &corrupted), &full[..full.len() / 2]).unwrap();
    // Only malformed multiaddrs: a newline smuggled into one, a missing /p2p/, another peer's id,
    // an unspecified address.
    let malformed = PeerId::random().to_string();
    std::fs::write(
        record_file(&peers, &malformed),
        record_json(
            &malformed,
            &[
                format!("/ip4/10.0.0.8/tcp/9000/p2p/{malformed}\nEVIL=1"),
                "/ip4/10.0.0.8/tcp/9000".into(),
                format!("/ip4/10.0.0.8/tcp/9000/p2p/{good}"),
                format!("/ip4/0.0.0.0/tcp/9000/p2p/{malformed}"),
                "/dns4/a,b/tcp/1/p2p/x".into(),
            ],
            now() + 600,
        )
        .to_string(),
    )
    .unwrap();

    let static_peer = PeerId::random().to_string();
    let static_addr = format!("/ip4/10.0.0.9/tcp/9001/p2p/{static_peer}");
    let bootstrap = format!("garbage,/ip4/10.0.0.9/tcp/9001,{static_addr}");
    let github_env = root.path().join("github_env");
    let github_output = root.path().join("github_output");
    let registry = format!("dir:{}", peers.display());
    let env = [
        ("PEERCACHE_REGISTRY", registry.as_str()),
        ("PEERCACHE_BOOTSTRAP_PEERS", bootstrap.as_str()),
        ("GITHUB_ENV", github_env.to_str().unwrap()),
        ("GITHUB_OUTPUT", github_output.to_str().unwrap()),
    ];
    let run = cli_at(&home, &cache, &hub, &env, &["discover", "--github-env"]).ok();
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);

    // Printed: the good peer's good address and the static peer, nothing else.
    let mut lines: Vec<String> = stdout(&run).lines().map(str::to_string).collect();
    lines.sort();
    let mut want = vec![good_addr.clone(), static_addr.clone()];
    want.sort();
    assert_eq!(lines, want, "stderr: {}", run.stderr);

    // Each problem is named on stderr.
    for needle in [
        "not-a-multiaddr",
        corrupted.as_str(),
        malformed.as_str(),
        "PEERCACHE_BOOTSTRAP_PEERS",
        "\"garbage\"",
    ] {
        assert!(
            run.stderr.contains(needle),
            "no warning naming {needle:?}: {}",
            run.stderr
        );
    }
    assert!(!expired_file.exists(), "the expired record is deleted");
    assert!(
        record_file(&peers, &corrupted).exists(),
        "a corrupted file is left alone"
    );

    // $GITHUB_ENV and $GITHUB_OUTPUT parse back to well-formed multiaddrs only.
    let env_lines = runner_file(&github_env);
    assert_eq!(env_lines.len(), 1, "{env_lines:?}");
    assert_eq!(env_lines[0].0, "PEERCACHE_BOOTSTRAP_PEERS");
    let mut items = assert_peer_addrs(&env_lines[0].1);
    items.sort();
    assert_eq!(items, want);
    let outputs = runner_file(&github_output);
    assert_eq!(
        outputs
            .iter()
            .find(|(k, _)| k == "peer-count")
            .map(|(_, v)| v.as_str()),
        Some("2")
    );
    let peers_output = &outputs.iter().find(|(k, _)| k == "peers").unwrap().1;
    assert_eq!(peers_output, &env_lines[0].1);

    // The other formats.
    let run = cli_at(&home, &cache, &hub, &env, &["discover", "--format", "env"]).ok();
    let out = stdout(&run);
    let line = out
        .trim()
        .strip_prefix("PEERCACHE_BOOTSTRAP_PEERS=")
        .unwrap();
    assert_eq!(assert_peer_addrs(line).len(), 2);
    let run = cli_at(&home, &cache, &hub, &env, &["discover", "--format", "json"]).ok();
    let records: Value = serde_json::from_slice(&run.stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 2);
    let good_record = records
        .iter()
        .find(|r| r["peer_id"] == good.as_str())
        .unwrap();
    assert_eq!(good_record["runner_name"], "hand-written");
    assert_eq!(good_record["multiaddrs"], json!([good_addr]));
    assert_eq!(good_record["sources"], json!([registry]));
    let static_record = records
        .iter()
        .find(|r| r["peer_id"] == static_peer.as_str())
        .unwrap();
    assert_eq!(static_record["sources"], json!(["bootstrap"]));

    // A bad spec is a usage error naming the setting.
    let run = cli_at(
        &home,
        &cache,
        &hub,
        &[("PEERCACHE_REGISTRY", "ftp:somewhere")],
        &["discover"],
    );
    let line = run.fails_with(2);
    assert!(line.contains("PEERCACHE_REGISTRY"), "{line}");
}

#[test]
fn register_needs_a_daemon_and_a_clean_stop_removes_the_record() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    let peers = root.path().join("peers");
    let registry = format!("dir:{}", peers.display());

    let home = root.path().join("lonely").join("home");
    let cache = root.path().join("lonely").join("cache");
    let run = cli_at(
        &home,
        &cache,
        &hub,
        &[("PEERCACHE_REGISTRY", &registry)],
        &["register"],
    );
    let line = run.fails_with(2);
    assert!(
        line.contains("start it with peercache serve --daemon"),
        "{line}"
    );

    // A long interval: only the start publishes.
    let a = node(root.path(), "a", &hub, &registry, "3600");
    let file = record_file(&peers, &a.peer_id);
    wait_for("the start's record", Duration::from_secs(10), || {
        file.exists()
    });
    let first: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    // 2.5 intervals.
    assert!(first["expires_at"].as_u64().unwrap() >= now() + 2 * 3600);

    let run = cli(
        &a,
        &hub,
        &[("PEERCACHE_REGISTRY", &registry)],
        &["register", "--ttl", "100"],
    )
    .ok();
    assert!(stdout(&run).contains("registered"), "{}", stdout(&run));
    let second: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let expires = second["expires_at"].as_u64().unwrap();
    assert!(
        expires <= now() + 100 && expires + 10 >= now() + 100,
        "{second}"
    );
    let run = cli(
        &a,
        &hub,
        &[("PEERCACHE_REGISTRY", &registry)],
        &["register", "--ttl", "x"],
    );
    assert!(run.fails_with(2).contains("--ttl"));

    // `peercache stop`: SIGTERM, a clean shutdown, the record removed.
    cli(&a, &hub, &[], &["stop"]).ok();
    assert!(!a.alive());
    assert!(!file.exists(), "a clean stop removes the record");
    assert!(
        a.log().contains("removed this node's record"),
        "{}",
        a.log()
    );
}

#[test]
fn connect_asks_the_daemon_to_dial_and_refuses_without_sharing() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    let a = node(root.path(), "a", &hub, "none", "3600");
    let b = node(root.path(), "b", &hub, "none", "3600");
    assert_eq!(a.peer_count(), 0);
    let bootstrap = b.bootstrap_addr();
    let run = cli(
        &a,
        &hub,
        &[
            ("PEERCACHE_REGISTRY", "none"),
            ("PEERCACHE_BOOTSTRAP_PEERS", &bootstrap),
        ],
        &["discover", "--connect"],
    )
    .ok();
    assert!(run.stderr.contains("to dial 1 address"), "{}", run.stderr);
    wait_for("a to verify b", Duration::from_secs(20), || {
        a.peer_count() == 1
    });

    // The API checks every address before dialing any.
    let (status, text) = http(
        "POST",
        &format!("{}/api/connect", a.api),
        &[("Content-Type", "application/json")],
        br#"["/ip4/127.0.0.1/tcp/1"]"#,
    );
    assert_eq!(status, 400, "{text}");
    let (status, _) = http("GET", &format!("{}/api/connect", a.api), &[], b"");
    assert_eq!(status, 405);

    // A daemon without a secret dials nobody: 409, and discover says so in one line.
    let sb = common::Sandbox::new();
    let _c = sb.start_daemon(&[("PEERCACHE_REGISTRY", "none")], &[]);
    let run = cli_at(
        &sb.home(),
        &sb.cache_dir(),
        &sb.hub,
        &[
            ("PEERCACHE_SECRET", ""),
            ("PEERCACHE_REGISTRY", "none"),
            ("PEERCACHE_BOOTSTRAP_PEERS", &bootstrap),
        ],
        &["discover", "--connect"],
    );
    assert!(
        run.fails_with(2).contains("does not share"),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// issue: registries

/// This host's address on its default route, when it has one other than loopback (the issue
/// registry publishes no loopback address).
fn routable_ip() -> Option<String> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| ip.to_string())
}

fn issue_node(root: &Path, name: &str, hub: &FakeHub, ip: &str, interval: &str) -> SwarmNode {
    node_with(
        root,
        name,
        hub,
        &format!("issue:{REPO}"),
        interval,
        vec![
            format!("/ip4/{ip}/tcp/0"),
            // Loopback too: it must never reach the issue.
            "/ip4/127.0.0.1/tcp/0".into(),
        ],
    )
}

/// The registry issue's comments (issue #1 of a fresh repository).
fn comments(hub: &FakeHub) -> Vec<Value> {
    hub.comments(REPO, 1)
}

fn comment_of<'a>(comments: &'a [Value], peer: &str) -> Vec<&'a Value> {
    let marker = format!("<!-- peercache-peer-registry:{peer} -->");
    comments
        .iter()
        .filter(|c| c["body"].as_str().unwrap_or("").starts_with(&marker))
        .collect()
}

fn record_in(comment: &Value) -> Value {
    let body = comment["body"].as_str().unwrap();
    let start = body.find("```json").unwrap() + 7;
    let end = start + body[start..].find("```").unwrap();
    let envelope: Value = serde_json::from_str(body[start..end].trim()).unwrap();
    envelope["record"].clone()
}

#[test]
fn issue_registry_register_discover_heartbeat_and_clean_stop() {
    let Some(ip) = routable_ip() else {
        eprintln!("skipped: this host has no address other than loopback");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    hub.add_repo(REPO);
    let a = issue_node(root.path(), "a", &hub, &ip, "1");
    let b = issue_node(root.path(), "b", &hub, &ip, "1");
    for n in [&a, &b] {
        wait_for(
            &format!("{} to verify its peer", n.name),
            Duration::from_secs(30),
            || n.peer_count() == 1,
        );
    }

    // One open registry issue (a node that opened another in a race closed its own), one
    // comment per node, no loopback address in them.
    let issues: Vec<Value> = hub
        .issues(REPO)
        .into_iter()
        .filter(|i| i["state"] == "open")
        .collect();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0]["title"], "peercache-peer-registry");
    assert_eq!(
        issues[0]["number"], 1,
        "the swarm settles on the lowest number"
    );
    let all = comments(&hub);
    assert_eq!(all.len(), 2, "{all:#?}");
    for n in [&a, &b] {
        let mine = comment_of(&all, &n.peer_id);
        assert_eq!(mine.len(), 1);
        let record = record_in(mine[0]);
        assert_eq!(record["runner_name"], n.name.as_str());
        let addrs = record["multiaddrs"].as_array().unwrap();
        assert!(!addrs.is_empty());
        for addr in addrs {
            let addr = addr.as_str().unwrap();
            assert!(addr.starts_with(&format!("/ip4/{ip}/tcp/")), "{addr}");
            assert!(addr.ends_with(&format!("/p2p/{}", n.peer_id)), "{addr}");
            assert!(!addr.contains("127.0.0.1"));
        }
    }

    // Heartbeat: the record is refreshed in place, not duplicated.
    let before = record_in(comment_of(&comments(&hub), &a.peer_id)[0]);
    std::thread::sleep(Duration::from_millis(2500));
    let all = comments(&hub);
    assert_eq!(all.len(), 2);
    let after = record_in(comment_of(&all, &a.peer_id)[0]);
    assert!(
        after["last_seen"].as_u64() > before["last_seen"].as_u64(),
        "{before} then {after}"
    );

    // discover through the registry (and `register` by hand: an upsert, not a second comment).
    let registry = format!("issue:{REPO}");
    let env = [("PEERCACHE_REGISTRY", registry.as_str())];
    cli(&a, &hub, &env, &["register"]).ok();
    assert_eq!(comment_of(&comments(&hub), &a.peer_id).len(), 1);
    let run = cli(&a, &hub, &env, &["discover"]).ok();
    let out = stdout(&run);
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty(), "stderr: {}", run.stderr);
    for line in &lines {
        assert!(line.ends_with(&format!("/p2p/{}", b.peer_id)), "{line}");
    }

    // A clean stop deletes the node's comment.
    cli(&b, &hub, &[], &["stop"]).ok();
    let left = comments(&hub);
    assert!(comment_of(&left, &b.peer_id).is_empty(), "{left:#?}");
    assert_eq!(comment_of(&left, &a.peer_id).len(), 1);
}

#[test]
fn issue_registry_ignores_forged_and_broken_comments_and_deletes_expired_ones() {
    let Some(ip) = routable_ip() else {
        eprintln!("skipped: this host has no address other than loopback");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    hub.add_repo(REPO);
    // Long intervals: only the start publishes.
    let a = issue_node(root.path(), "a", &hub, &ip, "3600");
    wait_for("a's comment", Duration::from_secs(20), || {
        comment_of(&comments(&hub), &a.peer_id).len() == 1
    });
    let c = issue_node(root.path(), "c", &hub, &ip, "3600");
    wait_for("c's comment", Duration::from_secs(20), || {
        comment_of(&comments(&hub), &c.peer_id).len() == 1
    });
    let registry = format!("issue:{REPO}");
    // A short interval for the command line too: it reads the list fresh, not from the cache
    // the daemon filled a moment ago.
    let env = [
        ("PEERCACHE_REGISTRY", registry.as_str()),
        ("PEERCACHE_REGISTRY_INTERVAL", "1"),
    ];

    // c's record expires in a second; c dies without cleaning up.
    cli(&c, &hub, &env, &["register", "--ttl", "1"]).ok();
    c.kill(libc::SIGKILL);
    wait_for("c to die", Duration::from_secs(10), || !c.alive());

    // The issue the node opened is locked: a stranger (another token) cannot comment at all.
    let issue = &hub.issues(REPO)[0];
    assert_eq!(issue["locked"], true, "{issue}");
    let response = post(
        &hub,
        "/repos/octo/fleet/issues/1/comments",
        "token stranger",
        json!({"body": "spam"}),
    );
    assert_eq!(response.0, 403, "{}", response.1);
    // Someone of the fleet without the secret (another workflow's token) comments a record
    // pointing at its own host, and pastes a broken one.
    let stranger = FLEET_TOKEN;
    let fake_peer = PeerId::random().to_string();
    let forged_record = json!({
        "version": 1, "peer_id": fake_peer,
        "multiaddrs": [format!("/ip4/10.6.6.6/tcp/9000/p2p/{fake_peer}")],
        "last_seen": now(), "expires_at": now() + 3600,
    });
    let forged = format!(
        "<!-- peercache-peer-registry:{fake_peer} -->\n```json\n{}\n```\n",
        json!({"record": forged_record, "mac": "00".repeat(32)})
    );
    let broken_peer = PeerId::random().to_string();
    let broken = format!(
        "<!-- peercache-peer-registry:{broken_peer} -->\n```json\n{{\"record\": {{\"peer_id\": \n```\n"
    );
    for body in [&forged, &broken] {
        let response = post(
            &hub,
            "/repos/octo/fleet/issues/1/comments",
            stranger,
            json!({"body": body}),
        );
        assert_eq!(response.0, 201, "{}", response.1);
    }
    std::thread::sleep(Duration::from_millis(1100));

    let run = cli(&a, &hub, &env, &["discover", "--format", "json"]).ok();
    let found: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(found, json!([]), "stderr: {}", run.stderr);
    // One warning for both (a flood of them must not flood the log), naming neither's text.
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("MAC does not verify"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    assert!(
        warnings[0].contains("ignoring 2 comment(s)"),
        "{}",
        warnings[0]
    );
    assert!(!run.stderr.contains(&fake_peer), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"));

    let left = comments(&hub);
    assert!(
        comment_of(&left, &c.peer_id).is_empty(),
        "the expired record was deleted: {left:#?}"
    );
    assert_eq!(
        comment_of(&left, &fake_peer).len(),
        1,
        "a forged comment is never deleted"
    );
    assert_eq!(comment_of(&left, &broken_peer).len(), 1);
    assert_eq!(comment_of(&left, &a.peer_id).len(), 1);

    // Without the secret, the issue registry refuses in one line.
    let run = cli(
        &a,
        &hub,
        &[("PEERCACHE_SECRET", ""), ("PEERCACHE_REGISTRY", &registry)],
        &["discover"],
    );
    assert!(run.fails_with(2).contains("secret"), "{}", run.stderr);
}

#[test]
fn issue_registry_reads_only_recent_comments_so_an_old_flood_hides_nobody() {
    let Some(ip) = routable_ip() else {
        eprintln!("skipped: this host has no address other than loopback");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    hub.add_repo(REPO);
    // The registry issue, named in the setting (#1), and 2,100 ordinary comments from a day ago:
    // more than the 20 pages a reader goes through oldest first.
    let (status, text) = post(
        &hub,
        "/repos/octo/fleet/issues",
        FLEET_TOKEN,
        json!({"title": "peercache-peer-registry", "body": "by hand"}),
    );
    assert_eq!(status, 201, "{text}");
    for i in 0..2_100 {
        let (status, text) = post(
            &hub,
            "/repos/octo/fleet/issues/1/comments",
            "token flooder",
            json!({"body": format!("flood {i}")}),
        );
        assert_eq!(status, 201, "{text}");
    }
    assert_eq!(
        hub.age_comments(REPO, 1, Duration::from_secs(86_400)),
        2_100
    );

    let registry = format!("issue:{REPO}#1");
    let a = node_with(
        root.path(),
        "a",
        &hub,
        &registry,
        "3600",
        vec![format!("/ip4/{ip}/tcp/0")],
    );
    wait_for("a's comment", Duration::from_secs(30), || {
        comment_of(&comments(&hub), &a.peer_id).len() == 1
    });
    let reader_home = root.path().join("reader").join("home");
    let reader_cache = root.path().join("reader").join("cache");
    let before = hub.stats().total;
    let run = cli_at(
        &reader_home,
        &reader_cache,
        &hub,
        &[("PEERCACHE_REGISTRY", registry.as_str())],
        &["discover", "--format", "json"],
    )
    .ok();
    let found: Value = serde_json::from_slice(&run.stdout).unwrap();
    let ids: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["peer_id"].as_str())
        .collect();
    assert_eq!(ids, [a.peer_id.as_str()], "stderr: {}", run.stderr);
    let calls = hub.stats().total - before;
    assert!(calls <= 2, "one discover cost {calls} calls");
}

fn post(hub: &FakeHub, path: &str, auth: &str, body: Value) -> (u16, String) {
    http(
        "POST",
        &format!("{}{path}", hub.url()),
        &[
            ("Authorization", auth),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

/// One HTTP/1.1 request with a body over a plain socket: the status and the body as text.
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream = std::net::TcpStream::connect(authority).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn issue_registry_creation_refused_is_a_clear_error() {
    let Some(ip) = routable_ip() else {
        eprintln!("skipped: this host has no address other than loopback");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    hub.add_repo(REPO);
    hub.set_writes_forbidden(true);
    let a = issue_node(root.path(), "a", &hub, &ip, "3600");
    let registry = format!("issue:{REPO}");
    let run = cli(
        &a,
        &hub,
        &[("PEERCACHE_REGISTRY", &registry)],
        &["register"],
    );
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("cannot create the registry issue"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("403"), "{}", run.stderr);
    assert!(run.stderr.contains("issues: write"), "{}", run.stderr);
    assert!(hub.issues(REPO).is_empty());
    wait_for("the daemon's warning", Duration::from_secs(10), || {
        a.log().contains("cannot create the registry issue")
    });
    // Reading needs no write: discover works (and finds nobody).
    let run = cli(
        &a,
        &hub,
        &[("PEERCACHE_REGISTRY", &registry)],
        &["discover"],
    )
    .ok();
    assert!(stdout(&run).is_empty());
}

#[test]
fn issue_registry_heartbeats_stay_under_ten_calls_per_runner_per_hour() {
    let Some(ip) = routable_ip() else {
        eprintln!("skipped: this host has no address other than loopback");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    hub.add_repo(REPO);
    let auth = format!("Bearer {FLEET_TOKEN}");
    let mine = |stats: &fakehub::Stats| -> Vec<fakehub::RequestRecord> {
        stats
            .requests
            .iter()
            .filter(|r| r.authorization.as_deref() == Some(auth.as_str()))
            .cloned()
            .collect()
    };
    let writes = |records: &[fakehub::RequestRecord]| {
        records
            .iter()
            .filter(|r| {
                r.method == "PATCH" || (r.method == "POST" && r.path().ends_with("/comments"))
            })
            .count()
    };

    // The registry's own interval, scaled down: 2 s stands for 30 min.
    let interval = Duration::from_secs(2);
    let a = issue_node(root.path(), "a", &hub, &ip, "2");

    // Start: everything up to and including the first heartbeat's list.
    wait_for("the first record", Duration::from_secs(20), || {
        writes(&mine(&hub.stats())) == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let startup = mine(&hub.stats());
    let startup_calls = startup.len();
    let startup_spent = startup.iter().filter(|r| r.quota_spent).count();

    // What the composite action runs next: `register` (finds the daemon's record current and
    // writes nothing) and `discover` (reads the list the shared cache holds). Under a token of
    // their own, to count them apart from the heartbeats running meanwhile.
    let cli_auth = "Bearer token-of-the-steps";
    let registry = format!("issue:{REPO}");
    // The same job: the same runner, repository and workflow as the daemon.
    let steps_env = [
        ("PEERCACHE_REGISTRY", registry.as_str()),
        ("PEERCACHE_TOKEN", "token-of-the-steps"),
        ("RUNNER_NAME", "a"),
        ("GITHUB_REPOSITORY", REPO),
        ("GITHUB_WORKFLOW", "CI"),
    ];
    let mut register_env = steps_env.to_vec();
    register_env.push(("PEERCACHE_REGISTRY_INTERVAL", "2"));
    let steps = |hub: &FakeHub| {
        hub.stats()
            .requests
            .iter()
            .filter(|r| r.authorization.as_deref() == Some(cli_auth))
            .count()
    };
    cli(&a, &hub, &register_env, &["register"]).ok();
    let register_calls = steps(&hub);
    let run = cli(&a, &hub, &steps_env, &["discover"]).ok();
    assert!(stdout(&run).is_empty(), "nobody else runs");
    let discover_calls = steps(&hub) - register_calls;
    assert_eq!(
        comment_of(&comments(&hub), &a.peer_id).len(),
        1,
        "register did not add a comment"
    );

    // Steady state: N heartbeats.
    let n = 4;
    let start_writes = writes(&startup);
    let t0 = Instant::now();
    wait_for("four more heartbeats", Duration::from_secs(30), || {
        writes(&mine(&hub.stats())) >= start_writes + n
    });
    // Let the last heartbeat's list land.
    std::thread::sleep(Duration::from_millis(500));
    let elapsed = t0.elapsed();
    let all = mine(&hub.stats());
    let beats = writes(&all) - start_writes;
    let window = &all[startup_calls..];
    let register_window: Vec<_> = window
        .iter()
        .filter(|r| r.method == "PATCH" || r.method == "POST")
        .collect();
    assert_eq!(register_window.len(), beats, "one write per heartbeat");
    let per_beat = window.len() as f64 / beats as f64;
    let per_beat_spent = window.iter().filter(|r| r.quota_spent).count() as f64 / beats as f64;

    // Stop: one DELETE.
    let before_stop = all.len();
    cli(&a, &hub, &[], &["stop"]).ok();
    let stop_calls = mine(&hub.stats()).len() - before_stop;

    let default_interval = peercache::registry::ISSUE_INTERVAL.as_secs_f64();
    let beats_per_hour = 3600.0 / default_interval;
    let steady_per_hour = per_beat * beats_per_hour;
    // The first hour: the start (one heartbeat), register and discover, the rest of the hour's
    // heartbeats, the stop. Locking the registry issue is paid once per repository, by the
    // node that opens it (the issue then lives on), not by each runner.
    let lock_calls = startup.iter().filter(|r| r.method == "PUT").count();
    assert_eq!(lock_calls, 1, "the node that opens the issue locks it");
    let first_hour = (startup_calls - lock_calls + register_calls + discover_calls + stop_calls)
        as f64
        + per_beat * (beats_per_hour - 1.0);
    println!(
        "startup: {startup_calls} calls ({startup_spent} spending quota): {:?}",
        startup
            .iter()
            .map(|r| format!("{} {} {}", r.method, r.path_and_query, r.status))
            .collect::<Vec<_>>()
    );
    println!(
        "{beats} heartbeats in {elapsed:?} (interval {interval:?}): {} calls, {per_beat:.2} per heartbeat ({per_beat_spent:.2} spending quota)",
        window.len()
    );
    println!("register: {register_calls} call(s), discover: {discover_calls}, stop: {stop_calls}");
    println!(
        "at the default interval ({default_interval} s): {steady_per_hour:.1} calls per runner per hour in steady state (+1 hourly issue look-up), {first_hour:.1} in the first hour"
    );
    assert!(
        per_beat <= 2.5,
        "a heartbeat is one PATCH and one list: {window:#?}"
    );
    assert!(steady_per_hour + 1.0 < 10.0);
    assert!(first_hour < 10.0);
    assert_eq!(stop_calls, 1);
    assert_eq!(
        startup_calls, 6,
        "first node ever: look up, create, lock, look up, list, post"
    );
    assert!(register_calls <= 1 && discover_calls == 0);
    // Nothing was duplicated along the way.
    assert!(
        comments(&hub).is_empty(),
        "the stop deleted the only comment"
    );
}
