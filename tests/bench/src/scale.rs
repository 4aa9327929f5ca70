//! Scale: a swarm far beyond a full mesh on one machine. Each daemon is given one address (the
//! first node's, as a job that read one registry entry would be); Kademlia and the overlay do
//! the rest. Once every node has a neighbour in every bucket that holds members (what routing a
//! claim to a key's coordinator needs), every node asks for the same endpoints at once, and
//! the stand-in GitHub API counts the calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bench::{BODY, Bench, try_api_get};
use crate::common::swarm::{LOOKUP_FALLBACKS, SwarmNode, swarm_sums};

/// How long the overlay has to settle before the figure says it did not.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);
/// The daemon's header-read timeout (`src/daemon/server.rs`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often every node's connections are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(1000);
/// How long every node's connections must hold (see [`wait_for_quiet`]) before the swarm
/// counts as quiet.
const QUIET_FOR: Duration = Duration::from_secs(10);
/// How much the nodes' connections may move over [`QUIET_FOR`]: their ranges, summed, over
/// all connections.
const QUIET_SPREAD: f64 = 0.02;
/// How long the swarm has to become quiet before the fetch round starts anyway.
const QUIET_LIMIT: Duration = Duration::from_secs(180);

/// The scale figures.
#[derive(Debug, Clone, Serialize)]
pub struct Scale {
    /// Daemons.
    pub nodes: usize,
    /// Endpoints every node asks for.
    pub endpoints: usize,
    /// `PEERCACHE_FULL_MESH` the daemons ran with (`None`: the default).
    pub full_mesh: Option<usize>,
    /// From the first start until the last daemon was ready.
    pub start_all_ms: f64,
    /// From the last start until every node had a neighbour in every bucket that holds
    /// members; `None` when that did not happen within [`SETTLE_LIMIT`].
    pub settle_ms: Option<f64>,
    /// Nodes with a bucket uncovered at the end of the wait.
    pub unsettled: usize,
    /// From then until every node's connections held for [`QUIET_FOR`] (see
    /// [`wait_for_quiet`]: the first Kademlia lookups over); `None` when that did not happen
    /// within [`QUIET_LIMIT`]. The fetch round starts after it.
    pub quiet_ms: Option<f64>,
    /// Verified members per node once settled.
    pub peers: Option<Spread>,
    /// Connections (all, verified or not) per node: the most any node had at any sample.
    pub max_connections: u64,
    /// The same, per node: the most each had, summarised over the nodes.
    pub connections: Option<Spread>,
    /// The nodes that had the most connections: name, that most, and when it was first seen
    /// (seconds since the first daemon started).
    pub busiest: Vec<(String, u64, f64)>,
    /// The most connections per node in the samples taken during the fetch round alone (the
    /// joins and the settling before it left out), summarised over the nodes sampled then.
    pub fetch_connections: Option<Spread>,
    /// The nodes sampled during the fetch round (a sampling round asks every node in turn,
    /// and a round can outlast a short fetch round).
    pub fetch_sampled: usize,
    /// Requests made (nodes × endpoints), all at once.
    pub requests: usize,
    /// Of those, the ones answered 200 with the right body.
    pub answered: usize,
    /// Requests sent again once, because this driver's starved thread sent them after the
    /// daemon's header-read timeout had closed the connection.
    pub resent: usize,
    /// Calls that reached the stand-in GitHub API.
    pub upstream_calls: u64,
    /// Answers by `x-peercache-source`.
    pub by_source: BTreeMap<String, u64>,
    /// The claim counters of `/api/swarm`, summed over the nodes: how the upstream calls
    /// came about (grants, and the fallbacks that call upstream without one).
    pub claims: BTreeMap<String, u64>,
    /// From the first request until the last answer.
    pub fetch_ms: f64,
    /// Resident memory per daemon at the end, kB.
    pub rss_kb: Option<Spread>,
}

