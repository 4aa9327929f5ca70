//! `peercache init [--port N|auto] [--workflows-dir DIR] [--github-env]`: prepare the state dir
//! (0700), the persistent identity (0600) and the p2p port, and record the port in
//! `$PEERCACHE_HOME/peercache.yml`.
//!
//! # The port scheme (`--port auto`)
//!
//! Runners of one host share its ports, and the predecessor's users set 9000, 9001, 9002 by hand
//! so that their amd64, arm64 and multi-arch workflows would not collide. `auto` does that for
//! every workflow of the repository:
//!
//! 1. **Blocks.** The workflow files (`*.yml`, `*.yaml`) of `--workflows-dir` (default
//!    `$GITHUB_WORKSPACE/.github/workflows`, else `./.github/workflows`) are sorted by name; a file
//!    that is not YAML, or not a workflow (a mapping with `on` and a `jobs` mapping), is skipped
//!    with a warning and takes no slot. The current workflow is the file named by
//!    `GITHUB_WORKFLOW_REF` (`owner/repo/.github/workflows/x.yml@ref`); workflow `i` of the valid
//!    ones owns ports `9000 + 10·i` … `+ 9`.
//!    When the current workflow is not among them (or there are no files), `GITHUB_WORKFLOW`
//!    (else the file name from `GITHUB_WORKFLOW_REF`) is hashed with SHA-256 into one of
//!    [`HASH_BLOCKS`] blocks that follow the listed ones (`N + hash mod 100` for `N` valid files),
//!    so it cannot land on a listed workflow's block; with nothing to go on, block 0. Block
//!    numbers wrap at [`MAX_BLOCKS`], so every port stays at or below 65529.
//! 2. **Probing.** Inside the block, the port recorded in this home's `peercache.yml` comes first
//!    (stable across runs), then the block's ports upward from its first. A port is taken when a
//!    TCP or a UDP socket cannot be bound to it on 0.0.0.0 (libp2p listens on both: TCP and
//!    QUIC), unless this home's own running daemon holds it, or when another home reserved it
//!    (below). When all ten are taken, init warns and takes a free port the system picks.
//! 3. **Reservations.** Two jobs of one workflow on one host often run `init` at the same moment,
//!    and neither binds its port until its daemon starts in a later step. So the probe runs under
//!    an exclusive `flock` on `lock` in a host-wide dir ([`PORT_LOCK_DIR`], `/tmp/peercache-ports`,
//!    mode 1777 like `/tmp`; `PEERCACHE_PORT_LOCK_DIR` moves it), and the chosen port is recorded
//!    in `<port>.lock` there as `{"pid", "time", "home"}`. Another home's reservation blocks the
//!    port while it is younger than [`RESERVATION_SECS`] and its home still exists (a job's
//!    `RUNNER_TEMP` is emptied when the job ends). The pid is kept for people reading the file
//!    but not checked: `init` exits at once, and the port is meant for the daemon of a later
//!    step. Once that daemon listens, the bind test covers the port. Files are opened with
//!    `O_NOFOLLOW`; when the dir cannot be used, init warns and relies on the bind test alone.
//!
//! An explicit port (`--port N`, `PEERCACHE_PORT`, `CACHE_LISTEN_PORT`, `P2P_LISTEN_PORT`) is used
//! as given: no probing, no reservation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};
use sha2::{Digest, Sha256};

use crate::actions;
use crate::config::{
    Environment, FILE_NAME, FileSettings, Origin, Port, ProcessEnv, Raw, Settings, parse_port,
};
use crate::daemon::state;
use crate::error::{Exit, UserError};
use crate::p2p::identity;

