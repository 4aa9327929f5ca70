//! `peercache fetch` end to end: the real binary, the on-disk cache, the stand-in GitHub API.

mod common;

use std::time::Duration;

use common::{Sandbox, json_body, object_files, snapshot};
use fakehub::Failure;

const TOKEN_A: &str = "ghp_tokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const TOKEN_B: &str = "ghp_tokenBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn second_fetch_within_ttl_is_local_and_byte_identical() {
    let sb = Sandbox::new();
    let body = json_body(1, 20_000);
    sb.hub.put_json("/repos/octo/hello/readme", body.clone());

    let first = sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();
    assert_eq!(first.source(), "upstream");
    assert_eq!(first.body(), body.as_slice());

    let second = sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();
    assert_eq!(second.source(), "local");
    assert_eq!(second.body(), body.as_slice());
    assert_eq!(
        sb.hub.count("/repos/octo/hello/readme"),
        1,
        "the second fetch must not reach GitHub"
    );

    // Without -i the body alone, byte for byte.
    let plain = sb
        .run(Some(TOKEN_A), &["fetch", "/repos/octo/hello/readme"])
        .ok();
    assert_eq!(plain.stdout, body);
    assert_eq!(sb.hub.total(), 1);
}

#[test]
fn after_the_ttl_an_unchanged_resource_is_revalidated_for_free_under_any_token() {
    let sb = Sandbox::new();
    let body = json_body(2, 3000);
    sb.hub.put_json("/repos/octo/hello/readme", body.clone());
    sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();

    // Same token: If-None-Match and If-Modified-Since both apply.
    let again = sb
        .fetch(Some(TOKEN_A), "repos/octo/hello/readme", &["--ttl", "0"])
        .ok();
    assert_eq!(again.source(), "revalidated");
    assert_eq!(again.body(), body.as_slice());

    // The next job has another token: its ETag would not match, If-Modified-Since still does.
    let next_job = sb
        .fetch(Some(TOKEN_B), "repos/octo/hello/readme", &["--ttl", "0"])
        .ok();
    assert_eq!(next_job.source(), "revalidated");
    assert_eq!(next_job.body(), body.as_slice());

    let stats = sb.hub.stats();
    let records: Vec<_> = stats
        .requests
        .iter()
        .filter(|r| r.path() == "/repos/octo/hello/readme")
        .collect();
    assert_eq!(
        records.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 304, 304]
    );
    assert!(
        records[1].if_none_match.is_some(),
        "same token: the stored ETag is sent"
    );
    assert!(
        records[2].if_none_match.is_none(),
        "another token: an ETag of token A is useless and not sent"
    );
    assert!(records[2].if_modified_since.is_some());
    assert_eq!(
        stats.spent(Some(&bearer(TOKEN_A))),
        1,
        "only the first 200 spends quota"
    );
    assert_eq!(
        stats.spent(Some(&bearer(TOKEN_B))),
        0,
        "a 304 spends no quota"
    );

    // The renewed entry is fresh again.
    assert_eq!(
        sb.fetch(Some(TOKEN_B), "repos/octo/hello/readme", &[])
            .ok()
            .source(),
        "local"
    );
}

#[test]
fn a_changed_resource_is_fetched_again_after_the_ttl() {
    let sb = Sandbox::new();
    sb.hub.put_resource(
        "/repos/octo/hello/readme",
        fakehub::Resource::json(json_body(3, 100)).with_last_modified(None),
    );
    sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();
    let changed = json_body(4, 120);
    sb.hub.put_resource(
        "/repos/octo/hello/readme",
        fakehub::Resource::json(changed.clone()).with_last_modified(None),
    );
    let run = sb
        .fetch(Some(TOKEN_A), "repos/octo/hello/readme", &["--ttl", "0"])
        .ok();
    assert_eq!(run.source(), "upstream");
    assert_eq!(run.body(), changed.as_slice());
}