/// The fields of `/api/swarm` that say how a node's lookups ended, besides the fallbacks.
const CLAIM_COUNTERS: [&str; 3] = ["claims_won", "claims_waited", "claims_granted"];

/// The middle and the top of per-node figures.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    /// Median.
    pub p50: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(Spread {
        p50: sorted[sorted.len() / 2],
        max: sorted[sorted.len() - 1],
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
    })
}

/// The hash Kademlia puts a peer id's bytes through.
fn hashed(peer_id: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = bs58::decode(peer_id).into_vec()?;
    Ok(Sha256::digest(bytes).into())
}

/// The index of the highest bit in which two hashed ids differ.
fn bucket(a: &[u8; 32], b: &[u8; 32]) -> Option<u32> {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = x ^ y;
        if d != 0 {
            return Some(255 - (i as u32 * 8 + d.leading_zeros()));
        }
    }
    None
}

/// Buckets seen from `me` that hold members but none of `neighbours`.
fn uncovered(me: &[u8; 32], all: &[[u8; 32]], neighbours: &[[u8; 32]]) -> usize {
    let mut buckets: HashMap<u32, bool> = HashMap::new();
    for other in all {
        if let Some(b) = bucket(me, other) {
            buckets.entry(b).or_insert(false);
        }
    }
    for n in neighbours {
        if let Some(b) = bucket(me, n) {
            buckets.insert(b, true);
        }
    }
    buckets.values().filter(|covered| !**covered).count()
}