/// The first port of block 0.
pub const BASE_PORT: u16 = 9000;
/// Ports per block: jobs of one workflow that can share a host.
pub const BLOCK_SIZE: u16 = 10;
/// Blocks that fit below 65535: block 5652 is 65520–65529.
pub const MAX_BLOCKS: u32 = (65535 - BASE_PORT as u32 + 1) / BLOCK_SIZE as u32;
/// Blocks the hash of an unlisted workflow spreads over.
pub const HASH_BLOCKS: u32 = 100;
/// The host-wide dir of port reservations.
pub const PORT_LOCK_DIR: &str = "/tmp/peercache-ports";
/// How long a reservation holds a port for its home's daemon.
pub const RESERVATION_SECS: u64 = 180;
/// How long init waits for another init of the same user before going on without the lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long it waits when another user's process (or one it cannot see) holds the lock: an
/// init holds it for milliseconds, so anything longer is a stuck or hostile holder, and every
/// user may open the shared lock file.
const FOREIGN_LOCK_WAIT: Duration = Duration::from_millis(500);

/// The variables (after `--port`) that set the port, in precedence order.
const PORT_VARS: &[&str] = &["PEERCACHE_PORT", "CACHE_LISTEN_PORT", "P2P_LISTEN_PORT"];

/// Arguments of `peercache init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// p2p port, or auto: a per-workflow block from 9000 [env: PEERCACHE_PORT; default auto]
    #[arg(long, value_name = "N|auto")]
    pub port: Option<String>,
    /// Where the workflow files are [default: $GITHUB_WORKSPACE/.github/workflows, else ./.github/workflows]
    #[arg(long, value_name = "DIR")]
    pub workflows_dir: Option<PathBuf>,
    /// Also append the PEERCACHE_* lines to $GITHUB_ENV, and port and peer-id to $GITHUB_OUTPUT
    #[arg(long)]
    pub github_env: bool,
}

/// Runs `init`.
pub fn run(settings: &Settings, args: InitArgs) -> anyhow::Result<Exit> {
    run_with(settings, args, &ProcessEnv)
}

