//! `peercache init` end to end: real processes, temp dirs, a clean environment.
//!
//! Each test works in its own port blocks (padding workflow files shift a test's workflows to
//! later blocks), and tests that do not race on purpose have their own reservation dir, so the
//! tests of this file can run in parallel without taking each other's ports.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{PEERCACHE, Run, Sandbox};
use peercache::actions::{LineEnd, parse_runner_file};
use sha2::{Digest, Sha256};

const WORKFLOW: &str = "name: CI\non:\n  push:\n  pull_request:\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n";

/// One CI host: a repository checkout with workflow files, a reservation dir, and state dirs.
struct Host {
    root: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let host = Host {
            root: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(host.workflows()).unwrap();
        host
    }

    fn repo(&self) -> PathBuf {
        self.root.path().join("repo")
    }

    fn workflows(&self) -> PathBuf {
        self.repo().join(".github").join("workflows")
    }

    fn locks(&self) -> PathBuf {
        self.root.path().join("locks")
    }

    fn home(&self, name: &str) -> PathBuf {
        self.root.path().join("homes").join(name)
    }

    /// Writes a valid workflow file.
    fn workflow(&self, name: &str) {
        self.file(name, WORKFLOW);
    }

    fn file(&self, name: &str, text: &str) {
        std::fs::write(self.workflows().join(name), text).unwrap();
    }

    /// `n` valid workflows that sort before every other name, moving the rest `n` blocks up.
    fn pad(&self, n: usize) {
        for i in 0..n {
            self.workflow(&format!("000-pad-{i:03}.yml"));
        }
    }

    /// `peercache init --workflows-dir … ARGS` for `home`, as a job of workflow file `workflow`.
    fn init(&self, home: &Path, workflow: Option<&str>, args: &[&str]) -> Command {
        self.init_in(&self.workflows(), home, workflow, args)
    }

    /// The same with another `--workflows-dir`.
    fn init_in(&self, dir: &Path, home: &Path, workflow: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new(PEERCACHE);
        cmd.arg("init")
            .arg("--workflows-dir")
            .arg(dir)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root.path())
            .env("PEERCACHE_HOME", home)
            .env("PEERCACHE_PORT_LOCK_DIR", self.locks())
            .current_dir(self.root.path());
        if let Some(workflow) = workflow {
            cmd.env("GITHUB_WORKFLOW_REF", workflow_ref(workflow));
        }
        cmd
    }
}

fn workflow_ref(file: &str) -> String {
    format!("octo/hello/.github/workflows/{file}@refs/heads/main")
}

fn run(mut cmd: Command) -> Run {
    Run::from(cmd.output().expect("run peercache init"))
}

/// The `NAME=value` lines of a successful init, parsed the way the runner parses `$GITHUB_ENV`.
fn vars(run: &Run) -> BTreeMap<String, String> {
    assert_eq!(run.code, 0, "init failed: {}", run.stderr);
    let text = String::from_utf8(run.stdout.clone()).unwrap();
    let parsed = parse_runner_file(&text, LineEnd::Lf).unwrap();
    let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["PEERCACHE_HOME", "PEERCACHE_PORT", "PEERCACHE_PEER_ID"],
        "{text}"
    );
    parsed.into_iter().collect()
}

fn port_of(run: &Run) -> u16 {
    vars(run)["PEERCACHE_PORT"].parse().unwrap()
}

fn block_of(port: u16) -> u16 {
    assert!(port >= 9000, "{port} is below the blocks");
    (port - 9000) / 10
}

/// Whether nothing holds `port` for TCP or UDP on 0.0.0.0 right now.
fn free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
        && std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The block an unlisted workflow hashes to, after `listed` valid files.
fn hash_block(key: &str, listed: u16) -> u16 {
    let digest = Sha256::digest(key.as_bytes());
    let hash = u64::from_be_bytes(digest[..8].try_into().unwrap());
    listed + (hash % 100) as u16
}

/// Blocks the tests of this file use on purpose; hashed names are picked to avoid them.
const USED_BLOCKS: &[u16] = &[0, 1, 2, 10, 11, 20, 21, 22, 30, 31, 40];

