//! The swarm, end to end: several `peercache serve --daemon` processes with their own homes,
//! caches, ports and tokens (as several CI jobs would be), connected through
//! `PEERCACHE_BOOTSTRAP_PEERS`, in front of one stand-in GitHub API.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::HttpResponse;
use common::PEERCACHE;
use common::swarm::{
    LOOKUP_FALLBACKS, NodeSpec, start_node as start, swarm_of, swarm_sums, wait_for,
};
use fakehub::{FakeHub, Options};

#[test]
fn five_nodes_twenty_endpoints_reach_github_twenty_times() {
    let _serial = common::swarm::serial();
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start_with(Options {
        latency: Duration::from_millis(50),
        ..Options::default()
    });
    fakehub::generate_resources(&hub, 20, 20 * 1024);
    let nodes = swarm_of(root.path(), &hub, 5, None);

    // 100 requests at once: every node wants every endpoint.
    let results: Vec<(usize, usize, HttpResponse)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..nodes.len())
            .flat_map(|n| (0..20).map(move |e| (n, e)))
            .map(|(n, e)| {
                let node = &nodes[n];
                scope.spawn(move || {
                    (
                        n,
                        e,
                        node.get(&format!("gh/repos/octo/swarm/contents/r{e}")),
                    )
                })
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
        assert_eq!(hub.count(&format!("/repos/octo/swarm/contents/r{e}")), 1);
    }
}

#[test]
fn a_node_with_another_secret_learns_nothing_and_the_swarm_keeps_serving() {
    let _serial = common::swarm::serial();
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 4, 2048);
    let nodes = swarm_of(root.path(), &hub, 3, None);
    assert_eq!(
        nodes[0].get("gh/repos/octo/swarm/contents/r0").source(),
        "upstream"
    );

    let stranger = start(
        root.path(),
        "stranger",
        &hub,
        NodeSpec {
            secret: Some("iqehmi6L6yxQHplLeH6ieBlvwChWqe7+MJ2qCp2WjKA="),
            bootstrap: vec![nodes[0].bootstrap_addr()],
            ..NodeSpec::default()
        },
    );
    wait_for(
        "node0 to refuse the stranger",
        Duration::from_secs(20),
        || nodes[0].swarm()["auth_failures"].as_u64().unwrap() >= 1,
    );

    // Its own requests go upstream, even for what the swarm holds.
    assert_eq!(
        stranger.get("gh/repos/octo/swarm/contents/r0").source(),
        "upstream"
    );
    assert_eq!(hub.count("/repos/octo/swarm/contents/r0"), 2);

    // The swarm keeps serving: node1 fetches, node2 gets it from a peer.
    assert_eq!(
        nodes[1].get("gh/repos/octo/swarm/contents/r1").source(),
        "upstream"
    );
    let from_peer = nodes[2].get("gh/repos/octo/swarm/contents/r1");
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
        !stranger.log().contains("repos/octo/swarm/contents/r1"),
        "the stranger's log names a swarm URL"
    );
}