fn run_with(settings: &Settings, args: InitArgs, env: &dyn Environment) -> anyhow::Result<Exit> {
    let home = &settings.home;
    // Outside a workflow step, fail before changing anything.
    let github_files = if args.github_env {
        let home_text = home.to_str().ok_or_else(|| {
            UserError::usage(format!(
                "--github-env needs a state dir path in UTF-8, not {}; set PEERCACHE_HOME",
                home.display()
            ))
        })?;
        Some((
            actions::file_of(actions::GITHUB_ENV)?,
            actions::file_of(actions::GITHUB_OUTPUT)?,
            home_text,
        ))
    } else {
        None
    };

    let keypair = identity::load_or_create(home)?;
    let peer_id = keypair.public().to_peer_id().to_string();

    let port = match explicit_port(&args, env)? {
        Some(port) => port,
        None => {
            let dir = workflows_dir(&args, env);
            let block = choose_block(&dir, args.workflows_dir.is_some(), env);
            let recorded = recorded_port(home);
            let lock_dir = env
                .var("PEERCACHE_PORT_LOCK_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(PORT_LOCK_DIR));
            pick_port(block, recorded, home, &lock_dir)
        }
    };

    write_settings_file(&home.join(FILE_NAME), port)?;

    let home_text = home.to_string_lossy();
    let port_text = port.to_string();
    let lines = [
        ("PEERCACHE_HOME", home_text.as_ref()),
        ("PEERCACHE_PORT", port_text.as_str()),
        ("PEERCACHE_PEER_ID", peer_id.as_str()),
    ];
    let mut out = String::new();
    for (name, value) in lines {
        // The same injection-safe form as $GITHUB_ENV: `peercache init >> "$GITHUB_ENV"` is safe.
        out.push_str(&actions::format_record(name, value)?);
    }
    let mut stdout = io::stdout().lock();
    // A closed stdout (`peercache init | true`) does not undo the work done.
    let _ = stdout
        .write_all(out.as_bytes())
        .and_then(|_| stdout.flush());

    if let Some((env_file, output_file, home_text)) = github_files {
        actions::append_to(&env_file, "PEERCACHE_HOME", home_text)?;
        actions::append_to(&env_file, "PEERCACHE_PORT", &port_text)?;
        actions::append_to(&env_file, "PEERCACHE_PEER_ID", &peer_id)?;
        actions::append_to(&output_file, "port", &port_text)?;
        actions::append_to(&output_file, "peer-id", &peer_id)?;
    }
    Ok(Exit::Ok)
}

/// The port given by `--port` or a variable, when it is a number; `None` for `auto`.
fn explicit_port(args: &InitArgs, env: &dyn Environment) -> anyhow::Result<Option<u16>> {
    let raw = match args.port.as_ref().filter(|v| !v.is_empty()) {
        Some(value) => Some(Raw {
            value: value.clone(),
            origin: Origin::Flag("--port"),
        }),
        None => PORT_VARS.iter().find_map(|name| {
            env.var(name).map(|value| Raw {
                value,
                origin: Origin::Env(name),
            })
        }),
    };
    match raw.map(|raw| parse_port(&raw)).transpose()? {
        Some(Port::Fixed(port)) => Ok(Some(port)),
        Some(Port::Auto) | None => Ok(None),
    }
}

/// `--workflows-dir`, else `$GITHUB_WORKSPACE/.github/workflows`, else `./.github/workflows`.
fn workflows_dir(args: &InitArgs, env: &dyn Environment) -> PathBuf {
    if let Some(dir) = &args.workflows_dir {
        return dir.clone();
    }
    let root = env
        .var("GITHUB_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    root.join(".github").join("workflows")
}

/// The block of the current workflow (see the module docs).
fn choose_block(dir: &Path, explicit_dir: bool, env: &dyn Environment) -> u32 {
    let workflows = valid_workflows(dir, explicit_dir);
    let reference = env.var("GITHUB_WORKFLOW_REF");
    let current = reference
        .as_deref()
        .and_then(|r| current_workflow(r, &workflows));
    if let Some(index) = current {
        return index as u32 % MAX_BLOCKS;
    }
    let key = env.var("GITHUB_WORKFLOW").or_else(|| {
        reference
            .as_deref()
            .and_then(|r| ref_file_name(r, &[]))
            .map(str::to_string)
    });
    match key {
        Some(key) => {
            let digest = Sha256::digest(key.as_bytes());
            let hash = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
            let slot = (hash % u64::from(HASH_BLOCKS)) as u32;
            (workflows.len() as u32 % MAX_BLOCKS + slot) % MAX_BLOCKS
        }
        None => 0,
    }
}

/// The names of the valid workflow files of `dir`, sorted. Invalid ones are skipped with a
/// warning; an unreadable dir gives none (with a warning unless it is simply absent by default).
fn valid_workflows(dir: &Path, explicit_dir: bool) -> Vec<String> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            if explicit_dir || e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(
                    "cannot read the workflows dir {} ({e}); choosing the port block without it",
                    dir.display()
                );
            }
            return Vec::new();
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let yaml = name.ends_with(".yml") || name.ends_with(".yaml");
            // metadata() follows symlinks: a linked workflow file counts.
            (yaml && entry.path().metadata().is_ok_and(|m| m.is_file())).then_some(name)
        })
        .collect();
    names.sort();
    names.retain(|name| {
        let path = dir.join(name);
        let verdict = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read it ({e})"))
            .and_then(|text| workflow_check(&text));
        match verdict {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(
                    "skipping {} when choosing the port block: {why}",
                    path.display()
                );
                false
            }
        }
    });
    names
}

/// Whether a file's text is a workflow: a YAML mapping with `on` and a `jobs` mapping.
fn workflow_check(text: &str) -> Result<(), String> {
    let value: Value = serde_norway::from_str(text)
        .map_err(|e| format!("not valid YAML ({})", one_line(&e.to_string())))?;
    let not_workflow = || "not a workflow (no 'on' and 'jobs' mapping)".to_string();
    let Value::Mapping(map) = value else {
        return Err(not_workflow());
    };
    // YAML 1.1 readers turn a bare `on` into `true`; accept either spelling of the key.
    let has_on = map.get("on").is_some() || map.get(Value::Bool(true)).is_some();
    let has_jobs = matches!(map.get("jobs"), Some(Value::Mapping(_)));
    if has_on && has_jobs {
        Ok(())
    } else {
        Err(not_workflow())
    }
}