/// A workflow name whose hash block (after `listed` files) no other test uses.
fn quiet_name(prefix: &str, listed: u16) -> (String, u16) {
    (0..)
        .map(|i| format!("{prefix} {i}"))
        .map(|name| {
            let block = hash_block(&name, listed);
            (name, block)
        })
        .find(|(_, block)| !USED_BLOCKS.contains(block) && *block >= listed + 3)
        .unwrap()
}

#[test]
fn three_workflows_get_three_blocks_stable_across_runs() {
    let host = Host::new();
    for name in ["amd64-ci.yml", "arm64-ci.yml", "multiarch-ci.yml"] {
        host.workflow(name);
    }
    let free_before: Vec<bool> = [9000, 9010, 9020].into_iter().map(free).collect();

    let mut ports = Vec::new();
    for (i, name) in ["amd64-ci.yml", "arm64-ci.yml", "multiarch-ci.yml"]
        .iter()
        .enumerate()
    {
        let home = host.home(name);
        let first = port_of(&run(host.init(&home, Some(name), &[])));
        assert_eq!(block_of(first), i as u16, "{name} got {first}");
        if free_before[i] {
            assert_eq!(first, 9000 + 10 * i as u16, "{name}");
        }
        // Again for the same home: the same port and the same identity.
        let again = run(host.init(&home, Some(name), &[]));
        assert_eq!(port_of(&again), first, "{name}: the port must be stable");
        let first_id = vars(&again)["PEERCACHE_PEER_ID"].clone();
        let third = run(host.init(&home, Some(name), &[]));
        assert_eq!(vars(&third)["PEERCACHE_PEER_ID"], first_id);
        let file = std::fs::read_to_string(home.join("peercache.yml")).unwrap();
        assert!(file.contains(&format!("port: {first}\n")), "{file}");
        ports.push(first);
    }
    ports.dedup();
    assert_eq!(ports.len(), 3, "{ports:?}");

    // A fresh home (the next job of the same workflow) lands in the same block, found through
    // the default dir: $GITHUB_WORKSPACE/.github/workflows …
    let mut cmd = Command::new(PEERCACHE);
    cmd.arg("init")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", host.root.path())
        .env("PEERCACHE_HOME", host.home("fresh-arm64"))
        .env("PEERCACHE_PORT_LOCK_DIR", host.locks())
        .env("GITHUB_WORKSPACE", host.repo())
        .env("GITHUB_WORKFLOW_REF", workflow_ref("arm64-ci.yml"));
    let port = port_of(&run(cmd));
    assert_eq!(block_of(port), 1, "{port}");
    assert_ne!(
        port, ports[1],
        "the first home's reservation holds its port"
    );

    // … or ./.github/workflows of the current directory.
    let mut cmd = Command::new(PEERCACHE);
    cmd.arg("init")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", host.root.path())
        .env("PEERCACHE_HOME", host.home("fresh-multiarch"))
        .env("PEERCACHE_PORT_LOCK_DIR", host.locks())
        .env("GITHUB_WORKFLOW_REF", workflow_ref("multiarch-ci.yml"))
        .current_dir(host.repo());
    assert_eq!(block_of(port_of(&run(cmd))), 2);
}

/// Starts `n` inits of one workflow at once, each with its own home, and returns their ports.
fn concurrent_jobs(host: &Host, workflow: &str, n: usize) -> Vec<u16> {
    let children: Vec<_> = (0..n)
        .map(|i| {
            let mut cmd = host.init(&host.home(&format!("job{i}")), Some(workflow), &[]);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|child| port_of(&Run::from(child.wait_with_output().unwrap())))
        .collect()
}

#[test]
fn two_jobs_of_one_workflow_on_one_host_get_distinct_ports_in_its_block() {
    let host = Host::new();
    host.pad(10);
    host.workflow("build.yml");
    let ports = concurrent_jobs(&host, "build.yml", 2);
    assert_eq!(block_of(ports[0]), 10, "{ports:?}");
    assert_eq!(block_of(ports[1]), 10, "{ports:?}");
    assert_ne!(ports[0], ports[1]);
    // Both are recorded in the host-wide dir.
    for port in &ports {
        let record = std::fs::read_to_string(host.locks().join(format!("{port}.lock"))).unwrap();
        let record: serde_json::Value = serde_json::from_str(&record).unwrap();
        assert!(record["pid"].as_u64().is_some(), "{record}");
        assert!(record["time"].as_u64().is_some(), "{record}");
        assert!(
            record["home"].as_str().unwrap().contains("/homes/job"),
            "{record}"
        );
    }
}

#[test]
fn a_taken_first_port_is_skipped_by_concurrent_jobs() {
    let host = Host::new();
    host.pad(11);
    host.workflow("build.yml");
    // The test holds the block's first port, as a daemon of another job would.
    let held = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 9110)).ok();
    assert!(held.is_some() || !free(9110));
    let ports = concurrent_jobs(&host, "build.yml", 2);
    for port in &ports {
        assert_eq!(block_of(*port), 11, "{ports:?}");
        assert_ne!(*port, 9110, "{ports:?}");
    }
    assert_ne!(ports[0], ports[1]);
    drop(held);
}