/// A node's verified neighbours and its connections, or `None` when a starved daemon did not
/// answer (the sample is skipped; the node counts as unsettled).
fn peers_of(node: &SwarmNode) -> Option<(Vec<String>, u64)> {
    let p = node.try_json("api/peers").ok()?;
    let ids = p["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["peer_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let connections = node.try_json("api/swarm").ok()?["connections"]
        .as_u64()
        .unwrap_or(0);
    Some((ids, connections))
}

/// `nodes` daemons, each asking for the same `endpoints` at once.
pub fn run(
    bench: &Bench,
    nodes: usize,
    endpoints: usize,
    full_mesh: Option<usize>,
) -> anyhow::Result<Scale> {
    let hub = bench.hub();
    // Logged as a user's daemon logs (the tests' `peercache=debug` costs 200 daemons a share of
    // two cores); `PEERCACHE_BENCH_LOG` sets another filter to look into a run.
    let log = std::env::var("PEERCACHE_BENCH_LOG").unwrap_or_else(|_| "info".to_string());
    let env = || {
        let mut env = vec![("PEERCACHE_LOG", log.clone())];
        if let Some(n) = full_mesh {
            env.push(("PEERCACHE_FULL_MESH", n.to_string()));
        }
        env
    };
    let started = Instant::now();
    let first = bench.node(&hub, "scale-node0", Vec::new(), env());
    let bootstrap = vec![first.bootstrap_addr()];
    let mut swarm: Vec<SwarmNode> = vec![first];
    for i in 1..nodes {
        swarm.push(bench.node(&hub, &format!("scale-node{i}"), bootstrap.clone(), env()));
    }
    let start_all_ms = started.elapsed().as_secs_f64() * 1000.0;
    let ids: Vec<[u8; 32]> = swarm
        .iter()
        .map(|n| hashed(&n.peer_id))
        .collect::<anyhow::Result<_>>()?;
    let index: HashMap<String, usize> = swarm
        .iter()
        .enumerate()
        .map(|(i, n)| (n.peer_id.clone(), i))
        .collect();

    // Connections are sampled from now until the end, on a thread of their own; each round's
    // counts also go to the wait for quiet.
    let most: Mutex<Vec<(u64, f64)>> = Mutex::new(vec![(0, 0.0); nodes]);
    // The same during the fetch round alone: `fetching` is set as it starts.
    let most_fetching: Mutex<Vec<Option<u64>>> = Mutex::new(vec![None; nodes]);
    let fetching = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let (round_tx, rounds) = std::sync::mpsc::channel::<Round>();
    std::thread::scope(|s| -> anyhow::Result<Scale> {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let mut counts = Vec::with_capacity(swarm.len());
                for (i, node) in swarm.iter().enumerate() {
                    let Some((_, connections)) = peers_of(node) else {
                        counts.push(None);
                        continue;
                    };
                    counts.push(Some(connections));
                    let mut most = most.lock().unwrap();
                    if connections > most[i].0 {
                        most[i] = (connections, started.elapsed().as_secs_f64());
                    }
                    if fetching.load(Ordering::Relaxed) {
                        let most = &mut most_fetching.lock().unwrap()[i];
                        *most = Some(most.unwrap_or(0).max(connections));
                    }
                }
                // The wait for quiet may be over; then no one listens.
                let _ = round_tx.send((Instant::now(), counts));
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        let result = measure(&hub, &swarm, &ids, &index, &rounds, endpoints, &fetching);
        done.store(true, Ordering::Relaxed);
        let (settle_ms, unsettled, quiet_ms, peers, fetch) = result?;
        let most_at = most.lock().unwrap().clone();
        let most: Vec<u64> = most_at.iter().map(|(count, _)| *count).collect();
        let mut busiest: Vec<(String, u64, f64)> = most_at
            .iter()
            .zip(&swarm)
            .map(|((count, at), node)| (node.name.clone(), *count, *at))
            .collect();
        busiest.sort_by_key(|b| std::cmp::Reverse(b.1));
        busiest.truncate(5);
        let during_fetch: Vec<f64> = most_fetching
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|c| *c as f64)
            .collect();
        let rss: Vec<f64> = swarm.iter().map(|n| n.rss_kb() as f64).collect();
        let counters: Vec<&str> = CLAIM_COUNTERS.into_iter().chain(LOOKUP_FALLBACKS).collect();
        let claims = swarm_sums(&swarm, &counters);
        Ok(Scale {
            nodes,
            endpoints,
            full_mesh,
            start_all_ms,
            settle_ms,
            unsettled,
            quiet_ms,
            peers: spread(&peers),
            max_connections: most.iter().copied().max().unwrap_or(0),
            connections: spread(&most.iter().map(|c| *c as f64).collect::<Vec<_>>()),
            busiest,
            fetch_connections: spread(&during_fetch),
            fetch_sampled: during_fetch.len(),
            requests: fetch.requests,
            answered: fetch.answered,
            resent: fetch.resent,
            upstream_calls: fetch.upstream_calls,
            by_source: fetch.by_source,
            claims,
            fetch_ms: fetch.wall_ms,
            rss_kb: spread(&rss),
        })
    })
}

/// What the fetch round gave.
struct Fetched {
    requests: usize,
    answered: usize,
    resent: usize,
    upstream_calls: u64,
    by_source: BTreeMap<String, u64>,
    wall_ms: f64,
}

type Settled = (Option<f64>, usize, Option<f64>, Vec<f64>, Fetched);

/// One sampling round: when it ended, and each node's open connections (`None` where a
/// starved daemon did not answer).
type Round = (Instant, Vec<Option<u64>>);

