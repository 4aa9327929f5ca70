//! Two hosts on one machine: network namespaces joined by a veth pair, made and removed by the
//! test. The two daemons know nothing of each other (no bootstrap peers, no registry); they find
//! each other by mDNS on the veth link and share an entry.
//!
//! Needs root (CI runs as root and must run it); elsewhere it skips with a message saying why.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{PEERCACHE, http_get};
use fakehub::FakeHub;

/// The namespaces, the veth pair and the daemons; all removed on drop.
struct TestNet {
    namespaces: Vec<String>,
    pids: Vec<i32>,
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for pid in &self.pids {
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread that has entered the namespace (sockets it opens live there).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path).expect("open the namespace");
                use std::os::fd::AsRawFd;
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns into {ns} failed");
                f()
            })
            .join()
            .unwrap()
    })
}

struct Node {
    api: String,
    home: PathBuf,
}

fn start_in(ns: &str, root: &Path, name: &str, hub_url: &str, net: &mut TestNet) -> Node {
    let home = root.join(name).join("home");
    let out = Command::new("ip")
        .args(["netns", "exec", ns, PEERCACHE, "serve", "--daemon"])
        .args([
            "--listen",
            "/ip4/0.0.0.0/tcp/0",
            "--api-addr",
            "127.0.0.1:0",
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root.join(name))
        .env("PEERCACHE_HOME", &home)
        .env("PEERCACHE_CACHE_DIR", root.join(name).join("cache"))
        .env("PEERCACHE_API_URL", hub_url)
        .env(
            "PEERCACHE_SECRET",
            "1oVroHa/Sb5gwo03znC7rooN849NumffexRxXypSotM=",
        )
        .env("PEERCACHE_MDNS", "true")
        .env("PEERCACHE_REGISTRY", "none")
        .env("PEERCACHE_LOG", "info,peercache=debug")
        .env("RUNNER_NAME", name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "serve --daemon in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("PEERCACHE_API="))
        .unwrap()
        .trim()
        .to_string();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("serve.json")).unwrap()).unwrap();
    net.pids.push(state["pid"].as_i64().unwrap() as i32);
    Node { api, home }
}

fn can_run() -> Result<(), String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("creating network namespaces needs root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err("the `ip` command (Debian package iproute2) is not installed".into()),
    }
}

#[test]
fn two_hosts_find_each_other_by_mdns_and_share_an_entry() {
    if let Err(why) = can_run() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the mDNS test, but {why}"
        );
        eprintln!("skipping the mDNS test: {why} (CI runs it as root)");
        return;
    }
    let tag = std::process::id() % 10_000;
    let (ns_a, ns_b) = (format!("pc-a-{tag}"), format!("pc-b-{tag}"));
    let (veth_a, veth_b) = (format!("pca{tag}"), format!("pcb{tag}"));
    let subnet = format!("10.203.{}", tag % 250);
    let mut net = TestNet {
        namespaces: Vec::new(),
        pids: Vec::new(),
    };
    for ns in [&ns_a, &ns_b] {
        ip(&["netns", "add", ns]);
        net.namespaces.push(ns.clone());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    ip(&[
        "link", "add", &veth_a, "netns", &ns_a, "type", "veth", "peer", "name", &veth_b, "netns",
        &ns_b,
    ]);
    ip(&[
        "-n",
        &ns_a,
        "addr",
        "add",
        &format!("{subnet}.1/24"),
        "dev",
        &veth_a,
    ]);
    ip(&[
        "-n",
        &ns_b,
        "addr",
        "add",
        &format!("{subnet}.2/24"),
        "dev",
        &veth_b,
    ]);
    ip(&["-n", &ns_a, "link", "set", &veth_a, "up", "multicast", "on"]);
    ip(&["-n", &ns_b, "link", "set", &veth_b, "up", "multicast", "on"]);

    // "GitHub" lives in namespace A only: B can get the entry from A, or not at all.
    let hub = in_ns(&ns_a, FakeHub::start);
    fakehub::generate_resources(&hub, 1, 4096);
    let root = tempfile::tempdir().unwrap();
    let a = start_in(&ns_a, root.path(), "host-a", &hub.url(), &mut net);
    let b = start_in(&ns_b, root.path(), "host-b", &hub.url(), &mut net);

    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let response = in_ns(&ns_b, || http_get(&format!("{}/api/peers", b.api), &[]));
        let peers: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        if peers["peer_count"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two hosts did not find each other by mDNS: {peers}\nA's log:\n{}\nB's log:\n{}",
            std::fs::read_to_string(a.home.join("serve.log")).unwrap_or_default(),
            std::fs::read_to_string(b.home.join("serve.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let logs = std::fs::read_to_string(a.home.join("serve.log")).unwrap_or_default()
        + &std::fs::read_to_string(b.home.join("serve.log")).unwrap_or_default();
    assert!(
        logs.contains("found by mDNS"),
        "not connected through mDNS:\n{logs}"
    );

    let get = |ns: &str, node: &Node| {
        in_ns(ns, || {
            http_get(
                &format!("{}/gh/repos/octo/swarm/contents/r0", node.api),
                &[],
            )
        })
    };
    let from_upstream = get(&ns_a, &a);
    assert_eq!(
        (from_upstream.status, from_upstream.source().as_str()),
        (200, "upstream")
    );
    let from_peer = get(&ns_b, &b);
    assert_eq!(
        (from_peer.status, from_peer.source().as_str()),
        (200, "peer")
    );
    assert_eq!(from_peer.body, from_upstream.body);
    assert_eq!(from_peer.body, fakehub::repo_body(0, 4096));
    assert_eq!(hub.total(), 1);
    drop(hub);
}
