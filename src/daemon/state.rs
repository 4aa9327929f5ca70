//! The daemon's files in the state dir: `serve.json` (who runs, where its API is) and
//! `serve.lock` (one daemon per state dir), and the checks that tell a live daemon from a stale
//! file.
//!
//! `serve.json` is written 0600 and atomically (temporary file, then rename), because its
//! `api_url` holds the capability of the local API:
//!
//! ```json
//! {
//!   "pid": 4242,
//!   "peer_id": "12D3KooW…",
//!   "listen_addrs": ["/ip4/10.1.0.4/tcp/9000", "/ip4/10.1.0.4/udp/9000/quic-v1"],
//!   "api_url": "http://127.0.0.1:40123/0f3c…(32 hex digits)",
//!   "started_at": 1732176000,
//!   "sharing": false,
//!   "sharing_reason": "no PEERCACHE_SECRET is set; …",
//!   "upstream_url": "https://api.github.com"
//! }
//! ```
//!
//! `started_at` is in seconds since the Unix epoch (as the peers' `last_seen`). `listen_addrs` is
//! empty when sharing is off (no libp2p listener runs then). `upstream_url` is the API base the
//! daemon calls: `fetch` uses the daemon only when it would call the same one.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::UserError;

/// The daemon's record in the state dir.
pub const SERVE_FILE: &str = "serve.json";
/// Held (flock) by the running daemon for its whole life.
pub const LOCK_FILE: &str = "serve.lock";
/// Where a detached daemon's stdout and stderr go.
pub const LOG_FILE: &str = "serve.log";

/// The contents of `serve.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeInfo {
    /// The daemon's process id.
    pub pid: u32,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its libp2p listen addresses (empty when sharing is off).
    pub listen_addrs: Vec<String>,
    /// The local API's base URL, capability included: `http://127.0.0.1:PORT/<32 hex>`.
    pub api_url: String,
    /// When it started, in seconds since the Unix epoch.
    pub started_at: u64,
    /// Whether peer sharing is on.
    pub sharing: bool,
    /// Why sharing is off (`null` when it is on).
    pub sharing_reason: Option<String>,
    /// The upstream API base the daemon calls.
    #[serde(default)]
    pub upstream_url: Option<String>,
}

/// `$PEERCACHE_HOME/serve.json`.
pub fn serve_file(home: &Path) -> PathBuf {
    home.join(SERVE_FILE)
}

/// Reads `serve.json`; `None` when it is missing or unreadable (a torn or foreign file is
/// treated as no daemon: the next `serve` overwrites it).
pub fn read(home: &Path) -> Option<ServeInfo> {
    let bytes = fs::read(serve_file(home)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `serve.json` (0600, atomically).
pub fn write(home: &Path, info: &ServeInfo) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(info)?;
    bytes.push(b'\n');
    crate::p2p::identity::write_private(&serve_file(home), &bytes).map_err(|e| {
        UserError::usage(format!(
            "cannot write {} ({e}); set PEERCACHE_HOME or --home to a writable directory",
            serve_file(home).display()
        ))
        .into()
    })
}

/// Removes `serve.json` if it still names `pid` (a newer daemon's file is left alone).
pub fn remove_if_owned(home: &Path, pid: u32) {
    if read(home).is_some_and(|info| info.pid == pid) {
        let _ = fs::remove_file(serve_file(home));
    }
}

/// The daemon named in `serve.json`, when that process is alive and is a `peercache serve`.
pub fn live(home: &Path) -> Option<ServeInfo> {
    read(home).filter(|info| is_peercache_serve(info.pid))
}

/// Whether `pid` is a live (not zombie) `peercache … serve …` process.
///
/// `kill(pid, 0)` says whether the pid exists; `/proc/PID/cmdline` (empty for a zombie) says
/// whether it is still ours and not a recycled pid of some other program.
pub fn is_peercache_serve(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists = unsafe { libc::kill(raw, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty());
    let Some(argv0) = args.next() else {
        return false; // a zombie, or a kernel thread
    };
    let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or(argv0);
    name.starts_with(b"peercache") && args.any(|a| a == b"serve")
}

/// Creates the state dir (0700; an existing one is made 0700 too).
pub fn ensure_home(home: &Path) -> anyhow::Result<()> {
    crate::p2p::identity::ensure_state_dir(home)
}

/// The exclusive lock of one state dir's daemon; released when dropped (or when the process
/// ends, however it ends).
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

/// Takes `serve.lock` without waiting; `Ok(None)` when another process holds it.
pub fn try_lock(home: &Path) -> anyhow::Result<Option<ServeLock>> {
    let path = home.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| {
            UserError::usage(format!(
                "cannot open {} ({e}); set PEERCACHE_HOME or --home to a writable directory",
                path.display()
            ))
        })?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(ServeLock { _file: file }));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(anyhow::anyhow!("cannot lock {} ({err})", path.display()))
    }
}

/// The one-line refusal when a daemon already runs for `home`.
pub fn already_running(home: &Path) -> UserError {
    let message = match live(home) {
        Some(info) => format!(
            "a peercache daemon is already running for {} (pid {}); use it, or stop it first with 'peercache stop'",
            home.display(),
            info.pid
        ),
        None => format!(
            "another peercache daemon is starting for {}; use it, or stop it first with 'peercache stop'",
            home.display()
        ),
    };
    UserError::usage(message)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn info(pid: u32) -> ServeInfo {
        ServeInfo {
            pid,
            peer_id: "12D3KooWtest".into(),
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            api_url: "http://127.0.0.1:1/00000000000000000000000000000000".into(),
            started_at: 1,
            sharing: false,
            sharing_reason: Some("why".into()),
            upstream_url: Some("https://api.github.com".into()),
        }
    }

    #[test]
    fn serve_file_round_trips_private() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &info(7)).unwrap();
        assert_eq!(read(dir.path()), Some(info(7)));
        let mode = fs::metadata(serve_file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        remove_if_owned(dir.path(), 8);
        assert!(read(dir.path()).is_some(), "another pid's file stays");
        remove_if_owned(dir.path(), 7);
        assert!(read(dir.path()).is_none());
    }

    #[test]
    fn only_live_peercache_serve_processes_count() {
        // This test binary is alive but is not `peercache serve`.
        assert!(!is_peercache_serve(std::process::id()));
        assert!(!is_peercache_serve(0));
        assert!(!is_peercache_serve(u32::MAX));
    }

    #[test]
    fn the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = try_lock(dir.path()).unwrap();
        assert!(held.is_some());
        assert!(try_lock(dir.path()).unwrap().is_none());
        drop(held);
        assert!(try_lock(dir.path()).unwrap().is_some());
    }
}
