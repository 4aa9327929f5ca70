//! Side by side, in the same run: the daemon's local API against nginx serving the same bodies
//! as static files, under wrk; and `gh api --cache` against the same stand-in GitHub API.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::{BODY, Bench, FetchIn, api_get, fetch_process};
use crate::common::wait_until;
use crate::stats::{Summary, summarize};

/// Bodies the load generator cycles through.
const HOT_ENDPOINTS: usize = 100;
/// wrk's threads and open connections (a job's steps plus its neighbours, generously).
const WRK_THREADS: usize = 2;
const WRK_CONNECTIONS: usize = 32;

/// One wrk run.
#[derive(Debug, Clone, Serialize)]
pub struct WrkRun {
    /// Requests per second.
    pub requests_per_sec: f64,
    /// Latency percentiles wrk reports.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Answers that were not 2xx or 3xx.
    pub errors: u64,
}

/// The throughput comparison: `rounds` rounds of the three runs, interleaved, and the best
/// run of each (best of n takes out the other load of a shared machine, which only ever slows a
/// run down; interleaving gives both servers the same spells of it).
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// `wrk -v`'s first line.
    pub tool: String,
    /// `nginx -v`.
    pub nginx: String,
    /// wrk's threads.
    pub threads: usize,
    /// wrk's connections.
    pub connections: usize,
    /// Seconds each measured run lasted.
    pub seconds: u64,
    /// Measured rounds (each: the daemon, the daemon with rewritten URLs, nginx).
    pub rounds: usize,
    /// The daemon's local API, cached hits: the best round.
    pub peercache_api: WrkRun,
    /// The same with bodies whose URLs are on the API host, rewritten to the daemon on every
    /// answer (what octokit and PyGithub get for real GitHub objects): the best round.
    pub peercache_api_rewritten: WrkRun,
    /// nginx, the same bodies as static files: the best round.
    pub nginx_static: WrkRun,
    /// Requests per second of every round, in the order they ran.
    pub runs: Vec<Round>,
    /// Best-of-n `peercache_api` over best-of-n `nginx_static` requests per second.
    pub ratio: f64,
    /// The same for `peercache_api_rewritten`.
    pub ratio_rewritten: f64,
}

/// Requests per second of one round's three runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Round {
    /// The daemon, cached hits.
    pub peercache_api: f64,
    /// The daemon, cached hits with rewritten URLs.
    pub peercache_api_rewritten: f64,
    /// nginx.
    pub nginx_static: f64,
}

