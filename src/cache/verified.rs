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
use std::time::SystemTime;

use bytes::Bytes;

use super::Entry;

/// Index records remembered at most (a record is ~0.5 KB in memory).
const MAX_RECORDS: usize = 4096;

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
}

/// Verified bodies up to a byte budget, the oldest dropped first.
#[derive(Debug)]
pub struct VerifiedBodies {
    budget: u64,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// Shared bytes: a hit hands out a reference, never a copy.
    bodies: HashMap<String, Bytes>,
    /// Digests in the order they came in.
    order: VecDeque<String>,
    bytes: u64,
    records: HashMap<String, (RecordStamp, Arc<Entry>)>,
    /// Key ids in the order they came in.
    record_order: VecDeque<String>,
}

impl VerifiedBodies {
    /// An empty set holding at most `budget` bytes of bodies.
    pub fn new(budget: u64) -> VerifiedBodies {
        VerifiedBodies {
            budget,
            held: Mutex::new(Held::default()),
        }
    }

    /// The body whose SHA-256 is `digest`, if held.
    pub fn get(&self, digest: &str) -> Option<Bytes> {
        self.lock().bodies.get(digest).cloned()
    }

    /// Keeps `body`, which the caller verified hashes to `digest` (a reference to the same
    /// bytes, not a copy). Bodies over a quarter of the budget are not kept: one of them would
    /// push out many small hot ones.
    pub fn insert(&self, digest: &str, body: &Bytes) {
        if self.keeps(body.len()) {
            self.keep(digest, body.clone());
        }
    }

    /// Like [`VerifiedBodies::insert`] for bytes the caller keeps: copied only when kept.
    pub fn insert_copy(&self, digest: &str, body: &[u8]) {
        if self.keeps(body.len()) {
            self.keep(digest, Bytes::copy_from_slice(body));
        }
    }

    /// Whether a body of `size` bytes is small enough to keep.
    fn keeps(&self, size: usize) -> bool {
        size as u64 <= self.budget / 4
    }

    fn keep(&self, digest: &str, body: Bytes) {
        let size = body.len() as u64;
        let mut held = self.lock();
        if held.bodies.contains_key(digest) {
            return;
        }
        while held.bytes + size > self.budget {
            let Some(oldest) = held.order.pop_front() else {
                break;
            };
            if let Some(gone) = held.bodies.remove(&oldest) {
                held.bytes -= gone.len() as u64;
            }
        }
        held.bodies.insert(digest.to_string(), body);
        held.order.push_back(digest.to_string());
        held.bytes += size;
    }

    /// Remembers the record read for `key_id` and the stamp of its file.
    pub fn remember_record(&self, key_id: &str, stamp: RecordStamp, entry: &Entry) {
        let mut held = self.lock();
        let known = held
            .records
            .insert(key_id.to_string(), (stamp, Arc::new(entry.clone())))
            .is_some();
        if !known {
            held.record_order.push_back(key_id.to_string());
            while held.records.len() > MAX_RECORDS {
                let Some(oldest) = held.record_order.pop_front() else {
                    break;
                };
                held.records.remove(&oldest);
            }
        }
    }

    /// The record remembered for `key_id`, with the stamp of the file it was read from (shared:
    /// a hit clones no strings under the lock).
    pub fn record(&self, key_id: &str) -> Option<(RecordStamp, Arc<Entry>)> {
        self.lock().records.get(key_id).cloned()
    }

    /// Bytes held.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // A panic while holding the lock leaves consistent maps (every step is complete).
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_bodies_up_to_the_budget_oldest_out_first() {
        let memo = VerifiedBodies::new(100);
        let body = |b: u8, n: usize| Bytes::from(vec![b; n]);
        memo.insert("a", &body(1, 20));
        memo.insert("b", &body(2, 20));
        memo.insert("c", &body(3, 20));
        memo.insert("d", &body(4, 20));
        memo.insert("e", &body(5, 20));
        assert_eq!(memo.bytes(), 100);
        let f = body(6, 20);
        memo.insert("f", &f);
        assert!(memo.get("a").is_none(), "the oldest body left");
        let held = memo.get("f").unwrap();
        assert_eq!(held, f);
        assert_eq!(held.as_ptr(), f.as_ptr(), "the same bytes, not a copy");
        assert_eq!(memo.bytes(), 100);
        memo.insert("big", &body(0, 26));
        assert!(memo.get("big").is_none(), "over a quarter of the budget");
    }
}
