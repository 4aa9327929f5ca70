//! `peercache stop`: stop the daemon named in `serve.json` and wait for it to exit.

use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::daemon::state;
use crate::error::Exit;

/// How long the daemon gets to shut down cleanly before SIGKILL.
const GRACE: Duration = Duration::from_secs(15);

/// Runs `stop`.
pub fn run(settings: &Settings) -> anyhow::Result<Exit> {
    let home = &settings.home;
    let Some(info) = state::live(home) else {
        // A file left by a daemon that died without cleaning up names nobody: remove it.
        if let Some(stale) = state::read(home) {
            state::remove_if_owned(home, stale.pid);
        }
        println!("no peercache daemon is running for {}", home.display());
        return Ok(Exit::Ok);
    };
    let pid = info.pid;
    signal(pid, libc::SIGTERM);
    if wait_for_exit(pid, GRACE) {
        println!("stopped the peercache daemon (pid {pid})");
        return Ok(Exit::Ok);
    }
    tracing::warn!(
        "the daemon (pid {pid}) did not stop within {} s; killing it",
        GRACE.as_secs()
    );
    signal(pid, libc::SIGKILL);
    wait_for_exit(pid, Duration::from_secs(5));
    // It had no chance to clean up.
    state::remove_if_owned(home, pid);
    println!("killed the peercache daemon (pid {pid})");
    Ok(Exit::Ok)
}

fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: sending a signal to a process we checked is a peercache daemon.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Polls until `pid` is gone (or a zombie); `false` on timeout.
fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !state::is_peercache_serve(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