/// Runs wrk against the daemon's API and against nginx after a warm-up: `rounds` rounds of
/// `seconds` each per server, interleaved (the order alternates from round to round, so that
/// neither server always runs right after the other).
pub fn throughput(bench: &Bench, seconds: u64, rounds: usize) -> anyhow::Result<Throughput> {
    anyhow::ensure!(rounds > 0, "at least one round");
    let tool = version(Command::new("wrk").arg("-v"))?;
    let nginx_version = version(Command::new("nginx").arg("-v"))?;
    let hub = bench.hub();
    let node = bench.node(&hub, "throughput-node", Vec::new(), Vec::new());
    let www = bench.root.path().join("nginx").join("www");
    for i in 0..HOT_ENDPOINTS {
        let endpoint = format!("repos/octo/swarm/contents/hot{i}");
        let body = fakehub::repo_body(i, BODY);
        hub.put_json(&format!("/{endpoint}"), body.clone());
        let r = api_get(&node, &endpoint, None);
        anyhow::ensure!(
            r.status == 200 && r.body == body,
            "{endpoint} was not cached"
        );
        let file = www.join(&endpoint);
        std::fs::create_dir_all(file.parent().unwrap())?;
        std::fs::write(file, &body)?;
        // The same body with its URLs on the stand-in's host, as GitHub's are on its own.
        let endpoint = format!("repos/octo/swarm/contents/rewritten{i}");
        let text = String::from_utf8(body)?.replace("https://api.github.com", &hub.url());
        hub.put_json(&format!("/{endpoint}"), text.clone().into_bytes());
        let r = api_get(&node, &endpoint, None);
        anyhow::ensure!(
            r.status == 200 && r.body != text.as_bytes() && r.text().contains(&node.api),
            "{endpoint} was not cached with its URLs rewritten"
        );
    }
    let nginx = Nginx::start(&bench.root.path().join("nginx"))?;
    let script = bench.root.path().join("hot.lua");
    std::fs::write(&script, WRK_SCRIPT)?;

    // The API's base URL is http://127.0.0.1:PORT/CAPABILITY.
    let (api_origin, api_path) = split_origin(&node.api);
    let token = format!("Bearer token-of-{}", node.name);
    let prefix = format!("{api_path}/gh");
    let run = |origin: &str, prefix: &str, name: &str, secs: u64| {
        wrk(&script, origin, prefix, name, &token, secs)
    };
    let calls_before = hub.total();
    run(&api_origin, &prefix, "hot", 2)?;
    run(&api_origin, &prefix, "rewritten", 2)?;
    run(&nginx.origin, "", "hot", 2)?;
    let mut hot = Vec::new();
    let mut rewritten = Vec::new();
    let mut plain = Vec::new();
    for round in 0..rounds {
        let peercache = |hot: &mut Vec<WrkRun>, rewritten: &mut Vec<WrkRun>| {
            hot.push(run(&api_origin, &prefix, "hot", seconds)?);
            rewritten.push(run(&api_origin, &prefix, "rewritten", seconds)?);
            anyhow::Ok(())
        };
        if round % 2 == 0 {
            peercache(&mut hot, &mut rewritten)?;
            plain.push(run(&nginx.origin, "", "hot", seconds)?);
        } else {
            plain.push(run(&nginx.origin, "", "hot", seconds)?);
            peercache(&mut hot, &mut rewritten)?;
        }
    }
    let errors = |runs: &[WrkRun]| runs.iter().map(|r| r.errors).sum::<u64>();
    anyhow::ensure!(
        errors(&hot) == 0 && errors(&rewritten) == 0 && errors(&plain) == 0,
        "wrk saw error answers: peercache {} and {}, nginx {}",
        errors(&hot),
        errors(&rewritten),
        errors(&plain)
    );
    drop(nginx);
    anyhow::ensure!(node.alive(), "the daemon died under load");
    anyhow::ensure!(
        hub.total() == calls_before,
        "cached hits reached the stand-in GitHub API during the load"
    );
    let runs = (0..rounds)
        .map(|i| Round {
            peercache_api: hot[i].requests_per_sec,
            peercache_api_rewritten: rewritten[i].requests_per_sec,
            nginx_static: plain[i].requests_per_sec,
        })
        .collect();
    let (peercache_api, peercache_api_rewritten, nginx_static) =
        (best(hot), best(rewritten), best(plain));
    Ok(Throughput {
        tool,
        nginx: nginx_version,
        threads: WRK_THREADS,
        connections: WRK_CONNECTIONS,
        seconds,
        rounds,
        ratio: peercache_api.requests_per_sec / nginx_static.requests_per_sec,
        ratio_rewritten: peercache_api_rewritten.requests_per_sec / nginx_static.requests_per_sec,
        peercache_api,
        peercache_api_rewritten,
        nginx_static,
        runs,
    })
}

/// The run with the most requests per second.
fn best(runs: Vec<WrkRun>) -> WrkRun {
    runs.into_iter()
        .max_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec))
        .expect("at least one round")
}

/// Cycles through `/repos/octo/swarm/contents/<name>0..N` under a path prefix, with the job's token.
const WRK_SCRIPT: &str = r#"
local prefix, name, count, auth, i = "", "hot", 100, "", 0
function init(args)
  prefix = args[1] or ""
  name = args[2] or "hot"
  count = tonumber(args[3]) or 100
  auth = args[4] or ""
end
function request()
  local path = prefix .. "/repos/octo/swarm/contents/" .. name .. i
  i = (i + 1) % count
  return wrk.format("GET", path, { ["Authorization"] = auth })
end
"#;

fn wrk(
    script: &Path,
    origin: &str,
    prefix: &str,
    name: &str,
    token: &str,
    secs: u64,
) -> anyhow::Result<WrkRun> {
    let out = Command::new("wrk")
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{WRK_CONNECTIONS}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(format!("{origin}/"))
        .arg("--")
        .arg(prefix)
        .arg(name)
        .arg(HOT_ENDPOINTS.to_string())
        .arg(token)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&text).ok_or_else(|| anyhow::anyhow!("cannot read wrk's output:\n{text}"))
}

