//! Footprint: the binary's size, a daemon's resident memory idle and with peers, and
//! start-to-ready time.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::bench::{BODY, Bench, api_get};
use crate::common::swarm::{SwarmNode, wait_for};
use crate::stats::{Summary, summarize};

/// Resident memory of the first daemon with a number of peers.
#[derive(Debug, Clone, Serialize)]
pub struct RssWithPeers {
    /// Verified peers it had.
    pub peers: usize,
    /// `VmRSS`, kB, 2 s after the last one joined.
    pub rss_kb: u64,
}

/// The footprint figures.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    /// Size of the binary, bytes.
    pub binary_bytes: u64,
    /// What `file` says of it (`static-pie linked`, …), when `file` is there.
    pub binary_kind: Option<String>,
    /// A lone daemon, 2 s after it started.
    pub rss_idle_kb: u64,
    /// With 10 and 20 peers (quick: 2).
    pub rss_with_peers: Vec<RssWithPeers>,
    /// With the most peers, after every node fetched 100 endpoints (the cache index in memory,
    /// the swarm's holder table full).
    pub rss_after_traffic_kb: u64,
}

/// Grows a swarm around one daemon to each size in `peer_counts`, measuring its memory.
pub fn run(bench: &Bench, peer_counts: &[usize]) -> anyhow::Result<Footprint> {
    let binary_bytes = std::fs::metadata(&bench.binary)?.len();
    let binary_kind = file_kind(&bench.binary);
    let hub = bench.hub();
    let first = bench.node(&hub, "footprint-node0", Vec::new(), Vec::new());
    std::thread::sleep(Duration::from_secs(2));
    let rss_idle_kb = first.rss_kb();
    let bootstrap = first.bootstrap_addr();
    let mut nodes: Vec<SwarmNode> = vec![first];
    let mut rss_with_peers = Vec::new();
    for &peers in peer_counts {
        while nodes.len() <= peers {
            let name = format!("footprint-node{}", nodes.len());
            nodes.push(bench.node(&hub, &name, vec![bootstrap.clone()], Vec::new()));
        }
        wait_for(
            &format!("the first node to verify {peers} peers"),
            Duration::from_secs(120),
            || nodes[0].peer_count() == peers as u64,
        );
        std::thread::sleep(Duration::from_secs(2));
        rss_with_peers.push(RssWithPeers {
            peers,
            rss_kb: nodes[0].rss_kb(),
        });
    }
    for i in 0..100 {
        hub.put_json(
            &format!("/repos/octo/swarm/contents/footprint{i}"),
            fakehub::repo_body(i, BODY),
        );
    }
    std::thread::scope(|scope| {
        for node in &nodes {
            scope.spawn(move || {
                for i in 0..100 {
                    let r = api_get(
                        node,
                        &format!("repos/octo/swarm/contents/footprint{i}"),
                        None,
                    );
                    assert_eq!(r.status, 200, "footprint{i} through {}", node.name);
                }
            });
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    Ok(Footprint {
        binary_bytes,
        binary_kind,
        rss_idle_kb,
        rss_with_peers,
        rss_after_traffic_kb: nodes[0].rss_kb(),
    })
}

/// Start-to-ready of every `serve --daemon` of the run.
pub fn start_to_ready(bench: &Bench) -> Option<Summary> {
    summarize(&bench.start_times())
}

fn file_kind(binary: &Path) -> Option<String> {
    let out = Command::new("file").arg("-b").arg(binary).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kinds = [
        "static-pie linked",
        "statically linked",
        "dynamically linked",
    ];
    kinds
        .iter()
        .find(|k| text.contains(*k))
        .map(|k| k.to_string())
}