#[test]
fn a_peer_killed_mid_transfer_falls_back_to_upstream() {
    let _serial = common::swarm::serial();
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
    wait_for(
        "the two nodes to verify each other",
        Duration::from_secs(20),
        || requester.peer_count() == 1,
    );
    assert_eq!(
        slow.get("gh/repos/octo/swarm/contents/r0").source(),
        "upstream"
    );
    wait_for("the announcement", Duration::from_secs(10), || {
        requester.swarm()["announcements_received"]
            .as_u64()
            .unwrap()
            >= 1
    });

    let started = Instant::now();
    let answer = std::thread::scope(|scope| {
        let request = scope.spawn(|| requester.get("gh/repos/octo/swarm/contents/r0"));
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
    assert_eq!(hub.count("/repos/octo/swarm/contents/r0"), 2);
}

#[test]
fn a_waiter_gets_the_claimants_entry_when_its_announcement_is_lost() {
    let _serial = common::swarm::serial();
    let root = tempfile::tempdir().unwrap();
    // A slow GitHub: the second node asks while the first is still fetching.
    let hub = FakeHub::start_with(Options {
        latency: Duration::from_millis(1500),
        ..Options::default()
    });
    fakehub::generate_resources(&hub, 1, 4096);
    let silent = || NodeSpec {
        env: vec![("PEERCACHE_TEST_ONLY_FAULT", "silent-announcements".into())],
        ..NodeSpec::default()
    };
    let first = start(root.path(), "first", &hub, silent());
    let second = start(
        root.path(),
        "second",
        &hub,
        NodeSpec {
            bootstrap: vec![first.bootstrap_addr()],
            ..silent()
        },
    );
    // Once, in CI, these two did not verify each other within 20 s (cause not found yet): the
    // limit leaves room for a hello deadline and a re-dial, and a failure prints both logs.
    assert!(
        common::wait_until(Duration::from_secs(45), || first.peer_count() == 1
            && second.peer_count() == 1),
        "the two nodes did not verify each other within 45 s:\n--- first ---\n{}\n--- second ---\n{}",
        first.log(),
        second.log()
    );

    let path = "gh/repos/octo/swarm/contents/r0";
    let asked = std::time::Instant::now();
    let answers: Vec<HttpResponse> = std::thread::scope(|scope| {
        let handles: Vec<_> = [&first, &second]
            .into_iter()
            .map(|node| scope.spawn(move || node.get(path)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, fakehub::repo_body(0, 4096));
    }
    let mut sources: Vec<String> = answers.iter().map(HttpResponse::source).collect();
    sources.sort();
    // Without the direct ask, the waiter would give up after its wait and pay again.
    assert_eq!(
        hub.count("/repos/octo/swarm/contents/r0"),
        1,
        "the waiter went upstream: {sources:?}\n{}\n{}",
        first.log(),
        second.log()
    );
    assert_eq!(sources, ["peer", "upstream"]);
    // The direct ask comes 0.5 s, then 1, 2 and 4 s into the wait: the waiter must not have sat
    // out the whole 20 s claim wait (GitHub answers in 1.5 s).
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "the waiter got the entry only after {took:?}: the direct ask did not happen"
    );
    let fields: Vec<&str> = ["claims_waited", "claims_granted"]
        .into_iter()
        .chain(LOOKUP_FALLBACKS)
        .collect();
    let counters = swarm_sums([&first, &second], &fields);
    assert_eq!(
        counters["claims_waited"], 1,
        "one node waited for the other's claim"
    );
    assert_eq!(counters["claims_granted"], 1, "one grant for one key");
    for fallback in LOOKUP_FALLBACKS {
        assert_eq!(counters[fallback], 0, "{fallback}");
    }
}

#[test]
fn a_peer_sending_tampered_entries_is_rejected_counted_and_dropped() {
    let _serial = common::swarm::serial();
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
    wait_for(
        "the two nodes to verify each other",
        Duration::from_secs(20),
        || honest.peer_count() == 1,
    );

    for e in 0..3 {
        let path = format!("gh/repos/octo/swarm/contents/r{e}");
        assert_eq!(liar.get(&path).source(), "upstream");
        wait_for("the announcement", Duration::from_secs(10), || {
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
    wait_for(
        "the liar to be disconnected",
        Duration::from_secs(10),
        || honest.peer_count() == 0,
    );
    assert!(honest.log().contains("rejected an entry"));
}

#[test]
fn a_restarted_node_keeps_its_identity_and_cache_and_rejoins() {
    let _serial = common::swarm::serial();
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
    wait_for(
        "the two nodes to verify each other",
        Duration::from_secs(20),
        || other.peer_count() == 1,
    );
    assert_eq!(
        first.get("gh/repos/octo/swarm/contents/r0").source(),
        "upstream"
    );

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
    wait_for("the peer to notice", Duration::from_secs(20), || {
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
    let cached = again.get("gh/repos/octo/swarm/contents/r0");
    assert_eq!(cached.source(), "local", "the cache survived the restart");
    // The other node re-dials its bootstrap peer with backoff.
    wait_for(
        "the restarted node to rejoin",
        Duration::from_secs(30),
        || other.peer_count() == 1 && again.peer_count() == 1,
    );
    assert_eq!(
        other.get("gh/repos/octo/swarm/contents/r0").source(),
        "peer"
    );
    assert_eq!(hub.count("/repos/octo/swarm/contents/r0"), 1);
}

fn free_port() -> u16 {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
    if tcp.is_ok() { port } else { free_port() }
}

#[test]
fn a_node_that_knows_one_member_finds_all_of_them_through_kademlia() {
    let _serial = common::swarm::serial();
    let root = tempfile::tempdir().unwrap();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 1, 2048);
    let nodes = swarm_of(root.path(), &hub, 3, None);
    let late = start(
        root.path(),
        "late",
        &hub,
        NodeSpec {
            bootstrap: vec![nodes[2].bootstrap_addr()],
            ..NodeSpec::default()
        },
    );
    wait_for(
        "the late node to find all three members",
        Duration::from_secs(30),
        || late.peer_count() == 3,
    );
    for node in &nodes {
        wait_for(
            &format!("{} to see the late node", node.name),
            Duration::from_secs(10),
            || node.peer_count() == 3,
        );
    }
    // And it shares with the members it was never told about.
    assert_eq!(
        nodes[0].get("gh/repos/octo/swarm/contents/r0").source(),
        "upstream"
    );
    assert_eq!(late.get("gh/repos/octo/swarm/contents/r0").source(), "peer");
    assert_eq!(hub.count("/repos/octo/swarm/contents/r0"), 1);
}
