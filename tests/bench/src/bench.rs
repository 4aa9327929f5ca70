//! What every section shares: the binary under test, a scratch root, the stand-in GitHub API
//! with realistic latency, and daemons started the way CI jobs start them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fakehub::{FakeHub, Options};

use crate::common::swarm::{NodeSpec, SwarmNode, start_node, wait_for};
use crate::common::{HttpResponse, NoAnswer, try_http_request};

/// Latency of every answer of the stand-in GitHub API (GitHub's own is 50–300 ms).
pub const UPSTREAM_LATENCY: Duration = Duration::from_millis(50);
/// Size of every response body (a repository object of the REST API is 5–25 KB).
pub const BODY: usize = 20 * 1024;

/// One benchmark run.
pub struct Bench {
    /// The `peercache` binary measured (the static musl build).
    pub binary: PathBuf,
    /// Scratch dirs of every daemon; removed at the end.
    pub root: tempfile::TempDir,
    /// `serve --daemon` start-to-ready times of every daemon started.
    starts: Mutex<Vec<Duration>>,
}

impl Bench {
    /// A run measuring `binary`.
    pub fn new(binary: PathBuf) -> anyhow::Result<Bench> {
        Ok(Bench {
            binary,
            // `PEERCACHE_BENCH_KEEP=1` keeps the daemons' homes (their logs) to look into a run.
            root: tempfile::Builder::new()
                .prefix("peercache-bench")
                .disable_cleanup(std::env::var_os("PEERCACHE_BENCH_KEEP").is_some())
                .tempdir()?,
            starts: Mutex::new(Vec::new()),
        })
    }

    /// A fresh stand-in GitHub API that keeps every request record.
    pub fn hub(&self) -> FakeHub {
        let hub = FakeHub::start_with(Options {
            latency: UPSTREAM_LATENCY,
            // One token per job, and no job comes near GitHub's 5,000 an hour.
            quota_limit: 1_000_000,
            ..Options::default()
        });
        hub.set_record_limit(None);
        hub
    }

    /// `peercache serve --daemon` for a node named `name`, bootstrapping to `bootstrap`.
    pub fn node(
        &self,
        hub: &FakeHub,
        name: &str,
        bootstrap: Vec<String>,
        env: Vec<(&str, String)>,
    ) -> SwarmNode {
        let started = Instant::now();
        let node = start_node(
            self.root.path(),
            name,
            hub,
            NodeSpec {
                bootstrap,
                env,
                binary: Some(&self.binary),
                ..NodeSpec::default()
            },
        );
        let took = started.elapsed();
        self.starts.lock().unwrap().push(took);
        node
    }

    /// `n` nodes named `{prefix}{i}`, each bootstrapping to the first only (as a job given one
    /// registry address would), waited for until every node has verified every other.
    pub fn swarm(&self, hub: &FakeHub, prefix: &str, n: usize) -> Vec<SwarmNode> {
        self.swarm_with(hub, prefix, n, |_| Vec::new())
    }

