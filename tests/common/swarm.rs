//! Swarm support shared by the swarm tests and the benchmarks: daemons with their own homes,
//! caches, tokens and ports (as separate CI jobs would have), wired through
//! `PEERCACHE_BOOTSTRAP_PEERS`, in front of one stand-in GitHub API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fakehub::FakeHub;

use super::{HttpResponse, PEERCACHE, http_get, pid_alive, send_signal};

/// Holds the swarm tests of one binary to one at a time: each starts several daemons, and on a
/// 2-core CI machine running them side by side only measures the scheduler.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The secret of the test swarm.
/// 32 random bytes, base64, as `peercache secret` prints (weaker secrets are refused).
pub const SECRET: &str = "irhvBjf0dw94SLnfSFPBlq9ys3Gvy7vI3/sOilOLimM=";

/// One running daemon of a swarm.
pub struct SwarmNode {
    /// Its name (`RUNNER_NAME`, and the dir under the root).
    pub name: String,
    /// `$PEERCACHE_HOME`.
    pub home: PathBuf,
    /// `$PEERCACHE_CACHE_DIR`.
    pub cache: PathBuf,
    /// The local API's base URL.
    pub api: String,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its process id.
    pub pid: u32,
    /// Its TCP listen address.
    pub tcp_addr: String,
    /// Its QUIC listen address, when it listens on one.
    pub quic_addr: Option<String>,
}

/// How to start a node; `Default` is a member of the test swarm on loopback TCP.
pub struct NodeSpec<'a> {
    /// `PEERCACHE_SECRET` (`None`: sharing off).
    pub secret: Option<&'a str>,
    /// `PEERCACHE_BOOTSTRAP_PEERS`.
    pub bootstrap: Vec<String>,
    /// `--listen` values.
    pub listen: Vec<String>,
    /// Other variables.
    pub env: Vec<(&'a str, String)>,
    /// The binary (benchmarks pass the static release build).
    pub binary: Option<&'a Path>,
}

impl Default for NodeSpec<'_> {
    fn default() -> Self {
        NodeSpec {
            secret: Some(SECRET),
            bootstrap: Vec::new(),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            env: Vec::new(),
            binary: None,
        }
    }
}

/// `peercache serve --daemon` for a node named `name` under `root`.
pub fn start_node(root: &Path, name: &str, hub: &FakeHub, spec: NodeSpec) -> SwarmNode {
    let home = root.join(name).join("home");
    let cache = root.join(name).join("cache");
    let binary = spec
        .binary
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PEERCACHE.into());
    let mut cmd = Command::new(binary);
    cmd.arg("serve")
        .arg("--daemon")
        .arg("--api-addr")
        .arg("127.0.0.1:0");
    for listen in &spec.listen {
        cmd.arg("--listen").arg(listen);
    }
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root.join(name))
        .env("PEERCACHE_HOME", &home)
        .env("PEERCACHE_CACHE_DIR", &cache)
        .env("PEERCACHE_API_URL", hub.url())
        .env("PEERCACHE_TOKEN", format!("token-of-{name}"))
        .env("PEERCACHE_LOG", "info,peercache=debug")
        .env("PEERCACHE_REGISTRY", "none")
        .env("PEERCACHE_MDNS", "false")
        .env("RUNNER_NAME", name)
        // Jobs of one repository, as a swarm of one scope is; fakehub's generated resources
        // are in it.
        .env("GITHUB_REPOSITORY", fakehub::GENERATED_REPO)
        .env("PEERCACHE_BOOTSTRAP_PEERS", spec.bootstrap.join(","));
    if let Some(secret) = spec.secret {
        cmd.env("PEERCACHE_SECRET", secret);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("start peercache serve --daemon");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "serve --daemon failed for {name}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PEERCACHE_API="))
        .expect("PEERCACHE_API line")
        .trim()
        .to_string();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("serve.json")).unwrap()).unwrap();
    let addrs: Vec<String> = state["listen_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    SwarmNode {
        name: name.to_string(),
        home,
        cache,
        api,
        peer_id: state["peer_id"].as_str().unwrap().to_string(),
        pid: state["pid"].as_u64().unwrap() as u32,
        tcp_addr: addrs
            .iter()
            .find(|a| a.contains("/tcp/"))
            .expect("a tcp listen address")
            .clone(),
        quic_addr: addrs.iter().find(|a| a.contains("/quic-v1")).cloned(),
    }
}