/// The index of the file `GITHUB_WORKFLOW_REF` names among `workflows`.
fn current_workflow(reference: &str, workflows: &[String]) -> Option<usize> {
    let name = ref_file_name(reference, workflows)?;
    workflows.iter().position(|w| w == name)
}

/// The file name in `owner/repo/.github/workflows/x.yml@ref`. A file name may hold `@`, so a
/// known name followed by `@` wins over the split at the first `@`.
fn ref_file_name<'a>(reference: &'a str, known: &[String]) -> Option<&'a str> {
    const MARK: &str = ".github/workflows/";
    let rest = &reference[reference.find(MARK)? + MARK.len()..];
    if let Some(name) = known
        .iter()
        .filter(|k| rest.starts_with(&format!("{k}@")) || rest == k.as_str())
        .max_by_key(|k| k.len())
    {
        return Some(&rest[..name.len()]);
    }
    let name = rest.split('@').next().unwrap_or(rest);
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// The port `peercache.yml` of this home records, if any.
fn recorded_port(home: &Path) -> Option<u16> {
    let file = FileSettings::read(&home.join(FILE_NAME)).ok()?;
    file.get("port")?.trim().parse().ok()
}

/// The ports of a block.
fn block_ports(block: u32) -> std::ops::RangeInclusive<u16> {
    let first = u32::from(BASE_PORT) + (block % MAX_BLOCKS) * u32::from(BLOCK_SIZE);
    let first = first as u16;
    first..=first + (BLOCK_SIZE - 1)
}

/// Chooses a port of `block` under the host-wide lock and reserves it for `home`.
fn pick_port(block: u32, recorded: Option<u16>, home: &Path, lock_dir: &Path) -> u16 {
    let ports = block_ports(block);
    let reservations = Reservations::open(lock_dir);
    let own_daemon_ports: Vec<u16> = state::live(home)
        .map(|info| {
            info.listen_addrs
                .iter()
                .filter_map(|a| addr_port(a))
                .collect()
        })
        .unwrap_or_default();
    let usable = |port: u16| {
        let reserved = reservations
            .as_ref()
            .is_some_and(|r| r.reserved_by_other(port, home));
        !reserved && (own_daemon_ports.contains(&port) || bindable(port))
    };
    let candidates = recorded
        .filter(|p| ports.contains(p))
        .into_iter()
        .chain(ports.clone());
    let mut chosen = None;
    for port in candidates {
        if usable(port) {
            chosen = Some(port);
            break;
        }
    }
    match chosen {
        Some(port) => {
            if let Some(r) = &reservations {
                r.reserve(port, home);
                // A port this home held before (the block moved, or it was taken) is let go.
                for other in ports.clone().filter(|p| *p != port) {
                    r.release_if_owned(other, home);
                }
            }
            port
        }
        None => {
            let port = system_port();
            tracing::warn!(
                "every port of this workflow's block {}–{} is taken or reserved; using port {port}, which the system picked",
                ports.start(),
                ports.end()
            );
            port
        }
    }
}

/// The TCP port of a multiaddr such as `/ip4/0.0.0.0/tcp/9000`.
fn addr_port(addr: &str) -> Option<u16> {
    let mut parts = addr.split('/');
    parts.find(|p| *p == "tcp" || *p == "udp")?;
    parts.next()?.parse().ok()
}

/// Whether TCP and UDP sockets can be bound to `port` on 0.0.0.0 (both are dropped at once).
pub fn bindable(port: u16) -> bool {
    let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port));
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port));
    tcp.is_ok() && udp.is_ok()
}

