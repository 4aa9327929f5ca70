//! Slowloris on the exchange protocol: a libp2p client whose requests go out a byte at a time,
//! `pace` apart, against a daemon whose members must be served meanwhile.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fakehub::FakeHub;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, noise, tcp, yamux};

use crate::common::swarm::{NodeSpec, serial, start_node, wait_for};

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

/// A connection that never finishes its handshake: a correct start of multistream-select's
/// header (what a libp2p dialer sends first), a byte a second.
const HANDSHAKE_START: &[u8] = b"\x13/multistream/1.0.0\n";

/// More slow handshakes from one host (127.0.0.3) than the 128 pending connections a node
/// accepts: the gate lets 32 per address be in progress and refuses the rest, those 32 are cut
/// at libp2p's connection timeout (10 s), and a member dialing in from another address
/// (127.0.0.1) meanwhile gets in at once, not when the flood is cut.
#[test]
fn slow_handshakes_from_one_host_are_cut_and_do_not_keep_a_new_member_out() {
    use std::io::{Read, Write};
    const SOCKETS: usize = 200;
    let _serial = serial();
    let hub = FakeHub::start();
    fakehub::generate_resources(&hub, 1, 4096);
    let root = tempfile::tempdir().unwrap();
    let target = start_node(root.path(), "target", &hub, NodeSpec::default());
    let port: u16 = target.tcp_addr.rsplit('/').next().unwrap().parse().unwrap();

    let flood = std::thread::spawn(move || {
        let started = Instant::now();
        let mut sockets: Vec<(std::net::TcpStream, Option<Duration>)> = (0..SOCKETS)
            .map(|_| {
                let s = connect_from("127.0.0.3", port);
                s.set_nonblocking(true).unwrap();
                (s, None)
            })
            .collect();
        for byte in HANDSHAKE_START.iter().cycle().take(40) {
            for (socket, closed) in sockets.iter_mut().filter(|(_, c)| c.is_none()) {
                let mut buf = [0u8; 256];
                let gone = match socket.read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                } || socket.write(&[*byte]).is_err();
                if gone {
                    *closed = Some(started.elapsed());
                }
            }
            if sockets.iter().all(|(_, c)| c.is_some()) {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        sockets.into_iter().map(|(_, c)| c).collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_secs(2));
    let starting = Instant::now();
    let member = start_node(
        root.path(),
        "member",
        &hub,
        NodeSpec {
            bootstrap: vec![target.bootstrap_addr()],
            ..NodeSpec::default()
        },
    );
    // From when the member answers: its own start (a process, keys, listeners) is not the
    // gate's to shorten, and a loaded machine can stretch it.
    let started_in = starting.elapsed();
    let joined_at = Instant::now();
    wait_for(
        "a member to join while slow handshakes hang",
        Duration::from_secs(30),
        || target.peer_count() == 1 && member.peer_count() == 1,
    );
    let join_took = joined_at.elapsed();
    let closed = flood.join().unwrap();
    let open = closed.iter().filter(|c| c.is_none()).count();
    let longest = closed.iter().flatten().max().copied().unwrap_or_default();
    eprintln!(
        "{SOCKETS} slow handshakes: a member started in {started_in:?} and joined in \
         {join_took:?}; {open} still open after 40 s, the others cut after at most {longest:?}"
    );
    assert_eq!(open, 0, "slow handshakes were never cut");
    assert!(longest < Duration::from_secs(20), "{longest:?}");
    // The flood's handshakes last 10 s: a member that got in well before was not held back.
    assert!(
        join_took < Duration::from_secs(6),
        "a member took {join_took:?} to join while one host held slow handshakes open\n\
         member's log:\n{}\ntarget's log:\n{}",
        member.log(),
        target.log()
    );
    assert!(
        target
            .log()
            .contains("handshakes from 127.0.0.3 are in progress"),
        "the refusals were not logged:\n{}",
        target.log()
    );
}

/// A TCP connection to the node's port on 127.0.0.1 that leaves from `source`, another
/// loopback address, as a second host would.
fn connect_from(source: &str, port: u16) -> std::net::TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream = socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        stream.into_std().unwrap()
    })
}
