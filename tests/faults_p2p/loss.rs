//! Packet loss on the link between two hosts (network namespaces joined by a veth pair; nftables
//! drops packets at random: this kernel has no `tc netem`).

use std::time::{Duration, Instant};

use fakehub::FakeHub;

use crate::common::netns::{self, Lab, NsNode, NsSpec, api_forwarder};
use crate::common::swarm::{serial, wait_for};

/// nftables table `table` that drops `percent` % of the packets in and out of `veth`, at
/// random (every packet at 100), counted.
fn lossy_link_rules(table: &str, veth: &str, percent: u32) -> String {
    let drop = if percent >= 100 {
        "counter drop".to_string()
    } else {
        format!("numgen random mod 100 < {percent} counter drop")
    };
    format!(
        "table inet {table} {{\n\
          chain input {{ type filter hook input priority -10; iifname \"{veth}\" {drop}; }}\n\
          chain output {{ type filter hook output priority -10; oifname \"{veth}\" {drop}; }}\n\
         }}\n"
    )
}

/// Packets the loss rules of `ns` dropped so far.
fn dropped(ns: &str) -> u64 {
    netns::exec(ns, "nft", &["list", "table", "inet", "loss"])
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "packets")?;
            words.get(at + 1)?.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn a_lossy_link_between_hosts_gives_right_bodies_and_no_failed_fetch() {
    const LOSS: u32 = 20;
    const ENDPOINTS: usize = 20;
    if !netns::can_run("the packet-loss test", &[("nft", "--version", "nftables")]) {
        return;
    }
    let _serial = serial();
    let tag = std::process::id() % 10_000;
    let mut lab = Lab::new(tag.to_string());
    let (ns_a, ns_b) = (lab.ns("pl", "a"), lab.ns("pl", "b"));
    let (veth_a, veth_b) = (format!("pla{tag}"), format!("plb{tag}"));
    let subnet = format!("10.204.{}", tag % 250);
    lab.link(
        (&ns_a, &veth_a, &format!("{subnet}.1/24")),
        (&ns_b, &veth_b, &format!("{subnet}.2/24")),
    );
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, ENDPOINTS + 1, 20 * 1024);
    let root = tempfile::tempdir().unwrap();
    // Each host reaches the stand-in API over its own loopback (the lossy link is the peers').
    let (api_a, api_b) = (
        api_forwarder(&ns_a, hub.addr()),
        api_forwarder(&ns_b, hub.addr()),
    );
    let a = netns::start(
        root.path(),
        NsSpec {
            name: "host-a",
            ns: &ns_a,
            api_url: &api_a,
            secret: crate::common::swarm::SECRET,
            args: vec!["--listen".into(), "/ip4/0.0.0.0/tcp/4001".into()],
            env: Vec::new(),
        },
        &mut lab,
    );
    let b = netns::start(
        root.path(),
        NsSpec {
            name: "host-b",
            ns: &ns_b,
            api_url: &api_b,
            secret: crate::common::swarm::SECRET,
            args: vec!["--listen".into(), "/ip4/0.0.0.0/tcp/4001".into()],
            env: vec![(
                "PEERCACHE_BOOTSTRAP_PEERS",
                format!("/ip4/{subnet}.1/tcp/4001/p2p/{}", a.peer_id),
            )],
        },
        &mut lab,
    );
    let members = |n: &NsNode| n.json("api/peers")["peer_count"].as_u64().unwrap();
    wait_for(
        "the hosts to verify each other",
        Duration::from_secs(30),
        || members(&a) == 1 && members(&b) == 1,
    );
    lab.nft(&ns_b, "loss", &lossy_link_rules("loss", &veth_b, LOSS));

    // A fetches every endpoint; B wants each of them next, across the lossy link.
    let mut from_peer = 0;
    let mut slowest = Duration::ZERO;
    for i in 0..ENDPOINTS {
        let path = format!("gh/repos/octo/swarm/contents/r{i}");
        let body = fakehub::repo_body(i, 20 * 1024);
        let first = a.get(&path);
        assert_eq!((first.status, first.body == body), (200, true), "A, r{i}");
        let started = Instant::now();
        let second = b.get(&path);
        slowest = slowest.max(started.elapsed());
        assert_eq!(second.status, 200, "B, r{i}: {}", second.text());
        assert!(second.body == body, "B got a wrong body for r{i}");
        if second.source() == "peer" {
            from_peer += 1;
        }
    }
    // A stalled link costs one timeout (the pull's 10 s), not the pull's and the claim's.
    assert!(
        slowest < Duration::from_secs(15),
        "a fetch took {slowest:?}\n{}",
        b.log()
    );
    let lost = dropped(&ns_b);
    eprintln!(
        "{LOSS}% loss each way: {from_peer}/{ENDPOINTS} from the peer, slowest {slowest:?}; \
         {lost} packets dropped"
    );
    assert!(lost > 0, "the link lost nothing: the test proved nothing");
    // TCP carries the entries through the loss: B does not pay GitHub for most of what A
    // holds (a stall of 10 s, rare at this loss, sends one fetch upstream).
    assert!(
        from_peer >= ENDPOINTS / 2,
        "only {from_peer}/{ENDPOINTS} from the peer at {LOSS}% loss\n{}",
        b.log()
    );

    // A link that drops everything: B still answers, from upstream, and says why.
    lab.nft(
        &ns_b,
        "blackhole",
        &lossy_link_rules("blackhole", &veth_b, 100),
    );
    let path = format!("gh/repos/octo/swarm/contents/r{ENDPOINTS}");
    let body = fakehub::repo_body(ENDPOINTS, 20 * 1024);
    assert_eq!(a.get(&path).status, 200);
    let started = Instant::now();
    let cut_off = b.get(&path);
    let took = started.elapsed();
    assert_eq!(cut_off.status, 200, "{}", cut_off.text());
    assert!(
        cut_off.body == body,
        "B got a wrong body with the link down"
    );
    assert_eq!(cut_off.source(), "upstream");
    eprintln!("with the link dropping everything, B answered from upstream after {took:?}");
    let log = b.log();
    assert!(
        log.contains("no answer within") || log.contains("did not answer"),
        "no line says the peer did not answer:\n{log}"
    );
}
