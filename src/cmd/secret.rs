//! `peercache secret`: print a new swarm secret (32 random bytes, base64) on stdout.
//!
//! Needs no settings, so it works even while the environment holds a secret that is refused.

use crate::error::Exit;

/// Runs `secret`.
pub fn run() -> anyhow::Result<Exit> {
    println!("{}", crate::secret::generate());
    Ok(Exit::Ok)
}
