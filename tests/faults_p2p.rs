//! Faults of the swarm survived: a peer sending its requests a byte a second (slowloris) on the
//! exchange protocol, and the claimant or the coordinator of a key killed with SIGKILL while the
//! claimant's upstream call is in flight. Each must give no wrong body, no failed fetch that had
//! an answer available, and a clear log line.

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::HttpResponse;
use common::netns::{self, Lab, NsNode, NsSpec, api_forwarder};
use common::swarm::{NodeSpec, SwarmNode, serial, start_node, swarm_of, wait_for};
use fakehub::{FakeHub, Options};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, noise, tcp, yamux};

// ---------------------------------------------------------------------------------------------
// A slowloris client: a libp2p peer whose requests on the exchange protocol go out a byte at a
// time, `pace` apart.

/// One slow request: its bytes, and how many of them went out before the stream ended.
#[derive(Debug)]
struct SlowRequest {
    bytes: Vec<u8>,
    written: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct SlowCodec {
    pace: Duration,
}

impl request_response::Codec for SlowCodec {
    type Protocol = StreamProtocol;
    type Request = SlowRequest;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SlowRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut bytes = Vec::new();
        io.take(64 * 1024).read_to_end(&mut bytes).await?;
        Ok(SlowRequest {
            bytes,
            written: Arc::default(),
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut bytes = Vec::new();
        io.take(64 * 1024 * 1024).read_to_end(&mut bytes).await?;
        Ok(bytes)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: SlowRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        for byte in &request.bytes {
            io.write_all(&[*byte]).await?;
            io.flush().await?;
            request.written.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.pace).await;
        }
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&response).await
    }
}

/// A well-formed start of `Request::Pull` as the daemon's CBOR codec reads it:
/// `{"Pull": {"key_id": <32 bytes>}}`, 48 bytes (48 s at a byte a second).
fn pull_request_bytes() -> Vec<u8> {
    let mut bytes = vec![0xa1, 0x64];
    bytes.extend_from_slice(b"Pull");
    bytes.extend_from_slice(&[0xa1, 0x66]);
    bytes.extend_from_slice(b"key_id");
    bytes.extend_from_slice(&[0x58, 0x20]);
    bytes.extend_from_slice(&[0x5a; 32]);
    bytes
}

/// How one slow request ended.
#[derive(Debug)]
struct SlowOutcome {
    /// From sending it to its end.
    lasted: Duration,
    /// Bytes of it that went out.
    written: usize,
    /// The daemon answered it (it must not: the request never completes).
    answered: bool,
}

/// Dials `target`, sends `streams` slow requests on one connection and waits (at most
/// `limit`) for each of them to end. `None` for a request still open at the limit.
async fn slowloris(
    target: Multiaddr,
    streams: usize,
    pace: Duration,
    limit: Duration,
) -> Vec<Option<SlowOutcome>> {
    let behaviour = request_response::Behaviour::with_codec(
        SlowCodec { pace },
        [(
            StreamProtocol::new(peercache::p2p::protocol::EXCHANGE_PROTOCOL),
            ProtocolSupport::Outbound,
        )],
        // Its own timeout far beyond the daemon's: whatever ends a stream is the daemon.
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(600))
            .with_max_concurrent_streams(streams + 16),
    );
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp transport")
        .with_behaviour(|_| behaviour)
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm.dial(target).expect("dial the daemon");
    let peer = loop {
        match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
            Ok(SwarmEvent::ConnectionEstablished { peer_id, .. }) => break peer_id,
            Ok(SwarmEvent::OutgoingConnectionError { error, .. }) => {
                panic!("the slowloris client could not connect: {error}")
            }
            Ok(_) => {}
            Err(_) => panic!("the slowloris client did not connect within 10 s"),
        }
    };
    let mut pending = std::collections::HashMap::new();
    for _ in 0..streams {
        let written = Arc::new(AtomicUsize::new(0));
        let id = swarm.behaviour_mut().send_request(
            &peer,
            SlowRequest {
                bytes: pull_request_bytes(),
                written: written.clone(),
            },
        );
        pending.insert(id, (Instant::now(), written));
    }
    let mut outcomes = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !pending.is_empty() {
        let event = match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(event) => event,
            Err(_) => break,
        };
        let (id, answered) = match event {
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                request_id, ..
            }) => (request_id, false),
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, .. },
                ..
            }) => (request_id, true),
            _ => continue,
        };
        if let Some((sent, written)) = pending.remove(&id) {
            outcomes.push(Some(SlowOutcome {
                lasted: sent.elapsed(),
                written: written.load(Ordering::Relaxed),
                answered,
            }));
        }
    }
    outcomes.extend(pending.into_iter().map(|_| None));
    outcomes
}

/// Runs [`slowloris`] on a thread of its own (the test goes on meanwhile).
fn slowloris_in_background(
    target: &str,
    streams: usize,
) -> std::thread::JoinHandle<Vec<Option<SlowOutcome>>> {
    let target: Multiaddr = target.parse().unwrap();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(slowloris(
                target,
                streams,
                Duration::from_secs(1),
                Duration::from_secs(60),
            ))
    })
}

