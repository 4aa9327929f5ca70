//! The NAT lab: runners behind NAT routers form one swarm through a hub.
//!
//! One machine, network namespaces: an "internet" segment (a bridge) with the hub on it, and
//! four routers, each NATing one runner with nftables — `cone1`, `cone2` and `stranger` with
//! Linux's ordinary masquerade (endpoint-independent mapping, where hole punching can work),
//! `sym` with `masquerade fully-random` (a new port per destination, like a cloud NAT). Every
//! router drops unsolicited inbound packets in its input hook, as real routers do, so nothing
//! reaches a runner except what its NAT lets back in. The routers also count, in their forward
//! chain, what arrives from each other router's public address: traffic that crossed the
//! "internet" directly, not through the hub — the proof of a hole punched, seen from outside
//! peercache.
//!
//! The stand-in GitHub API runs in the test process; each runner reaches it through a loopback
//! forwarder inside its own namespace (upstream traffic is not what this lab is about).
//!
//! Needs root and nftables (CI runs it as root); elsewhere it skips with a message saying why.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::netns::{self, Lab, NsNode as Runner, NsSpec, api_forwarder, ip, run};
use common::swarm::SECRET;
use fakehub::FakeHub;

/// Tools beyond `ip` the lab needs.
const NFT: &[(&str, &str, &str)] = &[("nft", "--version", "nftables")];

/// The hub's address on the "internet" and its p2p port.
const HUB_IP: &str = "198.18.0.2";
const HUB_PORT: u16 = 4001;

/// A router: its namespace, its public (WAN) address, and the runner's namespace behind it.
struct Site {
    name: &'static str,
    router: String,
    runner_ns: String,
    wan_ip: String,
}

/// The lab's own topology: an "internet" and NAT routers.
trait NatLab {
    fn internet(&mut self) -> String;
    fn site(&mut self, inet: &str, name: &'static str, n: u8, symmetric: bool) -> Site;
}

impl NatLab for Lab {
    /// The "internet": a bridge in its own namespace, the hub's address on it.
    fn internet(&mut self) -> String {
        let inet = self.ns("nl", "inet");
        ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &inet,
            "addr",
            "add",
            &format!("{HUB_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &inet, "link", "set", "br0", "up"]);
        inet
    }

    /// A router on the internet at 198.18.0.`n`, NATing the runner behind it at 10.`n`.0.2.
    fn site(&mut self, inet: &str, name: &'static str, n: u8, symmetric: bool) -> Site {
        let router = self.ns("nl", &format!("r{n}"));
        let runner_ns = self.ns("nl", name);
        let wan_ip = format!("198.18.0.{n}");
        let (wan, port) = (format!("wan{n}"), format!("nlp{n}{}", self.tag));
        ip(&[
            "link", "add", &wan, "netns", &router, "type", "veth", "peer", "name", &port, "netns",
            inet,
        ]);
        ip(&["-n", inet, "link", "set", &port, "master", "br0", "up"]);
        ip(&["-n", &router, "link", "set", &wan, "name", "wan"]);
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("{wan_ip}/24"),
            "dev",
            "wan",
        ]);
        ip(&["-n", &router, "link", "set", "wan", "up"]);
        ip(&[
            "link", "add", "lan", "netns", &router, "type", "veth", "peer", "name", "eth0",
            "netns", &runner_ns,
        ]);
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("10.{n}.0.1/24"),
            "dev",
            "lan",
        ]);
        ip(&["-n", &router, "link", "set", "lan", "up"]);
        ip(&[
            "-n",
            &runner_ns,
            "addr",
            "add",
            &format!("10.{n}.0.2/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &runner_ns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &runner_ns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.{n}.0.1"),
        ]);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        let nat = if symmetric {
            "masquerade fully-random"
        } else {
            "masquerade"
        };
        // Counters per other router and protocol: what came in from that public address,
        // dropped as unsolicited (input) or let through to the runner as a reply to its own
        // packets (forward: with a hole punched, peer traffic).
        let counters: String = (10..=20u8)
            .filter(|m| *m != n)
            .flat_map(|m| {
                ["tcp", "udp"].map(|proto| {
                    format!("iifname \"wan\" ip saddr 198.18.0.{m} meta l4proto {proto} counter\n")
                })
            })
            .collect();
        let rules = format!(
            "table ip nat {{\n chain postrouting {{ type nat hook postrouting priority 100; oifname \"wan\" {nat}; }}\n}}\n\
             table inet filter {{\n\
              chain input {{ type filter hook input priority 0;\n{counters}\
               iifname \"wan\" ct state new counter drop; }}\n\
              chain forward {{ type filter hook forward priority 0;\n{counters}\
               iifname \"wan\" ct state new counter drop; }}\n}}\n"
        );
        self.nft(&router, &format!("r{n}"), &rules);
        Site {
            name,
            router,
            runner_ns,
            wan_ip,
        }
    }
}

