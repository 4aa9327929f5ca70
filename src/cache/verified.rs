//! Bodies a long-lived process has already verified, and the index records that point at them,
//! kept in memory so that a hot entry is neither re-read nor re-hashed on every hit.
//!
//! Bodies are keyed by SHA-256 digest: a body held here hashed to its key when it was read from
//! disk, so serving it is as safe as hashing it again, and a later change on disk (a rewrite, a
//! flipped bit) cannot reach it. Records are keyed by key id with the identity of the file they
//! were read from (device, inode, size, mtime): one `stat` tells whether another process has
//! replaced or renewed the record since. Only the daemon keeps one
//! (`Cache::with_verified_bodies`); a one-shot `peercache fetch` reads each entry once anyway.

use std::collections::{HashMap, VecDeque};
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::Entry;
use crate::memo::Memo;

/// Index records remembered at most (a record is ~0.5 KB in memory).
const MAX_RECORDS: usize = 4096;
/// Bodies remembered at most (the byte budget is the bound that matters).
const MAX_BODIES: usize = 1 << 16;

/// Which file a record was read from, and its state then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordStamp {
    dev: u64,
    ino: u64,
    size: u64,
    modified: Option<SystemTime>,
}

impl RecordStamp {
    /// The stamp of a record file's metadata.
    pub fn of(meta: &Metadata) -> RecordStamp {
        RecordStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            modified: meta.modified().ok(),
        }
    }

    /// The stamp of a record file as `stat(2)` describes it (the same as [`RecordStamp::of`]
    /// for the same file).
    pub fn of_stat(stat: &libc::stat) -> RecordStamp {
        let since_epoch = Duration::new(stat.st_mtime.unsigned_abs(), stat.st_mtime_nsec as u32);
        let modified = if stat.st_mtime >= 0 {
            UNIX_EPOCH.checked_add(since_epoch)
        } else {
            // Before 1970: nanoseconds still count forward from the (earlier) second.
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(stat.st_mtime.unsigned_abs()))
                .and_then(|t| t.checked_add(Duration::from_nanos(stat.st_mtime_nsec as u64)))
        };
        RecordStamp {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: stat.st_size as u64,
            modified,
        }
    }

    /// The file's last modification.
    pub fn modified(&self) -> Option<SystemTime> {
        self.modified
    }
}

/// Verified bodies up to a byte budget, the oldest dropped first, and the records that point
/// at them.
#[derive(Debug)]
pub struct VerifiedBodies {
    bodies: Memo<String>,
    records: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    by_key: HashMap<String, (RecordStamp, Arc<Entry>)>,
    /// Key ids in the order they came in.
    order: VecDeque<String>,
}

impl VerifiedBodies {
    /// An empty set holding at most `budget` bytes of bodies.
    pub fn new(budget: u64) -> VerifiedBodies {
        VerifiedBodies {
            bodies: Memo::new(budget, MAX_BODIES),
            records: Mutex::default(),
        }
    }

    /// The body whose SHA-256 is `digest`, if held.
    pub fn get(&self, digest: &str) -> Option<Bytes> {
        self.bodies.get(digest).flatten()
    }

    /// Keeps `body`, which the caller verified hashes to `digest` (a reference to the same
    /// bytes, not a copy). Bodies over a quarter of the budget are not kept.
    pub fn insert(&self, digest: &str, body: &Bytes) {
        self.bodies.insert(digest.to_string(), Some(body.clone()));
    }

    /// Like [`VerifiedBodies::insert`] for bytes the caller keeps: copied only when kept.
    pub fn insert_copy(&self, digest: &str, body: &[u8]) {
        if self.bodies.keeps(body.len()) {
            self.insert(digest, &Bytes::copy_from_slice(body));
        }
    }

    /// Remembers the record read for `key_id` and the stamp of its file.
    pub fn remember_record(&self, key_id: &str, stamp: RecordStamp, entry: &Entry) {
        let mut records = self.lock_records();
        let known = records
            .by_key
            .insert(key_id.to_string(), (stamp, Arc::new(entry.clone())))
            .is_some();
        if !known {
            records.order.push_back(key_id.to_string());
            while records.by_key.len() > MAX_RECORDS {
                let Some(oldest) = records.order.pop_front() else {
                    break;
                };
                records.by_key.remove(&oldest);
            }
        }
    }

    /// The record remembered for `key_id`, with the stamp of the file it was read from (shared:
    /// a hit clones no strings under the lock).
    pub fn record(&self, key_id: &str) -> Option<(RecordStamp, Arc<Entry>)> {
        self.lock_records().by_key.get(key_id).cloned()
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.bodies.bytes()
    }

    fn lock_records(&self) -> std::sync::MutexGuard<'_, Records> {
        // A panic while holding the lock leaves consistent maps (every step is complete).
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_verified_bodies_by_digest_within_the_budget() {
        let memo = VerifiedBodies::new(100);
        let body = Bytes::from(vec![1u8; 20]);
        memo.insert("a", &body);
        assert_eq!(memo.get("a").unwrap().as_ptr(), body.as_ptr(), "not a copy");
        memo.insert_copy("b", &[2u8; 25]);
        assert_eq!(memo.get("b").unwrap(), vec![2u8; 25]);
        memo.insert_copy("big", &[3u8; 26]);
        assert!(memo.get("big").is_none(), "over a quarter of the budget");
        assert_eq!(memo.bytes(), 45);
        assert!(memo.get("c").is_none());
    }
}
