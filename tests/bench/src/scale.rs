//! Scale: many daemons on one machine. Each is given one address (the first node's, as a job
//! that read one registry entry would be); Kademlia and the members' hellos do the rest. Then
//! some nodes fetch a new endpoint each, and every daemon's log tells when the announcement
//! reached it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::{BODY, Bench, api_get};
use crate::common::swarm::SwarmNode;
use crate::stats::{Summary, summarize_ms};

/// How long the swarm has to become a full mesh before the figure says it did not.
const CONVERGENCE_LIMIT: Duration = Duration::from_secs(180);

/// The scale figures.
#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    /// Daemons.
    pub nodes: usize,
    /// From the first start until the last daemon was ready.
    pub start_all_ms: f64,
    /// From the last daemon's start until every node had verified every other one; `None`
    /// when that did not happen within 180 s.
    pub converge_ms: Option<f64>,
    /// The fewest peers any node knew at the end of the wait.
    pub min_peers: u64,
    /// Endpoints fetched, one per origin node, each announced once.
    pub announcements: usize,
    /// (receiver, announcement) pairs heard, of `announcements × (nodes - 1)`.
    pub deliveries: usize,
    /// Time from the origin's "announcing" line to each receiver's "heard" line.
    pub delivery: Option<Summary>,
}

/// `nodes` daemons; `announcements` of them each announce one new entry.
pub fn run(bench: &Bench, nodes: usize, announcements: usize) -> anyhow::Result<Scale> {
    let hub = bench.hub();
    let started = Instant::now();
    let first = bench.node(&hub, "scale-node0", Vec::new(), Vec::new());
    let bootstrap = vec![first.bootstrap_addr()];
    let mut swarm: Vec<SwarmNode> = vec![first];
    for i in 1..nodes {
        swarm.push(bench.node(
            &hub,
            &format!("scale-node{i}"),
            bootstrap.clone(),
            Vec::new(),
        ));
    }
    let start_all_ms = started.elapsed().as_secs_f64() * 1000.0;
    let all_started = Instant::now();
    let want = (nodes - 1) as u64;
    let mut converge_ms = None;
    let mut min_peers = 0;
    while all_started.elapsed() < CONVERGENCE_LIMIT {
        min_peers = swarm.iter().map(SwarmNode::peer_count).min().unwrap_or(0);
        if min_peers == want {
            converge_ms = Some(all_started.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Origins spread over the swarm, one at a time, so that each delivery is timed alone.
    let step = (nodes / announcements.max(1)).max(1);
    let origins: Vec<&SwarmNode> = swarm.iter().step_by(step).take(announcements).collect();
    for (k, origin) in origins.iter().enumerate() {
        let endpoint = format!("repos/octo/swarm/contents/scale{k}");
        hub.put_json(&format!("/{endpoint}"), fakehub::repo_body(k, BODY));
        let r = api_get(origin, &endpoint, None);
        anyhow::ensure!(
            r.status == 200,
            "{endpoint} through {}: {}",
            origin.name,
            r.status
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(3));

    // Announcing and hearing lines, by key id, from every daemon's log.
    let mut announced: HashMap<String, f64> = HashMap::new();
    let mut heard: Vec<(usize, String, f64)> = Vec::new();
    for (i, node) in swarm.iter().enumerate() {
        for line in node.log().lines() {
            let Some(at) = line.split_whitespace().next().and_then(log_time_ms) else {
                continue;
            };
            if let Some(key) = after(line, "announcing key ") {
                let first = announced.entry(key).or_insert(at);
                *first = first.min(at);
            } else if let Some(key) = after(line, "heard announcement of key ") {
                heard.push((i, key, at));
            }
        }
    }
    let mut first_heard: HashMap<(usize, String), f64> = HashMap::new();
    for (node, key, at) in heard {
        if announced.contains_key(&key) {
            let slot = first_heard.entry((node, key)).or_insert(at);
            *slot = slot.min(at);
        }
    }
    let delays: Vec<f64> = first_heard
        .iter()
        .map(|((_, key), at)| (at - announced[key]).max(0.0))
        .collect();
    Ok(Scale {
        nodes,
        start_all_ms,
        converge_ms,
        min_peers,
        announcements: announced.len(),
        deliveries: delays.len(),
        delivery: summarize_ms(&delays),
    })
}

/// The word after `marker` in `line`.
fn after(line: &str, marker: &str) -> Option<String> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace().next().map(str::to_string)
}

/// Milliseconds since the epoch of a log line's RFC 3339 UTC timestamp
/// (`2026-11-21T10:17:03.492318Z`).
fn log_time_ms(stamp: &str) -> Option<f64> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.splitn(3, ':');
    let (h, min) = (
        hms.next()?.parse::<f64>().ok()?,
        hms.next()?.parse::<f64>().ok()?,
    );
    let s = hms.next()?.parse::<f64>().ok()?;
    let days = days_from_civil(y, m, d) as f64;
    Some((((days * 24.0 + h) * 60.0 + min) * 60.0 + s) * 1000.0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_log_timestamps() {
        assert_eq!(log_time_ms("1970-01-01T00:00:01.5Z"), Some(1500.0));
        let a = log_time_ms("2026-11-21T23:59:59.999000Z").unwrap();
        let b = log_time_ms("2026-11-22T00:00:00.001000Z").unwrap();
        assert!((b - a - 2.0).abs() < 1e-3, "{}", b - a);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert!(log_time_ms("DEBUG").is_none());
    }

    #[test]
    fn finds_the_key_after_a_marker() {
        let line = "2026-11-21T10:00:00.000001Z DEBUG heard announcement of key ab12 from 12D3";
        assert_eq!(
            after(line, "heard announcement of key ").as_deref(),
            Some("ab12")
        );
        assert_eq!(after(line, "announcing key "), None);
    }
}