/// Asserts every slow stream was cut by the daemon, early in its request, and returns the
/// longest one lasted.
fn assert_all_cut(outcomes: &[Option<SlowOutcome>], streams: usize) -> Duration {
    assert_eq!(outcomes.len(), streams);
    let total = pull_request_bytes().len();
    let mut longest = Duration::ZERO;
    for (i, outcome) in outcomes.iter().enumerate() {
        let outcome = outcome
            .as_ref()
            .unwrap_or_else(|| panic!("slow stream {i} was still open after 60 s"));
        assert!(!outcome.answered, "slow stream {i} got an answer");
        // Unbounded, the stream would last the whole request (48 s): it must end long before.
        assert!(
            outcome.lasted < Duration::from_secs(15) && outcome.written < total / 2,
            "slow stream {i} lasted {:?} and sent {} of {total} bytes",
            outcome.lasted,
            outcome.written
        );
        longest = longest.max(outcome.lasted);
    }
    longest
}

#[test]
fn a_peer_sending_a_byte_a_second_is_cut_off_and_members_are_served_meanwhile() {
    const STREAMS: usize = 100;
    let _serial = serial();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 4, 20 * 1024);
    let root = tempfile::tempdir().unwrap();
    let target = start_node(root.path(), "target", &hub, NodeSpec::default());
    let rss_before = target.rss_kb();

    // A wave of slow streams; while they hang, a member joins, and fetches what the target holds.
    let wave = slowloris_in_background(&target.tcp_addr, STREAMS);
    std::thread::sleep(Duration::from_secs(1));
    let member = start_node(
        root.path(),
        "member",
        &hub,
        NodeSpec {
            bootstrap: vec![target.bootstrap_addr()],
            ..NodeSpec::default()
        },
    );
    wait_for(
        "the member to join while slow streams hang",
        Duration::from_secs(20),
        || target.peer_count() == 1 && member.peer_count() == 1,
    );
    let path = "gh/repos/octo/swarm/contents/r0";
    let first = target.get(path);
    assert_eq!((first.status, first.source().as_str()), (200, "upstream"));
    wait_for("the announcement", Duration::from_secs(10), || {
        member.swarm()["announcements_received"].as_u64().unwrap() >= 1
    });
    let started = Instant::now();
    let pulled = member.get(path);
    let pull_took = started.elapsed();
    assert_eq!(pulled.status, 200);
    assert_eq!(
        pulled.body,
        fakehub::repo_body(0, 20 * 1024),
        "a wrong body"
    );
    assert_eq!(pulled.source(), "peer", "{}", member.log());
    assert_eq!(hub.count("/repos/octo/swarm/contents/r0"), 1);
    let mut rss_peak = target.rss_kb();
    let first_wave = wave.join().unwrap();
    let longest = assert_all_cut(&first_wave, STREAMS);

    // A second wave: the daemon holds no more after it than after the first.
    let rss_after_first = target.rss_kb();
    let wave = slowloris_in_background(&target.tcp_addr, STREAMS);
    while !wave.is_finished() {
        rss_peak = rss_peak.max(target.rss_kb());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_all_cut(&wave.join().unwrap(), STREAMS);
    let rss_after = target.rss_kb();
    eprintln!(
        "slowloris, {STREAMS} streams a wave: cut after at most {longest:?}; a member's pull took \
         {pull_took:?} meanwhile; target RSS {rss_before} kB before, peak {rss_peak} kB, \
         {rss_after_first} kB after one wave, {rss_after} kB after two"
    );
    assert!(
        rss_peak < rss_before + 20 * 1024,
        "{STREAMS} slow streams took the daemon from {rss_before} kB to {rss_peak} kB"
    );
    assert!(
        rss_after < rss_after_first + 4 * 1024,
        "a second wave grew the daemon from {rss_after_first} kB to {rss_after} kB"
    );

    // Members still get answers after both waves, and a line says what was cut.
    let second = member.get("gh/repos/octo/swarm/contents/r1");
    assert_eq!((second.status, second.source().as_str()), (200, "upstream"));
    let from_member = target.get("gh/repos/octo/swarm/contents/r1");
    assert_eq!(from_member.source(), "peer");
    assert_eq!(from_member.body, fakehub::repo_body(1, 20 * 1024));
    assert!(target.alive() && member.alive());
    let log = target.log();
    assert!(
        log.contains("exchange stream(s) whose request did not arrive within"),
        "no line says why the slow streams were closed:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Claims: the claimant or the coordinator killed while the claimant's upstream call is in flight.

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
                common::http_get(&format!("{api}/{path}"), &[("authorization", &auth)])
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

// ---------------------------------------------------------------------------------------------
// Packet loss on the link between two hosts (network namespaces joined by a veth pair; nftables
// drops packets at random: this kernel has no `tc netem`).

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
            secret: common::swarm::SECRET,
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
            secret: common::swarm::SECRET,
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
    let lost = dropped(&ns_b);
    eprintln!(
        "{LOSS}% loss each way: {from_peer}/{ENDPOINTS} from the peer, slowest {slowest:?}; \
         {lost} packets dropped"
    );
    assert!(lost > 0, "the link lost nothing: the test proved nothing");
    // TCP carries the entries through the loss: B does not pay GitHub for what A holds.
    assert!(
        from_peer >= ENDPOINTS - 2,
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
