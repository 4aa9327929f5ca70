//! Real clients, unchanged, pointed at the daemon's `/gh` base URL: octokit (`@octokit/rest`
//! from npm), PyGithub and ghapi (from PyPI), installed into target/clients by
//! scripts/ensure-tools.sh. Each runs a scripted job (tests/clients/) and the upstream calls
//! of each scenario are counted.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Sandbox;

const TOKEN: &str = "token-of-a-client-job";

/// Where ensure-tools.sh installed the clients.
fn clients_dir() -> PathBuf {
    let dir = std::env::var_os("PEERCACHE_CLIENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/clients"));
    assert!(
        dir.join("node_modules/@octokit/rest").is_dir()
            && dir.join("venv/bin/python").is_file()
            && std::fs::read_to_string(dir.join("pins")).is_ok_and(|p| p.contains("ghapi")),
        "the clients are not installed in {}: run scripts/ensure-tools.sh",
        dir.display()
    );
    dir
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// A repository with three issues, and its object with GitHub-style URLs.
fn seed(sb: &Sandbox) {
    sb.hub.add_repo("octo/hello");
    let api = sb.hub.url();
    sb.hub.put_json(
        "/repos/octo/hello",
        serde_json::json!({
            "id": 1, "name": "hello", "full_name": "octo/hello",
            "owner": {"login": "octo", "url": format!("{api}/users/octo")},
            "url": format!("{api}/repos/octo/hello"),
            "issues_url": format!("{api}/repos/octo/hello/issues{{/number}}"),
            "html_url": "https://github.com/octo/hello",
        })
        .to_string(),
    );
    let auth = format!("Bearer {TOKEN}");
    for title in ["one", "two", "three"] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .args(["-H", &format!("Authorization: {auth}")])
            .args(["--data", &format!(r#"{{"title":"{title}"}}"#)])
            .arg(format!("{}/repos/octo/hello/issues", sb.hub.url()))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "201");
    }
    sb.hub.reset_stats();
}

fn run_job(mut cmd: Command, base: &str) -> serde_json::Value {
    let out = cmd
        .env("BASE_URL", base)
        .env("TOKEN", TOKEN)
        .env("REPOSITORY", "octo/hello")
        .output()
        .expect("run the client");
    assert!(
        out.status.success(),
        "the client job failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON from the job ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Upstream calls by method and path, for the scenario's assertions.
fn calls(sb: &Sandbox) -> Vec<String> {
    sb.hub
        .stats()
        .requests
        .iter()
        .map(|r| format!("{} {} {}", r.method, r.path(), r.status))
        .collect()
}

/// The calls every job makes upstream: the repository, the two pages of issues, the write,
/// the new issue read back, and one revalidation of the repository (the write expired it: its
/// `open_issues_count` changes), which GitHub answers with a free 304. The client's own
/// conditional request and the cached read cost nothing more.
fn expected_calls() -> Vec<String> {
    [
        "GET /repos/octo/hello 200",
        "GET /repos/octo/hello/issues 200",
        "GET /repos/octo/hello/issues 200",
        "POST /repos/octo/hello/issues 201",
        "GET /repos/octo/hello/issues/4 200",
        "GET /repos/octo/hello 304",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn octokit_runs_a_whole_job_against_the_gh_base_url() {
    let clients = clients_dir();
    let sb = Sandbox::new();
    seed(&sb);
    let daemon = sb.start_daemon(&[], &[]);
    let base = format!("{}/gh", daemon.api);
    // ES modules resolve packages next to the script: run a copy beside node_modules.
    let copy = clients.join("octokit-job.mjs");
    std::fs::copy(script("octokit.mjs"), &copy).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(&copy);
    let out = run_job(cmd, &base);

    assert_eq!(out["repo_url"], format!("{base}/repos/octo/hello"));
    assert_eq!(
        out["issue_titles"],
        serde_json::json!(["three", "two", "one"])
    );
    assert_eq!(out["created_status"], 201);
    assert_eq!(out["read_back_title"], "from octokit");
    assert_eq!(out["conditional_status"], 304);
    assert_eq!(out["cached_source"], "local");
    let remaining: u64 = out["cached_remaining"].as_str().unwrap().parse().unwrap();
    assert!(remaining > 0 && remaining < 5000, "{remaining}");
    assert_eq!(calls(&sb), expected_calls());
}

#[test]
fn pygithub_runs_a_whole_job_against_the_gh_base_url() {
    let clients = clients_dir();
    let sb = Sandbox::new();
    seed(&sb);
    let daemon = sb.start_daemon(&[], &[]);
    let base = format!("{}/gh", daemon.api);
    let mut cmd = Command::new(clients.join("venv/bin/python"));
    cmd.arg(script("pygithub_job.py"));
    let out = run_job(cmd, &base);

    assert_eq!(out["repo_url"], format!("{base}/repos/octo/hello"));
    assert_eq!(
        out["issue_titles"],
        serde_json::json!(["three", "two", "one"])
    );
    assert_eq!(out["read_back_title"], "from PyGithub");
    assert_eq!(
        out["changed_since"], false,
        "the conditional request got a 304"
    );
    let limits = out["rate_limiting"].as_array().unwrap();
    let (remaining, limit) = (limits[0].as_i64().unwrap(), limits[1].as_i64().unwrap());
    assert_eq!(limit, 5000);
    assert!(remaining > 0 && remaining < 5000, "{limits:?}");
    assert_eq!(calls(&sb), expected_calls());
}

#[test]
fn ghapi_runs_a_job_against_the_gh_base_url() {
    let clients = clients_dir();
    let sb = Sandbox::new();
    seed(&sb);
    let daemon = sb.start_daemon(&[], &[]);
    let base = format!("{}/gh", daemon.api);
    let mut cmd = Command::new(clients.join("venv/bin/python"));
    cmd.arg(script("ghapi_job.py"));
    let out = run_job(cmd, &base);

    assert_eq!(out["repo_url"], format!("{base}/repos/octo/hello"));
    assert_eq!(
        out["issue_titles"],
        serde_json::json!(["three", "two", "one"])
    );
    assert_eq!(out["read_back_title"], "from ghapi");
    // The write expired the repository: revalidated (a free 304), with the caller's figures.
    assert_eq!(out["cached_source"], "revalidated");
    let remaining: u64 = out["cached_remaining"].as_str().unwrap().parse().unwrap();
    assert!(remaining > 0 && remaining < 5000, "{remaining}");
    // ghapi's `paged` asks for every page by number, the empty third one too.
    let expected: Vec<String> = [
        "GET /repos/octo/hello 200",
        "GET /repos/octo/hello/issues 200",
        "GET /repos/octo/hello/issues 200",
        "GET /repos/octo/hello/issues 200",
        "POST /repos/octo/hello/issues 201",
        "GET /repos/octo/hello/issues/4 200",
        "GET /repos/octo/hello 304",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(calls(&sb), expected);
}

#[test]
fn octokit_and_curl_share_one_upstream_call_for_one_resource() {
    let clients = clients_dir();
    let sb = Sandbox::new();
    seed(&sb);
    let daemon = sb.start_daemon(&[], &[]);
    let base = format!("{}/gh", daemon.api);
    let copy = clients.join("octokit-job.mjs");
    std::fs::copy(script("octokit.mjs"), &copy).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(&copy);
    run_job(cmd, &base);
    sb.hub.reset_stats();
    // curl asks with GitHub's recommended media type; octokit asked with v3+json.
    let out = Command::new("curl")
        .args(["-s", "-H", "Accept: application/vnd.github+json"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("{base}/repos/octo/hello"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        sb.hub.total(),
        0,
        "curl's request was served from octokit's entry"
    );
}