/// A port free for TCP and UDP that the system picks (outside the blocks' scheme).
fn system_port() -> u16 {
    for _ in 0..32 {
        let Ok(listener) = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
            continue;
        };
        let Ok(addr) = listener.local_addr() else {
            continue;
        };
        if UdpSocket::bind((Ipv4Addr::UNSPECIFIED, addr.port())).is_ok() {
            return addr.port();
        }
    }
    // Practically unreachable; the daemon reports a taken port clearly when it binds.
    BASE_PORT
}

/// One reservation file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct Reservation {
    pid: u32,
    time: u64,
    home: PathBuf,
}

/// The pid and uid of the process holding the `flock` on `file`, from `/proc/locks`.
fn lock_holder(file: &File) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    // "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF"; waiters are "1: -> FLOCK …".
    let wanted = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let pid = locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&wanted.as_str()))
            .then(|| fields.get(4)?.parse::<u32>().ok())
            .flatten()
    })?;
    let uid = fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    Some((pid, uid))
}

/// The reservations dir, locked for as long as this value lives.
struct Reservations {
    dir: PathBuf,
    _lock: Option<File>,
}

impl Reservations {
    /// Opens and locks the dir; `None` (after a warning) when it cannot be used.
    fn open(dir: &Path) -> Option<Reservations> {
        match Self::try_open(dir) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(
                    "cannot use the port reservations in {} ({e}); choosing by the bind test alone",
                    dir.display()
                );
                None
            }
        }
    }

    fn try_open(dir: &Path) -> io::Result<Reservations> {
        match fs::DirBuilder::new().mode(0o1777).create(dir) {
            // Shared by every user of the host, like /tmp (the umask cut the mode).
            Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o1777))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if !fs::symlink_metadata(dir)?.is_dir() {
            return Err(io::Error::other("not a directory"));
        }
        let lock_path = dir.join("lock");
        // flock needs no write access: a lock file another user made read-only still serves.
        let lock = open_shared(&lock_path).or_else(|_| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&lock_path)
        })?;
        let start = Instant::now();
        let mut holder = None;
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err);
            }
            let holder = *holder.get_or_insert_with(|| lock_holder(&lock));
            // SAFETY: getuid cannot fail.
            let own = holder.is_some_and(|(_, uid)| uid == unsafe { libc::getuid() });
            let wait = if own { LOCK_WAIT } else { FOREIGN_LOCK_WAIT };
            if start.elapsed() >= wait {
                let who = match holder {
                    Some((pid, _)) if own => format!("another peercache init (pid {pid})"),
                    Some((pid, uid)) => format!("a process of another user (pid {pid}, uid {uid})"),
                    None => "a process this user cannot see".to_string(),
                };
                tracing::warn!(
                    "{who} has held {} for {} ms; choosing the port without the host's reservations (by the bind test alone)",
                    lock_path.display(),
                    start.elapsed().as_millis()
                );
                return Ok(Reservations {
                    dir: dir.to_path_buf(),
                    _lock: None,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Reservations {
            dir: dir.to_path_buf(),
            _lock: Some(lock),
        })
    }

    fn file(&self, port: u16) -> PathBuf {
        self.dir.join(format!("{port}.lock"))
    }

    /// The reservation of `port`, if a readable one exists.
    fn read(&self, port: u16) -> Option<Reservation> {
        let mut text = String::new();
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.file(port))
            .and_then(|mut f| f.read_to_string(&mut text))
            .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Whether another home holds a live reservation of `port`.
    fn reserved_by_other(&self, port: u16, home: &Path) -> bool {
        let Some(r) = self.read(port) else {
            return false;
        };
        let age = state::now_secs().saturating_sub(r.time);
        r.home != home && age < RESERVATION_SECS && r.home.is_dir()
    }

    /// Removes the reservation of `port` when it is `home`'s.
    fn release_if_owned(&self, port: u16, home: &Path) {
        if self.read(port).is_some_and(|r| r.home == home) {
            let _ = fs::remove_file(self.file(port));
        }
    }

    /// Records `port` as `home`'s (best effort: a port stays usable without its record).
    fn reserve(&self, port: u16, home: &Path) {
        let record = Reservation {
            pid: std::process::id(),
            time: state::now_secs(),
            home: home.to_path_buf(),
        };
        let result = open_shared(&self.file(port)).and_then(|mut f| {
            let bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
            f.set_len(0)?;
            f.write_all(&bytes)
        });
        if let Err(e) = result {
            tracing::debug!("cannot reserve port {port} in {}: {e}", self.dir.display());
        }
    }
}