    /// [`Bench::swarm`] with variables of node i's own (its repository, the scope).
    pub fn swarm_with(
        &self,
        hub: &FakeHub,
        prefix: &str,
        n: usize,
        env: impl Fn(usize) -> Vec<(&'static str, String)>,
    ) -> Vec<SwarmNode> {
        let mut nodes: Vec<SwarmNode> = Vec::with_capacity(n);
        for i in 0..n {
            let bootstrap = nodes
                .first()
                .map(SwarmNode::bootstrap_addr)
                .into_iter()
                .collect();
            nodes.push(self.node(hub, &format!("{prefix}{i}"), bootstrap, env(i)));
        }
        for node in &nodes {
            wait_for(
                &format!("{} to verify its {} peers", node.name, n - 1),
                Duration::from_secs(120),
                || node.peer_count() == (n - 1) as u64,
            );
        }
        nodes
    }

    /// Every start-to-ready time so far.
    pub fn start_times(&self) -> Vec<Duration> {
        self.starts.lock().unwrap().clone()
    }

    /// Dirs for a `peercache fetch` that runs without a daemon.
    pub fn lone_dirs(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

/// `GET <node's API>/gh/<endpoint>` with the node's own token, as its job would send it, and an
/// `x-peercache-ttl` when given.
pub fn api_get(node: &SwarmNode, endpoint: &str, ttl_secs: Option<u64>) -> HttpResponse {
    try_api_get(node, endpoint, ttl_secs).unwrap_or_else(|e| panic!("{endpoint}: {e}"))
}

/// [`api_get`], with a request the daemon did not answer as an error (a starved daemon's
/// header-read timeout closes the connection), for the figures that count those.
pub fn try_api_get(
    node: &SwarmNode,
    endpoint: &str,
    ttl_secs: Option<u64>,
) -> Result<HttpResponse, NoAnswer> {
    let auth = format!("Bearer token-of-{}", node.name);
    let ttl = ttl_secs.map(|t| t.to_string());
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(ttl) = &ttl {
        headers.push(("x-peercache-ttl", ttl.as_str()));
    }
    try_http_request("GET", &format!("{}/gh/{endpoint}", node.api), &headers)
}

/// Where a whole-process `peercache fetch` runs: a daemon's dirs, or its own.
pub enum FetchIn<'a> {
    /// Through this node's daemon (its `serve.json` is found in its home).
    Daemon(&'a SwarmNode),
    /// Without a daemon, in these dirs.
    Alone(&'a Path),
}

/// The environment a whole-process sample runs in: cleared, then the place's dirs, the
/// stand-in's URL and a token.
fn sample_env(cmd: &mut Command, hub: &FakeHub, place: &FetchIn) {
    let (home, cache, token) = match place {
        FetchIn::Daemon(node) => (
            node.home.clone(),
            node.cache.clone(),
            format!("token-of-{}", node.name),
        ),
        FetchIn::Alone(dir) => (dir.join("home"), dir.join("cache"), "token-alone".into()),
    };
    cmd.env_clear()
        .env("HOME", home.parent().unwrap_or(&home))
        .env("PEERCACHE_HOME", &home)
        .env("PEERCACHE_CACHE_DIR", &cache)
        // The daemon is used only when it calls the same upstream as this fetch would.
        .env("PEERCACHE_API_URL", hub.url())
        .env("PEERCACHE_TOKEN", token);
}

/// One whole-process `/bin/true`, spawned as [`fetch_process`] spawns `peercache fetch` (the
/// same environment, output captured): what starting any process costs on this machine, the
/// floor a whole-process `fetch` is judged against.
pub fn true_process(hub: &FakeHub, place: &FetchIn) -> anyhow::Result<Duration> {
    let mut cmd = Command::new("/bin/true");
    sample_env(&mut cmd, hub, place);
    let started = Instant::now();
    let out = cmd.output()?;
    let took = started.elapsed();
    anyhow::ensure!(out.status.success(), "/bin/true failed: {}", out.status);
    Ok(took)
}

/// One whole-process `peercache fetch -i ENDPOINT [--ttl T]`: how long it took, its source,
/// and its body.
pub fn fetch_process(
    binary: &Path,
    hub: &FakeHub,
    place: &FetchIn,
    endpoint: &str,
    ttl_secs: Option<u64>,
) -> anyhow::Result<(Duration, String, Vec<u8>)> {
    let mut cmd = Command::new(binary);
    cmd.args(["fetch", "-i", endpoint]);
    if let Some(ttl) = ttl_secs {
        cmd.args(["--ttl", &ttl.to_string()]);
    }
    sample_env(&mut cmd, hub, place);
    let started = Instant::now();
    let out = cmd.output()?;
    let took = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "peercache fetch {endpoint} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // `-i` prints the head, an empty line, then the body.
    let (head_end, body_start) = out
        .stdout
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or((out.stdout.len(), out.stdout.len()), |at| (at, at + 2));
    let head = String::from_utf8_lossy(&out.stdout[..head_end]);
    let source = head
        .lines()
        .find_map(|l| l.strip_prefix("x-peercache-source: "))
        .unwrap_or("none")
        .trim()
        .to_string();
    Ok((took, source, out.stdout[body_start..].to_vec()))
}
