//! The daemon's `/gh` base URL as real clients use it (curl here; octokit and PyGithub in
//! tests/clients.rs), and the local API's defences (issue #15, finding 3): the real binary, a
//! stand-in GitHub, real sockets.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, Sandbox, wait_until};

const TOKEN_A: &str = "token-of-job-a";
const TOKEN_B: &str = "token-of-job-b";
const DAEMON_TOKEN: &str = "token-of-the-daemon";

/// An answer as curl saw it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// `curl -s -D <headers> ARGS URL`.
fn curl(args: &[&str], url: &str) -> Answer {
    let dir = tempfile::tempdir().unwrap();
    let head_file = dir.path().join("head");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "30", "-D"])
        .arg(&head_file)
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {url} failed: {:?}", out);
    let head = std::fs::read_to_string(&head_file).unwrap();
    // The last header block (curl writes one per 1xx too).
    let block = head.trim_end().rsplit("\r\n\r\n").next().unwrap();
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: out.stdout,
    }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// A repository object as GitHub writes it: URLs on the API host.
fn repo_json(api: &str) -> Vec<u8> {
    serde_json::json!({
        "id": 1,
        "name": "hello",
        "full_name": "octo/hello",
        "url": format!("{api}/repos/octo/hello"),
        "issues_url": format!("{api}/repos/octo/hello/issues{{/number}}"),
        "html_url": "https://github.com/octo/hello",
        "description": format!("mirrors {api}/repos/octo/hello"),
    })
    .to_string()
    .into_bytes()
}

#[test]
fn urls_in_bodies_and_links_point_back_at_the_daemon_and_fetch_keeps_githubs_bytes() {
    let sb = Sandbox::new();
    let upstream = sb.hub.url();
    let stored = repo_json(&upstream);
    sb.hub.put_json("/repos/octo/hello", stored.clone());
    sb.hub.put_list(
        "/repos/octo/hello/stargazers",
        (0..5).map(|i| serde_json::json!({"id": i})).collect(),
    );
    let daemon = sb.start_daemon(&[], &[]);

    let answer = curl(&[], &format!("{}/gh/repos/octo/hello", daemon.api));
    assert_eq!(answer.status, 200);
    let repo = answer.json();
    assert_eq!(repo["url"], format!("{}/gh/repos/octo/hello", daemon.api));
    assert_eq!(
        repo["issues_url"],
        format!("{}/gh/repos/octo/hello/issues{{/number}}", daemon.api)
    );
    assert_eq!(repo["html_url"], "https://github.com/octo/hello");
    // Only URLs are rewritten, not text that mentions one.
    assert_eq!(
        repo["description"],
        format!("mirrors {upstream}/repos/octo/hello")
    );
    // The URL in the body works: a follow-up from it is a local hit.
    let again = curl(&[], repo["url"].as_str().unwrap());
    assert_eq!(again.status, 200);
    assert_eq!(again.header("x-peercache-source"), Some("local"));

    let page = curl(
        &[],
        &format!("{}/gh/repos/octo/hello/stargazers?per_page=2", daemon.api),
    );
    let link = page.header("link").expect("a Link header");
    assert!(link.contains(&format!("<{}/gh/repos/octo/hello/stargazers", daemon.api)));

    // fetch prints GitHub's bytes unchanged, through the daemon.
    let fetched = sb.fetch(None, "repos/octo/hello", &[]).ok();
    assert_eq!(fetched.body(), &stored[..]);
    assert_eq!(fetched.source(), "local");
    // The stored body is GitHub's too.
    let objects = common::object_files(&sb.cache_dir());
    assert!(
        objects.iter().any(|p| std::fs::read(p).unwrap() == stored),
        "the cache holds GitHub's bytes"
    );
}

#[test]
fn head_gives_the_headers_of_get_and_no_body() {
    let sb = Sandbox::new();
    sb.hub
        .put_json("/repos/octo/hello", repo_json(&sb.hub.url()));
    let daemon = sb.start_daemon(&[], &[]);
    let url = format!("{}/gh/repos/octo/hello", daemon.api);
    let head = curl(&["-I"], &url);
    assert_eq!(head.status, 200);
    // On the wire: the head, then nothing (Connection: close ends it).
    let mut stream = connect(&daemon);
    let path = url
        .strip_prefix(&format!("http://127.0.0.1:{}", daemon.port()))
        .unwrap();
    let request = format!("HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    assert!(
        raw.ends_with(b"\r\n\r\n"),
        "HEAD has no body: {:?}",
        String::from_utf8_lossy(&raw)
    );
    let get = curl(&[], &url);
    for name in [
        "content-type",
        "etag",
        "content-length",
        "cache-control",
        "vary",
    ] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    assert_eq!(
        get.header("content-length").unwrap(),
        get.body.len().to_string()
    );
    assert_eq!(sb.hub.total(), 1, "HEAD and GET are one upstream call");
}

