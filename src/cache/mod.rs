//! The on-disk cache: bodies stored content-addressed by SHA-256, an index of entries, LRU
//! eviction to a byte bound, safe for several processes sharing one directory.
//!
//! Layout under the cache dir:
//!
//! ```text
//! objects/ab/cdef…        bodies, named by the SHA-256 of their bytes (shared by equal bodies)
//! entries/12/3456….json   one index record per cache key (named by the key's SHA-256)
//! locks/12.lock           fetch stripes: one process at a time fetches a given key upstream
//! cache.lock              writers hold it shared, eviction holds it exclusive
//! usage                   an upper bound of the bytes stored, so eviction need not scan often
//! counters.json           rare events worth keeping across processes (integrity failures)
//! ```
//!
//! Every write goes to a temporary file in the destination directory and is renamed into place,
//! so readers see a whole old file or a whole new one. Every read re-hashes the body: a flipped
//! or truncated object is deleted, counted and reported as a miss, never served. The daemon
//! keeps the bodies it verified in memory (`verified.rs`: by digest, up to a budget), so a
//! hot entry is hashed once, not on every read.

mod key;
mod store;
mod verified;

pub use key::{CacheKey, DEFAULT_ACCEPT, DEFAULT_API_VERSION, normalize_url};
pub use store::{
    Cache, Counters, Entry, KeyLock, Lookup, RecordMark, Remembered, ResponseMeta, Usage,
    no_token_tag, token_tag,
};

/// Milliseconds since the Unix epoch, the cache's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