#[test]
fn garbage_and_non_workflow_files_are_skipped_without_shifting_the_others() {
    let host = Host::new();
    host.pad(20);
    host.workflow("amd64-ci.yml");
    host.file("bad.yml", "on: [push\njobs: {{{\n");
    host.file("config.yaml", "settings:\n  retries: 3\n");
    host.file("notes.txt", "not YAML at all: [");
    host.workflow("multiarch-ci.yaml");

    let amd64 = run(host.init(&host.home("a"), Some("amd64-ci.yml"), &[]));
    assert_eq!(block_of(port_of(&amd64)), 20);
    let multi = run(host.init(&host.home("m"), Some("multiarch-ci.yaml"), &[]));
    assert_eq!(block_of(port_of(&multi)), 21, "{}", multi.stderr);
    for name in ["bad.yml", "config.yaml"] {
        let warning: Vec<&str> = multi.stderr.lines().filter(|l| l.contains(name)).collect();
        assert_eq!(warning.len(), 1, "one warning for {name}: {}", multi.stderr);
        assert!(warning[0].contains("WARN"), "{}", warning[0]);
    }
    assert!(multi.stderr.contains("not valid YAML"), "{}", multi.stderr);
    assert!(multi.stderr.contains("not a workflow"), "{}", multi.stderr);
    assert!(!multi.stderr.contains("notes.txt"), "{}", multi.stderr);
}

