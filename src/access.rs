//! Access proofs: which token has shown GitHub that it can see which repository.
//!
//! A token is served another token's copy of a repository's answer only once GitHub has said
//! that this token can see the repository (see [`crate::resolver`]). Proofs are remembered per
//! (token tag, repository) — never the token itself — in memory and in the cache dir
//! (`access/`, files 0600), so that every process on the runner (the daemon, `fetch
//! --no-daemon`) asks GitHub once per token and repository:
//! - allowed: for [`PROOF_LIFETIME`], the longest a `GITHUB_TOKEN` or installation token lives;
//! - denied: GitHub's own answer (its 404), kept for the requester's TTL, so the refusal is as
//!   fresh as any answer would be;
//! - a repository's visibility (from a repository object GitHub sent): public repositories need
//!   no proof, for the TTL of [`VISIBILITY_LIFETIME`].

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cache::now_ms;

/// How long a token's proof of access is trusted: the longest life of a GitHub App
/// installation token or a job's `GITHUB_TOKEN`.
pub const PROOF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a repository's visibility, as GitHub last stated it, is trusted.
pub const VISIBILITY_LIFETIME: Duration = Duration::from_secs(600);

/// What is known of one token (or of everyone) and one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// GitHub answered this token's request for the repository (2xx or 304).
    Allowed,
    /// GitHub refused it: its status and body, to answer with again.
    Denied {
        /// GitHub's status (404 for a repository it hides from this token).
        status: u16,
        /// GitHub's body.
        body: String,
        /// GitHub's `Content-Type`.
        content_type: Option<String>,
    },
    /// The repository is public: anyone may see it.
    Public,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    until_ms: u64,
    #[serde(flatten)]
    verdict: Verdict,
}

/// The proofs of one cache dir.
#[derive(Debug, Clone)]
pub struct AccessProofs {
    dir: PathBuf,
    memory: Arc<Mutex<HashMap<String, Record>>>,
    /// Bumped by every change this handle (or a clone) makes to what it knows.
    changes: Arc<std::sync::atomic::AtomicU64>,
}

/// What a verdict rests on: the proofs as they were, until a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// The proofs' change count when the verdict was read.
    changes: u64,
    /// The verdict's expiry (ms since the epoch).
    until_ms: u64,
}

/// The subject of a repository's visibility record.
const EVERYONE: &str = "*";

impl AccessProofs {
    /// The proofs kept under `cache_dir/access`.
    pub fn new(cache_dir: &Path) -> AccessProofs {
        AccessProofs {
            dir: cache_dir.join("access"),
            memory: Arc::default(),
            changes: Arc::default(),
        }
    }

    /// What is known of `token_tag` and `repo`, unexpired: a proof of its own, else the
    /// repository's public visibility.
    pub fn lookup(&self, token_tag: &str, repo: &str) -> Option<Verdict> {
        self.lookup_with_term(token_tag, repo)
            .map(|(verdict, _)| verdict)
    }

    /// [`AccessProofs::lookup`], and how long its answer holds unless this process learns
    /// something new ([`AccessProofs::still_holds`]).
    pub fn lookup_with_term(&self, token_tag: &str, repo: &str) -> Option<(Verdict, Term)> {
        let changes = self.changes.load(std::sync::atomic::Ordering::Acquire);
        let (verdict, until_ms) = self.read(token_tag, repo).or_else(|| {
            self.read(EVERYONE, repo)
                .filter(|(v, _)| *v == Verdict::Public)
        })?;
        Some((verdict, Term { changes, until_ms }))
    }

    /// Whether a verdict read under `term` would be read again now: unexpired, and nothing
    /// recorded or forgotten since.
    pub fn still_holds(&self, term: Term) -> bool {
        term.until_ms > now_ms()
            && self.changes.load(std::sync::atomic::Ordering::Acquire) == term.changes
    }

