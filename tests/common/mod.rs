//! Shared test support: a sandbox (state and cache dirs, a stand-in GitHub) and a way to run the
//! real `peercache` binary in it with a clean environment.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fakehub::FakeHub;

/// The binary under test.
pub const PEERCACHE: &str = env!("CARGO_BIN_EXE_peercache");

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
            .env("PEERCACHE_API_URL", self.hub.url());
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
