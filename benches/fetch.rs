//! Whole-process `peercache fetch` latency, by source, against the stand-in GitHub API.
//!
//! `cargo bench --bench fetch` (or `scripts/bench.sh`, which passes the static musl binary as
//! `PEERCACHE_BIN`). Prints median, p99 and mean over `BENCH_RUNS` runs (default 200) and writes
//! the figures as JSON to `target/bench/fetch.json`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fakehub::{FakeHub, Options};

const BODY_SIZE: usize = 20 * 1024;

struct Figures {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Figures {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn mean(&self) -> Duration {
        self.samples.iter().sum::<Duration>() / self.samples.len() as u32
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is accepted and ignored.
    let binary = std::env::var_os("PEERCACHE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_peercache")));
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let latency_ms: u64 = std::env::var("BENCH_UPSTREAM_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let hub = FakeHub::start_with(Options {
        latency: Duration::from_millis(latency_ms),
        ..Options::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let body = fakehub::repo_body(0, BODY_SIZE);
    hub.put_json("/repos/octo/bench", body.clone());

    let fetch = |endpoint: &str, ttl: &str| {
        let started = Instant::now();
        let out = Command::new(&binary)
            .args(["fetch", endpoint, "--ttl", ttl])
            .env_clear()
            .env("HOME", dir.path())
            .env("PEERCACHE_HOME", dir.path().join("home"))
            .env("PEERCACHE_CACHE_DIR", dir.path().join("cache"))
            .env("PEERCACHE_API_URL", hub.url())
            .env("PEERCACHE_TOKEN", "bench-token")
            .stderr(Stdio::inherit())
            .output()
            .expect("run peercache");
        let took = started.elapsed();
        assert!(out.status.success(), "peercache fetch failed");
        (took, out.stdout)
    };

    // Upstream: each run a new resource, so each is a miss.
    let mut upstream = Figures {
        name: "upstream (miss, stand-in latency)",
        samples: Vec::new(),
    };
    for i in 0..runs.min(50) {
        hub.put_json(&format!("/repos/octo/miss{i}"), body.clone());
        upstream
            .samples
            .push(fetch(&format!("repos/octo/miss{i}"), "300").0);
    }

    let (_, first) = fetch("repos/octo/bench", "300");
    assert_eq!(first, body, "the body must be byte-identical");
    let mut local = Figures {
        name: "local hit (20 KB)",
        samples: Vec::new(),
    };
    for _ in 0..runs {
        let (took, out) = fetch("repos/octo/bench", "300");
        assert_eq!(out.len(), body.len());
        local.samples.push(took);
    }

    let mut revalidated = Figures {
        name: "revalidated (304, stand-in latency)",
        samples: Vec::new(),
    };
    for _ in 0..runs.min(50) {
        revalidated.samples.push(fetch("repos/octo/bench", "0").0);
    }

    println!("binary: {}", binary.display());
    println!("runs: {runs} local hits; stand-in upstream latency {latency_ms} ms");
    println!(
        "{:<40} {:>6} {:>10} {:>10} {:>10}",
        "whole-process fetch", "runs", "median ms", "p99 ms", "mean ms"
    );
    let mut json = Vec::new();
    for f in [&local, &revalidated, &upstream] {
        println!(
            "{:<40} {:>6} {:>10.2} {:>10.2} {:>10.2}",
            f.name,
            f.samples.len(),
            ms(f.percentile(50.0)),
            ms(f.percentile(99.0)),
            ms(f.mean())
        );
        json.push(serde_json::json!({
            "name": f.name, "runs": f.samples.len(),
            "median_ms": ms(f.percentile(50.0)), "p99_ms": ms(f.percentile(99.0)), "mean_ms": ms(f.mean()),
        }));
    }
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench");
    let _ = std::fs::create_dir_all(&out_dir);
    let report =
        serde_json::json!({ "binary": binary, "upstream_latency_ms": latency_ms, "results": json });
    let _ = std::fs::write(
        out_dir.join("fetch.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    );
    println!("written: {}", out_dir.join("fetch.json").display());
}