/// A counter of a router's `chain` (`input` or `forward`) for packets of `proto` from another
/// router's public address: `(packets, bytes)`.
fn counted(site: &Site, chain: &str, other_wan: &str, proto: &str) -> (u64, u64) {
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            &site.router,
            "nft",
            "list",
            "chain",
            "inet",
            "filter",
            chain,
        ],
    );
    let rule = format!("ip saddr {other_wan} meta l4proto {proto} counter");
    out.lines()
        .find(|l| l.contains(&rule))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let after = |key: &str| {
                words
                    .iter()
                    .position(|w| *w == key)
                    .and_then(|i| words.get(i + 1)?.parse().ok())
                    .unwrap_or(0)
            };
            (after("packets"), after("bytes"))
        })
        .unwrap_or((0, 0))
}

/// Bytes the router let through to its runner from another router's public address.
fn forwarded_from(site: &Site, other_wan: &str) -> u64 {
    ["tcp", "udp"]
        .iter()
        .map(|proto| counted(site, "forward", other_wan, proto).1)
        .sum()
}

/// Packets of `proto` that reached the router from another router's public address at all.
fn arrived_from(site: &Site, other_wan: &str, proto: &str) -> u64 {
    counted(site, "input", other_wan, proto).0 + counted(site, "forward", other_wan, proto).0
}

/// What the lab asks of a runner beyond [`NsNode`].
trait LabRunner {
    fn connection_to(&self, other: &Runner) -> String;
}

impl LabRunner for Runner {
    /// How it is connected to `other`: `direct`, `relayed`, or `none`.
    fn connection_to(&self, other: &Runner) -> String {
        let peers = self.json("api/peers");
        peers["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer_id"] == other.peer_id.as_str())
            .map(|p| p["connection"].as_str().unwrap().to_string())
            .unwrap_or_else(|| "none".into())
    }
}

struct Spec<'a> {
    name: &'a str,
    ns: &'a str,
    secret: &'a str,
    api_url: &'a str,
    bootstrap: String,
    hub: bool,
    /// `--listen` values; none: TCP and QUIC on every interface at [`HUB_PORT`].
    listen: Vec<String>,
}

fn start(root: &Path, spec: Spec, lab: &mut Lab) -> Runner {
    let mut args = vec!["--port".to_string(), HUB_PORT.to_string()];
    args.extend(
        spec.listen
            .iter()
            .flat_map(|l| ["--listen".to_string(), l.clone()]),
    );
    let mut env = vec![("PEERCACHE_BOOTSTRAP_PEERS", spec.bootstrap.clone())];
    if spec.hub {
        env.push(("PEERCACHE_HUB", "true".to_string()));
    }
    netns::start(
        root,
        NsSpec {
            name: spec.name,
            ns: spec.ns,
            api_url: spec.api_url,
            secret: spec.secret,
            args,
            env,
        },
        lab,
    )
}