/// Reads requests/sec, the 50% and 99% latency lines, the request count and the error count.
fn parse_wrk(text: &str) -> Option<WrkRun> {
    let mut run = WrkRun {
        requests_per_sec: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        requests: 0,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => run.requests_per_sec = value.parse().ok()?,
            ["50%", value] => run.p50_ms = duration_ms(value)?,
            ["99%", value] => run.p99_ms = duration_ms(value)?,
            [count, "requests", "in", ..] => run.requests = count.parse().ok()?,
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                run.errors += count.parse::<u64>().ok()?
            }
            ["Socket", "errors:", ..] => {
                // "Socket errors: connect 0, read 0, write 0, timeout 0"
                run.errors += words
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    (run.requests_per_sec > 0.0).then_some(run)
}

/// `635.91us`, `1.50ms`, `2.00s` in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    Some(number.parse::<f64>().ok()? * scale)
}

fn split_origin(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    match rest.find('/') {
        Some(at) => (format!("http://{}", &rest[..at]), rest[at..].to_string()),
        None => (format!("http://{rest}"), String::new()),
    }
}

fn version(cmd: &mut Command) -> anyhow::Result<String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("{name} cannot run ({e}); scripts/bench.sh installs it"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// nginx in the foreground on a free loopback port, serving `<dir>/www`; stopped on drop.
struct Nginx {
    child: Child,
    origin: String,
}

impl Nginx {
    fn start(dir: &Path) -> anyhow::Result<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = dir.display();
        // As root, nginx's workers would drop to `nobody`, who cannot enter the 0700 scratch dir.
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let conf = format!(
            "{user}
daemon off;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  default_type application/json;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path {d}/tmp-body;
  proxy_temp_path {d}/tmp-proxy;
  fastcgi_temp_path {d}/tmp-fastcgi;
  uwsgi_temp_path {d}/tmp-uwsgi;
  scgi_temp_path {d}/tmp-scgi;
  server {{
    listen 127.0.0.1:{port};
    root {d}/www;
  }}
}}
"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("nginx cannot start ({e})"))?;
        let nginx = Nginx {
            child,
            origin: format!("http://127.0.0.1:{port}"),
        };
        let probe = format!("{}/repos/octo/swarm/contents/hot0", nginx.origin);
        anyhow::ensure!(
            wait_until(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && crate::common::http_get(&probe, &[]).status == 200
            }),
            "nginx did not answer on port {port}; see {d}/error.log"
        );
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful shutdown of the master and its workers.
        crate::common::send_signal(self.child.id(), libc::SIGQUIT);
        let _ = self.child.wait();
    }
}

/// `gh api --cache` against the stand-in, for the same kind of jobs.
#[derive(Debug, Clone, Serialize)]
pub struct GhCache {
    /// `gh --version`'s first line.
    pub version: String,
    /// Jobs, each on a runner of its own (its own gh cache).
    pub jobs: usize,
    /// Endpoints each job asks for.
    pub endpoints: usize,
    /// `--cache` duration, seconds.
    pub cache_secs: u64,
    /// Upstream calls of the first round.
    pub first_round_calls: u64,
    /// Upstream calls of the second round, after the cache duration.
    pub second_round_calls: u64,
    /// Of those, the ones that cost quota.
    pub second_round_paid: u64,
    /// Whole-process `gh api --cache` answered from its cache.
    pub cached_hit: Option<Summary>,
    /// Whole-process `peercache fetch` of a local entry, measured beside it.
    pub peercache_local_hit: Option<Summary>,
}

