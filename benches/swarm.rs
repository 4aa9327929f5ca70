//! The swarm's figures: upstream calls when many nodes want the same endpoints at once, peer-hit
//! latency (whole-process `peercache fetch`, and through the local API), daemon memory idle and
//! with 10 peers, and start-to-ready time.
//!
//! `cargo bench --bench swarm` (or `scripts/bench.sh`, which passes the static musl binary as
//! `PEERCACHE_BIN`). Writes the figures as JSON to `target/bench/swarm.json`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::swarm::{NodeSpec, SwarmNode, start_node, wait_for};
use fakehub::{FakeHub, Options};

const BODY: usize = 20 * 1024;

fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn fetch_whole_process(
    binary: &Path,
    hub: &FakeHub,
    node: &SwarmNode,
    endpoint: &str,
) -> (Duration, String) {
    let started = Instant::now();
    let out = Command::new(binary)
        .args(["fetch", "-i", endpoint])
        .env_clear()
        .env("HOME", node.home.parent().unwrap())
        .env("PEERCACHE_HOME", &node.home)
        .env("PEERCACHE_CACHE_DIR", &node.cache)
        // The daemon is used only when it calls the same upstream as this fetch would.
        .env("PEERCACHE_API_URL", hub.url())
        .env("PEERCACHE_TOKEN", format!("token-of-{}", node.name))
        .output()
        .expect("run peercache fetch");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "fetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let source = text
        .lines()
        .find_map(|l| l.strip_prefix("x-peercache-source: "))
        .unwrap_or("none")
        .trim()
        .to_string();
    (took, source)
}

