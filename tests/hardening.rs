//! The review's findings outside the swarm (issue #15), each through the real binary: weak
//! secrets, a long-lived token as the secret, hostile `dir:` records, log injection, the port lock
//! of another user, and overflowing numbers.

mod common;

use common::Sandbox;

/// 32 random bytes, base64 (`peercache secret` made it).
const STRONG: &str = "mtbcje2LfpKCKE1flM62tMeW4Q83Fv+Kw+O/whyQ8vQ=";
/// A personal access token's shape (`ghp_` and 36 characters).
const PAT: &str = "ghp_16C7e42F292c6912E7710c838347Ae178B4a";

#[test]
fn weak_secrets_are_refused_with_exit_2_and_the_fix() {
    let sb = Sandbox::new();
    for (var, weak) in [
        ("PEERCACHE_SECRET", "s3cret"),
        ("PEERCACHE_SECRET", "swarm-secret"),
        ("PEERCACHE_SECRET", "q3V9kT2mX8pL4wZ7rB1nY"), // 21 random base64 characters
        (
            "PEERCACHE_SECRET",
            "abcdabcdabcdabcdabcdabcdabcdabcdabcdabcdabcd",
        ),
        (
            "CACHE_P2P_SHARED_SECRET",
            "0000000000000000000000000000000000000000",
        ),
    ] {
        for args in [&["serve", "--daemon"][..], &["discover"], &["init"]] {
            let mut cmd = sb.command(args);
            cmd.env(var, weak);
            let run = common::Run::from(cmd.output().unwrap());
            let line = run.fails_with(2);
            assert!(
                line.contains(var) && line.contains("peercache secret") && line.contains("128"),
                "{args:?} with {var}={weak}: {line}"
            );
            assert!(!line.contains(weak), "the secret is echoed: {line}");
        }
    }
    assert!(sb.serve_json().is_none(), "no daemon started");
}

