//! A swarm larger than a full mesh (`PEERCACHE_FULL_MESH`): each member keeps a bounded,
//! Kademlia-shaped set of neighbours, and claims routed over it still find one coordinator per
//! key, so the swarm calls GitHub once per key.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

use common::swarm::{LOOKUP_FALLBACKS, NodeSpec, SwarmNode, serial, start_node, swarm_sums};
use fakehub::FakeHub;
use libp2p::PeerId;
use libp2p::kad::KBucketKey;

/// Members started: well beyond the full mesh set below.
const NODES: usize = 24;
/// The full-mesh size the members are given.
const FULL_MESH: &str = "6";
/// Endpoints every member asks for at once.
const ENDPOINTS: usize = 8;

fn peer_ids(node: &SwarmNode) -> Vec<PeerId> {
    node.json("api/peers")["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PeerId::from_str(p["peer_id"].as_str().unwrap()).unwrap())
        .collect()
}

/// The bucket of `peer` seen from `me` (the highest differing bit of their hashed ids).
fn bucket(me: &PeerId, peer: &PeerId) -> u32 {
    KBucketKey::from(*me)
        .distance(&KBucketKey::from(*peer))
        .ilog2()
        .unwrap_or(0)
}

/// The buckets (seen from `me`) that hold members but none of `me`'s neighbours: where a claim
/// could not be passed on towards the member closest to a key.
fn uncovered(me: &PeerId, all: &[PeerId], neighbours: &[PeerId]) -> Vec<u32> {
    let mut buckets: BTreeMap<u32, usize> = BTreeMap::new();
    for p in all.iter().filter(|p| *p != me) {
        buckets.entry(bucket(me, p)).or_default();
    }
    for p in neighbours {
        *buckets.entry(bucket(me, p)).or_default() += 1;
    }
    buckets
        .into_iter()
        .filter(|(_, n)| *n == 0)
        .map(|(b, _)| b)
        .collect()
}

#[test]
fn a_swarm_beyond_the_full_mesh_keeps_few_connections_and_calls_github_once_per_key() {
    let _serial = serial();
    let hub = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    let mut nodes: Vec<SwarmNode> = Vec::new();
    for i in 0..NODES {
        // Each job is given one address, the first member's, as one registry entry would.
        let bootstrap = nodes
            .first()
            .map(SwarmNode::bootstrap_addr)
            .into_iter()
            .collect();
        let spec = NodeSpec {
            bootstrap,
            env: vec![("PEERCACHE_FULL_MESH", FULL_MESH.to_string())],
            ..NodeSpec::default()
        };
        nodes.push(start_node(root.path(), &format!("node{i}"), &hub, spec));
    }
    let ids: Vec<PeerId> = nodes
        .iter()
        .map(|n| PeerId::from_str(&n.peer_id).unwrap())
        .collect();

    // The overlay settles: every member has a neighbour in every bucket that has members, and
    // the connections the first member was given by everyone are closed again.
    let mut last = String::new();
    let settled = common::wait_until(Duration::from_secs(120), || {
        let mut report = Vec::new();
        for (node, id) in nodes.iter().zip(&ids) {
            let neighbours = peer_ids(node);
            let gaps = uncovered(id, &ids, &neighbours);
            // The first member is everyone's bootstrap address: it keeps what others dialed
            // (up to 64), and is not held to the bound here.
            let everyone = neighbours.len() >= NODES - 1 && node.name != "node0";
            if !gaps.is_empty() || everyone {
                report.push(format!(
                    "{}: {} peers, buckets uncovered {gaps:?}",
                    node.name,
                    neighbours.len()
                ));
            }
        }
        last = report.join("; ");
        report.is_empty()
    });
    assert!(settled, "the overlay did not settle within 120 s: {last}");
    // Kademlia's first lookups open connections the overlay closes again: wait until no member
    // joins or leaves anywhere for 5 s, so that what follows measures the settled overlay.
    let changes = || -> usize {
        nodes
            .iter()
            .map(|n| {
                let log = n.log();
                log.matches("joined the swarm").count() + log.matches(" left\n").count()
            })
            .sum()
    };
    let mut seen = (changes(), std::time::Instant::now());
    let quiet = common::wait_until(Duration::from_secs(180), || {
        let now = changes();
        if now != seen.0 {
            seen = (now, std::time::Instant::now());
        }
        seen.1.elapsed() >= Duration::from_secs(5)
    });
    assert!(
        quiet,
        "members kept joining and leaving for 180 s after the overlay settled"
    );
    // A member that joins a swarm past the full mesh asks the first member (whose hello tells
    // it the swarm's size) for the members it knows, picks its neighbours from that list and
    // cuts Kademlia's bootstraps, whose lookups would connect it to most of the swarm: so
    // every late joiner does, and the first member lists them the swarm.
    let late: Vec<&SwarmNode> = nodes[2 * FULL_MESH.parse::<usize>().unwrap()..]
        .iter()
        .collect();
    let listed = |log: &str| {
        log.lines()
            .filter(|l| l.contains("members (Join); the neighbours are picked from them"))
            .filter_map(|l| l.split(" listed ").nth(1)?.split(' ').next()?.parse().ok())
            .max()
            .unwrap_or(0usize)
    };
    let joined_by_list: Vec<(&str, usize)> = late
        .iter()
        .map(|n| (n.name.as_str(), listed(&n.log())))
        .filter(|(_, members)| *members > 0)
        .collect();
    assert!(
        joined_by_list.len() * 4 >= late.len() * 3,
        "only {joined_by_list:?} of the {} late joiners took a member's list",
        late.len()
    );
    // Listed at its joining, each knew of more members than a full mesh holds at once.
    assert!(
        joined_by_list
            .iter()
            .all(|(_, members)| *members > FULL_MESH.parse::<usize>().unwrap()),
        "{joined_by_list:?}"
    );
    let cut = late
        .iter()
        .filter(|n| n.log().contains("bootstrap is cut"))
        .count();
    assert!(
        cut * 4 >= late.len() * 3,
        "only {cut} of the {} late joiners cut a Kademlia bootstrap",
        late.len()
    );
    let mut peers: HashMap<String, usize> = HashMap::new();
    for node in &nodes {
        let p = node.json("api/peers");
        let swarm = node.swarm();
        assert_eq!(swarm["overlay"], "bounded", "{}: {swarm}", node.name);
        peers.insert(
            node.name.clone(),
            p["peer_count"].as_u64().unwrap() as usize,
        );
    }
    let most = peers
        .iter()
        .filter(|(name, _)| *name != "node0")
        .map(|(_, n)| *n)
        .max()
        .unwrap();
    assert!(
        most < NODES - 1,
        "a member other than the bootstrap one is connected to every other one (not bounded): {peers:?}"
    );

    // Every member asks for every endpoint at the same moment.
    for e in 0..ENDPOINTS {
        hub.put_json(
            &format!("/repos/octo/swarm/contents/o{e}"),
            fakehub::repo_body(e, 4096),
        );
    }
    let answers: Vec<(String, usize, u16, Vec<u8>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .map(|node| {
                s.spawn(move || {
                    (0..ENDPOINTS)
                        .map(|e| {
                            let r = node.get(&format!("gh/repos/octo/swarm/contents/o{e}"));
                            let source = r
                                .header("x-peercache-source")
                                .unwrap_or_default()
                                .to_string();
                            (node.name.clone(), e, r.status, r.body, source)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for (name, e, status, body, _) in &answers {
        assert_eq!(*status, 200, "{name}, o{e}");
        assert_eq!(body, &fakehub::repo_body(*e, 4096), "{name}, o{e}");
    }
    let calls: Vec<u64> = (0..ENDPOINTS)
        .map(|e| hub.count(&format!("/repos/octo/swarm/contents/o{e}")))
        .collect();
    let from_peers = answers.iter().filter(|a| a.4 == "peer").count();
    // How the lookups ended, summed over the members: said when the count is wrong.
    let fields: Vec<&str> = std::iter::once("claims_granted")
        .chain(LOOKUP_FALLBACKS)
        .collect();
    let counters: Vec<String> = swarm_sums(&nodes, &fields)
        .iter()
        .map(|(field, sum)| format!("{field} {sum}"))
        .collect();
    assert_eq!(
        calls,
        vec![1; ENDPOINTS],
        "upstream calls per endpoint for {NODES} members ({from_peers} answers came from peers; \
         {})",
        counters.join(", ")
    );
    // Only the members that called GitHub announce to the swarm; each copy pulled after that is
    // told to the puller's neighbours, not flooded to every member.
    let told = swarm_sums(
        &nodes,
        &[
            "announcements_received",
            "have_notices_sent",
            "have_notices_received",
        ],
    );
    let flooded = (ENDPOINTS * (NODES - 1)) as u64;
    assert!(
        told["announcements_received"] <= flooded,
        "more announcements heard than the upstream fetches' ({flooded}): copies were flooded: \
         {told:?}"
    );
    assert!(
        told["have_notices_received"] > 0
            && told["have_notices_received"] <= told["have_notices_sent"],
        "pulled copies were not told to neighbours: {told:?}"
    );
}