/// Waits until every node's connections hold for [`QUIET_FOR`]: the ranges (max − min) of
/// the nodes' counts over that time, summed, within [`QUIET_SPREAD`] of all connections. A
/// settled overlay (a neighbour in every bucket) may still be in the first Kademlia lookups'
/// wave, opening and closing connections, which a fetch round would then race. The counts
/// are the connection sampler's `rounds` (rounds from before the wait are passed over). Its
/// time, or `None` after [`QUIET_LIMIT`].
fn wait_for_quiet(rounds: &std::sync::mpsc::Receiver<Round>) -> Option<f64> {
    let waiting = Instant::now();
    let mut window: std::collections::VecDeque<Round> = Default::default();
    while let Some(left) = QUIET_LIMIT.checked_sub(waiting.elapsed()) {
        let Ok((now, counts)) = rounds.recv_timeout(left) else {
            break;
        };
        if now < waiting {
            continue;
        }
        window.push_back((now, counts));
        while window
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > QUIET_FOR)
        {
            window.pop_front();
        }
        let held_for = window
            .front()
            .map_or(Duration::ZERO, |(at, _)| now.duration_since(*at));
        let samples: Vec<&[Option<u64>]> = window.iter().map(|(_, c)| c.as_slice()).collect();
        // Rounds come about a second apart (more with 200 starved daemons), so the window
        // spans a little under QUIET_FOR at most; 80 % of it is held long enough.
        if held_for >= QUIET_FOR.mul_f64(0.8) && moved_share(&samples) <= QUIET_SPREAD {
            return Some(waiting.elapsed().as_secs_f64() * 1000.0);
        }
    }
    None
}