fn main() {
    let binary: PathBuf = std::env::var_os("PEERCACHE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(common::PEERCACHE));
    let nodes_in_burst: usize = std::env::var("BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let endpoints: usize = std::env::var("BENCH_ENDPOINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let samples: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start_with(Options {
        latency: Duration::from_millis(50),
        ..Options::default()
    });
    hub.set_record_limit(Some(1000));
    let spec = || NodeSpec {
        binary: Some(&binary),
        ..NodeSpec::default()
    };

    // Idle: one daemon, no peers.
    let started = Instant::now();
    let lone = start_node(root.path(), "lone", &hub, spec());
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = lone.rss_kb();
    drop(lone);

    // A swarm of nodes_in_burst + 1: everyone bootstraps to node0 only; Kademlia does the rest.
    let first = start_node(root.path(), "node0", &hub, spec());
    let mut nodes = vec![first];
    for i in 1..=nodes_in_burst {
        let bootstrap = vec![nodes[0].bootstrap_addr()];
        nodes.push(start_node(
            root.path(),
            &format!("node{i}"),
            &hub,
            NodeSpec {
                bootstrap,
                ..spec()
            },
        ));
    }
    let mesh_started = Instant::now();
    for node in &nodes {
        wait_for(
            &format!("{} to know every member", node.name),
            Duration::from_secs(120),
            || node.peer_count() == nodes_in_burst as u64,
        );
    }
    let mesh_ms = mesh_started.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_secs(2));
    let rss_with_peers = nodes[0].rss_kb();

    // The burst: nodes 1..=N want the same endpoints at the same moment.
    fakehub::generate_resources(&hub, endpoints, BODY);
    hub.reset_stats();
    let burst_started = Instant::now();
    std::thread::scope(|scope| {
        for node in &nodes[1..] {
            for e in 0..endpoints {
                scope.spawn(move || {
                    let r = node.get(&format!("gh/repos/octo/repo{e}"));
                    assert_eq!(r.status, 200);
                    assert_eq!(r.body, fakehub::repo_body(e, BODY), "wrong body");
                });
            }
        }
    });
    let burst_ms = burst_started.elapsed().as_secs_f64() * 1000.0;
    let burst_calls = hub.total();

    // Peer hits: node1 holds `samples` fresh entries; node2 fetches each once (whole process),
    // node3 each once through its local API.
    for i in 0..samples {
        hub.put_json(&format!("/repos/octo/peer{i}"), fakehub::repo_body(i, BODY));
        let r = nodes[1].get(&format!("gh/repos/octo/peer{i}"));
        assert_eq!(r.source(), "upstream");
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut peer_process = Vec::new();
    let mut peer_sources = std::collections::BTreeMap::new();
    for i in 0..samples {
        let (took, source) =
            fetch_whole_process(&binary, &hub, &nodes[2], &format!("repos/octo/peer{i}"));
        *peer_sources.entry(source.clone()).or_insert(0) += 1;
        if source == "peer" {
            peer_process.push(took);
        }
    }
    let mut peer_api = Vec::new();
    for i in 0..samples {
        let started = Instant::now();
        let r = nodes[3].get(&format!("gh/repos/octo/peer{i}"));
        let took = started.elapsed();
        if r.source() == "peer" {
            peer_api.push(took);
        }
    }
    let mut local_process = Vec::new();
    for i in 0..samples {
        let (took, source) =
            fetch_whole_process(&binary, &hub, &nodes[2], &format!("repos/octo/peer{i}"));
        if source == "local" {
            local_process.push(took);
        }
    }
    let rss_after = nodes[0].rss_kb();

    println!("binary: {}", binary.display());
    println!("stand-in upstream latency 50 ms, bodies {BODY} bytes");
    println!();
    println!("{:<58} {:>12}", "figure", "value");
    let row = |name: &str, value: String| println!("{name:<58} {value:>12}");
    row(
        &format!("upstream calls, {nodes_in_burst} nodes x {endpoints} endpoints at once"),
        format!("{burst_calls} / {}", nodes_in_burst * endpoints),
    );
    row("  burst wall time", format!("{burst_ms:.0} ms"));
    row(
        &format!(
            "time until {} nodes know each other (Kademlia)",
            nodes_in_burst + 1
        ),
        format!("{mesh_ms:.0} ms"),
    );
    row(
        "peer hit, whole-process fetch via daemon: median",
        format!("{:.2} ms", percentile(&peer_process, 50.0)),
    );
    row(
        "peer hit, whole-process fetch via daemon: p99",
        format!("{:.2} ms", percentile(&peer_process, 99.0)),
    );
    row(
        "peer hit, local HTTP API: median",
        format!("{:.2} ms", percentile(&peer_api, 50.0)),
    );
    row(
        "peer hit, local HTTP API: p99",
        format!("{:.2} ms", percentile(&peer_api, 99.0)),
    );
    row(
        "local hit, whole-process fetch via daemon: median",
        format!("{:.2} ms", percentile(&local_process, 50.0)),
    );
    row(
        "local hit, whole-process fetch via daemon: p99",
        format!("{:.2} ms", percentile(&local_process, 99.0)),
    );
    row(
        "daemon RSS, idle (no peers)",
        format!("{:.1} MB", idle_rss as f64 / 1024.0),
    );
    row(
        &format!("daemon RSS with {nodes_in_burst} peers"),
        format!("{:.1} MB", rss_with_peers as f64 / 1024.0),
    );
    row(
        &format!("daemon RSS with {nodes_in_burst} peers, after the runs"),
        format!("{:.1} MB", rss_after as f64 / 1024.0),
    );
    row(
        "serve --daemon, start to ready",
        format!("{ready_ms:.0} ms"),
    );
    println!("peer-hit samples by source: {peer_sources:?}");

    let report = serde_json::json!({
        "binary": binary,
        "burst": {"nodes": nodes_in_burst, "endpoints": endpoints, "upstream_calls": burst_calls, "wall_ms": burst_ms},
        "mesh_ms": mesh_ms,
        "peer_hit_process_ms": {"median": percentile(&peer_process, 50.0), "p99": percentile(&peer_process, 99.0), "samples": peer_process.len()},
        "peer_hit_api_ms": {"median": percentile(&peer_api, 50.0), "p99": percentile(&peer_api, 99.0), "samples": peer_api.len()},
        "local_hit_process_ms": {"median": percentile(&local_process, 50.0), "p99": percentile(&local_process, 99.0)},
        "rss_kb": {"idle": idle_rss, "with_peers": rss_with_peers, "peers": nodes_in_burst, "after": rss_after},
        "start_to_ready_ms": ready_ms,
    });
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench");
    let _ = std::fs::create_dir_all(&out_dir);
    let _ = std::fs::write(
        out_dir.join("swarm.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    );
    println!("written: {}", out_dir.join("swarm.json").display());
}
