//! Latency by source (local, peer, upstream, revalidated), three ways: a whole-process
//! `peercache fetch` without a daemon, the same through a running daemon, and the daemon's local
//! HTTP API. Two daemons: `holder` fetches what the measured node, `reader`, then gets as a peer
//! hit. Beside the local hits through the daemon, `/bin/true` is spawned the same way, one
//! sample before each `fetch` sample, so that the start of a process is measured in the same
//! run, under the same load.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::{BODY, Bench, FetchIn, api_get, fetch_process, true_process};
use crate::common::swarm::{SwarmNode, wait_for};
use crate::stats::{Summary, summarize};

/// The figures of one source.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `local`, `peer`, `upstream` or `revalidated`.
    pub source: &'static str,
    /// Whole-process `peercache fetch`, no daemon (no peers either).
    pub fetch_alone: Option<Summary>,
    /// Whole-process `peercache fetch` through the daemon.
    pub fetch_via_daemon: Option<Summary>,
    /// One GET of the daemon's local HTTP API.
    pub api: Option<Summary>,
    /// `/bin/true` spawned as `fetch` is, interleaved with the `fetch` via the daemon samples
    /// (local hits only).
    pub spawn_true: Option<Summary>,
    /// Samples that came from another source than this one (left out of the figures).
    pub other_sources: BTreeMap<String, u64>,
}

/// A first request that fills the cache; not a sample.
const WARM_UP: &str = "";

/// How one sample is taken.
#[derive(Clone, Copy)]
enum Way {
    Alone,
    ViaDaemon,
    Api,
}

/// Measures every source with `samples` samples each (upstream and revalidated: at most 100).
pub fn run(bench: &Bench, samples: usize) -> anyhow::Result<Vec<Row>> {
    let hub = bench.hub();
    let swarm = bench.swarm(&hub, "latency-node", 2);
    let (holder, reader) = (&swarm[0], &swarm[1]);
    let alone = bench.lone_dirs("latency-alone");
    let slow_samples = samples.min(100);
    let body = fakehub::repo_body(7, BODY);
    let mut other_sources: BTreeMap<&'static str, BTreeMap<String, u64>> = BTreeMap::new();

    let mut measure = |source: &'static str, way: Way, endpoint: &str, ttl: Option<u64>| {
        let (took, got, bytes) = match way {
            Way::Alone => {
                fetch_process(&bench.binary, &hub, &FetchIn::Alone(&alone), endpoint, ttl)?
            }
            Way::ViaDaemon => {
                fetch_process(&bench.binary, &hub, &FetchIn::Daemon(reader), endpoint, ttl)?
            }
            Way::Api => {
                let started = Instant::now();
                let r = api_get(reader, endpoint, ttl);
                let took = started.elapsed();
                anyhow::ensure!(r.status == 200, "{endpoint}: status {}", r.status);
                (took, r.source(), r.body)
            }
        };
        anyhow::ensure!(
            bytes.len() == BODY,
            "{endpoint}: a {}-byte body",
            bytes.len()
        );
        if source == WARM_UP {
            Ok(None)
        } else if got == source {
            Ok(Some(took))
        } else {
            *other_sources
                .entry(source)
                .or_default()
                .entry(got)
                .or_insert(0) += 1;
            Ok(None)
        }
    };
    let ways = [
        (Way::Alone, "alone"),
        (Way::ViaDaemon, "daemon"),
        (Way::Api, "api"),
    ];
    let mut results: BTreeMap<(&str, &str), Vec<Duration>> = BTreeMap::new();

    // Local: one entry, fetched once, then read again and again.
    for (way, name) in ways {
        let endpoint = format!("repos/octo/swarm/contents/local-{name}");
        hub.put_json(&format!("/{endpoint}"), body.clone());
        measure(WARM_UP, way, &endpoint, None)?;
        for _ in 0..samples {
            if matches!(way, Way::ViaDaemon) {
                let took = true_process(&hub, &FetchIn::Daemon(reader))?;
                results.entry(("local", "true")).or_default().push(took);
            }
            if let Some(took) = measure("local", way, &endpoint, None)? {
                results.entry(("local", name)).or_default().push(took);
            }
        }
    }

    // Upstream: a new endpoint for every sample.
    for (way, name) in ways {
        for i in 0..slow_samples {
            let endpoint = format!("repos/octo/swarm/contents/upstream-{name}-{i}");
            hub.put_json(&format!("/{endpoint}"), body.clone());
            if let Some(took) = measure("upstream", way, &endpoint, None)? {
                results.entry(("upstream", name)).or_default().push(took);
            }
        }
    }

    // Revalidated: one entry, asked for with a TTL of 0, so every request is a conditional GET.
    for (way, name) in ways {
        let endpoint = format!("repos/octo/swarm/contents/revalidated-{name}");
        hub.put_json(&format!("/{endpoint}"), body.clone());
        measure(WARM_UP, way, &endpoint, None)?;
        for _ in 0..slow_samples {
            if let Some(took) = measure("revalidated", way, &endpoint, Some(0))? {
                results.entry(("revalidated", name)).or_default().push(took);
            }
        }
    }

    // Peer: the holder fetches, the reader gets each once (no daemon, no peers: not measured).
    for (way, name) in &ways[1..] {
        let endpoints: Vec<String> = (0..samples)
            .map(|i| format!("repos/octo/swarm/contents/peer-{name}-{i}"))
            .collect();
        let heard_before = announcements(reader);
        for endpoint in &endpoints {
            hub.put_json(&format!("/{endpoint}"), body.clone());
            let r = api_get(holder, endpoint, None);
            anyhow::ensure!(r.status == 200, "{endpoint}: status {}", r.status);
        }
        wait_for(
            "the reader to hear the holder's announcements",
            Duration::from_secs(60),
            || announcements(reader) >= heard_before + endpoints.len() as u64,
        );
        for endpoint in &endpoints {
            if let Some(took) = measure("peer", *way, endpoint, None)? {
                results.entry(("peer", name)).or_default().push(took);
            }
        }
    }

    let figures = |source: &str, way: &str| summarize(results.get(&(source, way))?);
    Ok(["local", "peer", "upstream", "revalidated"]
        .into_iter()
        .map(|source| Row {
            source,
            fetch_alone: figures(source, "alone"),
            fetch_via_daemon: figures(source, "daemon"),
            api: figures(source, "api"),
            spawn_true: figures(source, "true"),
            other_sources: other_sources.remove(source).unwrap_or_default(),
        })
        .collect())
}

fn announcements(node: &SwarmNode) -> u64 {
    node.swarm()["announcements_received"].as_u64().unwrap_or(0)
}