#[test]
fn upstream_502_serves_stale_and_with_nothing_cached_exits_1_with_the_body() {
    let sb = Sandbox::new();
    let body = json_body(5, 500);
    sb.hub.put_json("/repos/octo/hello/readme", body.clone());
    sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();

    sb.hub
        .fail_always(Failure::status(502).with_body("{\"message\":\"Server Error\"}"));
    let stale = sb
        .fetch(Some(TOKEN_A), "repos/octo/hello/readme", &["--ttl", "0"])
        .ok();
    assert_eq!(stale.source(), "stale");
    assert_eq!(stale.body(), body.as_slice());

    let nothing = sb.run(Some(TOKEN_A), &["fetch", "repos/octo/other"]);
    let line = nothing.fails_with(1);
    assert!(line.contains("502"), "{line}");
    assert_eq!(nothing.stdout, b"{\"message\":\"Server Error\"}");
}

#[test]
fn unreachable_upstream_serves_stale_or_exits_3() {
    let mut sb = Sandbox::new();
    let body = json_body(6, 500);
    sb.hub.put_json("/repos/octo/hello/readme", body.clone());
    sb.fetch(None, "repos/octo/hello/readme", &[]).ok();
    let url = sb.hub.url();
    // Stop the stand-in: connections are refused from now on, on the same URL.
    sb.hub = fakehub::FakeHub::start();
    let dead = |sb: &Sandbox, endpoint: &str, extra: &[&str]| {
        let mut args = vec!["fetch", "-i", endpoint];
        args.extend_from_slice(extra);
        common::Run::from(
            sb.command(&args)
                .env("PEERCACHE_API_URL", &url)
                .output()
                .unwrap(),
        )
    };
    let stale = dead(&sb, "repos/octo/hello/readme", &["--ttl", "0"]).ok();
    assert_eq!(stale.source(), "stale");
    assert_eq!(stale.body(), body.as_slice());

    let nothing = dead(&sb, "repos/octo/missing", &[]);
    let line = nothing.fails_with(3);
    assert!(
        line.contains("could not be reached") && line.contains("nothing is cached"),
        "{line}"
    );
}

#[test]
fn a_spent_rate_limit_serves_stale_and_calls_nothing_before_the_reset() {
    let sb = Sandbox::new();
    let body = json_body(7, 800);
    sb.hub.put_json("/repos/octo/hello/readme", body.clone());
    sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();

    sb.hub
        .exhaust_quota(Some(&bearer(TOKEN_A)), Duration::from_secs(120));
    let stale = sb
        .fetch(Some(TOKEN_A), "repos/octo/hello/readme", &["--ttl", "0"])
        .ok();
    assert_eq!(stale.source(), "stale");
    assert_eq!(stale.body(), body.as_slice());
    let after_refusal = sb.hub.total();
    assert_eq!(sb.hub.stats().status_count(403), 1);

    // Until x-ratelimit-reset: no upstream call at all, stale entries still served.
    let again = sb
        .fetch(Some(TOKEN_A), "repos/octo/hello/readme", &["--ttl", "0"])
        .ok();
    assert_eq!(again.source(), "stale");
    let nothing = sb.run(Some(TOKEN_A), &["fetch", "repos/octo/uncached"]);
    let line = nothing.fails_with(3);
    assert!(line.contains("rate limit"), "{line}");
    assert_eq!(
        sb.hub.total(),
        after_refusal,
        "no request may reach GitHub before the reset"
    );

    // Another token (the next job) has its own quota.
    assert_eq!(
        sb.fetch(Some(TOKEN_B), "repos/octo/hello/readme", &["--ttl", "0"])
            .ok()
            .source(),
        "revalidated"
    );
}

#[test]
fn retry_after_is_honoured_then_calls_resume() {
    let sb = Sandbox::new();
    let body = json_body(8, 800);
    sb.hub.put_json("/repos/octo/hello/readme", body.clone());
    sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &[]).ok();

    sb.hub
        .fail_next(1, Failure::status(429).with_retry_after(2));
    assert_eq!(
        sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &["--ttl", "0"])
            .ok()
            .source(),
        "stale"
    );
    let count = sb.hub.total();
    assert_eq!(
        sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &["--ttl", "0"])
            .ok()
            .source(),
        "stale"
    );
    assert_eq!(
        sb.hub.total(),
        count,
        "no call before retry-after has passed"
    );

    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        sb.fetch(Some(TOKEN_A), "repos/octo/hello/readme", &["--ttl", "0"])
            .ok()
            .source(),
        "revalidated"
    );
    assert_eq!(sb.hub.total(), count + 1);
}