/// The `/api/swarm` counters of lookups that called GitHub without a grant (a coordinator or
/// a hop that did not answer in time, holders that could not be pulled from, a wait that
/// expired).
pub const LOOKUP_FALLBACKS: [&str; 4] = [
    "claims_unanswered",
    "claims_decided_on_the_way",
    "holders_unreached",
    "claim_waits_expired",
];

/// These `/api/swarm` fields summed over `nodes`, each node asked once.
pub fn swarm_sums<'a>(
    nodes: impl IntoIterator<Item = &'a SwarmNode>,
    fields: &[&str],
) -> std::collections::BTreeMap<String, u64> {
    let mut sums: std::collections::BTreeMap<String, u64> =
        fields.iter().map(|f| (f.to_string(), 0)).collect();
    for node in nodes {
        let figures = node.swarm();
        for field in fields {
            let value = figures[*field]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: /api/swarm has no counter {field}", node.name));
            *sums.get_mut(*field).unwrap() += value;
        }
    }
    sums
}

impl SwarmNode {
    /// Its TCP address with `/p2p/<peer id>`, for others' bootstrap setting.
    pub fn bootstrap_addr(&self) -> String {
        format!("{}/p2p/{}", self.tcp_addr, self.peer_id)
    }

    /// `GET <api>/<path>` with this node's own token, as its CI job would send it.
    pub fn get(&self, path: &str) -> HttpResponse {
        let auth = format!("Bearer token-of-{}", self.name);
        http_get(
            &format!("{}/{path}", self.api),
            &[("authorization", auth.as_str())],
        )
    }

    /// `GET <api>/<path>` as JSON, asserting 200.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        serde_json::from_slice(&response.body).unwrap()
    }

    /// `GET <api>/<path>` as JSON, or why there is none (no answer, not 200, not JSON).
    pub fn try_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let auth = format!("Bearer token-of-{}", self.name);
        let response = super::try_http_request(
            "GET",
            &format!("{}/{path}", self.api),
            &[("authorization", auth.as_str())],
        )
        .map_err(|e| e.to_string())?;
        if response.status != 200 {
            return Err(format!("{path}: {} {}", response.status, response.text()));
        }
        serde_json::from_slice(&response.body).map_err(|e| format!("{path}: {e}"))
    }

    /// Verified members it knows.
    pub fn peer_count(&self) -> u64 {
        self.json("api/peers")["peer_count"].as_u64().unwrap()
    }

    /// The swarm's own figures (`/api/swarm`).
    pub fn swarm(&self) -> serde_json::Value {
        self.json("api/swarm")
    }

    /// Whether the process runs (zombies do not count).
    pub fn alive(&self) -> bool {
        pid_alive(self.pid)
    }

    /// Sends a signal to the daemon.
    pub fn kill(&self, signal: i32) {
        send_signal(self.pid, signal);
    }

    /// Its `serve.log`.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("serve.log")).unwrap_or_default()
    }

    /// Resident memory of the daemon, in kB (`VmRSS`).
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for SwarmNode {
    fn drop(&mut self) {
        if self.alive() {
            self.kill(libc::SIGKILL);
        }
    }
}

/// Polls `ready` until it holds, or panics after `limit` naming `what`.
pub fn wait_for(what: &str, limit: Duration, ready: impl FnMut() -> bool) {
    assert!(
        super::wait_until(limit, ready),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// A full mesh of `n` members: node i bootstraps to every node before it.
pub fn swarm_of(root: &Path, hub: &FakeHub, n: usize, binary: Option<&Path>) -> Vec<SwarmNode> {
    let mut nodes: Vec<SwarmNode> = Vec::new();
    for i in 0..n {
        let bootstrap = nodes.iter().map(SwarmNode::bootstrap_addr).collect();
        let spec = NodeSpec {
            bootstrap,
            binary,
            ..NodeSpec::default()
        };
        nodes.push(start_node(root, &format!("node{i}"), hub, spec));
    }
    for node in &nodes {
        wait_for(
            &format!("{} to verify {} peers", node.name, n - 1),
            Duration::from_secs(60),
            || node.peer_count() == (n - 1) as u64,
        );
    }
    nodes
}
