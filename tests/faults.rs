//! Faults survived: a full disk and a read-only cache dir. Each must give no wrong body, no
//! failed fetch that had an answer available, and a clear log line.
//!
//! Both need root (they mount a small tmpfs, or remount a bind mount read-only); CI runs as root
//! and must run them; elsewhere they skip with a message saying why.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Sandbox, json_body};

/// A mount made by the test, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str], target: &Path) -> Mount {
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?} {}: {}",
        target.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Mount(target.to_path_buf())
}

/// Whether the test can mount; `Err` says why not (and CI must be able to).
fn can_mount(test: &str) -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        "mounting needs root"
    } else if Command::new("mount").arg("--version").output().is_err() {
        "the `mount` command is missing"
    } else {
        return true;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run {test}, but {why}"
    );
    eprintln!("skipping {test}: {why} (CI runs it as root)");
    false
}

#[test]
fn a_full_disk_still_answers_and_never_serves_half_a_body() {
    if !can_mount("the full-disk test") {
        return;
    }
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.cache_dir()).unwrap();
    // Room for a few 20 KB bodies, not for twenty.
    let _tmpfs = mount(
        &["-t", "tmpfs", "-o", "size=96k,mode=0700", "tmpfs"],
        &sb.cache_dir(),
    );
    let bodies: Vec<Vec<u8>> = (0..20).map(|i| json_body(i, 20 * 1024)).collect();
    for (i, body) in bodies.iter().enumerate() {
        sb.hub
            .put_json(&format!("/repos/octo/hello/contents/f{i}"), body.clone());
    }
    let mut warned = false;
    for round in 0..2 {
        for (i, body) in bodies.iter().enumerate() {
            let run = sb.fetch(Some("tok"), &format!("repos/octo/hello/contents/f{i}"), &[]);
            assert_eq!(run.code, 0, "round {round}, f{i}: {}", run.stderr);
            assert_eq!(
                run.body(),
                body.as_slice(),
                "round {round}, f{i}: a wrong body"
            );
            warned |= run.stderr.contains("could not store") && run.stderr.contains("space");
            if round == 1 {
                let source = run.source();
                assert!(source == "local" || source == "upstream", "f{i}: {source}");
            }
        }
    }
    assert!(warned, "no line said the disk is full");
    // What is on the disk is whole: every record points at a body that hashes to its digest.
    let mut records = 0;
    for (_, entry) in common::records(&sb.cache_dir()) {
        let digest = entry["digest"].as_str().unwrap();
        let object = sb
            .cache_dir()
            .join("objects")
            .join(&digest[..2])
            .join(&digest[2..]);
        let body = std::fs::read(&object).unwrap();
        use sha2::Digest;
        assert_eq!(hex::encode(sha2::Sha256::digest(&body)), digest);
        records += 1;
    }
    assert!(
        records > 0 && records < bodies.len(),
        "{records} entries fit"
    );
}

#[test]
fn a_read_only_cache_dir_still_answers_from_what_it_holds() {
    if !can_mount("the read-only cache test") {
        return;
    }
    let sb = Sandbox::new();
    let cached = json_body(1, 2048);
    let uncached = json_body(2, 2048);
    sb.hub
        .put_json("/repos/octo/hello/contents/cached", cached.clone());
    sb.hub
        .put_json("/repos/octo/hello/contents/uncached", uncached.clone());
    let first = sb
        .fetch(Some("tok"), "repos/octo/hello/contents/cached", &[])
        .ok();
    assert_eq!(first.source(), "upstream");

    let cache = sb.cache_dir();
    let _bind = mount(&["--bind", cache.to_str().unwrap()], &cache);
    let _ro = mount(&["-o", "remount,bind,ro"], &cache);
    assert!(
        std::fs::write(cache.join("probe"), b"x").is_err(),
        "the cache dir is still writable"
    );

    // What it holds is served; what it does not is fetched and passed on, not stored.
    let hit = sb
        .fetch(Some("tok"), "repos/octo/hello/contents/cached", &[])
        .ok();
    assert_eq!(hit.source(), "local");
    assert_eq!(hit.body(), cached.as_slice());
    assert!(
        hit.stderr.contains("cannot be written") && hit.stderr.contains("PEERCACHE_CACHE_DIR"),
        "no line says why nothing is stored: {}",
        hit.stderr
    );
    for _ in 0..2 {
        let miss = sb
            .fetch(Some("tok"), "repos/octo/hello/contents/uncached", &[])
            .ok();
        assert_eq!(miss.source(), "upstream");
        assert_eq!(miss.body(), uncached.as_slice());
    }
    // After the TTL, a 304 cannot be recorded either: the answer is still the body.
    let stale = sb
        .fetch(
            Some("tok"),
            "repos/octo/hello/contents/cached",
            &["--ttl", "0"],
        )
        .ok();
    assert_eq!(stale.source(), "revalidated");
    assert_eq!(stale.body(), cached.as_slice());

    // A daemon on it starts and answers the same way.
    let daemon = sb.start_daemon(&[("PEERCACHE_TOKEN", "tok")], &[]);
    let r = daemon.get("/gh/repos/octo/hello/contents/cached", &[]);
    assert_eq!((r.status, r.source().as_str()), (200, "local"));
    assert_eq!(r.body, cached);
    let r = daemon.get("/gh/repos/octo/hello/contents/uncached", &[]);
    assert_eq!((r.status, r.body == uncached), (200, true));
}