    fn changed(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Remembers what GitHub answered `token_tag` for `repo`.
    pub fn record(&self, token_tag: &str, repo: &str, verdict: Verdict, lifetime: Duration) {
        self.write(token_tag, repo, verdict, lifetime);
    }

    /// Remembers a repository's visibility as a repository object stated it.
    pub fn record_visibility(&self, repo: &str, public: bool) {
        if public {
            self.write(EVERYONE, repo, Verdict::Public, VISIBILITY_LIFETIME);
        } else {
            // Made private: forget that it was public.
            let id = record_id(EVERYONE, repo);
            self.lock().remove(&id);
            self.changed();
            let _ = fs::remove_file(self.dir.join(&id));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, subject: &str, repo: &str) -> Option<(Verdict, u64)> {
        let id = record_id(subject, repo);
        let now = now_ms();
        if let Some(record) = self.lock().get(&id)
            && record.until_ms > now
        {
            return Some((record.verdict.clone(), record.until_ms));
        }
        // Another process may have proved it: the file is the shared memory.
        let bytes = read_small(&self.dir.join(&id))?;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        if record.until_ms <= now {
            return None;
        }
        let verdict = record.verdict.clone();
        let until_ms = record.until_ms;
        self.lock().insert(id, record);
        Some((verdict, until_ms))
    }

    fn write(&self, subject: &str, repo: &str, verdict: Verdict, lifetime: Duration) {
        let id = record_id(subject, repo);
        let record = Record {
            until_ms: now_ms().saturating_add(lifetime.as_millis() as u64),
            verdict,
        };
        if let Err(e) = self.persist(&id, &record) {
            tracing::debug!(
                "could not keep an access proof in {}: {e}",
                self.dir.display()
            );
        }
        self.lock().insert(id, record);
        self.changed();
    }

    fn persist(&self, id: &str, record: &Record) -> std::io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let mut file = tempfile::Builder::new()
            .prefix(".proof")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.dir)?;
        file.write_all(&serde_json::to_vec(record).unwrap_or_default())?;
        file.persist(self.dir.join(id)).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The file name of a record: a one-way hash of the subject (a token tag) and the repository.
fn record_id(subject: &str, repo: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"peercache access proof v1\0");
    hasher.update(subject.as_bytes());
    hasher.update(b"\0");
    hasher.update(repo.as_bytes());
    hex::encode(hasher.finalize())
}

/// A small regular file's bytes; nothing for anything else (a link, a device, a huge file).
fn read_small(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > 64 * 1024 {
        return None;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(64 * 1024).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_are_per_token_and_shared_between_processes() {
        let dir = tempfile::tempdir().unwrap();
        let proofs = AccessProofs::new(dir.path());
        assert_eq!(proofs.lookup("tag-a", "octo/secret"), None);
        proofs.record("tag-a", "octo/secret", Verdict::Allowed, PROOF_LIFETIME);
        assert_eq!(
            proofs.lookup("tag-a", "octo/secret"),
            Some(Verdict::Allowed)
        );
        assert_eq!(proofs.lookup("tag-b", "octo/secret"), None);
        // Another process (a new handle) reads the file.
        let other = AccessProofs::new(dir.path());
        assert_eq!(other.lookup("tag-a", "octo/secret"), Some(Verdict::Allowed));
        // No file names the token tag or the repository.
        for file in fs::read_dir(dir.path().join("access")).unwrap() {
            let name = file.unwrap().file_name().into_string().unwrap();
            assert!(
                !name.contains("tag-a") && !name.contains("secret"),
                "{name}"
            );
        }
    }

    #[test]
    fn expired_proofs_and_visibility() {
        let dir = tempfile::tempdir().unwrap();
        let proofs = AccessProofs::new(dir.path());
        proofs.record("tag-a", "octo/x", Verdict::Allowed, Duration::ZERO);
        assert_eq!(proofs.lookup("tag-a", "octo/x"), None);
        proofs.record_visibility("octo/open", true);
        assert_eq!(proofs.lookup("anyone", "octo/open"), Some(Verdict::Public));
        proofs.record_visibility("octo/open", false);
        assert_eq!(
            AccessProofs::new(dir.path()).lookup("anyone", "octo/open"),
            None
        );
    }
}