#[test]
fn a_flipped_or_truncated_body_is_never_served_and_is_fetched_again() {
    let sb = Sandbox::new();
    let body = json_body(9, 20_000);
    sb.hub.put_json("/repos/octo/hello/readme", body.clone());
    sb.fetch(None, "repos/octo/hello/readme", &[]).ok();

    let objects = object_files(&sb.cache_dir());
    assert_eq!(objects.len(), 1);
    let mut bytes = std::fs::read(&objects[0]).unwrap();
    bytes[10_000] ^= 0x20;
    std::fs::write(&objects[0], &bytes).unwrap();

    let run = sb.fetch(None, "repos/octo/hello/readme", &[]).ok();
    assert_eq!(
        run.source(),
        "upstream",
        "a corrupt body must be fetched again"
    );
    assert_eq!(run.body(), body.as_slice());
    assert!(run.stderr.contains("failed verification"), "{}", run.stderr);

    std::fs::write(&objects[0], &body[..body.len() / 2]).unwrap();
    let run = sb.fetch(None, "repos/octo/hello/readme", &[]).ok();
    assert_eq!(run.source(), "upstream");
    assert_eq!(run.body(), body.as_slice());
    assert_eq!(sb.hub.count("/repos/octo/hello/readme"), 3);

    let counters: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.cache_dir().join("counters.json")).unwrap())
            .unwrap();
    assert_eq!(counters["integrity_failures"], 2);
    assert_eq!(
        sb.fetch(None, "repos/octo/hello/readme", &[]).ok().source(),
        "local"
    );
}