/// Opens (creating it 0666, so other users' inits can use it too) a file of the shared dir,
/// never through a symlink.
fn open_shared(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    // SAFETY: geteuid has no preconditions.
    if std::os::unix::fs::MetadataExt::uid(&meta) == unsafe { libc::geteuid() } {
        let _ = file.set_permissions(fs::Permissions::from_mode(0o666));
    }
    Ok(file)
}

/// The header of a new `peercache.yml`.
const HEADER: &str = "\
# peercache settings, written by `peercache init`. Flags and PEERCACHE_* variables override them.
# Never put secrets here: the token and the swarm secret are read from the environment only.
";

/// Records `port` in `peercache.yml`, keeping every other key (and, where it can, comments).
fn write_settings_file(path: &Path, port: u16) -> anyhow::Result<()> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(UserError::usage(format!(
                "cannot read {}: {e}; fix its permissions or set PEERCACHE_HOME to another state dir",
                path.display()
            ))
            .into());
        }
    };
    let new_text = updated_settings(&text, port).map_err(|e| {
        UserError::usage(format!(
            "invalid settings file {}: {e}; fix or remove the file",
            path.display()
        ))
    })?;
    if new_text == text {
        return Ok(());
    }
    identity::write_private(path, new_text.as_bytes()).map_err(|e| {
        UserError::usage(format!(
            "cannot write {} ({e}); set PEERCACHE_HOME or --home to a writable directory",
            path.display()
        ))
        .into()
    })
}

