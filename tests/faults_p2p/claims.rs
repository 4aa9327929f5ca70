//! Claims: the claimant or the coordinator killed while the claimant's upstream call is in flight.

use std::time::{Duration, Instant};

use fakehub::{FakeHub, Options};

use crate::common::HttpResponse;
use crate::common::swarm::{SwarmNode, serial, swarm_of, wait_for};

/// How long the stand-in GitHub takes to answer: the window in which a claim is in flight.
const UPSTREAM_LATENCY: Duration = Duration::from_secs(3);

/// Sends `GET <api>/<path>` with the node's token and leaves the answer unread (the node is
/// about to be killed; its answer does not matter, its upstream call does).
fn fire(node: &SwarmNode, path: &str) -> std::net::TcpStream {
    use std::io::Write;
    let rest = node.api.strip_prefix("http://").unwrap();
    let (authority, prefix) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    write!(
        stream,
        "GET {prefix}/{path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer token-of-{}\r\n\
         Connection: close\r\n\r\n",
        node.name
    )
    .unwrap();
    stream
}

/// Upstream calls for `path` made with `node`'s token.
fn upstream_calls_by(hub: &FakeHub, path: &str, node: &SwarmNode) -> usize {
    let token = format!("Bearer token-of-{}", node.name);
    hub.stats()
        .requests
        .iter()
        .filter(|r| r.path() == path && r.authorization.as_deref() == Some(token.as_str()))
        .count()
}

fn counter(node: &SwarmNode, name: &str) -> u64 {
    node.swarm()[name].as_u64().unwrap()
}

fn all_logs(nodes: &[&SwarmNode]) -> String {
    nodes
        .iter()
        .map(|n| format!("\n--- {} ---\n{}", n.name, n.log()))
        .collect()
}

#[test]
fn a_claimant_killed_mid_fetch_is_replaced_by_one_waiter_and_every_waiter_is_answered() {
    let _serial = serial();
    let hub = FakeHub::start_with(Options {
        latency: UPSTREAM_LATENCY,
        ..Options::default()
    });
    fakehub::generate_resources(&hub, 1, 8 * 1024);
    let root = tempfile::tempdir().unwrap();
    let nodes = swarm_of(root.path(), &hub, 3, None);
    let [claimant, w1, w2] = &nodes[..] else {
        unreachable!()
    };
    let path = "gh/repos/octo/swarm/contents/r0";
    let upstream_path = "/repos/octo/swarm/contents/r0";

    let _unread = fire(claimant, path);
    wait_for("the claim", Duration::from_secs(5), || {
        counter(claimant, "claims_won") == 1
    });
    let (answers, after_kill) = std::thread::scope(|scope| {
        let waiters: Vec<_> = [w1, w2]
            .into_iter()
            .map(|node| scope.spawn(move || node.get(path)))
            .collect();
        wait_for(
            "both to wait for the claimant",
            Duration::from_secs(5),
            || counter(w1, "claims_waited") + counter(w2, "claims_waited") == 2,
        );
        // Its upstream call is in flight (GitHub answers after 3 s): kill it.
        claimant.kill(libc::SIGKILL);
        let killed = Instant::now();
        let answers: Vec<HttpResponse> = waiters.into_iter().map(|h| h.join().unwrap()).collect();
        (answers, killed.elapsed())
    });
    let body = fakehub::repo_body(0, 8 * 1024);
    for (node, answer) in [w1, w2].iter().zip(&answers) {
        assert_eq!(answer.status, 200, "{}: {}", node.name, answer.text());
        assert!(answer.body == body, "{} got a wrong body", node.name);
    }
    let mut sources: Vec<String> = answers.iter().map(HttpResponse::source).collect();
    sources.sort();
    let logs = all_logs(&[w1, w2]);
    // One waiter took over the claim; the other got its entry. Waiting out the dead claimant's
    // claim (20 s) and then both going upstream would be slower and cost two calls.
    let replacements =
        upstream_calls_by(&hub, upstream_path, w1) + upstream_calls_by(&hub, upstream_path, w2);
    assert_eq!(replacements, 1, "{sources:?}{logs}");
    assert_eq!(sources, ["peer", "upstream"], "{logs}");
    assert!(
        after_kill < UPSTREAM_LATENCY + Duration::from_secs(5),
        "the waiters were answered {after_kill:?} after the claimant died{logs}"
    );
    assert!(
        logs.contains("left while fetching a key this node wants"),
        "no line says the claimant left{logs}"
    );
    eprintln!(
        "claimant killed: both waiters answered {after_kill:?} after, {replacements} extra upstream call"
    );
}