#[test]
fn peercache_secret_prints_a_new_strong_secret_that_serve_accepts() {
    let sb = Sandbox::new();
    // It works even while a refused secret is set, so the fix is always at hand.
    let mut cmd = sb.command(&["secret"]);
    cmd.env("PEERCACHE_SECRET", "weak");
    let first = common::Run::from(cmd.output().unwrap()).ok();
    let second = sb.run(None, &["secret"]).ok();
    let (a, b) = (
        String::from_utf8(first.stdout).unwrap(),
        String::from_utf8(second.stdout).unwrap(),
    );
    let a = a.strip_suffix('\n').expect("one line");
    assert_eq!(a.len(), 44, "32 bytes in base64: {a:?}");
    assert!(
        a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)),
        "{a:?}"
    );
    assert_ne!(a, b.trim(), "a new secret every time");

    let daemon = sb.start_daemon(
        &[("PEERCACHE_SECRET", a), ("PEERCACHE_MDNS", "false")],
        &["--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    assert_eq!(daemon.json("/api/status")["sharing"]["enabled"], true);
    let log = std::fs::read_to_string(sb.home().join("serve.log")).unwrap();
    assert!(!log.contains(a), "the secret reached the log");
}

#[test]
fn a_long_lived_gh_token_is_the_secret_only_when_asked_and_then_says_so() {
    let sb = Sandbox::new();
    {
        let daemon = sb.start_daemon(&[("GH_TOKEN", PAT), ("PEERCACHE_MDNS", "false")], &[]);
        let sharing = &daemon.json("/api/status")["sharing"];
        assert_eq!(sharing["enabled"], false, "{sharing}");
        let reason = sharing["reason"].as_str().unwrap();
        assert!(
            reason.contains("GH_TOKEN") && reason.contains("PEERCACHE_SECRET_FROM_TOKEN=true"),
            "{reason}"
        );
        sb.run(None, &["stop"]).ok();
    }
    let daemon = sb.start_daemon(
        &[
            ("GH_TOKEN", PAT),
            ("PEERCACHE_SECRET_FROM_TOKEN", "true"),
            ("PEERCACHE_MDNS", "false"),
        ],
        &["--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    assert_eq!(daemon.json("/api/status")["sharing"]["enabled"], true);
    let log = std::fs::read_to_string(sb.home().join("serve.log")).unwrap();
    assert!(
        log.contains("GH_TOKEN (a long-lived token) is the swarm secret"),
        "{log}"
    );
    assert!(!log.contains(PAT), "the token reached the log");
}

/// A peer id that parses, as a record's file name needs.
fn peer_id() -> String {
    libp2p::PeerId::random().to_string()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn record(peer: &str, runner: &str) -> String {
    serde_json::json!({
        "version": 1,
        "peer_id": peer,
        "multiaddrs": [format!("/ip4/10.0.0.5/tcp/9000/p2p/{peer}")],
        "runner_name": runner,
        "last_seen": now(),
        "expires_at": now() + 600,
    })
    .to_string()
}

/// `peercache discover --format json` over `dir:DIR`, killed if it runs past `limit`.
fn discover_dir(sb: &Sandbox, dir: &std::path::Path, env: &[(&str, &str)]) -> common::Run {
    let registry = format!("dir:{}", dir.display());
    let mut cmd = sb.command(&["discover", "--format", "json"]);
    cmd.env("PEERCACHE_REGISTRY", &registry)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let limit = std::time::Duration::from_secs(20);
    if !common::wait_until(limit, || child.try_wait().unwrap().is_some()) {
        let _ = child.kill();
        panic!("discover still ran after {limit:?} (reading something endless?)");
    }
    common::Run::from(child.wait_with_output().unwrap())
}

#[test]
fn dir_records_are_never_read_through_symlinks_fifos_or_past_the_limit() {
    let sb = Sandbox::new();
    let peers = sb.root.path().join("peers");
    std::fs::create_dir_all(&peers).unwrap();
    let file = |peer: &str| peers.join(format!("peer_{peer}.json"));

    let good = peer_id();
    std::fs::write(file(&good), record(&good, "good")).unwrap();
    // A valid record outside the directory, reached through a symlink: not a record of it.
    let outside = peer_id();
    let elsewhere = sb.root.path().join("elsewhere.json");
    std::fs::write(&elsewhere, record(&outside, "outside")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, file(&outside)).unwrap();
    // The review's case: stat says 0 bytes, reading it walks the reader's own address space.
    let pagemap = peer_id();
    std::os::unix::fs::symlink("/proc/self/pagemap", file(&pagemap)).unwrap();
    // A FIFO nobody writes: opening it for reading would block forever.
    let fifo = peer_id();
    let path = std::ffi::CString::new(file(&fifo).to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0);
    // Larger than a record may be.
    let huge = peer_id();
    std::fs::write(file(&huge), vec![b' '; 65 * 1024]).unwrap();

    let run = discover_dir(&sb, &peers, &[]).ok();
    let listed: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["peer_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [good.as_str()], "stderr: {}", run.stderr);
    for (peer, why) in [
        (&outside, "symlink"),
        (&pagemap, "symlink"),
        (&fifo, "not a regular file"),
        (&huge, "too large"),
    ] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains(peer.as_str()) && l.contains(why)),
            "no warning that {peer} is {why}: {}",
            run.stderr
        );
    }
}

#[test]
fn hostile_registry_fields_cannot_write_workflow_commands_into_the_log() {
    let sb = Sandbox::new();
    let peers = sb.root.path().join("peers");
    std::fs::create_dir_all(&peers).unwrap();
    // A file name and a record whose peer id carry workflow commands.
    std::fs::write(
        peers.join("peer_##[error title=owned]injected.json"),
        "{\"peer_id\": 1}",
    )
    .unwrap();
    let named = peer_id();
    std::fs::write(
        peers.join(format!("peer_{named}.json")),
        record("##[error]forged::x", "r"),
    )
    .unwrap();
    let multi = peer_id();
    std::fs::write(
        peers.join(format!("peer_{multi}.json")),
        record("a\n::error::second line", "r"),
    )
    .unwrap();

    // A valid record whose runner name carries one: listed, with its value intact.
    let listed = peer_id();
    std::fs::write(
        peers.join(format!("peer_{listed}.json")),
        record(&listed, "##[error]runner"),
    )
    .unwrap();

    for actions in ["true", "false"] {
        let run = discover_dir(&sb, &peers, &[("GITHUB_ACTIONS", actions)]).ok();
        let stdout = String::from_utf8(run.stdout.clone()).unwrap();
        assert!(!stdout.contains("##["), "{stdout}");
        let found: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(found[0]["runner_name"], "##[error]runner", "{stdout}");
        assert!(
            run.stderr.contains("injected") && run.stderr.contains("forged"),
            "the records are still reported: {}",
            run.stderr
        );
        for line in run.stderr.lines() {
            assert!(
                !line.contains("##["),
                "a ##[ command reached the log: {line:?}"
            );
            let trimmed = line.trim_start();
            assert!(
                !trimmed.starts_with("::")
                    || trimmed.starts_with("::warning::peercache: ")
                    || trimmed.starts_with("::error::peercache: "),
                "a line starts a command of someone else's: {line:?}"
            );
        }
    }
}

#[test]
fn another_users_hold_on_the_port_lock_does_not_make_init_wait() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a lock holder as another user (CI runs as root)");
        return;
    }
    let sb = Sandbox::new();
    let locks = sb.root.path().join("ports");
    std::fs::create_dir_all(&locks).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for dir in [sb.root.path(), locks.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let lock = locks.join("lock");
    std::fs::write(&lock, b"").unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    // `nobody` holds the host-wide lock and never lets go.
    let mut holder = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "flock",
            "-x",
        ])
        .arg(&lock)
        .args(["sleep", "120"])
        .spawn()
        .expect("setpriv and flock (util-linux)");
    let held = common::wait_until(std::time::Duration::from_secs(10), || {
        let file = std::fs::File::open(&lock).unwrap();
        use std::os::fd::AsRawFd;
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
    });
    assert!(held, "the holder never took the lock");

    let workflows = sb.root.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    let started = std::time::Instant::now();
    let mut cmd = sb.command(&["init", "--workflows-dir", workflows.to_str().unwrap()]);
    cmd.env("PEERCACHE_PORT_LOCK_DIR", &locks)
        .env("GITHUB_WORKFLOW", "ci");
    let run = common::Run::from(cmd.output().unwrap());
    let took = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    let run = run.ok();
    assert!(
        took < std::time::Duration::from_secs(5),
        "init waited {took:?} for another user's lock: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("another user") && run.stderr.contains("uid 65534"),
        "{}",
        run.stderr
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("PEERCACHE_PORT="));
}

