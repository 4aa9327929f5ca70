//! Network namespaces for the root tests (the NAT lab, mDNS, packet loss): namespaces and the
//! daemons in them, removed and killed on drop; commands run in them; threads entered into them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{HttpResponse, http_get};

/// Whether this test can make namespaces with these tools (`(tool, version flag, Debian
/// package)`; `ip` is always needed). When it cannot, it panics under CI (which runs as root and
/// must run it) and otherwise says why it skips; the caller then returns.
pub fn can_run(test: &str, tools: &[(&str, &str, &str)]) -> bool {
    let why = missing(tools);
    let Some(why) = why else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run {test}, but {why}"
    );
    eprintln!("skipping {test}: {why} (CI runs it as root)");
    false
}

fn missing(tools: &[(&str, &str, &str)]) -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("creating network namespaces needs root".into());
    }
    for (tool, flag, package) in [("ip", "-V", "iproute2")].iter().chain(tools) {
        match Command::new(tool).arg(flag).output() {
            Ok(out) if out.status.success() => {}
            _ => {
                return Some(format!(
                    "`{tool}` (Debian package {package}) is not installed; scripts/ensure-tools.sh installs it"
                ));
            }
        }
    }
    None
}

/// Runs a command, asserting success; its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS`, asserting success.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// `ip netns exec NS PROGRAM ARGS`, asserting success; its stdout.
pub fn exec(ns: &str, program: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Runs `f` on a thread that has entered the namespace (sockets it opens live there).
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
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

/// The stand-in API's address inside every namespace: one base URL for all, as GitHub's is
/// (the upstream URL is part of every cache key).
pub const API_ADDR: &str = "127.0.0.1:18080";

/// A forwarder on [`API_ADDR`] inside `ns` to the stand-in API on the test's own loopback.
pub fn api_forwarder(ns: &str, upstream: std::net::SocketAddr) -> String {
    let listener = in_ns(ns, || std::net::TcpListener::bind(API_ADDR).unwrap());
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(upstream) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut c, mut s) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    url
}

/// The namespaces a test made and the daemons it started in them; all removed on drop.
pub struct Lab {
    /// Part of every name, so that tests running at once do not collide.
    pub tag: String,
    /// Namespaces made, deleted on drop.
    pub namespaces: Vec<String>,
    /// Daemons started, killed on drop.
    pub pids: Vec<i32>,
}

impl Lab {
    /// A lab whose names carry `tag`.
    pub fn new(tag: impl Into<String>) -> Lab {
        Lab {
            tag: tag.into(),
            namespaces: Vec::new(),
            pids: Vec::new(),
        }
    }

    /// A new namespace `<prefix>-<name>-<tag>` with its loopback up.
    pub fn ns(&mut self, prefix: &str, name: &str) -> String {
        let ns = format!("{prefix}-{name}-{}", self.tag);
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair between two namespaces, `a_ip`/`b_ip` (CIDR) on its ends, both up.
    pub fn link(
        &mut self,
        (ns_a, veth_a, a_ip): (&str, &str, &str),
        (ns_b, veth_b, b_ip): (&str, &str, &str),
    ) {
        ip(&[
            "link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b, "netns",
            ns_b,
        ]);
        for (ns, veth, addr) in [(ns_a, veth_a, a_ip), (ns_b, veth_b, b_ip)] {
            ip(&["-n", ns, "addr", "add", addr, "dev", veth]);
            ip(&["-n", ns, "link", "set", veth, "up", "multicast", "on"]);
        }
    }

    /// Loads an nftables ruleset into `ns`.
    pub fn nft(&self, ns: &str, name: &str, rules: &str) {
        let file = std::env::temp_dir().join(format!("netns-{}-{name}.nft", self.tag));
        std::fs::write(&file, rules).unwrap();
        exec(ns, "nft", &["-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(file);
    }
}

impl Drop for Lab {
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

/// A daemon running in a namespace.
pub struct NsNode {
    /// `RUNNER_NAME`, its dir under the root, and its token's name (`token-of-<name>`).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// `$PEERCACHE_HOME`.
    pub home: PathBuf,
    /// The local API's base URL (on the namespace's loopback).
    pub api: String,
    /// Its peer id.
    pub peer_id: String,
    /// Its process id.
    pub pid: i32,
}

/// How to start a daemon in a namespace.
pub struct NsSpec<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its namespace.
    pub ns: &'a str,
    /// `PEERCACHE_API_URL`.
    pub api_url: &'a str,
    /// `PEERCACHE_SECRET`.
    pub secret: &'a str,
    /// Arguments after `serve --daemon --api-addr 127.0.0.1:0`.
    pub args: Vec<String>,
    /// Variables besides the usual ones (mDNS off and no registry unless given here).
    pub env: Vec<(&'a str, String)>,
}

/// `peercache serve --daemon` in `spec.ns`, its dirs under `root`; the lab kills it on drop.
pub fn start(root: &Path, spec: NsSpec, lab: &mut Lab) -> NsNode {
    let home = root.join(spec.name).join("home");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        spec.ns,
        super::PEERCACHE,
        "serve",
        "--daemon",
    ])
    .args(["--api-addr", "127.0.0.1:0"])
    .args(&spec.args)
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("HOME", root.join(spec.name))
    .env("PEERCACHE_HOME", &home)
    .env("PEERCACHE_CACHE_DIR", root.join(spec.name).join("cache"))
    .env("PEERCACHE_API_URL", spec.api_url)
    .env("PEERCACHE_TOKEN", format!("token-of-{}", spec.name))
    .env("PEERCACHE_SECRET", spec.secret)
    .env("PEERCACHE_MDNS", "false")
    .env("PEERCACHE_REGISTRY", "none")
    .env("PEERCACHE_LOG", "info,peercache=debug")
    .env("RUNNER_NAME", spec.name)
    // Jobs of one repository: one scope, and no access proofs for its entries.
    .env("GITHUB_REPOSITORY", fakehub::GENERATED_REPO);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "serve --daemon in {}: {}{}",
        spec.ns,
        String::from_utf8_lossy(&out.stdout),
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
    let pid = state["pid"].as_i64().unwrap() as i32;
    lab.pids.push(pid);
    NsNode {
        name: spec.name.to_string(),
        ns: spec.ns.to_string(),
        home,
        api,
        peer_id: state["peer_id"].as_str().unwrap().to_string(),
        pid,
    }
}

impl NsNode {
    /// `GET <api>/<path>` from inside its namespace, with its own token.
    pub fn get(&self, path: &str) -> HttpResponse {
        let auth = format!("Bearer token-of-{}", self.name);
        let url = format!("{}/{path}", self.api);
        in_ns(&self.ns, || {
            http_get(&url, &[("authorization", auth.as_str())])
        })
    }

    /// `GET <api>/<path>` as JSON, asserting 200.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        serde_json::from_slice(&response.body).unwrap()
    }

    /// Its `serve.log`.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("serve.log")).unwrap_or_default()
    }
}