#[test]
fn a_coordinator_killed_mid_claim_leaves_its_waiters_answered() {
    let _serial = serial();
    let hub = FakeHub::start_with(Options {
        latency: UPSTREAM_LATENCY,
        ..Options::default()
    });
    fakehub::generate_resources(&hub, 8, 8 * 1024);
    let root = tempfile::tempdir().unwrap();
    let nodes = swarm_of(root.path(), &hub, 4, None);
    let claimant = &nodes[0];
    let granted_to_claimant = format!("claim granted to {}", claimant.peer_id);
    let grants = |node: &SwarmNode| node.log().matches(&granted_to_claimant).count();

    // Keys until one's coordinator is not the claimant itself (each key has its own).
    let mut found = None;
    for i in 0..8 {
        let before: Vec<usize> = nodes.iter().map(grants).collect();
        let won = counter(claimant, "claims_won");
        let path = format!("gh/repos/octo/swarm/contents/r{i}");
        let request = {
            let (api, name) = (claimant.api.clone(), claimant.name.clone());
            let path = path.clone();
            std::thread::spawn(move || {
                let auth = format!("Bearer token-of-{name}");
                crate::common::http_get(&format!("{api}/{path}"), &[("authorization", &auth)])
            })
        };
        wait_for("the claim", Duration::from_secs(5), || {
            counter(claimant, "claims_won") == won + 1
        });
        let coordinator = nodes
            .iter()
            .enumerate()
            .find(|(n, node)| grants(node) > before[*n])
            .map(|(n, _)| n)
            .expect("some node granted the claim");
        if coordinator != 0 {
            found = Some((i, coordinator, path, request));
            break;
        }
        assert_eq!(request.join().unwrap().status, 200);
    }
    let (i, c, path, request) = found.expect("a key coordinated by another node within 8");
    let coordinator = &nodes[c];
    let others: Vec<&SwarmNode> = (1..4).filter(|n| *n != c).map(|n| &nodes[n]).collect();
    let (waiter, late) = (others[0], others[1]);
    let upstream_path = format!("/repos/octo/swarm/contents/r{i}");

    let (waited, joined, after_kill) = std::thread::scope(|scope| {
        let waited = scope.spawn(|| waiter.get(&path));
        wait_for(
            "the waiter to wait for the claimant",
            Duration::from_secs(5),
            || counter(waiter, "claims_waited") == 1,
        );
        // The claimant's upstream call is in flight: kill the coordinator that granted it.
        coordinator.kill(libc::SIGKILL);
        let killed = Instant::now();
        wait_for(
            "the others to see the coordinator leave",
            Duration::from_secs(5),
            || [claimant, waiter, late].iter().all(|n| n.peer_count() == 2),
        );
        // A node asking now has a new coordinator, which knows nothing of the claim.
        let joined = scope.spawn(|| late.get(&path));
        let waited = waited.join().unwrap();
        let after_kill = killed.elapsed();
        (waited, joined.join().unwrap(), after_kill)
    });
    let own = request.join().unwrap();
    let body = fakehub::repo_body(i, 8 * 1024);
    let logs = all_logs(&[claimant, waiter, late]);
    for (node, answer) in [(claimant, &own), (waiter, &waited), (late, &joined)] {
        assert_eq!(answer.status, 200, "{}: {}{logs}", node.name, answer.text());
        assert!(answer.body == body, "{} got a wrong body", node.name);
    }
    assert_eq!(own.source(), "upstream");
    // The waiter gets the claimant's entry, not a call of its own.
    assert_eq!(waited.source(), "peer", "{logs}");
    assert!(
        after_kill < UPSTREAM_LATENCY + Duration::from_secs(5),
        "the waiter was answered {after_kill:?} after the coordinator died{logs}"
    );
    // At most one extra call: the late node, when it asked before the claimant announced.
    let calls = hub.count(&upstream_path);
    assert!(calls <= 2, "{calls} upstream calls for one key{logs}");
    assert_eq!(upstream_calls_by(&hub, &upstream_path, waiter), 0);
    assert!(
        logs.contains(&format!("peer {} left", coordinator.peer_id)),
        "no line says the coordinator left{logs}"
    );
    eprintln!(
        "coordinator killed: its waiter answered from a peer {after_kill:?} after; {calls} upstream call(s) for the key (late node: {})",
        joined.source()
    );
}
