//! The `/_fakehub/` control API and the `fakehub` binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{get, request};
use fakehub::{FakeHub, Stats};
use serde_json::json;

fn post_json(base: &str, target: &str, body: &serde_json::Value) -> common::Resp {
    let body = serde_json::to_vec(body).unwrap();
    request(
        base,
        "POST",
        target,
        &[("Content-Type", "application/json")],
        Some(&body),
    )
}

#[test]
fn resources_and_lists_can_be_uploaded() {
    let hub = FakeHub::start();
    let url = hub.url();
    let body = br#"{"uploaded": true}"#;
    let r = request(
        &url,
        "PUT",
        "/_fakehub/resource?path=/repos/x/y",
        &[],
        Some(body),
    );
    assert_eq!(r.status, 204);
    let r = get(&url, "/repos/x/y", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    assert!(r.header("last-modified").is_some());

    // Percent-encoded path and a custom content type.
    let r = request(
        &url,
        "PUT",
        "/_fakehub/resource?path=%2Frepos%2Fx%2Freadme&content_type=text%2Fplain",
        &[],
        Some(b"hi"),
    );
    assert_eq!(r.status, 204);
    let r = get(&url, "/repos/x/readme", &[]);
    assert_eq!(r.must("content-type"), "text/plain");

    let list = json!([{"n": 1}, {"n": 2}, {"n": 3}]);
    let r = request(
        &url,
        "PUT",
        "/_fakehub/list?path=/repos/x/y/pulls",
        &[],
        Some(list.to_string().as_bytes()),
    );
    assert_eq!(r.status, 204);
    let r = get(&url, "/repos/x/y/pulls?per_page=2", &[]);
    assert_eq!(r.json(), json!([{"n": 1}, {"n": 2}]));
    assert!(r.must("link").contains("rel=\"last\""));

    let r = request(&url, "PUT", "/_fakehub/list?path=/bad", &[], Some(b"{}"));
    assert_eq!(r.status, 400);
    let r = request(
        &url,
        "PUT",
        "/_fakehub/resource?path=/_fakehub/stats",
        &[],
        Some(b"{}"),
    );
    assert_eq!(r.status, 400);

    let r = request(
        &url,
        "DELETE",
        "/_fakehub/resource?path=/repos/x/y",
        &[],
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(get(&url, "/repos/x/y", &[]).status, 404);

    // Only the four API GETs were counted, none of the uploads.
    assert_eq!(hub.total(), 4);
}

#[test]
fn stats_and_reset_over_http() {
    let hub = FakeHub::start();
    hub.put_json("/r", "{}");
    let url = hub.url();
    get(&url, "/r", &[("Authorization", "token s")]);
    get(&url, "/missing", &[]);

    let r = get(&url, "/_fakehub/stats", &[]);
    assert_eq!(r.status, 200);
    let stats: Stats = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(stats, hub.stats());
    assert_eq!(stats.total, 2);
    assert_eq!(stats.by_status[&200], 1);
    assert_eq!(stats.by_status[&404], 1);
    assert_eq!(stats.quota_spent["token s"], 1);
    assert_eq!(stats.requests[0].authorization.as_deref(), Some("token s"));

    let r = get(&url, "/_fakehub/stats?records=false", &[]);
    let slim: Stats = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(slim.total, 2);
    assert!(slim.requests.is_empty());

    let r = request(&url, "POST", "/_fakehub/reset", &[], None);
    assert_eq!(r.status, 204);
    assert_eq!(hub.total(), 0);

    // Wrong method or unknown endpoint: errors, still uncounted.
    assert_eq!(get(&url, "/_fakehub/reset", &[]).status, 405);
    assert_eq!(get(&url, "/_fakehub/nope", &[]).status, 404);
    assert_eq!(hub.total(), 0);
}

#[test]
fn config_over_http() {
    let hub = FakeHub::start();
    hub.put_json("/r", "{}");
    let url = hub.url();

    let r = post_json(&url, "/_fakehub/config", &json!({"latency_ms": 120}));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["latency_ms"], 120);
    let t = Instant::now();
    get(&url, "/r", &[]);
    assert!(t.elapsed() >= Duration::from_millis(120));
    post_json(&url, "/_fakehub/config", &json!({"latency_ms": 0}));

    let r = post_json(
        &url,
        "/_fakehub/config",
        &json!({"fail_next": {"n": 3, "status": 502, "retry_after": null}}),
    );
    assert_eq!(r.json()["queued_failures"], 3);
    for _ in 0..3 {
        let r = get(&url, "/r", &[]);
        assert_eq!(r.status, 502);
        assert_eq!(r.header("retry-after"), None);
    }
    assert_eq!(get(&url, "/r", &[]).status, 200);

    post_json(
        &url,
        "/_fakehub/config",
        &json!({"fail_always": {"status": 429, "retry_after": 5, "body": "{\"message\":\"slow down\"}"}}),
    );
    let r = get(&url, "/r", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.must("retry-after"), "5");
    assert_eq!(r.json()["message"], "slow down");
    post_json(&url, "/_fakehub/config", &json!({"clear_failures": true}));
    assert_eq!(get(&url, "/r", &[]).status, 200);

    post_json(
        &url,
        "/_fakehub/config",
        &json!({"fail_always": {"status": 500, "path": "/other"}}),
    );
    assert_eq!(get(&url, "/r", &[]).status, 200);
    assert_eq!(get(&url, "/other", &[]).status, 500);
    post_json(&url, "/_fakehub/config", &json!({"clear_failures": true}));

    post_json(
        &url,
        "/_fakehub/config",
        &json!({"quota_limit": 2, "reset_quota": true}),
    );
    assert_eq!(get(&url, "/r", &[]).status, 200);
    assert_eq!(get(&url, "/r", &[]).status, 200);
    let r = get(&url, "/r", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.num("x-ratelimit-remaining"), 0);

    post_json(
        &url,
        "/_fakehub/config",
        &json!({"quota_limit": 100, "exhaust_quota": {"authorization": "token e", "reset_in_secs": 60}}),
    );
    assert_eq!(get(&url, "/r", &[("Authorization", "token e")]).status, 403);
    assert_eq!(get(&url, "/r", &[("Authorization", "token f")]).status, 200);

    // Typos are rejected instead of silently ignored.
    let r = post_json(&url, "/_fakehub/config", &json!({"latncy_ms": 5}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("latncy_ms"));
    let r = request(&url, "POST", "/_fakehub/config", &[], Some(b"not json"));
    assert_eq!(r.status, 400);
    let r = get(&url, "/_fakehub/config", &[]);
    assert_eq!(r.json()["quota_limit"], 100);
}

/// Runs the binary until it prints its URL.
struct Bin {
    child: std::process::Child,
    url: String,
}

impl Bin {
    fn start(args: &[&str]) -> Bin {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fakehub"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fakehub");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim_end()
            .strip_prefix("FAKEHUB_URL=")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Bin { child, url }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "fakehub did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bin {
    fn drop(&mut self) {
        // Only reached with the child still running when a test failed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
#[test]
fn binary_serves_generated_resources_and_stops_on_sigterm() {
    let bin = Bin::start(&[
        "--listen",
        "127.0.0.1:0",
        "--generate",
        "4",
        "--size",
        "1500",
        "--quota",
        "10",
    ]);
    assert!(bin.url.starts_with("http://127.0.0.1:"));
    let r = get(&bin.url, "/repos/octo/swarm/contents/r3", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, fakehub::repo_body(3, 1500));
    assert_eq!(r.num("x-ratelimit-limit"), 10);
    assert_eq!(
        get(&bin.url, "/repos/octo/swarm/contents/r4", &[]).status,
        404
    );
    let stats: Stats = serde_json::from_slice(&get(&bin.url, "/_fakehub/stats", &[]).body).unwrap();
    assert_eq!(stats.total, 2);

    bin.signal("TERM");
    assert!(bin.wait().success());
}

#[cfg(unix)]
#[test]
fn binary_stops_on_sigint_and_applies_latency() {
    let bin = Bin::start(&["--latency-ms", "100"]);
    let t = Instant::now();
    assert_eq!(get(&bin.url, "/x", &[]).status, 404);
    assert!(t.elapsed() >= Duration::from_millis(100));
    bin.signal("INT");
    assert!(bin.wait().success());
}

#[test]
fn binary_refuses_non_loopback_addresses() {
    let out = Command::new(env!("CARGO_BIN_EXE_fakehub"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
}
