//! Shared test support: a sandbox (state and cache dirs, a stand-in GitHub) and a way to run the
//! real `peercache` binary in it with a clean environment.

#![allow(dead_code)]

pub mod keepalive;
pub mod netns;
pub mod swarm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fakehub::FakeHub;

/// The binary under test (Cargo names it for the package's own tests; the benchmark driver, a
/// crate of its own, always passes the binary it measures).
pub const PEERCACHE: &str = match option_env!("CARGO_BIN_EXE_peercache") {
    Some(path) => path,
    None => "peercache",
};

/// One runner's worth of dirs, pointed at a stand-in GitHub.
pub struct Sandbox {
    /// Holds every dir of the sandbox; removed on drop.
    pub root: tempfile::TempDir,
    /// The stand-in GitHub API.
    pub hub: FakeHub,
}

impl Sandbox {
    /// A fresh sandbox with its own stand-in GitHub.
    pub fn new() -> Sandbox {
        Sandbox {
            root: tempfile::tempdir().expect("tempdir"),
            hub: FakeHub::start(),
        }
    }

    /// `$PEERCACHE_HOME`.
    pub fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    /// `$PEERCACHE_CACHE_DIR`.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    /// `peercache ARGS` with only the variables a test gives plus the sandbox's dirs and hub.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(PEERCACHE);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root.path())
            .env("PEERCACHE_HOME", self.home())
            .env("PEERCACHE_CACHE_DIR", self.cache_dir())
            .env("PEERCACHE_API_URL", self.hub.url())
            // A job of the repository the tests' resources are in (as in Actions).
            .env("GITHUB_REPOSITORY", "octo/hello");
        cmd
    }

    /// Runs `peercache ARGS` with a token.
    pub fn run(&self, token: Option<&str>, args: &[&str]) -> Run {
        let mut cmd = self.command(args);
        if let Some(token) = token {
            cmd.env("PEERCACHE_TOKEN", token);
        }
        Run::from(cmd.output().expect("run peercache"))
    }

    /// `peercache fetch -i ENDPOINT EXTRA…` with a token.
    pub fn fetch(&self, token: Option<&str>, endpoint: &str, extra: &[&str]) -> Run {
        let mut args = vec!["fetch", "-i", endpoint];
        args.extend_from_slice(extra);
        self.run(token, &args)
    }
}

/// A finished process.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 for a signal).
    pub code: i32,
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr, as text.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The body after `-i`'s header block.
    pub fn body(&self) -> &[u8] {
        match find(&self.stdout, b"\n\n") {
            Some(at) if self.stdout.starts_with(b"HTTP/") => &self.stdout[at + 2..],
            _ => &self.stdout,
        }
    }

    /// A header of `-i` output.
    pub fn header(&self, name: &str) -> Option<String> {
        let end = find(&self.stdout, b"\n\n")?;
        let head = String::from_utf8_lossy(&self.stdout[..end]).into_owned();
        head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// `x-peercache-source` of `-i` output.
    pub fn source(&self) -> String {
        self.header("x-peercache-source").unwrap_or_else(|| {
            panic!(
                "no source header in {:?}",
                String::from_utf8_lossy(&self.stdout)
            )
        })
    }

    /// Asserts success and returns self.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "peercache failed: {}", self.stderr);
        self
    }

    /// Asserts the contract's error shape: this exit code, exactly one stderr line, no panic.
    pub fn fails_with(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "stderr: {}", self.stderr);
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got: {:?}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("backtrace"),
            "{}",
            self.stderr
        );
        lines[0]
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every file under `dir` with its contents, for before/after comparisons.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

