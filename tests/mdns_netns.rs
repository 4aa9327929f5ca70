//! Two hosts on one machine: network namespaces joined by a veth pair, made and removed by the
//! test. The two daemons know nothing of each other (no bootstrap peers, no registry); they find
//! each other by mDNS on the veth link and share an entry.
//!
//! Needs root (CI runs as root and must run it); elsewhere it skips with a message saying why.

mod common;

use std::time::{Duration, Instant};

use common::netns::{self, Lab, NsSpec, in_ns};
use fakehub::FakeHub;

/// The secret of this test's swarm.
const SECRET: &str = "1oVroHa/Sb5gwo03znC7rooN849NumffexRxXypSotM=";

#[test]
fn two_hosts_find_each_other_by_mdns_and_share_an_entry() {
    if !netns::can_run("the mDNS test", &[]) {
        return;
    }
    let tag = std::process::id() % 10_000;
    let mut net = Lab::new(tag.to_string());
    let ns_a = net.ns("pc", "a");
    let ns_b = net.ns("pc", "b");
    let (veth_a, veth_b) = (format!("pca{tag}"), format!("pcb{tag}"));
    let subnet = format!("10.203.{}", tag % 250);
    net.link(
        (&ns_a, &veth_a, &format!("{subnet}.1/24")),
        (&ns_b, &veth_b, &format!("{subnet}.2/24")),
    );

    // "GitHub" lives in namespace A only: B can get the entry from A, or not at all.
    let hub = in_ns(&ns_a, FakeHub::start);
    fakehub::generate_resources(&hub, 1, 4096);
    let root = tempfile::tempdir().unwrap();
    let hub_url = hub.url();
    let spec = |name, ns| NsSpec {
        name,
        ns,
        api_url: &hub_url,
        secret: SECRET,
        args: vec!["--listen".into(), "/ip4/0.0.0.0/tcp/0".into()],
        env: vec![("PEERCACHE_MDNS", "true".into())],
    };
    let a = netns::start(root.path(), spec("host-a", &ns_a), &mut net);
    let b = netns::start(root.path(), spec("host-b", &ns_b), &mut net);

    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let peers = b.json("api/peers");
        if peers["peer_count"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two hosts did not find each other by mDNS: {peers}\nA's log:\n{}\nB's log:\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let logs = a.log() + &b.log();
    assert!(
        logs.contains("found by mDNS"),
        "not connected through mDNS:\n{logs}"
    );

    let path = "gh/repos/octo/swarm/contents/r0";
    let from_upstream = a.get(path);
    assert_eq!(
        (from_upstream.status, from_upstream.source().as_str()),
        (200, "upstream")
    );
    let from_peer = b.get(path);
    assert_eq!(
        (from_peer.status, from_peer.source().as_str()),
        (200, "peer")
    );
    assert_eq!(from_peer.body, from_upstream.body);
    assert_eq!(from_peer.body, fakehub::repo_body(0, 4096));
    assert_eq!(hub.total(), 1);
    drop(hub);
}
