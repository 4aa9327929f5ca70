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
    bodies: HashMap<String, Arc<[u8]>>,
    /// Digests in the order they came in.
    order: VecDeque<String>,
    bytes: u64,
    records: HashMap<String, (RecordStamp, Entry)>,
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
    pub fn get(&self, digest: &str) -> Option<Arc<[u8]>> {
        self.lock().bodies.get(digest).cloned()
    }

    /// Keeps `body`, which the caller verified hashes to `digest`. Bodies over a quarter of the
    /// budget are not kept: one of them would push out many small hot ones.
    pub fn insert(&self, digest: &str, body: &[u8]) {
        let size = body.len() as u64;
        if size > self.budget / 4 {
            return;
        }
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
        held.bodies.insert(digest.to_string(), Arc::from(body));
        held.order.push_back(digest.to_string());
        held.bytes += size;
    }

    /// Remembers the record read for `key_id` and the stamp of its file.
    pub fn remember_record(&self, key_id: &str, stamp: RecordStamp, entry: &Entry) {
        let mut held = self.lock();
        let known = held
            .records
            .insert(key_id.to_string(), (stamp, entry.clone()))
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

    /// The record remembered for `key_id`, with the stamp of the file it was read from.
    pub fn record(&self, key_id: &str) -> Option<(RecordStamp, Entry)> {
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
        memo.insert("a", &[1; 20]);
        memo.insert("b", &[2; 20]);
        memo.insert("c", &[3; 20]);
        memo.insert("d", &[4; 20]);
        memo.insert("e", &[5; 20]);
        assert_eq!(memo.bytes(), 100);
        memo.insert("f", &[6; 20]);
        assert!(memo.get("a").is_none(), "the oldest body left");
        assert_eq!(memo.get("f").as_deref(), Some(&[6u8; 20][..]));
        assert_eq!(memo.bytes(), 100);
        memo.insert("big", &[0; 26]);
        assert!(memo.get("big").is_none(), "over a quarter of the budget");
    }
}
