//! Sharing without leaking: a token is never handed an answer that GitHub would have answered it
//! differently. Real daemons and `peercache fetch` processes in front of the stand-in API, which
//! answers per token (identity, repository-scoped tokens, private repositories, permissions,
//! Range, gzip) as GitHub does.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::swarm::{NodeSpec, SwarmNode, serial, start_node, wait_for};
use common::{PEERCACHE, Run};
use fakehub::{FakeHub, generate_resources, generated_path, login_for};

/// Two members of one swarm (one scope) that know each other, with these extra variables.
fn pair(
    root: &Path,
    hub: &FakeHub,
    names: [&str; 2],
    env: [Vec<(&'static str, String)>; 2],
) -> (SwarmNode, SwarmNode) {
    let [env_a, env_b] = env;
    let a = start_node(
        root,
        names[0],
        hub,
        NodeSpec {
            env: env_a,
            ..NodeSpec::default()
        },
    );
    let b = start_node(
        root,
        names[1],
        hub,
        NodeSpec {
            bootstrap: vec![a.bootstrap_addr()],
            env: env_b,
            ..NodeSpec::default()
        },
    );
    for node in [&a, &b] {
        wait_for(
            &format!("{} to verify its peer", node.name),
            Duration::from_secs(60),
            || node.peer_count() == 1,
        );
    }
    (a, b)
}

/// `peercache fetch -i ARGS` on a node's runner (its home, cache and token).
fn fetch_on(node: &SwarmNode, hub: &FakeHub, args: &[&str]) -> Run {
    let output = Command::new(PEERCACHE)
        .arg("fetch")
        .arg("-i")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", node.home.parent().unwrap())
        .env("PEERCACHE_HOME", &node.home)
        .env("PEERCACHE_CACHE_DIR", &node.cache)
        .env("PEERCACHE_API_URL", hub.url())
        .env("PEERCACHE_TOKEN", format!("token-of-{}", node.name))
        .env("GITHUB_REPOSITORY", fakehub::GENERATED_REPO)
        .output()
        .expect("run peercache fetch");
    Run::from(output)
}

fn env(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The quota a token spent at the stand-in.
fn spent(hub: &FakeHub, node: &SwarmNode) -> u64 {
    hub.stats()
        .spent(Some(&format!("Bearer token-of-{}", node.name)))
}

#[test]
fn identity_endpoints_answer_each_token_its_own() {
    let _serial = serial();
    let hub = FakeHub::start();
    let root = tempfile::tempdir().unwrap();
    let (a, b) = pair(root.path(), &hub, ["alice", "bob"], [vec![], vec![]]);

    // On one node: two tokens, twice each — never the other's login.
    for _ in 0..2 {
        for token in ["token-one", "token-two"] {
            let auth = format!("Bearer {token}");
            let r = common::http_get(&format!("{}/gh/user", a.api), &[("authorization", &auth)]);
            assert_eq!(r.status, 200, "{}", r.text());
            let login = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["login"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(login, login_for(token), "{token} got another's identity");
        }
    }
    // A token's second ask is its own cached copy.
    let again = common::http_get(
        &format!("{}/gh/user", a.api),
        &[("authorization", "Bearer token-one")],
    );
    assert_eq!(again.source(), "local");
    // Without a token the daemon asks with its own (the job's): that token's identity.
    let anonymous = common::http_get(&format!("{}/gh/user", a.api), &[]);
    let v: serde_json::Value = serde_json::from_slice(&anonymous.body).unwrap();
    assert_eq!(v["login"], login_for("token-of-alice"));
    // And `fetch` with no token at all gets GitHub's 401, not someone's identity.
    let none = Command::new(PEERCACHE)
        .args(["fetch", "--no-daemon", "user"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", root.path())
        .env("PEERCACHE_HOME", &a.home)
        .env("PEERCACHE_CACHE_DIR", &a.cache)
        .env("PEERCACHE_API_URL", hub.url())
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1), "GitHub's 401");
    assert!(!String::from_utf8_lossy(&none.stdout).contains("login"));

    // Across the swarm: each node's own token, each its own login, nothing from a peer.
    for node in [&a, &b] {
        let r = node.get("gh/user");
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["login"], login_for(&format!("token-of-{}", node.name)));
        assert_ne!(r.source(), "peer");
    }
    assert_eq!(
        hub.count("/user"),
        5,
        "one call per token: token-one, token-two, alice's, bob's, and the tokenless 401"
    );

    // `fetch` without the daemon: the same rule.
    let via_fetch = fetch_on(&b, &hub, &["--no-daemon", "user"]).ok();
    let v: serde_json::Value = serde_json::from_slice(via_fetch.body()).unwrap();
    assert_eq!(v["login"], login_for("token-of-bob"));

    // /rate_limit is always asked upstream: it is free and it is the caller's own figure.
    for _ in 0..3 {
        for node in [&a, &b] {
            let r = node.get("gh/rate_limit");
            assert_eq!(r.status, 200);
            assert_eq!(r.source(), "upstream");
        }
    }
    assert_eq!(hub.count("/rate_limit"), 6);
}

#[test]
fn jobs_of_one_repository_with_different_tokens_still_share() {
    let _serial = serial();
    let hub = FakeHub::start();
    generate_resources(&hub, 3, 4096);
    let root = tempfile::tempdir().unwrap();
    let (a, b) = pair(root.path(), &hub, ["job-one", "job-two"], [vec![], vec![]]);
    for i in 0..3 {
        let path = format!("gh{}", generated_path(i));
        let first = a.get(&path);
        assert_eq!(first.source(), "upstream");
        let second = b.get(&path);
        assert_eq!(second.status, 200);
        assert_eq!(second.source(), "peer");
        assert_eq!(second.body, first.body);
        assert_eq!(
            hub.count(&generated_path(i)),
            1,
            "one upstream call for both jobs"
        );
    }
    // Jobs of the swarm's own repository need no access proof: nothing else was asked.
    assert_eq!(hub.count("/repos/octo/swarm"), 0);
    assert_eq!(spent(&hub, &b), 0);
}

/// A private repository `octo/secret` with an entry, fetched by a member whose token sees it.
fn private_repository(hub: &FakeHub) -> Vec<u8> {
    let body = br#"{"name":"SECRET.md","content":"dG9wIHNlY3JldA=="}"#.to_vec();
    hub.put_json(
        "/repos/octo/secret",
        br#"{"full_name":"octo/secret"}"#.to_vec(),
    );
    hub.put_json("/repos/octo/secret/contents/SECRET.md", body.clone());
    hub.set_private("octo/secret");
    body
}

/// Asserts that `r` is GitHub's 404 and carries no byte of `secret`.
fn assert_hidden(r: &common::HttpResponse, secret: &[u8]) {
    assert_eq!(r.status, 404, "{}", r.text());
    let text = r.text();
    assert!(text.contains("Not Found"), "{text}");
    assert!(!text.contains("SECRET") && !text.contains("dG9w"), "{text}");
    assert!(!r.body.windows(secret.len()).any(|w| w == secret));
}

#[test]
fn a_token_of_another_repository_gets_githubs_404_with_scope_repository() {
    let _serial = serial();
    let hub = FakeHub::start();
    let secret = private_repository(&hub);
    // Both jobs of octo/swarm; bob's job token is scoped to it, alice's token sees octo/secret.
    hub.scope_token("token-of-bob", &["octo/swarm"]);
    let root = tempfile::tempdir().unwrap();
    let (a, b) = pair(root.path(), &hub, ["alice", "bob"], [vec![], vec![]]);
    let path = "gh/repos/octo/secret/contents/SECRET.md";
    let first = a.get(path);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, secret);

    // bob's node is in the swarm that holds it, and still gets what GitHub gives bob.
    for _ in 0..2 {
        assert_hidden(&b.get(path), &secret);
    }
    // `fetch` on bob's runner, through the daemon and without it: the same.
    for extra in [&[][..], &["--no-daemon"][..]] {
        let args: Vec<&str> = extra
            .iter()
            .copied()
            .chain(["repos/octo/secret/contents/SECRET.md"])
            .collect();
        let run = fetch_on(&b, &hub, &args);
        assert_eq!(run.code, 1, "an HTTP error status");
        assert!(
            !run.stdout
                .windows(secret.len())
                .any(|w| w == secret.as_slice())
        );
    }
    // bob never reached the entry itself: one proof, answered 404.
    assert_eq!(hub.count("/repos/octo/secret/contents/SECRET.md"), 1);

    // A job of another repository is in another swarm (scope repository): it cannot even read
    // the key ids, and gets GitHub's own answer.
    hub.scope_token("token-of-carol", &["octo/other"]);
    let c = start_node(
        root.path(),
        "carol",
        &hub,
        NodeSpec {
            bootstrap: vec![a.bootstrap_addr()],
            env: env(&[("GITHUB_REPOSITORY", "octo/other")]),
            ..NodeSpec::default()
        },
    );
    assert_hidden(&c.get(path), &secret);
    assert!(!c.log().contains("heard announcement"), "{}", c.log());
    // It never became a member: its keys (derived from the secret and its scope) differ.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.peer_count(),
        0,
        "a node of another repository's scope was verified"
    );
    assert_eq!(a.peer_count(), 1, "alice's only member is bob");
}

#[test]
fn scope_owner_proves_access_per_token_and_repository() {
    let _serial = serial();
    let hub = FakeHub::start();
    let secret = private_repository(&hub);
    hub.scope_token("token-of-bob", &["octo/b"]);
    hub.scope_token("token-of-carol", &["octo/c", "octo/secret"]);
    let root = tempfile::tempdir().unwrap();
    let owner = |repo: &str| env(&[("PEERCACHE_SCOPE", "owner"), ("GITHUB_REPOSITORY", repo)]);
    let (a, b) = pair(
        root.path(),
        &hub,
        ["alice", "bob"],
        [owner("octo/a"), owner("octo/b")],
    );
    let c = start_node(
        root.path(),
        "carol",
        &hub,
        NodeSpec {
            bootstrap: vec![a.bootstrap_addr()],
            env: owner("octo/c"),
            ..NodeSpec::default()
        },
    );
    wait_for(
        "carol to verify both peers",
        Duration::from_secs(60),
        || c.peer_count() == 2,
    );
    let path = "gh/repos/octo/secret/contents/SECRET.md";
    assert_eq!(a.get(path).body, secret);

    // bob's token may not see octo/secret: GitHub's 404, no byte of it.
    assert_hidden(&b.get(path), &secret);

    // carol's token may: served from the swarm after one free 304 for the repository.
    let before = spent(&hub, &c);
    let served = c.get(path);
    assert_eq!(served.status, 200);
    assert_eq!(served.source(), "peer");
    assert_eq!(served.body, secret);
    let proofs: Vec<_> = hub
        .stats()
        .requests
        .iter()
        .filter(|r| r.path() == "/repos/octo/secret")
        .filter(|r| r.authorization.as_deref() == Some("Bearer token-of-carol"))
        .cloned()
        .collect();
    assert_eq!(proofs.len(), 1, "one proof for carol and octo/secret");
    assert_eq!(proofs[0].status, 304);
    assert_eq!(spent(&hub, &c), before, "the proof cost no quota");
    // The proof is remembered: the next ask is answered without GitHub.
    let again = c.get(path);
    assert_eq!(again.status, 200);
    assert_eq!(
        hub.count("/repos/octo/secret"),
        2,
        "bob's 404 and carol's 304"
    );
    assert_eq!(hub.count("/repos/octo/secret/contents/SECRET.md"), 1);
}

#[test]
fn repository_permissions_are_the_asking_tokens() {
    let _serial = serial();
    let hub = FakeHub::start();
    generate_resources(&hub, 1, 1024);
    hub.set_admin("token-of-admin", true);
    let root = tempfile::tempdir().unwrap();
    let (a, b) = pair(root.path(), &hub, ["admin", "reader"], [vec![], vec![]]);
    let path = "gh/repos/octo/swarm";
    let admin: serde_json::Value = serde_json::from_slice(&a.get(path).body).unwrap();
    let reader = b.get(path);
    assert_ne!(reader.source(), "peer");
    let reader: serde_json::Value = serde_json::from_slice(&reader.body).unwrap();
    assert_eq!(admin["permissions"]["admin"], true);
    assert_eq!(reader["permissions"]["admin"], false);
    // Each token's own copy is its own on the next ask too.
    let again: serde_json::Value = serde_json::from_slice(&b.get(path).body).unwrap();
    assert_eq!(again["permissions"]["admin"], false);
    assert_eq!(hub.count("/repos/octo/swarm"), 2);
}

#[test]
fn range_and_gzip_requests_leave_the_plain_entry_intact() {
    let _serial = serial();
    let hub = FakeHub::start();
    generate_resources(&hub, 1, 4096);
    let plain = fakehub::repo_body(0, 4096);
    let root = tempfile::tempdir().unwrap();
    let (a, b) = pair(root.path(), &hub, ["ranger", "reader"], [vec![], vec![]]);
    let endpoint = &generated_path(0)[1..];

    let range = fetch_on(&a, &hub, &["-H", "Range: bytes=0-9", endpoint]).ok();
    assert_eq!(range.body(), &plain[..10]);
    let gzip = fetch_on(&a, &hub, &["-H", "Accept-Encoding: gzip", endpoint]).ok();
    assert_eq!(gzip.header("content-encoding").as_deref(), Some("gzip"));
    assert_ne!(gzip.body(), plain.as_slice());

    // Neither was stored: the plain fetch goes upstream and gets the whole body, here and on
    // the peer.
    let here = fetch_on(&a, &hub, &[endpoint]).ok();
    assert_eq!(here.source(), "upstream");
    assert_eq!(here.body(), plain.as_slice());
    let again = fetch_on(&a, &hub, &[endpoint]).ok();
    assert_eq!(again.source(), "local");
    assert_eq!(again.body(), plain.as_slice());
    let peer = b.get(&format!("gh/{endpoint}"));
    assert_eq!(peer.source(), "peer");
    assert_eq!(peer.body, plain);
    assert_eq!(hub.count(&generated_path(0)), 3, "range, gzip, one plain");
}

/// `POST /repos/octo/swarm/issues` at the stand-in, as a writer would.
fn create_issue(hub: &FakeHub, title: &str) {
    use std::io::{Read, Write};
    let body = serde_json::json!({ "title": title }).to_string();
    let mut stream = std::net::TcpStream::connect(hub.addr()).unwrap();
    write!(
        stream,
        "POST /repos/octo/swarm/issues HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer writer\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        hub.addr(),
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

#[test]
fn repeated_query_keys_keep_their_meaning() {
    let _serial = serial();
    let hub = FakeHub::start();
    hub.add_repo(fakehub::GENERATED_REPO);
    let root = tempfile::tempdir().unwrap();
    let node = start_node(root.path(), "solo", &hub, NodeSpec::default());
    // Three issues; the first closed.
    for title in ["first", "second", "third"] {
        create_issue(&hub, title);
    }
    let created = hub.issues(fakehub::GENERATED_REPO);
    assert!(!created.is_empty(), "the stand-in created issues");
    let number = created[0]["number"].as_u64().unwrap();
    assert!(hub.set_issue_open(fakehub::GENERATED_REPO, number, false));

    let states = |path: &str| -> (String, Vec<String>) {
        let r = node.get(path);
        assert_eq!(r.status, 200, "{}", r.text());
        let items: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
        (
            r.source(),
            items
                .iter()
                .map(|i| i["state"].as_str().unwrap().to_string())
                .collect(),
        )
    };
    // GitHub takes the last value of a repeated name: each order gets its own answer.
    let (_, open_last) = states("gh/repos/octo/swarm/issues?state=closed&state=open");
    let (source, closed_last) = states("gh/repos/octo/swarm/issues?state=open&state=closed");
    assert_eq!(source, "upstream", "not the other order's entry");
    assert!(open_last.iter().all(|s| s == "open") && !open_last.is_empty());
    assert!(closed_last.iter().all(|s| s == "closed") && !closed_last.is_empty());
    // Distinct names in another order are the same question.
    let (first, _) = states("gh/repos/octo/swarm/issues?state=all&direction=asc");
    let (second, _) = states("gh/repos/octo/swarm/issues?direction=asc&state=all");
    assert_eq!((first.as_str(), second.as_str()), ("upstream", "local"));
}