/// How much the nodes' connection counts moved over `samples` (one count per node each, `None`
/// where a starved node did not answer): the ranges of the nodes' counts, summed, over the sum
/// of their highest counts. A node with no count in any sample adds nothing.
fn moved_share(samples: &[&[Option<u64>]]) -> f64 {
    let nodes = samples.first().map_or(0, |s| s.len());
    let (mut moved, mut total) = (0u64, 0u64);
    for i in 0..nodes {
        let seen = samples.iter().filter_map(|s| s.get(i).copied().flatten());
        let (lo, hi) = seen.fold((u64::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
        if lo <= hi {
            moved += hi - lo;
            total += hi;
        }
    }
    if total == 0 {
        0.0
    } else {
        moved as f64 / total as f64
    }
}

fn measure(
    hub: &fakehub::FakeHub,
    swarm: &[SwarmNode],
    ids: &[[u8; 32]],
    index: &HashMap<String, usize>,
    rounds: &std::sync::mpsc::Receiver<Round>,
    endpoints: usize,
    fetching: &AtomicBool,
) -> anyhow::Result<Settled> {
    let waiting = Instant::now();
    let mut settle_ms = None;
    let mut unsettled = swarm.len();
    let mut peers = Vec::new();
    while waiting.elapsed() < SETTLE_LIMIT {
        unsettled = 0;
        peers.clear();
        for (i, node) in swarm.iter().enumerate() {
            let Some((neighbours, _)) = peers_of(node) else {
                unsettled += 1;
                continue;
            };
            peers.push(neighbours.len() as f64);
            let hashed: Vec<[u8; 32]> = neighbours
                .iter()
                .filter_map(|p| index.get(p).map(|j| ids[*j]))
                .collect();
            if uncovered(&ids[i], ids, &hashed) > 0 {
                unsettled += 1;
            }
        }
        if unsettled == 0 {
            settle_ms = Some(waiting.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let quiet_ms = wait_for_quiet(rounds);

    for e in 0..endpoints {
        hub.put_json(
            &format!("/repos/octo/swarm/contents/scale{e}"),
            fakehub::repo_body(e, BODY),
        );
    }
    let by_source: Mutex<BTreeMap<String, u64>> = Mutex::default();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let resent = std::sync::atomic::AtomicUsize::new(0);
    fetching.store(true, Ordering::Relaxed);
    let began = Instant::now();
    std::thread::scope(|s| {
        for node in swarm {
            let (by_source, answered, resent) = (&by_source, &answered, &resent);
            s.spawn(move || {
                for e in 0..endpoints {
                    let endpoint = format!("repos/octo/swarm/contents/scale{e}");
                    // The daemon's header-read timeout (the slowloris guard) closes a
                    // connection whose request came late. When this driver's thread, starved
                    // between connecting and sending, is the one late, the request is sent
                    // again once, as a client whose connection closed unanswered would; the
                    // figures count those.
                    let mut answer = try_api_get(node, &endpoint, None);
                    if let Err(e) = &answer
                        && e.sent_after
                            .is_some_and(|after| after >= HEADER_READ_TIMEOUT)
                    {
                        eprintln!("    {}: {endpoint}: sent again: {e}", node.name);
                        resent.fetch_add(1, Ordering::Relaxed);
                        answer = try_api_get(node, &endpoint, None);
                    }
                    let source = match answer {
                        Ok(r) => {
                            if r.status == 200 && r.body == fakehub::repo_body(e, BODY) {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            r.header("x-peercache-source").unwrap_or("none").to_string()
                        }
                        Err(e) => {
                            eprintln!("    {}: {endpoint}: no answer: {e}", node.name);
                            "no answer".to_string()
                        }
                    };
                    *by_source.lock().unwrap().entry(source).or_default() += 1;
                }
            });
        }
    });
    let wall_ms = began.elapsed().as_secs_f64() * 1000.0;
    let upstream_calls = (0..endpoints)
        .map(|e| hub.count(&format!("/repos/octo/swarm/contents/scale{e}")))
        .sum();
    Ok((
        settle_ms,
        unsettled,
        quiet_ms,
        peers,
        Fetched {
            requests: swarm.len() * endpoints,
            answered: answered.into_inner(),
            resent: resent.into_inner(),
            upstream_calls,
            by_source: by_source.into_inner().unwrap(),
            wall_ms,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_the_highest_differing_bit() {
        let a = [0u8; 32];
        let mut b = [0u8; 32];
        assert_eq!(bucket(&a, &b), None);
        b[31] = 1;
        assert_eq!(bucket(&a, &b), Some(0));
        b[0] = 0x80;
        assert_eq!(bucket(&a, &b), Some(255));
        let mut c = [0u8; 32];
        c[1] = 0x10;
        assert_eq!(bucket(&a, &c), Some(255 - 11));
    }

    #[test]
    fn a_swarm_is_quiet_when_its_nodes_connections_hold() {
        let steady: [&[Option<u64>]; 3] = [
            &[Some(20), Some(30)],
            &[Some(20), Some(30)],
            &[Some(20), None],
        ];
        assert_eq!(moved_share(&steady), 0.0);
        // One node of two goes 20 → 30: 10 moved of 60.
        let moving: [&[Option<u64>]; 2] = [&[Some(20), Some(30)], &[Some(30), Some(30)]];
        assert!((moved_share(&moving) - 10.0 / 60.0).abs() < 1e-9);
        // A node that never answered counts for nothing.
        let silent: [&[Option<u64>]; 2] = [&[None, Some(30)], &[None, Some(30)]];
        assert_eq!(moved_share(&silent), 0.0);
    }

    #[test]
    fn a_member_without_neighbours_in_a_bucket_is_unsettled() {
        let me = [0u8; 32];
        let mut far = [0u8; 32];
        far[0] = 0x80;
        let mut near = [0u8; 32];
        near[31] = 2;
        assert_eq!(uncovered(&me, &[me, far, near], &[far]), 1);
        assert_eq!(uncovered(&me, &[me, far, near], &[far, near]), 0);
    }

    #[test]
    fn a_peer_id_is_hashed_from_its_bytes() {
        // The identity multihash of an Ed25519 key: 38 bytes, base58 "12D3KooW…".
        let id = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        let bytes = bs58::decode(id).into_vec().unwrap();
        assert_eq!(bytes.len(), 38);
        assert_eq!(
            &bytes[..6],
            [0x00, 0x24, 0x08, 0x01, 0x12, 0x20],
            "identity multihash"
        );
        // SHA-256 of those 38 bytes, worked out apart (Python's hashlib): what libp2p's
        // `KBucketKey::from(PeerId)` hashes a peer id to.
        let expected = "a9fb3b592b9e6cee5658eaf7de67433434163a081d97cc77e303b300c816251e";
        let got: String = hashed(id)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, expected);
        assert!(hashed("not base58 0OIl").is_err());
    }
}