#[test]
fn clients_get_304_for_the_daemons_etag_whatever_their_token() {
    let sb = Sandbox::new();
    sb.hub.put_json(
        "/repos/octo/hello/contents/README.md",
        repo_json(&sb.hub.url()),
    );
    let daemon = sb.start_daemon(&[], &[]);
    let url = format!("{}/gh/repos/octo/hello/contents/README.md", daemon.api);

    let first = curl(&["-H", &bearer(TOKEN_A)], &url);
    assert_eq!(first.status, 200);
    let etag = first.header("etag").expect("an ETag").to_string();
    assert!(etag.starts_with("W/\"pc-"), "the daemon's own ETag: {etag}");
    let last_modified = first
        .header("last-modified")
        .expect("Last-Modified")
        .to_string();

    // Another token, same ETag: GitHub's would differ, the daemon's does not.
    let other = curl(&["-H", &bearer(TOKEN_B)], &url);
    assert_eq!(other.header("etag"), Some(etag.as_str()));

    let inm = format!("If-None-Match: {etag}");
    let not_modified = curl(&["-H", &bearer(TOKEN_B), "-H", &inm], &url);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));

    let ims = format!("If-Modified-Since: {last_modified}");
    assert_eq!(curl(&["-H", &ims], &url).status, 304);
    let changed = curl(&["-H", "If-None-Match: W/\"pc-0000\""], &url);
    assert_eq!(changed.status, 200);
    assert!(!changed.body.is_empty());

    let stats = sb.hub.stats();
    assert_eq!(stats.total, 1, "one upstream call for all of them");
    assert!(
        stats.requests.iter().all(|r| r.if_none_match.is_none()),
        "the clients' validators never reach GitHub"
    );
}

#[test]
fn cached_answers_keep_githubs_headers_and_the_callers_rate_limit_figures() {
    let sb = Sandbox::new();
    sb.hub.put_json(
        "/repos/octo/hello/contents/README.md",
        repo_json(&sb.hub.url()),
    );
    let daemon = sb.start_daemon(&[], &[]);
    let url = format!("{}/gh/repos/octo/hello/contents/README.md", daemon.api);
    let upstream = curl(&["-H", &bearer(TOKEN_A)], &url);
    assert_eq!(upstream.header("x-peercache-source"), Some("upstream"));
    let remaining = upstream
        .header("x-ratelimit-remaining")
        .unwrap()
        .to_string();

    let cached = curl(&["-H", &bearer(TOKEN_A)], &url);
    assert_eq!(cached.header("x-peercache-source"), Some("local"));
    assert_eq!(
        cached.header("x-ratelimit-remaining"),
        Some(remaining.as_str())
    );
    assert_eq!(cached.header("x-ratelimit-limit"), Some("5000"));
    assert!(cached.header("x-ratelimit-reset").is_some());
    assert_eq!(cached.header("x-peercache-ratelimit"), Some("cached"));
    assert_eq!(
        cached.header("cache-control"),
        Some("private, max-age=60, s-maxage=60")
    );
    assert_eq!(
        cached.header("vary"),
        Some("Accept, Authorization, Cookie, X-GitHub-OTP")
    );
    assert_eq!(cached.header("etag"), upstream.header("etag"));
    assert_eq!(
        cached.header("last-modified"),
        upstream.header("last-modified")
    );
    assert!(cached.header("content-type").unwrap().contains("json"));
    // Another token's bucket was never seen: no figures are made up for it.
    let other = curl(&["-H", &bearer(TOKEN_B)], &url);
    assert_eq!(other.header("x-peercache-source"), Some("local"));
    assert_eq!(other.header("x-ratelimit-remaining"), None);
    assert_eq!(sb.hub.total(), 1);
}