#[test]
fn an_unlisted_workflow_hashes_past_the_listed_blocks() {
    let host = Host::new();
    // No workflow files: GITHUB_WORKFLOW hashes into blocks 0..100.
    let (name, block) = quiet_name("Nightly", 0);
    let mut cmd = host.init(&host.home("a"), None, &[]);
    cmd.env("GITHUB_WORKFLOW", &name);
    assert_eq!(block_of(port_of(&run(cmd))), block);

    // Three listed files, the current one not among them: blocks 3..103, never 0..3.
    for file in ["amd64-ci.yml", "arm64-ci.yml", "multiarch-ci.yml"] {
        host.workflow(file);
    }
    let (name, block) = quiet_name("Release", 3);
    let mut cmd = host.init(&host.home("b"), Some("release.yml"), &[]);
    cmd.env("GITHUB_WORKFLOW", &name);
    assert_eq!(block_of(port_of(&run(cmd))), block);

    // An unreadable workflows dir: a warning, then the same fallback.
    let (name, block) = quiet_name("Docs", 0);
    let missing = host.root.path().join("no-such-dir");
    let mut cmd = host.init_in(&missing, &host.home("c"), None, &[]);
    cmd.env("GITHUB_WORKFLOW", &name);
    let out = run(cmd);
    assert_eq!(block_of(port_of(&out)), block);
    assert!(
        out.stderr.contains("cannot read the workflows dir"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_port_out_of_range_exits_2_with_one_line() {
    let host = Host::new();
    let out = run(host.init(&host.home("a"), None, &["--port", "70000"]));
    let line = out.fails_with(2);
    assert!(line.contains("--port") && line.contains("70000"), "{line}");

    let mut cmd = host.init(&host.home("a"), None, &[]);
    cmd.env("PEERCACHE_PORT", "0");
    let out = run(cmd);
    let line = out.fails_with(2);
    assert!(line.contains("PEERCACHE_PORT"), "{line}");

    let mut cmd = host.init(&host.home("a"), None, &[]);
    cmd.env("CACHE_LISTEN_PORT", "http");
    let line = run(cmd).fails_with(2).to_string();
    assert!(line.contains("CACHE_LISTEN_PORT"), "{line}");

    // Explicit numbers are used as given, from the flag or a (legacy) variable.
    let out = run(host.init(&host.home("b"), None, &["--port", "9555"]));
    assert_eq!(port_of(&out), 9555);
    let mut cmd = host.init(&host.home("c"), None, &[]);
    cmd.env("CACHE_LISTEN_PORT", "9001");
    assert_eq!(port_of(&run(cmd)), 9001);
    // `--port auto` beats the variable.
    let mut cmd = host.init(&host.home("d"), None, &["--port", "auto"]);
    cmd.env("PEERCACHE_PORT", "9002")
        .env("GITHUB_WORKFLOW", quiet_name("Auto", 0).0);
    assert_ne!(port_of(&run(cmd)), 9002);
}

#[test]
fn state_is_private_settings_hold_no_secret_and_fetch_reads_them() {
    let host = Host::new();
    host.pad(30);
    host.workflow("ci.yml");
    let sb = Sandbox::new();
    let secret = "mtbcje2LfpKCKE1flM62tMeW4Q83Fv+Kw+O/whyQ8vQ=";
    let token = "ghp_tokenSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS";
    // A settings file the user wrote keeps its keys and comments.
    std::fs::create_dir_all(sb.home()).unwrap();
    std::fs::write(
        sb.home().join("peercache.yml"),
        "# my settings\nttl: 120\nmdns: false\n",
    )
    .unwrap();

    let mut cmd = sb.command(&["init", "--workflows-dir"]);
    cmd.arg(host.workflows())
        .env("PEERCACHE_PORT_LOCK_DIR", host.locks())
        .env("GITHUB_WORKFLOW_REF", workflow_ref("ci.yml"))
        .env("PEERCACHE_SECRET", secret)
        .env("CACHE_P2P_SHARED_SECRET", secret)
        .env("GITHUB_TOKEN", token)
        .env("GH_TOKEN", token)
        .env("PEERCACHE_TOKEN", token);
    let out = run(cmd);
    let port = port_of(&out);
    assert_eq!(block_of(port), 30);
    let v = vars(&out);
    assert_eq!(Path::new(&v["PEERCACHE_HOME"]), sb.home());
    assert!(v["PEERCACHE_PEER_ID"].starts_with("12D3KooW"), "{v:?}");

    assert_eq!(mode(&sb.home()), 0o700);
    assert_eq!(mode(&sb.home().join("identity.key")), 0o600);
    let file = std::fs::read_to_string(sb.home().join("peercache.yml")).unwrap();
    assert!(
        file.starts_with("# my settings\nttl: 120\nmdns: false\n"),
        "{file}"
    );
    assert!(file.contains(&format!("port: {port}")), "{file}");
    for (path, bytes) in common::snapshot(&sb.home()) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(secret) && !text.contains("ghp_"),
            "{path:?}: {text}"
        );
    }
    assert!(!out.stderr.contains(secret) && !out.stderr.contains(token));

    // The settings layer reads the file back: fetch works with it present.
    sb.hub
        .put_json("/repos/octo/hello/readme", common::json_body(7, 500));
    let first = sb
        .fetch(None, "repos/octo/hello/readme", &["--no-daemon"])
        .ok();
    assert_eq!(first.body(), common::json_body(7, 500).as_slice());
}

#[test]
fn github_env_writes_exactly_the_expected_lines() {
    let host = Host::new();
    let env_file = host.root.path().join("github_env");
    let output_file = host.root.path().join("github_output");
    // What earlier steps left there stays.
    std::fs::write(&env_file, "EARLIER=1\n").unwrap();

    let home = host.home("a");
    let mut cmd = host.init(&home, None, &["--port", "9555", "--github-env"]);
    cmd.env("GITHUB_ENV", &env_file)
        .env("GITHUB_OUTPUT", &output_file);
    let out = run(cmd);
    let v = vars(&out);
    let id = &v["PEERCACHE_PEER_ID"];
    let env_text = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(
        env_text,
        format!(
            "EARLIER=1\nPEERCACHE_HOME={}\nPEERCACHE_PORT=9555\nPEERCACHE_PEER_ID={id}\n",
            home.display()
        )
    );
    let output_text = std::fs::read_to_string(&output_file).unwrap();
    assert_eq!(output_text, format!("port=9555\npeer-id={id}\n"));
    // Stdout carries the same lines.
    assert_eq!(
        String::from_utf8(out.stdout.clone()).unwrap(),
        env_text.strip_prefix("EARLIER=1\n").unwrap()
    );

    // Without the variables, a clear error and nothing written.
    let mut cmd = host.init(&host.home("b"), None, &["--port", "9555", "--github-env"]);
    cmd.env("GITHUB_OUTPUT", &output_file);
    let line = run(cmd).fails_with(2).to_string();
    assert!(line.contains("--github-env needs GITHUB_ENV"), "{line}");
    assert!(!host.home("b").exists(), "nothing is created on the error");
    let mut cmd = host.init(&host.home("b"), None, &["--port", "9555", "--github-env"]);
    cmd.env("GITHUB_ENV", &env_file);
    let line = run(cmd).fails_with(2).to_string();
    assert!(line.contains("--github-env needs GITHUB_OUTPUT"), "{line}");
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), env_text);
}

