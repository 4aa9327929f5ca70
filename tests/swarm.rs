//! The swarm, end to end: several `peercache serve --daemon` processes with their own homes,
//! caches, ports and tokens (as several CI jobs would be), connected through
//! `PEERCACHE_BOOTSTRAP_PEERS`, in front of one stand-in GitHub API.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::PEERCACHE;
use fakehub::{FakeHub, Options};

const SECRET: &str = "swarm-secret-for-tests";

/// One running daemon.
struct Daemon {
    name: String,
    home: PathBuf,
    cache: PathBuf,
    api: String,
    peer_id: String,
    pid: i32,
    tcp_addr: String,
    quic_addr: Option<String>,
}

struct NodeSpec<'a> {
    secret: Option<&'a str>,
    bootstrap: Vec<String>,
    listen: Vec<String>,
    env: Vec<(&'a str, String)>,
}

impl Default for NodeSpec<'_> {
    fn default() -> Self {
        NodeSpec {
            secret: Some(SECRET),
            bootstrap: Vec::new(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            env: Vec::new(),
        }
    }
}

fn start(root: &Path, name: &str, hub: &FakeHub, spec: NodeSpec) -> Daemon {
    let home = root.join(name).join("home");
    let cache = root.join(name).join("cache");
    let mut cmd = Command::new(PEERCACHE);
    cmd.arg("serve")
        .arg("--daemon")
        .arg("--api-addr")
        .arg("127.0.0.1:0");
    for listen in &spec.listen {
        cmd.arg("--listen").arg(listen);
    }
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root)
        .env("PEERCACHE_HOME", &home)
        .env("PEERCACHE_CACHE_DIR", &cache)
        .env("PEERCACHE_API_URL", hub.url())
        .env("PEERCACHE_TOKEN", format!("token-of-{name}"))
        .env("PEERCACHE_LOG", "info,peercache=debug")
        .env("RUNNER_NAME", name)
        .env("PEERCACHE_BOOTSTRAP_PEERS", spec.bootstrap.join(","));
    if let Some(secret) = spec.secret {
        cmd.env("PEERCACHE_SECRET", secret);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("start peercache serve --daemon");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "serve --daemon failed for {name}: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let api = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PEERCACHE_API="))
        .expect("PEERCACHE_API line")
        .trim()
        .to_string();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("serve.json")).unwrap()).unwrap();
    let peer_id = state["peer_id"].as_str().unwrap().to_string();
    let addrs: Vec<String> = state["listen_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let tcp_addr = addrs
        .iter()
        .find(|a| a.contains("/tcp/"))
        .expect("a tcp listen address")
        .clone();
    let quic_addr = addrs.iter().find(|a| a.contains("/quic-v1")).cloned();
    Daemon {
        name: name.to_string(),
        home,
        cache,
        api,
        peer_id,
        pid: state["pid"].as_i64().unwrap() as i32,
        tcp_addr,
        quic_addr,
    }
}

impl Daemon {
    fn bootstrap_addr(&self) -> String {
        format!("{}/p2p/{}", self.tcp_addr, self.peer_id)
    }

    fn get(&self, path: &str) -> Response {
        http_get(
            &format!("{}/{path}", self.api),
            &[("authorization", format!("Bearer token-of-{}", self.name))],
        )
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path);
        assert_eq!(
            response.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&response.body)
        );
        serde_json::from_slice(&response.body).unwrap()
    }

    fn peer_count(&self) -> u64 {
        self.json("api/peers")["peer_count"].as_u64().unwrap()
    }

    fn swarm(&self) -> serde_json::Value {
        self.json("api/swarm")
    }

    fn kill(&self, signal: i32) {
        unsafe {
            libc::kill(self.pid, signal);
        }
    }

    /// Running, and not a zombie waiting to be reaped.
    fn alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z')),
            Err(_) => false,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            self.kill(libc::SIGKILL);
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn source(&self) -> String {
        self.header("x-peercache-source")
            .unwrap_or("none")
            .to_string()
    }
}

