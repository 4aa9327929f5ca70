//! The hub and DNS addresses on loopback: `/dns4/` bootstrap addresses are dialed (an
//! unresolvable one is one warning), and the hub's relay serves members only — a stranger that
//! never proved the secret is refused a reservation and a circuit by the hub itself.

mod common;

use std::time::Duration;

use common::swarm::{NodeSpec, serial, start_node as start, wait_for};
use fakehub::FakeHub;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, noise, relay, tcp, yamux};

fn port_of(addr: &str) -> u16 {
    let addr: Multiaddr = addr.parse().unwrap();
    addr.iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_dns4_bootstrap_address_is_dialed_and_an_unresolvable_one_is_one_warning() {
    let _serial = serial();
    let hub = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    let a = start(root.path(), "a", &hub, NodeSpec::default());
    let nowhere = PeerId::random();
    let unresolvable = format!("/dns4/no-such-host.invalid/tcp/9/p2p/{nowhere}");
    let b = start(
        root.path(),
        "b",
        &hub,
        NodeSpec {
            bootstrap: vec![
                unresolvable.clone(),
                format!(
                    "/dns4/localhost/tcp/{}/p2p/{}",
                    port_of(&a.tcp_addr),
                    a.peer_id
                ),
            ],
            ..NodeSpec::default()
        },
    );
    wait_for(
        "b to verify a through /dns4/localhost",
        Duration::from_secs(30),
        || b.peer_count() == 1,
    );
    let warnings = |log: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(&unresolvable))
            .count()
    };
    wait_for(
        "a warning naming the unresolvable address",
        Duration::from_secs(60),
        || warnings(&b.log()) >= 1,
    );
    // Redials go on with backoff; the warning is not repeated.
    std::thread::sleep(Duration::from_secs(4));
    let log = b.log();
    assert_eq!(warnings(&log), 1, "one warning, not one per redial:\n{log}");
    let line = log.lines().find(|l| l.contains(&unresolvable)).unwrap();
    assert!(line.contains("check that the name resolves"), "{line}");
    assert!(b.alive(), "the node goes on");
    assert_eq!(b.peer_count(), 1);
}

/// A bare libp2p relay client, holding no secret: it never sends a hello.
fn stranger() -> libp2p::Swarm<relay::client::Behaviour> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_, relay| relay)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

#[test]
fn the_hub_relays_for_members_only() {
    let _serial = serial();
    let api = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    let hub = start(
        root.path(),
        "hub",
        &api,
        NodeSpec {
            env: vec![("PEERCACHE_HUB", "true".into())],
            ..NodeSpec::default()
        },
    );
    let member = start(
        root.path(),
        "member",
        &api,
        NodeSpec {
            bootstrap: vec![hub.bootstrap_addr()],
            ..NodeSpec::default()
        },
    );
    // A member reserves on the hub as soon as it has proven the secret.
    wait_for(
        "the member's reservation on the hub",
        Duration::from_secs(30),
        || {
            member.json("api/peers")["relays"]
                .as_array()
                .is_some_and(|r| r.iter().any(|a| a.as_str().unwrap().contains(&hub.peer_id)))
        },
    );
    let peers = member.json("api/peers");
    assert_eq!(peers["peers"][0]["connection"], "direct", "{peers}");
    assert!(
        ["public", "private", "unknown"].contains(&peers["reachability"].as_str().unwrap()),
        "{peers}"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let hub_addr: Multiaddr = hub.bootstrap_addr().parse().unwrap();
    let member_id: PeerId = member.peer_id.parse().unwrap();
    let (reservation, circuit, stranger_id) = runtime.block_on(async {
        let mut swarm = stranger();
        let id = *swarm.local_peer_id();
        let listener = swarm
            .listen_on(hub_addr.clone().with(Protocol::P2pCircuit))
            .unwrap();
        let mut reservation = None;
        let mut circuit = None;
        let deadline = tokio::time::sleep(Duration::from_secs(20));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = swarm.select_next_some() => match event {
                    SwarmEvent::Behaviour(relay::client::Event::ReservationReqAccepted { .. }) => {
                        reservation = Some(Ok(()));
                    }
                    SwarmEvent::ListenerClosed { listener_id, reason, .. } if listener_id == listener => {
                        reservation = Some(reason.map_err(|e| e.to_string()));
                        let through_hub = hub_addr
                            .clone()
                            .with(Protocol::P2pCircuit)
                            .with(Protocol::P2p(member_id));
                        swarm.dial(through_hub).unwrap();
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == member_id => {
                        circuit = Some(Ok(()));
                        break;
                    }
                    SwarmEvent::OutgoingConnectionError { peer_id: Some(p), error, .. } if p == member_id => {
                        circuit = Some(Err(error.to_string()));
                        break;
                    }
                    _ => {}
                },
                _ = &mut deadline => break,
            }
        }
        (reservation, circuit, id)
    });
    let reservation = reservation.expect("the hub answered the stranger's reservation");
    assert!(reservation.is_err(), "a stranger got a reservation");
    let circuit = circuit.expect("the hub answered the stranger's circuit request");
    assert!(circuit.is_err(), "a stranger got a circuit to a member");
    let log = hub.log();
    assert!(
        log.contains(&format!("refused a relay reservation to {stranger_id}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("refused a relay circuit to {stranger_id}")),
        "{log}"
    );
    // The member's reservation is untouched.
    let relays = member.json("api/peers")["relays"].clone();
    assert_eq!(relays.as_array().unwrap().len(), 1, "{relays}");
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The hub's footprint with 50 reserved members, for the README, by hand:
/// `cargo test --test hub -- --ignored --nocapture`; `PEERCACHE_MEASURE_BINARY` names another
/// build to measure (the static release binary of scripts/build-static.sh).
#[test]
#[ignore = "a measurement, run by hand: cargo test --test hub -- --ignored --nocapture"]
fn measure_the_hub_with_fifty_reserved_runners() {
    let _serial = serial();
    let binary = std::env::var_os("PEERCACHE_MEASURE_BINARY").map(std::path::PathBuf::from);
    let api = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    let hub = start(
        root.path(),
        "hub",
        &api,
        NodeSpec {
            env: vec![
                ("PEERCACHE_HUB", "true".into()),
                ("PEERCACHE_LOG", "info".into()),
            ],
            binary: binary.as_deref(),
            ..NodeSpec::default()
        },
    );
    let idle_rss = hub.rss_kb();
    let members: Vec<_> = (0..50)
        .map(|i| {
            start(
                root.path(),
                &format!("runner{i}"),
                &api,
                NodeSpec {
                    bootstrap: vec![hub.bootstrap_addr()],
                    env: vec![("PEERCACHE_LOG", "info".into())],
                    binary: binary.as_deref(),
                    ..NodeSpec::default()
                },
            )
        })
        .collect();
    for m in &members {
        wait_for(
            &format!("{}'s reservation", m.name),
            Duration::from_secs(120),
            || {
                m.json("api/peers")["relays"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            },
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    let (cpu0, t0) = (cpu_secs(hub.pid), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(30));
    let cpu = (cpu_secs(hub.pid) - cpu0) / t0.elapsed().as_secs_f64();
    eprintln!(
        "hub: {} kB RSS idle, {} kB with 50 reserved runners; {:.1} % of one core over 30 s with them",
        idle_rss,
        hub.rss_kb(),
        cpu * 100.0
    );
}
