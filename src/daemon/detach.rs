//! `serve --daemon`: start the daemon detached and wait until it answers.
//!
//! The binary re-runs itself (`current_exe`) with the same arguments minus `--daemon`, in a new
//! session (`setsid`, so the job's terminal and process group do not reach it), stdin from
//! `/dev/null`, stdout and stderr appended to `$PEERCACHE_HOME/serve.log`. The parent polls
//! until `serve.json` names the child's pid and the API answers, prints `PEERCACHE_API=<base>`
//! and exits 0; when the child dies or is not ready in time, it shows the log's tail.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::client::{self, Endpoint};
use super::state;
use crate::config::Settings;
use crate::error::{Exit, UserError};

/// How long the daemon may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of `serve.log` shown when it fails.
const TAIL_LINES: usize = 20;

/// Starts `peercache serve` detached and returns once it answers.
pub fn detach(settings: &Settings) -> anyhow::Result<Exit> {
    let home = &settings.home;
    state::ensure_home(home)?;
    // Refuse early (exit 2) when a daemon already runs; the child would refuse too.
    if state::live(home).is_some() || state::try_lock(home)?.is_none() {
        return Err(state::already_running(home).into());
    }

    let log_path = home.join(state::LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| {
            UserError::usage(format!(
                "cannot open {} ({e}); set PEERCACHE_HOME or --home to a writable directory",
                log_path.display()
            ))
        })?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);

    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find the peercache binary to re-run ({e})"))?;
    let args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    let mut command = Command::new(&exe);
    command
        .args(&args)
        // The child resolves the same state dir even when it came from a default.
        .env("PEERCACHE_HOME", home)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {} ({e})", exe.display()))?;
    let pid = child.id();
    tracing::debug!("started the daemon as pid {pid}; waiting until it answers");

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let exit = match status.code() {
                Some(2) => Exit::Usage,
                Some(3) => Exit::Unreachable,
                _ => Exit::Http,
            };
            return Err(UserError {
                exit,
                message: format!(
                    "the daemon exited during startup ({status}); {}",
                    log_tail(&log_path, log_start)
                ),
            }
            .into());
        }
        if let Some(info) = state::read(home).filter(|info| info.pid == pid)
            && answers(&info.api_url)
        {
            println!("PEERCACHE_API={}", info.api_url);
            return Ok(Exit::Ok);
        }
        if Instant::now() >= deadline {
            stop_child(&mut child);
            return Err(UserError::http(format!(
                "the daemon did not answer within {} s, so it was stopped; {}",
                READY_TIMEOUT.as_secs(),
                log_tail(&log_path, log_start)
            ))
            .into());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether the API at `base` answers `/api/peers` with 200.
fn answers(base: &str) -> bool {
    let Some(endpoint) = Endpoint::parse(base) else {
        return false;
    };
    client::get(&endpoint, "/api/peers", &[], Duration::from_secs(5))
        .is_ok_and(|response| response.status == 200)
}

/// SIGTERM, a moment to clean up, then SIGKILL.
fn stop_child(child: &mut std::process::Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last lines this start wrote to `serve.log`, for the error message.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(from)).is_ok() && file.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return format!("{} is empty", path.display());
    }
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    format!("last lines of {}:\n{}", path.display(), tail.join("\n"))
}
