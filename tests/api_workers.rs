//! The local API's worker threads (issue #16): with a worker for each CPU the daemon may run on,
//! each is pinned to its CPU, a connection is served by the worker on the CPU its client sends
//! from, and it follows its client to another CPU. These tests read the real daemon's threads in
//! `/proc` and pin their own client thread to move it from CPU to CPU.

mod common;

use std::time::Duration;

use common::keepalive::Connection;
use common::{Daemon, Sandbox};

const PATH: &str = "/repos/octo/hello/contents/a.json";

/// The CPUs the calling thread may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is an empty set; sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    assert!(ok, "sched_getaffinity: {}", std::io::Error::last_os_error());
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set, `cpu` is below its size.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread (this test's) to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: as above; CPU_SET writes within the set, sched_setaffinity reads it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let ok = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(
        ok,
        0,
        "pin to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Each `peercache-api-N` thread of the daemon and its `Cpus_allowed_list`.
fn api_threads(daemon: &Daemon) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", daemon.pid)).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let name = name.trim();
        if !name.starts_with("peercache-api-") {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list in /proc/…/status")
            .trim()
            .to_string();
        threads.push((name.to_string(), cpus));
    }
    threads.sort();
    threads
}

/// Whether the daemon pins its workers here: one worker a CPU (at most four), as many CPUs as
/// the process may use.
fn pins_here() -> bool {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    allowed_cpus().len() == workers
}

#[test]
fn api_workers_are_pinned_one_to_each_cpu_when_there_is_one_for_each() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon(&[], &[]);
    let threads = api_threads(&daemon);
    let allowed = allowed_cpus();
    assert!(!threads.is_empty(), "no peercache-api-N threads");
    if pins_here() {
        let pinned: Vec<String> = threads.iter().map(|(_, cpus)| cpus.clone()).collect();
        let expected: Vec<String> = allowed.iter().map(|cpu| cpu.to_string()).collect();
        assert_eq!(
            pinned, expected,
            "each worker on one CPU of its own: {threads:?}"
        );
    } else {
        // More CPUs than workers (or a CPU quota below them): none is pinned.
        let all = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid)).unwrap();
        let all = all
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        for (name, cpus) in &threads {
            assert_eq!(cpus, &all, "{name} is not pinned");
        }
    }
}

#[test]
fn a_connection_follows_its_client_to_another_cpu_and_its_answers_stay_whole() {
    let allowed = allowed_cpus();
    if !pins_here() || allowed.len() < 2 {
        // The workers are not pinned here (see the test above), so no worker is any CPU's.
        eprintln!("skipped: the workers are not pinned on this machine ({allowed:?})");
        return;
    }
    let sb = Sandbox::new();
    let body = serde_json::json!({ "name": "a.json", "content": "x".repeat(20_000) })
        .to_string()
        .into_bytes();
    sb.hub.put_json(PATH, body.clone());
    let daemon = sb.start_daemon(&[("PEERCACHE_LOG", "info,peercache=debug")], &[]);
    let auth = "Bearer token-of-job-a".to_string();
    let headers = [("Authorization", auth.as_str())];
    let (first_cpu, second_cpu) = (allowed[0], allowed[1]);

    let log = || std::fs::read_to_string(sb.home().join("serve.log")).unwrap_or_default();
    let moved_to = |cpu: usize| format!("moved to the worker on CPU {cpu}");

    // Connected and first heard from CPU A: served there, and it stays while its client does.
    pin_to(first_cpu);
    let mut conn = Connection::open(&daemon);
    for _ in 0..100 {
        let answer = conn.get(&daemon, PATH, &headers);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, body);
    }
    assert!(
        !log().contains("moved to the worker on CPU"),
        "a connection moved while its client stayed on CPU {first_cpu}:\n{}",
        log()
    );

    // The client moves to CPU B: within 64 answers, its connection follows it.
    pin_to(second_cpu);
    for _ in 0..100 {
        let answer = conn.get(&daemon, PATH, &headers);
        assert_eq!(answer.status, 200, "an answer after the move");
        assert_eq!(answer.body, body, "an answer after the move");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !log().contains(&moved_to(second_cpu)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        log().contains(&moved_to(second_cpu)),
        "the connection did not follow its client to CPU {second_cpu}:\n{}",
        log()
    );

    // Every request was answered, once each, and the stand-in was asked once.
    let status = daemon.json("/api/status");
    assert_eq!(status["requests"]["total"], 200, "{status}");
    assert_eq!(sb.hub.total(), 1);
    pin_to_all(&allowed);
}

/// Lets the calling thread run anywhere again.
fn pin_to_all(cpus: &[usize]) {
    // SAFETY: as in `pin_to`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}