/// libfaketime, which shifts a dynamically linked process's wall clock (Debian `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[test]
fn a_peer_whose_clock_is_ten_minutes_off_never_makes_a_stale_entry_fresh() {
    use common::swarm::{NodeSpec, serial, start_node, wait_for};
    use std::time::Duration;
    if !Path::new(LIBFAKETIME).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the clock-skew test, but {LIBFAKETIME} is missing (Debian package faketime)"
        );
        eprintln!(
            "skipping the clock-skew test: {LIBFAKETIME} is missing (apt-get install faketime)"
        );
        return;
    }
    let _serial = serial();
    let hub = fakehub::FakeHub::start();
    fakehub::generate_resources(&hub, 4, 2048);
    let root = tempfile::tempdir().unwrap();
    let skewed = |offset: &str| {
        vec![
            ("LD_PRELOAD", LIBFAKETIME.to_string()),
            ("FAKETIME", offset.to_string()),
            // Timers keep the real monotonic clock; only the wall clock is off.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
        ]
    };
    let honest = start_node(root.path(), "honest", &hub, NodeSpec::default());
    let ahead = start_node(
        root.path(),
        "ahead",
        &hub,
        NodeSpec {
            bootstrap: vec![honest.bootstrap_addr()],
            env: skewed("+600s"),
            ..NodeSpec::default()
        },
    );
    let behind = start_node(
        root.path(),
        "behind",
        &hub,
        NodeSpec {
            bootstrap: vec![honest.bootstrap_addr()],
            env: skewed("-600s"),
            ..NodeSpec::default()
        },
    );
    for node in [&honest, &ahead, &behind] {
        wait_for(
            &format!("{} to verify its peers", node.name),
            Duration::from_secs(60),
            || node.peer_count() == 2,
        );
    }
    let ttl = |node: &common::swarm::SwarmNode, path: &str, secs: u64| {
        let auth = format!("Bearer token-of-{}", node.name);
        common::http_get(
            &format!("{}/gh/{}", node.api, &path[1..]),
            &[
                ("authorization", &auth),
                ("x-peercache-ttl", &secs.to_string()),
            ],
        )
    };
    for (i, (first, second)) in [
        (&ahead, &honest),
        (&behind, &honest),
        (&honest, &ahead),
        (&honest, &behind),
    ]
    .into_iter()
    .enumerate()
    {
        let path = fakehub::generated_path(i);
        let body = fakehub::repo_body(i, 2048);
        let a = ttl(first, &path, 2);
        assert_eq!(
            (a.status, a.body == body),
            (200, true),
            "{}: {}",
            first.name,
            a.text()
        );
        let b = ttl(second, &path, 2);
        assert_eq!(
            (b.status, b.body == body),
            (200, true),
            "{}: {}",
            second.name,
            b.text()
        );
        // Past the TTL by the asker's clock, the entry is not served as fresh, wherever it came
        // from and whatever its fetcher's clock said.
        std::thread::sleep(Duration::from_millis(2500));
        let later = ttl(second, &path, 2);
        assert_eq!((later.status, later.body == body), (200, true));
        let source = later.source();
        assert!(
            source == "revalidated" || source == "upstream",
            "{} served a stale entry as {source} ({} fetched it)",
            second.name,
            first.name
        );
    }
    for node in [&honest, &ahead, &behind] {
        assert!(node.alive(), "{} died", node.name);
    }
    // A clear line says why a peer's entry was not taken.
    let logs = honest.log() + &ahead.log() + &behind.log();
    assert!(
        logs.contains("in the future") || logs.contains("clock"),
        "no line names the clock:\n{logs}"
    );
}