#[test]
fn during_a_rate_limit_block_a_miss_gets_githubs_403_with_retry_after() {
    let sb = Sandbox::new();
    sb.hub.put_json("/repos/octo/one", repo_json(&sb.hub.url()));
    sb.hub.put_json("/repos/octo/two", repo_json(&sb.hub.url()));
    let daemon = sb.start_daemon(&[], &[]);
    let auth = format!("Bearer {TOKEN_A}");
    sb.hub.exhaust_quota(Some(&auth), Duration::from_secs(600));
    // GitHub's own refusal, passed on as it is; it blocks the bucket.
    let first = curl(
        &["-H", &bearer(TOKEN_A)],
        &format!("{}/gh/repos/octo/one", daemon.api),
    );
    assert_eq!(first.status, 403);
    let calls = sb.hub.total();
    // Now no call is made; the daemon answers as GitHub would.
    let second = curl(
        &["-H", &bearer(TOKEN_A)],
        &format!("{}/gh/repos/octo/two", daemon.api),
    );
    assert_eq!(
        second.status,
        403,
        "{}",
        String::from_utf8_lossy(&second.body)
    );
    let retry: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 500 && retry <= 601, "retry-after {retry}");
    assert_eq!(second.header("x-ratelimit-remaining"), Some("0"));
    let reset: u64 = second.header("x-ratelimit-reset").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(reset > now + 500, "x-ratelimit-reset {reset}");
    assert!(
        second.json()["message"]
            .as_str()
            .unwrap()
            .contains("API rate limit exceeded")
    );
    assert_eq!(sb.hub.total(), calls, "no call during the block");
    // fetch through the daemon says so and exits 3.
    let fetched = sb.run(Some(TOKEN_A), &["fetch", "repos/octo/two"]);
    assert!(fetched.fails_with(3).contains("rate limit"));
}

#[test]
fn writes_pass_through_with_the_callers_token_and_expire_what_they_change() {
    let sb = Sandbox::new();
    sb.hub.add_repo("octo/hello");
    let daemon = sb.start_daemon(&[("PEERCACHE_TOKEN", DAEMON_TOKEN)], &[]);
    let issues = format!("{}/gh/repos/octo/hello/issues", daemon.api);
    let list = curl(&["-H", &bearer(TOKEN_A)], &issues);
    assert_eq!(list.json(), serde_json::json!([]));
    assert_eq!(
        curl(&["-H", &bearer(TOKEN_A)], &issues).header("x-peercache-source"),
        Some("local")
    );

    let created = curl(
        &[
            "-X",
            "POST",
            "-H",
            &bearer(TOKEN_A),
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"title":"from a job"}"#,
        ],
        &issues,
    );
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let issue = created.json();
    assert_eq!(
        issue["user"]["login"],
        fakehub::login_for(&format!("Bearer {TOKEN_A}"))
    );
    // The answer's own URL points at the daemon, and reads back what was written.
    let url = issue["url"].as_str().unwrap();
    assert!(url.starts_with(&daemon.api), "{url}");
    assert_eq!(curl(&[], url).json()["title"], "from a job");

    // The write expired the cached collection: the next read sees it.
    let after = curl(&["-H", &bearer(TOKEN_A)], &issues);
    assert_ne!(after.header("x-peercache-source"), Some("local"));
    assert_eq!(after.json().as_array().unwrap().len(), 1);

    // Without an Authorization the daemon's token is used, never otherwise.
    let anonymous = curl(
        &["-X", "POST", "--data", r#"{"title":"no token"}"#],
        &issues,
    );
    assert_eq!(anonymous.status, 201);
    let writes: Vec<_> = sb
        .hub
        .stats()
        .requests
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.authorization)
        .collect();
    assert_eq!(
        writes,
        vec![
            Some(format!("Bearer {TOKEN_A}")),
            Some(format!("Bearer {DAEMON_TOKEN}"))
        ]
    );
}

#[test]
fn graphql_passes_through() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon(&[], &[]);
    let answer = curl(
        &[
            "-X",
            "POST",
            "-H",
            &bearer(TOKEN_A),
            "--data",
            r#"{"query":"{ viewer { login } }"}"#,
        ],
        &format!("{}/gh/graphql", daemon.api),
    );
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json()["data"]["viewer"]["login"],
        fakehub::login_for(&format!("Bearer {TOKEN_A}"))
    );
    assert_eq!(sb.hub.stats().count("/graphql"), 1);
}

// ---------------------------------------------------------------------------------------------
// Issue #15, finding 3: the local API without the capability.
// ---------------------------------------------------------------------------------------------

fn connect(daemon: &Daemon) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", daemon.port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream
}

/// What the server sent before closing or going quiet for the read timeout.
fn read_some(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    return out;
                }
            }
        }
    }
}

#[test]
fn no_body_is_read_before_the_capability_is_checked() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon(&[], &[]);
    // A wrong path announcing 2 MB that never come: the 404 must not wait for them.
    for path in [
        "/0123456789abcdef0123456789abcdef/api/connect",
        "/gh/graphql",
    ] {
        let mut stream = connect(&daemon);
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let answer = String::from_utf8_lossy(&read_some(&mut stream)).into_owned();
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer:?}");
    }
    // With the capability, /api/connect reads at most 256 KiB.
    let mut stream = connect(&daemon);
    let head = format!(
        "POST /{}/api/connect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000\r\n\r\n",
        daemon.capability()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(&vec![b' '; 300 << 10]);
    let answer = String::from_utf8_lossy(&read_some(&mut stream)).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 413") || answer.starts_with("HTTP/1.1 409"),
        "{answer:?}"
    );
}