fn wait_for(what: &str, limit: Duration, runners: &[&Runner], mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            panic!(
                "timed out after {limit:?} waiting for {what}{}",
                logs(runners)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn logs(runners: &[&Runner]) -> String {
    runners
        .iter()
        .map(|r| format!("\n--- {} ---\n{}", r.name, tail(&r.log(), 80)))
        .collect()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn relays(r: &Runner) -> Vec<String> {
    r.json("api/peers")["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn runners_behind_nat_form_one_swarm_through_the_hub() {
    if !netns::can_run("the NAT lab", NFT) {
        return;
    }
    let mut lab = Lab::new(format!("{}", std::process::id() % 10_000));
    let inet = lab.internet();
    let cone1 = lab.site(&inet, "cone1", 11, false);
    let cone2 = lab.site(&inet, "cone2", 12, false);
    let sym = lab.site(&inet, "sym", 13, true);
    let odd = lab.site(&inet, "stranger", 14, false);

    let upstream = FakeHub::start();
    const ENDPOINTS: usize = 20;
    fakehub::generate_resources(&upstream, ENDPOINTS, 4096);
    let big: Vec<u8> = fakehub::repo_body(999, 1024 * 1024);
    upstream.put_json("/repos/octo/swarm/contents/big", big.clone());
    let root = tempfile::tempdir().unwrap();

    let hub_api = api_forwarder(&inet, upstream.addr());
    let hub_spec = || Spec {
        name: "hub",
        ns: &inet,
        secret: SECRET,
        api_url: &hub_api,
        bootstrap: String::new(),
        hub: true,
        listen: Vec::new(),
    };
    let hub = start(root.path(), hub_spec(), &mut lab);
    let bootstrap = format!(
        "/ip4/{HUB_IP}/tcp/{HUB_PORT}/p2p/{id},/ip4/{HUB_IP}/udp/{HUB_PORT}/quic-v1/p2p/{id}",
        id = hub.peer_id
    );
    // Started together, knowing only the hub.
    let mut runners = Vec::new();
    for (site, secret) in [
        (&cone1, SECRET),
        (&cone2, SECRET),
        (&sym, SECRET),
        (&odd, "q7Vb2XkP9mR4tW8zL1nC6yH3sJ5dF0gAe9Ur"),
    ] {
        let api_url = api_forwarder(&site.runner_ns, upstream.addr());
        let spec = Spec {
            name: site.name,
            ns: &site.runner_ns,
            secret,
            api_url: &api_url,
            bootstrap: bootstrap.clone(),
            hub: false,
            listen: Vec::new(),
        };
        runners.push(start(root.path(), spec, &mut lab));
    }
    let [r1, r2, r3, stranger] = &runners[..] else {
        unreachable!()
    };
    let all = [r1, r2, r3, stranger, &hub];

    // Each member holds a reservation on the hub and knows it is behind NAT.
    for r in [r1, r2, r3] {
        wait_for(
            &format!("{}'s reservation", r.name),
            Duration::from_secs(30),
            &all,
            || relays(r).iter().any(|a| a.contains(&hub.peer_id)),
        );
        wait_for(
            &format!("AutoNAT to find {} private", r.name),
            Duration::from_secs(45),
            &all,
            || r.json("api/peers")["reachability"] == "private",
        );
    }
    // The members find each other through the hub; the cone pair punches a hole.
    wait_for(
        "the members to find each other",
        Duration::from_secs(60),
        &all,
        || {
            [r1, r2, r3]
                .iter()
                .all(|r| r.json("api/peers")["peer_count"] == 3)
        },
    );
    wait_for(
        "a direct connection between the cone runners",
        Duration::from_secs(60),
        &all,
        || r1.connection_to(r2) == "direct" && r2.connection_to(r1) == "direct",
    );
    for other in [r1, r2] {
        assert_eq!(
            r3.connection_to(other),
            "relayed",
            "{}\n{}",
            r3.json("api/peers"),
            tail(&r3.log(), 40)
        );
    }
    // The relayed connection the hole was punched over is closed: requests would otherwise be
    // spread over both, and the relayed one dies with the hub.
    wait_for(
        "the cone runners to drop their relayed connection",
        Duration::from_secs(20),
        &all,
        || {
            [r1, r2]
                .iter()
                .any(|r| r.log().contains("closing a relayed connection"))
        },
    );
    let punches = r1.json("api/swarm");
    eprintln!("cone1's swarm figures: {punches}");
    let metrics = r1.get("metrics").text();
    assert!(
        metrics.contains("peercache_hole_punches_attempted"),
        "{metrics}"
    );

    // The stranger: no reservation, no members.
    assert!(relays(stranger).is_empty());
    assert_eq!(stranger.json("api/peers")["peer_count"], 0);

    // 3 runners × 20 endpoints, all at once: GitHub is asked once per endpoint.
    let spent = |name: &str| {
        upstream
            .stats()
            .spent(Some(&format!("Bearer token-of-{name}")))
    };
    let sym_spent_before = spent("sym");
    let direct_before =
        forwarded_from(&cone1, &cone2.wan_ip) + forwarded_from(&cone2, &cone1.wan_ip);
    let members = [r1, r2, r3];
    let bodies: Vec<Vec<Vec<u8>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .iter()
            .map(|r| {
                scope.spawn(move || {
                    (0..ENDPOINTS)
                        .map(|i| {
                            let response = r.get(&format!("gh/repos/octo/swarm/contents/r{i}"));
                            assert_eq!(response.status, 200, "{}: {}", r.name, response.text());
                            response.body
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let upstream_calls: u64 = (0..ENDPOINTS)
        .map(|i| upstream.count(&format!("/repos/octo/swarm/contents/r{i}")))
        .sum();
    assert_eq!(
        upstream_calls,
        ENDPOINTS as u64,
        "one upstream call per endpoint{}",
        logs(&[r1, r2, r3, &hub])
    );
    for (i, expected) in (0..ENDPOINTS).map(|i| (i, fakehub::repo_body(i, 4096))) {
        for (r, got) in [r1, r2, r3].iter().zip(&bodies) {
            assert!(
                got[i] == expected,
                "{}'s body of repo{i} differs from upstream",
                r.name
            );
        }
    }
    // The symmetric runner got every entry it did not fetch from the swarm, through the hub.
    let sym_swarm = r3.json("api/swarm");
    let sym_upstream = spent("sym") - sym_spent_before;
    assert_eq!(
        sym_swarm["entries_received"].as_u64().unwrap() + sym_upstream,
        ENDPOINTS as u64,
        "{sym_swarm}"
    );
    // Entries between the cone runners crossed the internet directly: their routers forwarded
    // packets from each other's public address (seen from outside peercache).
    let direct_after =
        forwarded_from(&cone1, &cone2.wan_ip) + forwarded_from(&cone2, &cone1.wan_ip);
    assert!(
        direct_after > direct_before,
        "no traffic between the cone routers: {direct_before} → {direct_after} bytes"
    );
    // Hole punching tried both transports: packets of each arrived from the other cone router.
    for proto in ["tcp", "udp"] {
        let seen =
            arrived_from(&cone1, &cone2.wan_ip, proto) + arrived_from(&cone2, &cone1.wan_ip, proto);
        assert!(
            seen > 0,
            "no {proto} packets between the cone routers: that transport was not tried"
        );
    }
    for other in [&cone1, &cone2] {
        assert_eq!(
            forwarded_from(&sym, &other.wan_ip),
            0,
            "nothing from {} reached the symmetric runner directly",
            other.name
        );
    }

    // A 1 MiB entry crosses a relayed connection intact.
    let first = r1.get("gh/repos/octo/swarm/contents/big");
    assert_eq!(first.status, 200);
    let relayed = r3.get("gh/repos/octo/swarm/contents/big");
    assert_eq!(relayed.status, 200);
    assert!(relayed.body == big, "the 1 MiB entry arrived altered");
    assert_eq!(
        upstream.count("/repos/octo/swarm/contents/big"),
        1,
        "the relayed runner asked GitHub"
    );

    // The stranger's own fetch goes upstream and it learns nothing.
    let stranger_before = spent("stranger");
    let own = stranger.get("gh/repos/octo/swarm/contents/r0");
    assert_eq!(own.status, 200);
    assert_eq!(
        spent("stranger") - stranger_before,
        1,
        "the stranger's fetch went upstream"
    );
    assert_eq!(stranger.json("api/swarm")["entries_received"], 0);
    assert!(
        !stranger.log().contains("heard announcement"),
        "the stranger read the swarm's gossip"
    );
    assert!(relays(stranger).is_empty());

    // The hub dies: the direct pair keeps sharing; nothing fails.
    let hub_id = hub.peer_id.clone();
    unsafe {
        libc::kill(hub.pid, libc::SIGKILL);
    }
    wait_for(
        "the members to notice the hub is gone",
        Duration::from_secs(30),
        &all[..4],
        || {
            [r1, r2]
                .iter()
                .all(|r| relays(r).is_empty() && r.connection_to(&hub) == "none")
        },
    );
    upstream.put_json(
        "/repos/octo/swarm/contents/after",
        fakehub::repo_body(1000, 4096),
    );
    for r in [r1, r2, r3] {
        let response = r.get("gh/repos/octo/swarm/contents/after");
        assert_eq!(response.status, 200, "{}: {}", r.name, response.text());
    }
    assert_eq!(r2.connection_to(r1), "direct");
    assert!(
        upstream.count("/repos/octo/swarm/contents/after") <= 2,
        "the direct pair shares without the hub (the relayed runner may go upstream): \
         cone1 {}, cone2 {}, sym {}{}",
        r1.json("api/peers"),
        r2.json("api/peers"),
        r3.json("api/peers"),
        logs(&[r1, r2, r3])
    );

    // The hub comes back with its identity; the members reserve again.
    let hub = start(root.path(), hub_spec(), &mut lab);
    assert_eq!(
        hub.peer_id, hub_id,
        "the hub keeps its peer id across restarts"
    );
    for r in [r1, r2, r3] {
        wait_for(
            &format!("{}'s new reservation", r.name),
            Duration::from_secs(90),
            &[r1, r2, r3, &hub],
            || relays(r).iter().any(|a| a.contains(&hub_id)),
        );
    }
}

/// Figures for the README's benchmark section, by hand (root):
/// `cargo test --release --test nat_lab -- --ignored --nocapture`. For each NAT kind (a cone
/// peer, a symmetric peer) and transport (TCP, QUIC): 20 fresh runners, each with a new identity
/// and port, hole-punching to a cone runner through the hub — success rate and time from
/// `serve --daemon` to a direct connection; then peer-hit latency over direct and relayed
/// connections.
#[test]
#[ignore = "a measurement, run by hand: cargo test --test nat_lab -- --ignored --nocapture"]
fn measure_hole_punching_and_relayed_latency() {
    if !netns::can_run("the NAT lab measurement", NFT) {
        return;
    }
    const ROUNDS: usize = 20;
    let mut lab = Lab::new(format!("m{}", std::process::id() % 1000));
    let inet = lab.internet();
    let cone1 = lab.site(&inet, "cone1", 11, false);
    let cone2 = lab.site(&inet, "cone2", 12, false);
    let sym = lab.site(&inet, "sym", 13, true);
    let upstream = FakeHub::start();
    fakehub::generate_resources(&upstream, 2 * ROUNDS, 4096);
    let root = tempfile::tempdir().unwrap();
    let hub_api = api_forwarder(&inet, upstream.addr());
    let hub = start(
        root.path(),
        Spec {
            name: "hub",
            ns: &inet,
            secret: SECRET,
            api_url: &hub_api,
            bootstrap: String::new(),
            hub: true,
            listen: Vec::new(),
        },
        &mut lab,
    );
    let hub_tcp = format!("/ip4/{HUB_IP}/tcp/{HUB_PORT}/p2p/{}", hub.peer_id);
    let hub_quic = format!("/ip4/{HUB_IP}/udp/{HUB_PORT}/quic-v1/p2p/{}", hub.peer_id);
    let api1 = api_forwarder(&cone1.runner_ns, upstream.addr());
    let api2 = api_forwarder(&cone2.runner_ns, upstream.addr());
    let api3 = api_forwarder(&sym.runner_ns, upstream.addr());
    let mut report = Vec::new();
    for (transport, hub_addr, listen) in [
        ("tcp", &hub_tcp, "/ip4/0.0.0.0/tcp/PORT"),
        ("quic", &hub_quic, "/ip4/0.0.0.0/udp/PORT/quic-v1"),
    ] {
        // The cone runner everyone punches to, on this transport only.
        let anchor = start(
            root.path(),
            Spec {
                name: &format!("anchor-{transport}"),
                ns: &cone1.runner_ns,
                secret: SECRET,
                api_url: &api1,
                bootstrap: hub_addr.clone(),
                hub: false,
                listen: vec![listen.replace("PORT", "4100")],
            },
            &mut lab,
        );
        wait_for(
            "the anchor's reservation",
            Duration::from_secs(30),
            &[&anchor],
            || !relays(&anchor).is_empty(),
        );
        for (kind, site, api) in [("cone", &cone2, &api2), ("symmetric", &sym, &api3)] {
            let mut times = Vec::new();
            let mut direct = 0;
            for round in 0..ROUNDS {
                let port = 4200 + round;
                let started = Instant::now();
                let peer = start(
                    root.path(),
                    Spec {
                        name: &format!("{kind}-{transport}-{round}"),
                        ns: &site.runner_ns,
                        secret: SECRET,
                        api_url: api,
                        bootstrap: hub_addr.clone(),
                        hub: false,
                        listen: vec![listen.replace("PORT", &port.to_string())],
                    },
                    &mut lab,
                );
                // Direct within 15 s, or the attempt failed (DCUtR gives up and stays relayed).
                let deadline = started + Duration::from_secs(15);
                loop {
                    if peer.connection_to(&anchor) == "direct" {
                        direct += 1;
                        times.push(started.elapsed());
                        break;
                    }
                    if Instant::now() > deadline || peer.log().contains("hole punching to") {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                unsafe {
                    libc::kill(peer.pid, libc::SIGKILL);
                }
            }
            times.sort();
            let p50 = times
                .get(times.len() / 2)
                .map(|t| format!("{:.2} s", t.as_secs_f64()))
                .unwrap_or_else(|| "-".into());
            let line = format!(
                "{kind} NAT, {transport}: {direct}/{ROUNDS} hole punches succeeded; serve --daemon to direct p50 {p50}"
            );
            eprintln!("{line}");
            report.push(line);
        }
        unsafe {
            libc::kill(anchor.pid, libc::SIGKILL);
        }
    }

    // Peer-hit latency: the cone pair direct, the symmetric runner relayed.
    let both = format!("{hub_tcp},{hub_quic}");
    let spec = |name: &'static str, ns: &'static str, api: &'static str| Spec {
        name,
        ns,
        secret: SECRET,
        api_url: api,
        bootstrap: both.clone(),
        hub: false,
        listen: vec![
            "/ip4/0.0.0.0/tcp/4300".into(),
            "/ip4/0.0.0.0/udp/4300/quic-v1".into(),
        ],
    };
    let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
    let (api1, api2, api3) = (leak(&api1), leak(&api2), leak(&api3));
    let (ns1, ns2, ns3) = (
        leak(&cone1.runner_ns),
        leak(&cone2.runner_ns),
        leak(&sym.runner_ns),
    );
    let holder = start(root.path(), spec("holder", ns1, api1), &mut lab);
    let near = start(root.path(), spec("near", ns2, api2), &mut lab);
    let far = start(root.path(), spec("far", ns3, api3), &mut lab);
    wait_for(
        "direct and relayed connections",
        Duration::from_secs(60),
        &[&holder, &near, &far],
        || near.connection_to(&holder) == "direct" && far.connection_to(&holder) == "relayed",
    );
    let latency = |reader: &Runner, offset: usize| {
        let mut samples: Vec<f64> = (0..ROUNDS)
            .map(|i| {
                let path = format!("gh/repos/octo/swarm/contents/r{}", offset + i);
                assert_eq!(holder.get(&path).status, 200);
                std::thread::sleep(Duration::from_millis(300)); // the announcement
                let started = Instant::now();
                let response = reader.get(&path);
                let took = started.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(response.source(), "peer", "{}", reader.name);
                took
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        samples[samples.len() / 2]
    };
    let direct_ms = latency(&near, 0);
    let relayed_ms = latency(&far, ROUNDS);
    report.push(format!(
        "peer hit (4 KiB) p50: {direct_ms:.1} ms direct, {relayed_ms:.1} ms relayed"
    ));
    eprintln!("\n{}", report.join("\n"));
}