#[test]
fn eight_processes_fetching_fifty_endpoints_at_once_share_one_cache_dir() {
    let sb = Sandbox::new();
    sb.hub.set_latency(Duration::from_millis(5));
    let bodies: Vec<Vec<u8>> = (0..50).map(|i| json_body(i, 200 + i * 97)).collect();
    for (i, body) in bodies.iter().enumerate() {
        sb.hub
            .put_json(&format!("/repos/octo/r{i}/readme"), body.clone());
    }
    std::thread::scope(|scope| {
        for worker in 0..8usize {
            let (sb, bodies) = (&sb, &bodies);
            scope.spawn(move || {
                for step in 0..50 {
                    // Half walk forward and half backward: every key is wanted by four
                    // processes at the same moment.
                    let i = if worker % 2 == 0 { step } else { 49 - step };
                    let run = sb
                        .run(
                            Some(TOKEN_A),
                            &["fetch", &format!("repos/octo/r{i}/readme")],
                        )
                        .ok();
                    assert_eq!(
                        run.stdout, bodies[i],
                        "worker {worker} got a wrong body for r{i}"
                    );
                }
            });
        }
    });
    assert_eq!(
        sb.hub.total(),
        50,
        "the fetch stripes let one process per key go upstream"
    );

    // The index is intact: every record parses and names a body that verifies.
    let entries: Vec<_> = snapshot(&sb.cache_dir().join("entries"));
    assert_eq!(
        entries.len(),
        50,
        "no temporary or duplicate files left: {:?}",
        entries.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    for (path, bytes) in entries {
        let record: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let digest = record["digest"].as_str().unwrap();
        let object = std::fs::read(
            sb.cache_dir()
                .join("objects")
                .join(&digest[..2])
                .join(&digest[2..]),
        )
        .unwrap();
        use sha2_check::digest_hex;
        assert_eq!(digest_hex(&object), digest);
    }
}

/// SHA-256 through the system's `sha256sum`, so the test does not trust the code under test.
mod sha2_check {
    pub fn digest_hex(bytes: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sha256sum");
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}

#[test]
fn bad_input_exits_2_with_one_line_and_loses_nothing() {
    let sb = Sandbox::new();
    sb.hub
        .put_json("/repos/octo/hello/readme", json_body(10, 300));
    sb.fetch(None, "repos/octo/hello/readme", &[]).ok();
    let before = snapshot(&sb.cache_dir());

    // (arguments, extra variables, what the one-line message must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["fetch", "repos/octo/bad endpoint"], vec![], "endpoint"),
        (
            vec!["fetch", "https://evil.example/repos/x"],
            vec![],
            "API host",
        ),
        (
            vec!["fetch", "repos/{owner}/{repo}/pulls"],
            vec![],
            "GITHUB_REPOSITORY",
        ),
        (
            vec!["fetch", "--no-such-flag", "repos/octo/hello/readme"],
            vec![],
            "--no-such-flag",
        ),
        (
            vec!["fetch", "--ttl", "abc", "repos/octo/hello/readme"],
            vec![],
            "--ttl",
        ),
        (
            vec!["fetch", "-H", "no colon", "repos/octo/hello/readme"],
            vec![],
            "-H",
        ),
        (
            vec!["fetch", "repos/octo/hello/readme"],
            vec![("PEERCACHE_TTL", "-5".into())],
            "PEERCACHE_TTL",
        ),
        (
            vec!["fetch", "repos/octo/hello/readme"],
            vec![("PEERCACHE_API_URL", "not a url".into())],
            "PEERCACHE_API_URL",
        ),
        (
            vec!["fetch", "repos/octo/hello/readme"],
            vec![("PEERCACHE_MAX_SIZE", "huge".into())],
            "PEERCACHE_MAX_SIZE",
        ),
    ];
    for (args, vars, names) in cases {
        let mut cmd = sb.command(&args);
        if args.iter().any(|a| a.contains("{owner}")) {
            cmd.env_remove("GITHUB_REPOSITORY");
        }
        for (k, v) in &vars {
            cmd.env(k, v);
        }
        let run = common::Run::from(cmd.output().unwrap());
        let line = run.fails_with(2);
        assert!(line.contains(names), "{args:?} {vars:?}: {line}");
        assert!(run.stdout.is_empty());
    }

    // A cache dir that cannot be created (its parent is a file; root ignores permission bits).
    let file = sb.root.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let run = common::Run::from(
        sb.command(&["fetch", "repos/octo/hello/readme"])
            .env("PEERCACHE_CACHE_DIR", file.join("cache"))
            .output()
            .unwrap(),
    );
    let line = run.fails_with(2);
    assert!(
        line.contains("PEERCACHE_CACHE_DIR") && line.contains("not usable"),
        "{line}"
    );

    // A malformed settings file.
    std::fs::create_dir_all(sb.home()).unwrap();
    std::fs::write(sb.home().join("peercache.yml"), "ttl: [1, 2\nport: {").unwrap();
    let run = sb.run(None, &["fetch", "repos/octo/hello/readme"]);
    let line = run.fails_with(2);
    assert!(
        line.contains("peercache.yml") && line.contains("fix or remove"),
        "{line}"
    );
    std::fs::remove_file(sb.home().join("peercache.yml")).unwrap();

    assert_eq!(
        snapshot(&sb.cache_dir()),
        before,
        "bad input must not change the cache"
    );
    assert_eq!(sb.hub.total(), 1);
}

#[test]
fn settings_file_and_legacy_aliases_are_honoured() {
    let sb = Sandbox::new();
    sb.hub
        .put_json("/repos/octo/hello/readme", json_body(11, 300));
    std::fs::create_dir_all(sb.home()).unwrap();
    let other_cache = sb.root.path().join("legacy-cache");
    std::fs::write(sb.home().join("peercache.yml"), "ttl: 0\n").unwrap();
    // CACHE_DIR (legacy) is used when PEERCACHE_CACHE_DIR is not set.
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = sb.command(&["fetch", "-i", "repos/octo/hello/readme"]);
        cmd.env_remove("PEERCACHE_CACHE_DIR")
            .env("CACHE_DIR", &other_cache);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        common::Run::from(cmd.output().unwrap()).ok()
    };
    assert_eq!(run(&[]).source(), "upstream");
    assert!(other_cache.join("entries").is_dir());
    // ttl: 0 from the file: revalidated every time.
    assert_eq!(run(&[]).source(), "revalidated");
    // The legacy variable beats the file, the new one beats the legacy one.
    assert_eq!(run(&[("CACHE_DEFAULT_TTL", "600")]).source(), "local");
    assert_eq!(
        run(&[("CACHE_DEFAULT_TTL", "600"), ("PEERCACHE_TTL", "0")]).source(),
        "revalidated"
    );
}