/// `jobs` jobs × `endpoints` endpoints through `gh api --cache`, twice; and its cached-hit latency.
pub fn gh_cache(
    bench: &Bench,
    jobs: usize,
    endpoints: usize,
    samples: usize,
) -> anyhow::Result<GhCache> {
    let version = version(Command::new("gh").arg("--version"))?;
    let hub = bench.hub();
    for i in 0..endpoints {
        hub.put_json(
            &format!("/repos/octo/swarm/contents/gh{i}"),
            fakehub::repo_body(i, BODY),
        );
    }
    let cache_secs = crate::budget::REVALIDATION_TTL_SECS;
    let gh = |job: usize, endpoint: &str, cache: &str| -> anyhow::Result<Vec<u8>> {
        let dir = bench.root.path().join(format!("gh-job{job}"));
        let out = Command::new("gh")
            .args(["api", "--cache", cache, endpoint])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &dir)
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_STATE_HOME", dir.join("state"))
            // gh's development host is plain http://api.github.localhost/; the stand-in takes it
            // as an HTTP proxy, so nothing is resolved and nothing leaves loopback.
            .env("GH_HOST", "github.localhost")
            .env("GH_TOKEN", format!("token-of-gh-job{job}"))
            .env("HTTP_PROXY", hub.url())
            .env("HTTPS_PROXY", hub.url())
            .env("GH_NO_UPDATE_NOTIFIER", "1")
            .env("GH_PROMPT_DISABLED", "1")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "gh api {endpoint} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out.stdout)
    };
    let cache = format!("{cache_secs}s");
    let round = || -> anyhow::Result<u64> {
        hub.reset_stats();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..jobs)
                .map(|job| {
                    let (gh, cache) = (&gh, &cache);
                    scope.spawn(move || -> anyhow::Result<()> {
                        for i in 0..endpoints {
                            let body = gh(job, &format!("repos/octo/swarm/contents/gh{i}"), cache)?;
                            anyhow::ensure!(
                                body == fakehub::repo_body(i, BODY),
                                "gh printed another body for repos/octo/swarm/contents/gh{i}"
                            );
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("a gh job thread"))
        })?;
        Ok(hub.total())
    };
    let first_round_calls = round()?;
    let first_done = Instant::now();
    if let Some(left) =
        Duration::from_millis(cache_secs * 1000 + 500).checked_sub(first_done.elapsed())
    {
        std::thread::sleep(left);
    }
    let second_round_calls = round()?;
    let second_round_paid = hub.stats().quota_spent.values().sum();

    // Cached hits, gh and peercache one after the other, same body, same machine.
    let alone = bench.lone_dirs("gh-side-peercache");
    let mut gh_hits = Vec::new();
    let mut peercache_hits = Vec::new();
    gh(0, "repos/octo/swarm/contents/gh0", "1h")?;
    fetch_process(
        &bench.binary,
        &hub,
        &FetchIn::Alone(&alone),
        "repos/octo/swarm/contents/gh0",
        None,
    )?;
    let before = hub.total();
    for _ in 0..samples {
        let started = Instant::now();
        gh(0, "repos/octo/swarm/contents/gh0", "1h")?;
        gh_hits.push(started.elapsed());
        let (took, source, _) = fetch_process(
            &bench.binary,
            &hub,
            &FetchIn::Alone(&alone),
            "repos/octo/swarm/contents/gh0",
            None,
        )?;
        if source == "local" {
            peercache_hits.push(took);
        }
    }
    anyhow::ensure!(hub.total() == before, "a cached hit reached the stand-in");
    Ok(GhCache {
        version,
        jobs,
        endpoints,
        cache_secs,
        first_round_calls,
        second_round_calls,
        second_round_paid,
        cached_hit: summarize(&gh_hits),
        peercache_local_hit: summarize(&peercache_hits),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  300.00us   9.10ms   80.00%
  Latency Distribution
     50%  635.91us
     75%  712.85us
     90%  800.00us
     99%    1.50ms
  123456 requests in 10.00s, 2.35GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  12345.67
Transfer/sec:    235.00MB
";
        let run = parse_wrk(text).unwrap();
        assert_eq!(run.requests_per_sec, 12345.67);
        assert!((run.p50_ms - 0.63591).abs() < 1e-9);
        assert_eq!(run.p99_ms, 1.5);
        assert_eq!(run.requests, 123456);
        assert_eq!(run.errors, 15);
        assert!(parse_wrk("wrk: connection refused").is_none());
    }

    #[test]
    fn splits_the_api_url() {
        assert_eq!(
            split_origin("http://127.0.0.1:4000/abc"),
            ("http://127.0.0.1:4000".to_string(), "/abc".to_string())
        );
    }
}