/// A minimal HTTP/1.1 GET over loopback (the tests must not trust the code under test).
fn http_get(url: &str, headers: &[(&str, String)]) -> Response {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = TcpStream::connect(host).expect("connect to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// A full mesh: node i bootstraps to every node before it.
fn swarm_of(root: &Path, hub: &FakeHub, n: usize) -> Vec<Daemon> {
    let mut nodes: Vec<Daemon> = Vec::new();
    for i in 0..n {
        let bootstrap = nodes.iter().map(Daemon::bootstrap_addr).collect();
        nodes.push(start(
            root,
            &format!("node{i}"),
            hub,
            NodeSpec {
                bootstrap,
                ..NodeSpec::default()
            },
        ));
    }
    for node in &nodes {
        wait_until(
            &format!("{} to verify {} peers", node.name, n - 1),
            Duration::from_secs(30),
            || node.peer_count() == (n - 1) as u64,
        );
    }
    nodes
}

#[test]
fn five_nodes_twenty_endpoints_reach_github_twenty_times() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start_with(Options {
        latency: Duration::from_millis(50),
        ..Options::default()
    });
    fakehub::generate_resources(&hub, 20, 20 * 1024);
    let nodes = swarm_of(root.path(), &hub, 5);

    // 100 requests at once: every node wants every endpoint.
    let results: Vec<(usize, usize, Response)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..nodes.len())
            .flat_map(|n| (0..20).map(move |e| (n, e)))
            .map(|(n, e)| {
                let node = &nodes[n];
                scope.spawn(move || (n, e, node.get(&format!("gh/repos/octo/repo{e}"))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut upstream = 0;
    let mut peer = 0;
    for (n, e, response) in &results {
        assert_eq!(response.status, 200, "node{n} repo{e}");
        assert_eq!(
            response.body,
            fakehub::repo_body(*e, 20 * 1024),
            "node{n} got a wrong body for repo{e}"
        );
        match response.source().as_str() {
            "upstream" => upstream += 1,
            "peer" => peer += 1,
            other => panic!("node{n} repo{e}: unexpected source {other}"),
        }
    }
    let total = hub.total();
    println!(
        "5 nodes x 20 endpoints: {total} upstream requests, {upstream} answers from upstream, {peer} from peers"
    );
    for node in &nodes {
        println!("{}: {}", node.name, node.swarm());
    }
    assert_eq!(total, 20, "each endpoint must reach GitHub once per swarm");
    assert_eq!((upstream, peer), (20, 80));
    for e in 0..20 {
        assert_eq!(hub.count(&format!("/repos/octo/repo{e}")), 1);
    }
}

#[test]
fn a_node_with_another_secret_learns_nothing_and_the_swarm_keeps_serving() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 4, 2048);
    let nodes = swarm_of(root.path(), &hub, 3);
    assert_eq!(nodes[0].get("gh/repos/octo/repo0").source(), "upstream");

    let stranger = start(
        root.path(),
        "stranger",
        &hub,
        NodeSpec {
            secret: Some("another-secret"),
            bootstrap: vec![nodes[0].bootstrap_addr()],
            ..NodeSpec::default()
        },
    );
    wait_until(
        "node0 to refuse the stranger",
        Duration::from_secs(20),
        || nodes[0].swarm()["auth_failures"].as_u64().unwrap() >= 1,
    );

    // Its own requests go upstream, even for what the swarm holds.
    assert_eq!(stranger.get("gh/repos/octo/repo0").source(), "upstream");
    assert_eq!(hub.count("/repos/octo/repo0"), 2);

    // The swarm keeps serving: node1 fetches, node2 gets it from a peer.
    assert_eq!(nodes[1].get("gh/repos/octo/repo1").source(), "upstream");
    let from_peer = nodes[2].get("gh/repos/octo/repo1");
    assert_eq!(from_peer.source(), "peer");
    assert_eq!(from_peer.body, fakehub::repo_body(1, 2048));

    // The stranger received no entry and could read no announcement (no key id); nobody counts it.
    std::thread::sleep(Duration::from_millis(500));
    let seen = stranger.swarm();
    assert_eq!(seen["entries_received"], 0, "{seen}");
    assert_eq!(seen["announcements_received"], 0, "{seen}");
    assert_eq!(stranger.peer_count(), 0);
    for node in &nodes {
        assert_eq!(
            node.peer_count(),
            2,
            "{} must not count the stranger",
            node.name
        );
    }
    assert!(
        !stranger.log().contains("repos/octo/repo1"),
        "the stranger's log names a swarm URL"
    );
}

#[test]
fn a_peer_killed_mid_transfer_falls_back_to_upstream() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 1, 20 * 1024);
    let slow = start(
        root.path(),
        "slow",
        &hub,
        NodeSpec {
            env: vec![("PEERCACHE_TEST_ONLY_FAULT", "slow-responses:4000".into())],
            ..NodeSpec::default()
        },
    );
    let requester = start(
        root.path(),
        "requester",
        &hub,
        NodeSpec {
            bootstrap: vec![slow.bootstrap_addr()],
            ..NodeSpec::default()
        },
    );
    wait_until(
        "the two nodes to verify each other",
        Duration::from_secs(20),
        || requester.peer_count() == 1,
    );
    assert_eq!(slow.get("gh/repos/octo/repo0").source(), "upstream");
    wait_until("the announcement", Duration::from_secs(10), || {
        requester.swarm()["announcements_received"]
            .as_u64()
            .unwrap()
            >= 1
    });

    let started = Instant::now();
    let answer = std::thread::scope(|scope| {
        let request = scope.spawn(|| requester.get("gh/repos/octo/repo0"));
        // The holder is now sitting on the pull; kill it in the middle of the transfer.
        std::thread::sleep(Duration::from_millis(800));
        slow.kill(libc::SIGKILL);
        request.join().unwrap()
    });
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        fakehub::repo_body(0, 20 * 1024),
        "no wrong body"
    );
    assert_eq!(answer.source(), "upstream");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the fallback must not wait for the dead peer's delay"
    );
    assert_eq!(hub.count("/repos/octo/repo0"), 2);
}