#[test]
fn endpoint_forms_and_headers() {
    let sb = Sandbox::new();
    sb.hub.put_json("/repos/octo/hello/pulls", b"[1]".to_vec());
    let run = common::Run::from(
        sb.command(&["fetch", "repos/{owner}/{repo}/pulls"])
            .env("GITHUB_REPOSITORY", "octo/hello")
            .output()
            .unwrap(),
    )
    .ok();
    assert_eq!(run.stdout, b"[1]");
    let full = format!("{}/repos/octo/hello/pulls", sb.hub.url());
    assert_eq!(sb.run(None, &["fetch", &full]).ok().stdout, b"[1]");
    assert_eq!(sb.hub.total(), 1, "the three forms name one resource");

    // Accept is part of the key: another media type is another entry.
    sb.run(
        None,
        &[
            "fetch",
            "-H",
            "Accept: application/vnd.github.raw+json",
            "/repos/octo/hello/pulls",
        ],
    )
    .ok();
    assert_eq!(sb.hub.total(), 2);
    assert_eq!(
        sb.hub.stats().requests[1].accept.as_deref(),
        Some("application/vnd.github.raw+json")
    );
}

#[test]
fn http_errors_exit_1_with_the_body_and_are_not_cached() {
    let sb = Sandbox::new();
    let run = sb.run(None, &["fetch", "repos/octo/none"]);
    let line = run.fails_with(1);
    assert!(line.contains("404"), "{line}");
    assert!(String::from_utf8_lossy(&run.stdout).contains("Not Found"));
    sb.run(None, &["fetch", "repos/octo/none"]);
    assert_eq!(sb.hub.total(), 2, "errors are not cached");
}

#[test]
fn paginate_follows_links_and_merges_one_array() {
    let sb = Sandbox::new();
    let items: Vec<serde_json::Value> = (0..250)
        .map(|i| serde_json::json!({"number": i, "title": format!("issue {i}")}))
        .collect();
    sb.hub.put_list("/repos/octo/hello/issues", items.clone());

    let run = sb
        .fetch(Some(TOKEN_A), "repos/octo/hello/issues", &["--paginate"])
        .ok();
    assert_eq!(run.source(), "upstream");
    let merged: Vec<serde_json::Value> = serde_json::from_slice(run.body()).unwrap();
    assert_eq!(merged, items);
    assert_eq!(sb.hub.total(), 3, "per_page=100: three pages");

    let again = sb
        .fetch(Some(TOKEN_A), "repos/octo/hello/issues", &["--paginate"])
        .ok();
    assert_eq!(again.source(), "local");
    assert_eq!(again.body(), run.body());
    assert_eq!(sb.hub.total(), 3);
}

#[test]
fn tokens_never_reach_the_cache_dir_or_stderr() {
    let sb = Sandbox::new();
    sb.hub
        .put_json("/repos/octo/hello/readme", json_body(12, 300));
    let run = sb
        .fetch(
            Some(TOKEN_A),
            "repos/octo/hello/readme",
            &["--log", "debug"],
        )
        .ok();
    assert!(!run.stderr.contains(TOKEN_A));
    sb.hub.fail_always(Failure::status(502));
    let run = sb
        .fetch(
            Some(TOKEN_A),
            "repos/octo/hello/readme",
            &["--ttl", "0", "--log", "trace"],
        )
        .ok();
    assert!(!run.stderr.contains(TOKEN_A), "token in the logs");
    for (path, bytes) in snapshot(sb.root.path()) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(TOKEN_A),
            "token written to {path:?}"
        );
    }
}