#[test]
fn a_hostile_home_path_cannot_inject_a_variable() {
    let host = Host::new();
    let env_file = host.root.path().join("github_env");
    let output_file = host.root.path().join("github_output");
    let evil = format!(
        "{}/evil\nPEERCACHE_INJECTED=1\nLD_PRELOAD=/tmp/x.so\n/home",
        host.root.path().display()
    );
    let mut cmd = host.init(Path::new(&evil), None, &["--port", "9556", "--github-env"]);
    cmd.env("GITHUB_ENV", &env_file)
        .env("GITHUB_OUTPUT", &output_file);
    let out = run(cmd);
    // Stdout (parsed like $GITHUB_ENV) holds the three variables only, the path intact.
    let v = vars(&out);
    assert_eq!(v["PEERCACHE_HOME"], evil);
    for line_end in [LineEnd::Lf, LineEnd::CrLf] {
        let text = std::fs::read_to_string(&env_file).unwrap();
        let parsed = parse_runner_file(&text, line_end).unwrap();
        let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["PEERCACHE_HOME", "PEERCACHE_PORT", "PEERCACHE_PEER_ID"],
            "{text}"
        );
        if line_end == LineEnd::Lf {
            assert_eq!(parsed[0].1, evil);
        }
        let outputs =
            parse_runner_file(&std::fs::read_to_string(&output_file).unwrap(), line_end).unwrap();
        let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["port", "peer-id"]);
    }
    assert!(Path::new(&evil).join("identity.key").is_file());
}

#[test]
fn the_own_daemon_keeps_its_port() {
    let host = Host::new();
    host.pad(40);
    host.workflow("ci.yml");
    let sb = Sandbox::new();
    let init = |sb: &Sandbox| {
        let mut cmd = sb.command(&["init", "--workflows-dir"]);
        cmd.arg(host.workflows())
            .env("PEERCACHE_PORT_LOCK_DIR", host.locks())
            .env("GITHUB_WORKFLOW_REF", workflow_ref("ci.yml"));
        port_of(&run(cmd))
    };
    let port = init(&sb);
    assert_eq!(block_of(port), 40);
    // The daemon takes the recorded port from peercache.yml and holds it.
    let daemon = sb.start_daemon(
        &[
            (
                "PEERCACHE_SECRET",
                "HzRc1V5j7sWwgvcC8xx69dDAEuQSE6P2mbTVnGU9FLs=",
            ),
            ("PEERCACHE_MDNS", "false"),
        ],
        &[],
    );
    let info = sb.serve_json().unwrap();
    let addrs = info["listen_addrs"].to_string();
    assert!(addrs.contains(&format!("/tcp/{port}")), "{addrs}");
    assert!(!free(port));
    // init again while it runs: the port stays.
    assert_eq!(init(&sb), port);
    let stop = sb.run(None, &["stop"]);
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    drop(daemon);
}