/// The object files of a cache dir (`objects/ab/cdef…`).
pub fn object_files(cache_dir: &Path) -> Vec<PathBuf> {
    snapshot(&cache_dir.join("objects"))
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// A JSON body of about `size` bytes, distinct per `seed`.
pub fn json_body(seed: usize, size: usize) -> Vec<u8> {
    let pad = "x".repeat(size.saturating_sub(40));
    format!("{{\"id\":{seed},\"name\":\"resource-{seed}\",\"pad\":\"{pad}\"}}").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The daemon: `serve --daemon`, its serve.json, and a plain HTTP client for its local API.

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Sends a signal (`libc::SIGTERM`, `libc::SIGKILL`, …) to `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// A daemon started by a test; killed on drop if the test did not stop it.
pub struct Daemon {
    /// The base URL printed as `PEERCACHE_API=…`.
    pub api: String,
    /// Its process id (from serve.json).
    pub pid: u32,
}

impl Daemon {
    /// `GET <api><path>` with these headers.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_get(&format!("{}{path}", self.api), headers)
    }

    /// `GET <api><path>` as JSON, asserting 200.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let response = self.get(path, &[]);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        serde_json::from_slice(&response.body).expect("JSON")
    }

    /// The port of the local API.
    pub fn port(&self) -> u16 {
        let rest = self
            .api
            .strip_prefix("http://127.0.0.1:")
            .expect("loopback");
        rest.split('/').next().unwrap().parse().unwrap()
    }

    /// The capability (the base URL's path).
    pub fn capability(&self) -> String {
        self.api.rsplit('/').next().unwrap().to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if pid_alive(self.pid) {
            send_signal(self.pid, libc::SIGKILL);
        }
    }
}

impl Sandbox {
    /// `$PEERCACHE_HOME/serve.json`, parsed.
    pub fn serve_json(&self) -> Option<serde_json::Value> {
        let bytes = std::fs::read(self.home().join("serve.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// `peercache serve --daemon EXTRA…` with these variables; asserts it printed the API line
    /// and exited 0.
    pub fn start_daemon(&self, env: &[(&str, &str)], extra: &[&str]) -> Daemon {
        let mut args = vec!["serve", "--daemon"];
        args.extend_from_slice(extra);
        let mut cmd = self.command(&args);
        cmd.envs(env.iter().copied());
        let run = Run::from(cmd.output().expect("run peercache serve --daemon"));
        assert_eq!(
            run.code,
            0,
            "serve --daemon failed: {}\nserve.log: {}",
            run.stderr,
            std::fs::read_to_string(self.home().join("serve.log")).unwrap_or_default()
        );
        let stdout = String::from_utf8(run.stdout).expect("UTF-8 stdout");
        let api = stdout
            .lines()
            .find_map(|l| l.strip_prefix("PEERCACHE_API="))
            .unwrap_or_else(|| panic!("no PEERCACHE_API line in {stdout:?}"))
            .to_string();
        let pid = self
            .serve_json()
            .and_then(|v| v["pid"].as_u64())
            .expect("serve.json names the daemon's pid") as u32;
        Daemon { api, pid }
    }
}

/// Every index record under `<cache_dir>/entries`, with its JSON.
pub fn records(cache_dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut records = Vec::new();
    for shard in std::fs::read_dir(cache_dir.join("entries")).unwrap() {
        for record in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = record.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let entry = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            records.push((path, entry));
        }
    }
    records
}

/// An answer of [`http_get`].
#[derive(Debug)]
pub struct HttpResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `x-peercache-source`, or `none`.
    pub fn source(&self) -> String {
        self.header("x-peercache-source")
            .unwrap_or("none")
            .to_string()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal HTTP/1.1 request over a plain socket (independent of peercache's own client),
/// panicking when no answer comes (what a test wants).
pub fn http_request(method: &str, url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    try_http_request(method, url, headers).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Why a request got no answer.
#[derive(Debug)]
pub struct NoAnswer {
    /// What went wrong.
    pub reason: String,
    /// How long after connecting the request was sent, when it was.
    pub sent_after: Option<std::time::Duration>,
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sent_after {
            Some(after) => write!(
                f,
                "{} (sent {} ms after connecting)",
                self.reason,
                after.as_millis()
            ),
            None => f.write_str(&self.reason),
        }
    }
}

/// [`http_request`], with a request that got no answer (refused, closed before the head, cut
/// off) as an error, for a benchmark that counts those.
pub fn try_http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, NoAnswer> {
    try_http_request_inner(method, url, headers)
        .map_err(|(reason, sent_after)| NoAnswer { reason, sent_after })
}

type Failed = (String, Option<std::time::Duration>);

fn try_http_request_inner(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, Failed> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let began = std::time::Instant::now();
    let mut stream = std::net::TcpStream::connect(authority)
        .map_err(|e| (format!("cannot connect to the daemon: {e}"), None))?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| (format!("cannot send the request: {e}"), None))?;
    let sent = began.elapsed();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| (format!("cannot read the answer: {e}"), Some(sent)))?;
    let end = find(&raw, b"\r\n\r\n").ok_or_else(|| {
        (
            format!(
                "the connection closed without a whole answer head ({} bytes)",
                raw.len()
            ),
            Some(sent),
        )
    })?;
    let head = String::from_utf8(raw[..end].to_vec()).map_err(|e| (e.to_string(), Some(sent)))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| (format!("no status line in {head:?}"), Some(sent)))?;
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if let Some((_, len)) = headers.iter().find(|(k, _)| k == "content-length") {
        let len: usize = len.parse().unwrap();
        if body.len() < len {
            return Err((
                format!("body cut off at {} of {len} bytes", body.len()),
                Some(sent),
            ));
        }
        body.truncate(len);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// `GET url` with these headers.
pub fn http_get(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request("GET", url, headers)
}