#[test]
fn register_refuses_a_ttl_that_would_overflow_the_expiry() {
    let sb = Sandbox::new();
    let peers = sb.root.path().join("peers");
    let registry = format!("dir:{}", peers.display());
    let _daemon = sb.start_daemon(
        &[
            ("PEERCACHE_SECRET", STRONG),
            ("PEERCACHE_MDNS", "false"),
            ("PEERCACHE_REGISTRY", registry.as_str()),
        ],
        &["--listen", "/ip4/127.0.0.1/tcp/0"],
    );
    let register = |ttl: &str| {
        let mut cmd = sb.command(&["register", "--ttl", ttl]);
        cmd.env("PEERCACHE_SECRET", STRONG)
            .env("PEERCACHE_REGISTRY", &registry);
        common::Run::from(cmd.output().unwrap())
    };
    for huge in ["18446744073709551615", "604801"] {
        let run = register(huge);
        let line = run.fails_with(2);
        assert!(line.contains("--ttl") && line.contains("604800"), "{line}");
    }
    register("604800").ok();
    let files: Vec<_> = std::fs::read_dir(&peers).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(files[0].path()).unwrap()).unwrap();
    let expires = record["expires_at"].as_u64().unwrap();
    assert!(
        expires >= now() + 604_790 && expires <= now() + 604_800,
        "{record}"
    );
}