/// The settings file's text with `port` set. A top-level `port:` line is replaced, or one is
/// appended, as long as the result means the old mapping plus the port; otherwise the mapping
/// is written anew (comments are lost then).
fn updated_settings(text: &str, port: u16) -> Result<String, String> {
    let parse = |text: &str| -> Result<Mapping, String> {
        match serde_norway::from_str::<Value>(text) {
            Ok(Value::Mapping(map)) => Ok(map),
            Ok(Value::Null) => Ok(Mapping::new()),
            Ok(_) => Err("expected a mapping of settings".to_string()),
            Err(e) => Err(one_line(&e.to_string())),
        }
    };
    let old = if text.trim().is_empty() {
        Mapping::new()
    } else {
        parse(text)?
    };
    let mut wanted = old.clone();
    wanted.insert(Value::from("port"), Value::from(port));
    if old == wanted {
        return Ok(text.to_string());
    }
    let line = format!("port: {port}");
    let mut candidates = Vec::new();
    let port_lines = text.lines().filter(|l| l.starts_with("port:")).count();
    if port_lines == 1 {
        let replaced: Vec<&str> = text
            .lines()
            .map(|l| if l.starts_with("port:") { &line } else { l })
            .collect();
        candidates.push(replaced.join("\n") + "\n");
    }
    if old.get("port").is_none() {
        let mut appended = if text.trim().is_empty() {
            HEADER.to_string()
        } else {
            text.to_string()
        };
        if !appended.is_empty() && !appended.ends_with('\n') {
            appended.push('\n');
        }
        appended.push_str(&line);
        appended.push('\n');
        candidates.push(appended);
    }
    for candidate in candidates {
        if parse(&candidate).is_ok_and(|map| map == wanted) {
            return Ok(candidate);
        }
    }
    let body = serde_norway::to_string(&wanted).map_err(|e| e.to_string())?;
    Ok(format!("{HEADER}{body}"))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_stay_below_65536() {
        assert_eq!(block_ports(0), 9000..=9009);
        assert_eq!(block_ports(2), 9020..=9029);
        assert_eq!(*block_ports(MAX_BLOCKS - 1).end(), 65529);
        assert_eq!(block_ports(MAX_BLOCKS), 9000..=9009);
        assert_eq!(block_ports(u32::MAX).count(), 10);
    }

    #[test]
    fn the_ref_names_the_file() {
        let known = vec!["a.yml".to_string(), "b@x.yml".to_string()];
        let r = "octo/hello/.github/workflows/a.yml@refs/heads/main";
        assert_eq!(ref_file_name(r, &known), Some("a.yml"));
        assert_eq!(current_workflow(r, &known), Some(0));
        let r = "octo/hello/.github/workflows/b@x.yml@refs/pull/1/merge";
        assert_eq!(current_workflow(r, &known), Some(1));
        assert_eq!(
            ref_file_name("octo/hello/.github/workflows/c.yaml@v1", &known),
            Some("c.yaml")
        );
        assert_eq!(ref_file_name("nonsense", &known), None);
    }

    #[test]
    fn workflows_need_on_and_a_jobs_mapping() {
        assert!(workflow_check("on: push\njobs:\n  a:\n    runs-on: x\n").is_ok());
        assert!(workflow_check("'on': [push]\njobs: {a: {}}\n").is_ok());
        assert!(workflow_check("name: x\njobs: {a: {}}\n").is_err());
        assert!(workflow_check("on: push\njobs: [a]\n").is_err());
        assert!(workflow_check("- a\n- b\n").is_err());
        assert!(
            workflow_check("on: [push\n")
                .unwrap_err()
                .starts_with("not valid YAML")
        );
    }

    #[test]
    fn the_settings_file_keeps_other_keys_and_comments() {
        let fresh = updated_settings("", 9010).unwrap();
        assert!(fresh.starts_with("# peercache settings"));
        assert!(fresh.ends_with("port: 9010\n"));
        assert_eq!(
            FileSettings::parse(&fresh).unwrap().get("port").as_deref(),
            Some("9010")
        );
        assert_eq!(updated_settings(&fresh, 9010).unwrap(), fresh);

        let mine = "# mine\nttl: 60 # a minute\nport: 9001\nmdns: false\n";
        assert_eq!(
            updated_settings(mine, 9002).unwrap(),
            "# mine\nttl: 60 # a minute\nport: 9002\nmdns: false\n"
        );
        let no_port = "ttl: 60";
        assert_eq!(
            updated_settings(no_port, 9003).unwrap(),
            "ttl: 60\nport: 9003\n"
        );
        // Flow style: rewritten, keys kept.
        let flow = "{ttl: 60, port: 1}";
        let out = updated_settings(flow, 9004).unwrap();
        let parsed = FileSettings::parse(&out).unwrap();
        assert_eq!(parsed.get("ttl").as_deref(), Some("60"));
        assert_eq!(parsed.get("port").as_deref(), Some("9004"));
        assert!(updated_settings("[1, 2]", 9000).is_err());
    }

    #[test]
    fn hashing_lands_after_the_listed_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let env = |name: &str| (name == "GITHUB_WORKFLOW").then(|| "CI".to_string());
        let block = choose_block(dir.path(), true, &env);
        assert!(block < HASH_BLOCKS);
        for name in ["a.yml", "b.yml"] {
            fs::write(dir.path().join(name), "on: push\njobs: {a: {}}\n").unwrap();
        }
        let shifted = choose_block(dir.path(), true, &env);
        assert_eq!(shifted, block + 2);
        let nothing = |_: &str| None;
        assert_eq!(choose_block(dir.path(), true, &nothing), 0);
    }
}