#[test]
fn the_capability_header_stands_in_for_the_path_prefix() {
    let sb = Sandbox::new();
    sb.hub
        .put_json("/repos/octo/hello", repo_json(&sb.hub.url()));
    let daemon = sb.start_daemon(&[], &[]);
    let root = format!("http://127.0.0.1:{}", daemon.port());
    let cap = format!("x-peercache-capability: {}", daemon.capability());
    let answer = curl(&["-H", &cap], &format!("{root}/gh/repos/octo/hello"));
    assert_eq!(answer.status, 200);
    // URLs in the answer stay in header mode (no capability in them).
    assert_eq!(answer.json()["url"], format!("{root}/gh/repos/octo/hello"));
    assert_eq!(
        curl(&["-H", &cap], &format!("{root}/api/cache/stats")).status,
        200
    );
    let wrong = "x-peercache-capability: 00000000000000000000000000000000";
    assert_eq!(
        curl(&["-H", wrong], &format!("{root}/gh/repos/octo/hello")).status,
        404
    );
    assert_eq!(
        curl(&[], &format!("{root}/gh/repos/octo/hello")).status,
        404
    );
    // A client that calls it localhost gets localhost URLs back.
    let local = format!("http://localhost:{}", daemon.port());
    let answer = curl(&["-H", &cap], &format!("{local}/gh/repos/octo/hello"));
    assert_eq!(answer.json()["url"], format!("{local}/gh/repos/octo/hello"));
}

#[test]
fn idle_connections_are_closed_after_the_header_timeout() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon(&[], &[]);
    let mut idle = connect(&daemon);
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Half a request head, then nothing.
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let closed = idle.read(&mut buf).is_ok();
    assert!(closed, "the daemon closed the connection");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "closed after {took:?}, not after the header timeout"
    );
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn connections_past_the_limit_are_refused_at_once_and_cannot_starve_the_daemon() {
    let sb = Sandbox::new();
    sb.hub
        .put_json("/repos/octo/hello", repo_json(&sb.hub.url()));
    let daemon = sb.start_daemon(&[("PEERCACHE_API_MAX_CONNECTIONS", "32")], &[]);
    let url = format!("{}/gh/repos/octo/hello", daemon.api);
    let status = || {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = open_fds(daemon.pid);
    let mut flood: Vec<TcpStream> = (0..32).map(|_| connect(&daemon)).collect();
    // Past the limit: a 503 at once.
    let mut extra = connect(&daemon);
    let answer = String::from_utf8_lossy(&read_some(&mut extra)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // A client that sends its request first sees the 503 too (not a reset).
    assert_eq!(status(), "503");
    for _ in 0..200 {
        flood.push(connect(&daemon));
    }
    // Refused connections are let go within moments; the flood never holds more than the limit.
    assert!(
        wait_until(Duration::from_secs(3), || open_fds(daemon.pid)
            <= before + 40),
        "the flood holds {} descriptors",
        open_fds(daemon.pid).saturating_sub(before)
    );
    // The idle flood is dropped after the header timeout; authorised requests then answer.
    assert!(
        wait_until(Duration::from_secs(20), || status() == "200"),
        "an authorised request got through"
    );
    drop(flood);
}

#[test]
fn serve_raises_the_open_files_limit_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;
    let sb = Sandbox::new();
    let mut cmd = sb.command(&["serve", "--daemon"]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = 256.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = sb.serve_json().unwrap()["pid"].as_u64().unwrap() as u32;
    let _daemon = Daemon {
        api: String::new(),
        pid,
    };
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "soft = hard: {line}");
    assert_ne!(numbers[0], "256", "{line}");
}

#[test]
fn fetch_gives_up_on_a_daemon_that_accepts_but_never_answers() {
    let sb = Sandbox::new();
    sb.hub
        .put_json("/repos/octo/hello", repo_json(&sb.hub.url()));
    let daemon = sb.start_daemon(&[], &[]);
    // A wedged daemon: alive, its socket still accepting into the backlog, answering nothing.
    common::send_signal(daemon.pid, libc::SIGSTOP);
    let started = Instant::now();
    let mut child = sb
        .command(&["fetch", "-i", "repos/octo/hello"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let finished = wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    common::send_signal(daemon.pid, libc::SIGCONT);
    assert!(
        finished,
        "fetch still waited for the wedged daemon after 20 s"
    );
    let took = started.elapsed();
    let run = common::Run::from(out).ok();
    assert_eq!(run.source(), "upstream", "answered by the direct path");
    assert!(run.stderr.contains("did not answer"), "{}", run.stderr);
    assert!(took < Duration::from_secs(10), "fetch waited {took:?}");
}