/// Every shell line of the scripts, the action, the workflows and the docs, with continuation
/// lines (`\` at the end) joined: (file, first line number, text).
fn shell_lines() -> Vec<(String, usize, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("action.yml")];
    for (dir, ext) in [
        ("scripts", "sh"),
        ("docs", "md"),
        (".github/workflows", "yml"),
        ("tests/action", "sh"),
        (".ci", ""),
    ] {
        for entry in std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            let matches = path.extension().and_then(|e| e.to_str()).unwrap_or("") == ext;
            if path.is_file() && matches {
                files.push(path);
            }
        }
    }
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let name = path.strip_prefix(root).unwrap().display().to_string();
        let markdown = name.ends_with(".md");
        let mut in_code = false;
        let mut pending: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            // In Markdown, only the code blocks are commands; the prose may name things.
            if markdown && line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if markdown && !in_code {
                continue;
            }
            let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
            joined.push_str(line.trim_end_matches('\\'));
            if line.ends_with('\\') {
                pending = Some((start, joined));
            } else {
                out.push((name.clone(), start, joined));
            }
        }
    }
    assert!(
        out.len() > 1000,
        "the scan found the files: {} lines",
        out.len()
    );
    out
}

#[test]
fn no_script_or_doc_example_puts_the_capability_or_a_token_in_argv() {
    // What holds the local API's capability (or a token) in the scripts and examples.
    let sources = [
        "$PEERCACHE_API/",
        "${PEERCACHE_API}",
        "$PEERCACHE_API\"",
        "$api/",
        "${api}",
        "$api\"",
        "api-url",
        "api_url",
        "Authorization",
    ];
    let mut offenders = Vec::new();
    for (file, line_no, line) in shell_lines() {
        let runs_http_client = line
            .split(|c: char| c.is_whitespace() || "()`;|&\"'".contains(c))
            .any(|word| matches!(word, "curl" | "wget" | "http" | "xh"));
        if !runs_http_client {
            continue;
        }
        let via_config = line.contains(" -K") || line.contains("--config");
        if let Some(source) = sources.iter().find(|s| line.contains(*s))
            && !via_config
        {
            offenders.push(format!(
                "{file}:{line_no}: {source} on a command line: {line}"
            ));
        }
    }
    assert!(
        offenders.is_empty(),
        "the capability (or a token) would be in argv, readable in /proc/*/cmdline by every local user; pass it with curl -K- (a config line on stdin) or use peercache fetch:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn a_percent_encoded_dot_segment_cannot_send_the_token_outside_the_api_path() {
    // Found by the fuzz target endpoint_link: `.%2E` is `..` to a URL parser.
    let sb = Sandbox::new();
    let base = format!("{}/api/v3", sb.hub.url());
    let before = sb.hub.stats().total;
    for endpoint in [
        ".%2E/login",
        "repos/o/r/.%2e/.%2E/.%2E/.%2E/admin",
        "%2e%2e",
    ] {
        let mut cmd = sb.command(&["fetch", "--no-daemon", endpoint]);
        cmd.env("PEERCACHE_API_URL", &base).env(
            "PEERCACHE_TOKEN",
            "ghp_tokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        );
        let run = common::Run::from(cmd.output().unwrap());
        let line = run.fails_with(2);
        assert!(line.contains("'..'"), "{endpoint}: {line}");
    }
    assert_eq!(sb.hub.stats().total, before, "nothing was sent");
}