#[test]
fn a_peer_sending_tampered_entries_is_rejected_counted_and_dropped() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 3, 4096);
    let liar = start(
        root.path(),
        "liar",
        &hub,
        NodeSpec {
            env: vec![("PEERCACHE_TEST_ONLY_FAULT", "tamper-bodies".into())],
            ..NodeSpec::default()
        },
    );
    let honest = start(
        root.path(),
        "honest",
        &hub,
        NodeSpec {
            bootstrap: vec![liar.bootstrap_addr()],
            ..NodeSpec::default()
        },
    );
    wait_until(
        "the two nodes to verify each other",
        Duration::from_secs(20),
        || honest.peer_count() == 1,
    );

    for e in 0..3 {
        let path = format!("gh/repos/octo/repo{e}");
        assert_eq!(liar.get(&path).source(), "upstream");
        wait_until("the announcement", Duration::from_secs(10), || {
            honest.swarm()["announcements_received"].as_u64().unwrap() > e as u64
        });
        let answer = honest.get(&path);
        assert_eq!(
            answer.source(),
            "upstream",
            "a tampered entry must never be served"
        );
        assert_eq!(answer.body, fakehub::repo_body(e, 4096));
        // What the honest node stored is the true body, served locally from now on.
        let again = honest.get(&path);
        assert_eq!(again.source(), "local");
        assert_eq!(again.body, fakehub::repo_body(e, 4096));
    }
    let seen = honest.swarm();
    assert_eq!(seen["entries_rejected"], 3, "{seen}");
    assert_eq!(seen["entries_received"], 0, "{seen}");
    wait_until(
        "the liar to be disconnected",
        Duration::from_secs(10),
        || honest.peer_count() == 0,
    );
    assert!(honest.log().contains("rejected an entry"));
}

#[test]
fn a_restarted_node_keeps_its_identity_and_cache_and_rejoins() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 2, 2048);
    let port = free_port();
    let listen = vec![
        format!("/ip4/127.0.0.1/tcp/{port}"),
        format!("/ip4/127.0.0.1/udp/{port}/quic-v1"),
    ];
    let first = start(
        root.path(),
        "anchor",
        &hub,
        NodeSpec {
            listen: listen.clone(),
            ..NodeSpec::default()
        },
    );
    let quic = format!(
        "{}/p2p/{}",
        first.quic_addr.clone().expect("a QUIC address"),
        first.peer_id
    );
    // The other node reaches it over QUIC.
    let other = start(
        root.path(),
        "other",
        &hub,
        NodeSpec {
            bootstrap: vec![quic],
            ..NodeSpec::default()
        },
    );
    wait_until(
        "the two nodes to verify each other",
        Duration::from_secs(20),
        || other.peer_count() == 1,
    );
    assert_eq!(first.get("gh/repos/octo/repo0").source(), "upstream");

    let old_id = first.peer_id.clone();
    let stop = Command::new(PEERCACHE)
        .arg("stop")
        .env("PEERCACHE_HOME", &first.home)
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert!(!first.alive());
    wait_until("the peer to notice", Duration::from_secs(20), || {
        other.peer_count() == 0
    });

    let again = start(
        root.path(),
        "anchor",
        &hub,
        NodeSpec {
            listen,
            ..NodeSpec::default()
        },
    );
    assert_eq!(again.peer_id, old_id, "same identity after a restart");
    assert_eq!(again.cache, first.cache);
    let cached = again.get("gh/repos/octo/repo0");
    assert_eq!(cached.source(), "local", "the cache survived the restart");
    // The other node re-dials its bootstrap peer with backoff.
    wait_until(
        "the restarted node to rejoin",
        Duration::from_secs(30),
        || other.peer_count() == 1 && again.peer_count() == 1,
    );
    assert_eq!(other.get("gh/repos/octo/repo0").source(), "peer");
    assert_eq!(hub.count("/repos/octo/repo0"), 1);
}

fn free_port() -> u16 {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
    if tcp.is_ok() { port } else { free_port() }
}

#[test]
fn a_node_that_knows_one_member_finds_all_of_them_through_kademlia() {
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 1, 2048);
    let nodes = swarm_of(root.path(), &hub, 3);
    let late = start(
        root.path(),
        "late",
        &hub,
        NodeSpec {
            bootstrap: vec![nodes[2].bootstrap_addr()],
            ..NodeSpec::default()
        },
    );
    wait_until(
        "the late node to find all three members",
        Duration::from_secs(30),
        || late.peer_count() == 3,
    );
    for node in &nodes {
        wait_until(
            &format!("{} to see the late node", node.name),
            Duration::from_secs(10),
            || node.peer_count() == 3,
        );
    }
    // And it shares with the members it was never told about.
    assert_eq!(nodes[0].get("gh/repos/octo/repo0").source(), "upstream");
    assert_eq!(late.get("gh/repos/octo/repo0").source(), "peer");
    assert_eq!(hub.count("/repos/octo/repo0"), 1);
}
