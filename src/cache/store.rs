//! The cache store itself: see the module docs of [`crate::cache`] for the layout.

use std::ffi::{CStr, CString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::verified::{RecordStamp, VerifiedBodies};
use super::{CacheKey, now_ms};
use crate::error::UserError;

/// The index record of one cached response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The canonical cache key (method, normalized URL, representation headers).
    pub key: String,
    /// The URL the response came from.
    pub url: String,
    /// The HTTP status (always 2xx: nothing else is stored).
    pub status: u16,
    /// `Content-Type` as sent.
    pub content_type: Option<String>,
    /// `Link` as sent (pagination).
    pub link: Option<String>,
    /// `Last-Modified` as sent, for `If-Modified-Since`.
    pub last_modified: Option<String>,
    /// `ETag` as sent; useful only under the token it came with.
    pub etag: Option<String>,
    /// A hash of the token the ETag came with (see [`token_tag`]).
    pub etag_token: Option<String>,
    /// Lowercase hex SHA-256 of the body.
    pub digest: String,
    /// Body size in bytes.
    pub size: u64,
    /// When the body was fetched or last revalidated, in ms since the epoch.
    pub fetched_at_ms: u64,
    /// The TTL the fetching request asked for, in seconds (informative: readers judge freshness
    /// by their own TTL).
    pub ttl_secs: u64,
}

impl Entry {
    /// Milliseconds since the entry was fetched or revalidated.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.fetched_at_ms)
    }

    /// Whether the entry is fresh for a requester whose TTL is `ttl`.
    pub fn is_fresh(&self, ttl: Duration, now_ms: u64) -> bool {
        (self.age_ms(now_ms) as u128) < ttl.as_millis()
    }
}

/// What a fetched response contributes to its entry, besides the body.
#[derive(Debug, Clone, Default)]
pub struct ResponseMeta {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Link`.
    pub link: Option<String>,
    /// `Last-Modified`.
    pub last_modified: Option<String>,
    /// `ETag`.
    pub etag: Option<String>,
    /// [`token_tag`] of the token the request was made with.
    pub etag_token: Option<String>,
}

/// The outcome of a cache read.
// A lookup lives for one request; boxing the hit would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Lookup {
    /// The entry and its verified body (shared with the verified bodies in memory, when held).
    Hit { entry: Entry, body: Bytes },
    /// Nothing stored under the key.
    Miss,
    /// Something was stored but failed verification; it has been removed and counted.
    Discarded { reason: String },
}

/// A hit [`Cache::get_remembered`] found in memory, and which record it came from.
#[derive(Debug)]
pub struct Remembered {
    /// The entry.
    pub entry: Entry,
    /// Its verified body, shared with the verified bodies in memory.
    pub body: Bytes,
    /// The record the hit rests on, for [`Cache::still_remembered`].
    pub mark: RecordMark,
}

/// A remembered record and the state of its file when it answered a hit.
#[derive(Debug, Clone)]
pub struct RecordMark {
    /// The `entries` dir, held open (`None`: it could not be opened; the whole path is used).
    dir: Option<Arc<OwnedFd>>,
    /// The record's path under it.
    relative: CString,
    /// The record's whole path.
    path: PathBuf,
    stamp: RecordStamp,
}

/// The stamp of `relative` under the open dir `dir`, following links as `fs::metadata` does.
fn stat_at(dir: &OwnedFd, relative: &CStr) -> Option<RecordStamp> {
    // SAFETY: an all-zero `stat` is a valid value to overwrite.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open, the path is NUL-terminated, and `stat` is writable.
    let done = unsafe { libc::fstatat(dir.as_raw_fd(), relative.as_ptr(), &mut stat, 0) } == 0;
    done.then(|| RecordStamp::of_stat(&stat))
}

/// A directory opened for lookups only (`O_PATH`).
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    Ok(OwnedFd::from(file))
}

/// Entries and bytes in the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Number of index entries.
    pub entries: u64,
    /// Bytes of distinct bodies referenced by entries.
    pub bytes: u64,
}

/// Events counted across every process that uses the cache dir.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Bodies or index records that failed verification and were discarded.
    pub integrity_failures: u64,
    /// Entries removed by LRU eviction.
    pub evictions: u64,
}

/// A held fetch stripe: while it lives, no other process fetches keys of this stripe upstream.
/// (In a read-only cache dir there is nothing to hold, and nothing to store either.)
pub struct KeyLock {
    _file: Option<File>,
}

/// A handle on one cache dir.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    max_size: u64,
    /// Bodies already verified, when this process keeps them (the daemon).
    verified: Option<Arc<VerifiedBodies>>,
    /// The `entries` dir, held open for [`Cache::still_remembered`].
    entries_dir: Arc<std::sync::Mutex<Option<Arc<OwnedFd>>>>,
    /// The dir holds a cache but cannot be written: entries are read, nothing is stored.
    read_only: bool,
}

/// How stale an entry's last-use time may get before a read renews it.
const LAST_USE_GRANULARITY: Duration = Duration::from_secs(10);

/// Whether a record's last use (its mtime) is recent enough not to renew.
fn used_recently(meta: &fs::Metadata) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age < LAST_USE_GRANULARITY)
}

/// LRU: the index record's mtime is the entry's last use. Renewed at most every 10 s, so that a
/// hot entry's reads do not each write its inode.
fn mark_used(record: &File) {
    if !record.metadata().is_ok_and(|m| used_recently(&m)) {
        let _ = record.set_modified(SystemTime::now());
    }
}

/// Eviction brings usage down to this share of the bound, so it does not run on every store.
const EVICT_TARGET_PERCENT: u64 = 90;

impl Cache {
    /// Opens (creating when needed) the cache dir and checks that it is writable.
    pub fn open(dir: &Path, max_size: u64) -> anyhow::Result<Cache> {
        let unusable = |e: io::Error| -> anyhow::Error {
            UserError::usage(format!(
                "cache dir {} is not usable ({e}); set PEERCACHE_CACHE_DIR or --cache-dir to a writable directory",
                dir.display()
            ))
            .into()
        };
        let prepared = (|| -> io::Result<()> {
            for sub in ["objects", "entries", "locks"] {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir.join(sub))?;
            }
            // O_TMPFILE: proves we may create files here without leaving one behind.
            tempfile::tempfile_in(dir).map(drop)
        })();
        let read_only = match prepared {
            Ok(()) => false,
            // A cache that can still be read (a read-only mount, a full or broken disk) keeps
            // answering from what it holds; misses go upstream and are not stored.
            Err(e) if fs::read_dir(dir.join("entries")).is_ok() => {
                tracing::warn!(
                    "cache dir {} cannot be written ({e}): its entries are still served, but nothing new is stored; make it writable or set PEERCACHE_CACHE_DIR to a writable directory",
                    dir.display()
                );
                true
            }
            Err(e) => return Err(unusable(e)),
        };
        Ok(Cache {
            dir: dir.to_path_buf(),
            max_size,
            verified: None,
            entries_dir: Arc::default(),
            read_only,
        })
    }

    /// Fails when the cache dir is read-only, naming the fix.
    fn writable(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.read_only,
            "the cache dir {} is read-only; make it writable or set PEERCACHE_CACHE_DIR",
            self.dir.display()
        );
        Ok(())
    }

    /// Keeps up to `budget` bytes of verified bodies in memory, shared by every clone: for a
    /// long-lived process that reads the same entries again and again.
    pub fn with_verified_bodies(mut self, budget: u64) -> Cache {
        self.verified = Some(Arc::new(VerifiedBodies::new(budget)));
        self
    }

    /// The cache dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, key_id: &str) -> PathBuf {
        self.dir
            .join("entries")
            .join(&key_id[..2])
            .join(format!("{key_id}.json"))
    }

    fn object_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("objects")
            .join(&digest[..2])
            .join(&digest[2..])
    }

    /// Reads the entry and body stored under `key`, verifying the body's digest and size.
    pub fn get(&self, key: &CacheKey) -> Lookup {
        self.get_by_id(key.id(), Some(key.canonical()))
    }

    /// Like [`Cache::get`], by key id; `canonical` (when known) guards against a mismatched record.
    pub fn get_by_id(&self, key_id: &str, canonical: Option<&str>) -> Lookup {
        if !is_hex_id(key_id) {
            return Lookup::Miss;
        }
        let path = self.entry_path(key_id);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(_) => return Lookup::Miss,
        };
        let mut text = Vec::new();
        if let Err(e) = file.read_to_end(&mut text) {
            return Lookup::Discarded {
                reason: format!("cannot read index record: {e}"),
            };
        }
        let entry: Entry = match serde_json::from_slice(&text) {
            Ok(entry) => entry,
            Err(e) => {
                return self.discard(
                    &path,
                    None,
                    format!("index record {} is corrupt: {e}", path.display()),
                );
            }
        };
        if canonical.is_some_and(|c| c != entry.key) || !is_hex_id(&entry.digest) {
            return self.discard(
                &path,
                None,
                format!("index record {} does not match its key", path.display()),
            );
        }
        if let Some(body) = self.held_body(&entry) {
            self.remember(key_id, &file, &entry);
            return Lookup::Hit { entry, body };
        }
        let object = self.object_path(&entry.digest);
        let body = match fs::read(&object) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                return self.discard(
                    &path,
                    None,
                    format!("body {} is missing: {e}", entry.digest),
                );
            }
        };
        if body.len() as u64 != entry.size || hex::encode(Sha256::digest(&body)) != entry.digest {
            let reason = format!(
                "body {} failed verification ({} bytes on disk, {} expected, or its SHA-256 differs)",
                entry.digest,
                body.len(),
                entry.size
            );
            return self.discard(&path, Some(&object), reason);
        }
        if let Some(verified) = &self.verified {
            verified.insert(&entry.digest, &body);
        }
        self.remember(key_id, &file, &entry);
        Lookup::Hit { entry, body }
    }

    /// The index record stored under a key id, without its body (a cheap look at its size).
    pub fn record_by_id(&self, key_id: &str) -> Option<Entry> {
        if !is_hex_id(key_id) {
            return None;
        }
        let text = fs::read(self.entry_path(key_id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Like [`Cache::get_by_id`], but the body is appended to the buffer `frame` makes from
    /// the entry (a header, with room reserved for the body): a body sent over the wire is read
    /// once into the buffer that is sealed, never copied beside it. Verified as every read is;
    /// `None` when missing or bad (a bad one is discarded and counted).
    pub fn get_framed(
        &self,
        key_id: &str,
        frame: impl FnOnce(&Entry) -> Vec<u8>,
    ) -> Option<(Entry, Vec<u8>)> {
        let entry = match self.get_record(key_id) {
            Ok(entry) => entry,
            Err(_) => return None,
        };
        let mut out = frame(&entry);
        let start = out.len();
        if let Some(held) = self.verified.as_ref().and_then(|v| v.get(&entry.digest))
            && held.len() as u64 == entry.size
        {
            out.extend_from_slice(&held);
            return Some((entry, out));
        }
        let object = self.object_path(&entry.digest);
        let read = File::open(&object).and_then(|mut file| {
            out.reserve_exact(entry.size as usize);
            // One byte past the size shows a body that grew.
            Read::by_ref(&mut file)
                .take(entry.size.saturating_add(1))
                .read_to_end(&mut out)
        });
        let body = &out[start..];
        if read.is_err()
            || body.len() as u64 != entry.size
            || hex::encode(Sha256::digest(body)) != entry.digest
        {
            let reason = format!(
                "body {} failed verification ({} bytes read, {} expected, or its SHA-256 differs)",
                entry.digest,
                body.len(),
                entry.size
            );
            self.discard(&self.entry_path(key_id), Some(&object), reason);
            return None;
        }
        Some((entry, out))
    }

    /// The record under `key_id`, checked as [`Cache::get_by_id`] checks it (a corrupt one is
    /// discarded).
    fn get_record(&self, key_id: &str) -> Result<Entry, ()> {
        if !is_hex_id(key_id) {
            return Err(());
        }
        let path = self.entry_path(key_id);
        let text = fs::read(&path).map_err(|_| ())?;
        match serde_json::from_slice::<Entry>(&text) {
            Ok(entry) if is_hex_id(&entry.digest) => Ok(entry),
            _ => {
                self.discard(
                    &path,
                    None,
                    format!("index record {} is corrupt", path.display()),
                );
                Err(())
            }
        }
    }

    /// Marks the record used and, when this process keeps verified entries, remembers it with
    /// the stamp of its file (taken after the mark, which may change the mtime).
    fn remember(&self, key_id: &str, record: &File, entry: &Entry) {
        mark_used(record);
        if let Some(verified) = &self.verified
            && let Ok(meta) = record.metadata()
        {
            verified.remember_record(key_id, RecordStamp::of(&meta), entry);
        }
    }

    /// A hit without reading the disk: the record under `key` was read (and its body verified) by
    /// this process, one `stat` shows its file unchanged since, and its last use is recent (so
    /// LRU needs no renewal). `None` means "ask [`Cache::get`]".
    ///
    /// This runs on the daemon's async workers: a `stat` of a file whose inode is in memory does
    /// not wait on the disk, and a round trip to the blocking pool would cost more than it.
    pub fn get_remembered(&self, key: &CacheKey) -> Option<Remembered> {
        let verified = self.verified.as_ref()?;
        let (stamp, entry) = verified.record(key.id())?;
        if entry.key != key.canonical() {
            return None;
        }
        let path = self.entry_path(key.id());
        let meta = fs::metadata(&path).ok()?;
        if RecordStamp::of(&meta) != stamp || !used_recently(&meta) {
            return None;
        }
        let body = self.held_body(&entry)?;
        let relative = CString::new(format!("{}/{}.json", &key.id()[..2], key.id())).ok()?;
        let dir = self.entries_dir_finding(&relative, stamp);
        Some(Remembered {
            entry: Entry::clone(&entry),
            body,
            mark: RecordMark {
                dir,
                relative,
                path,
                stamp,
            },
        })
    }

    /// Whether [`Cache::get_remembered`] would still answer with the record `mark` names, at
    /// `now`: its file unchanged and recently used. One `stat` of two path components (under
    /// the `entries` dir the mark holds open), no allocation.
    ///
    /// The record in memory is not looked at: a record rewritten by anyone is a new file (a
    /// rename over the old one), so an unchanged file is the record that answered, and a
    /// record memory dropped since would be read again from that same file.
    pub fn still_remembered(&self, mark: &RecordMark, now: SystemTime) -> bool {
        let stamp = match &mark.dir {
            Some(dir) => stat_at(dir, &mark.relative),
            None => fs::metadata(&mark.path)
                .ok()
                .map(|meta| RecordStamp::of(&meta)),
        };
        stamp.is_some_and(|stamp| {
            stamp == mark.stamp
                && stamp
                    .modified()
                    .and_then(|modified| now.duration_since(modified).ok())
                    .is_some_and(|age| age < LAST_USE_GRANULARITY)
        })
    }

    /// The `entries` dir, held open, when `relative` under it is the file stamped `stamp` (it
    /// is reopened when the dir held is no longer the one the cache dir names).
    fn entries_dir_finding(&self, relative: &CStr, stamp: RecordStamp) -> Option<Arc<OwnedFd>> {
        let mut held = self.entries_dir.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = held.as_ref()
            && stat_at(dir, relative) == Some(stamp)
        {
            return Some(Arc::clone(dir));
        }
        let dir = Arc::new(open_dir(&self.dir.join("entries")).ok()?);
        let found = stat_at(&dir, relative) == Some(stamp);
        *held = Some(Arc::clone(&dir));
        found.then_some(dir)
    }

    /// The body of `entry` from the verified bodies in memory, when held: the same bytes, not a
    /// copy.
    fn held_body(&self, entry: &Entry) -> Option<Bytes> {
        let body = self.verified.as_ref()?.get(&entry.digest)?;
        (body.len() as u64 == entry.size).then_some(body)
    }

    /// Removes a record (and a bad object), counts the failure and reports it.
    fn discard(&self, entry_path: &Path, object: Option<&Path>, reason: String) -> Lookup {
        let _ = fs::remove_file(entry_path);
        if let Some(object) = object {
            let _ = fs::remove_file(object);
        }
        self.bump(|c| c.integrity_failures += 1);
        tracing::warn!("discarded a cache entry: {reason}; it will be fetched again");
        Lookup::Discarded { reason }
    }

    /// Stores a 2xx response under `key`, replacing what was there.
    pub fn put(
        &self,
        key: &CacheKey,
        url: &str,
        meta: &ResponseMeta,
        body: &[u8],
        ttl: Duration,
    ) -> anyhow::Result<Entry> {
        self.writable()?;
        let entry = Entry {
            key: key.canonical().to_string(),
            url: url.to_string(),
            status: meta.status,
            content_type: meta.content_type.clone(),
            link: meta.link.clone(),
            last_modified: meta.last_modified.clone(),
            etag: meta.etag.clone(),
            etag_token: meta.etag_token.clone(),
            digest: hex::encode(Sha256::digest(body)),
            size: body.len() as u64,
            fetched_at_ms: now_ms(),
            ttl_secs: ttl.as_secs(),
        };
        let (added, record) = {
            let _shared = self.writer_lock()?;
            let added = self.write_object(&entry.digest, body)?;
            (added, self.write_entry(key.id(), &entry)?)
        };
        self.keep_written(key.id(), &record, &entry, Some(body));
        self.account(added)?;
        Ok(entry)
    }

    /// Stores an entry received whole (for example from a peer) after checking the body matches it.
    pub fn put_entry(&self, key_id: &str, entry: &Entry, body: &[u8]) -> anyhow::Result<()> {
        self.writable()?;
        anyhow::ensure!(is_hex_id(key_id), "invalid key id");
        anyhow::ensure!(
            body.len() as u64 == entry.size && hex::encode(Sha256::digest(body)) == entry.digest,
            "body does not match its digest"
        );
        // A peer's clock may run ahead: an entry is never younger here than its arrival.
        let mut entry = entry.clone();
        entry.fetched_at_ms = entry.fetched_at_ms.min(now_ms());
        let (added, record) = {
            let _shared = self.writer_lock()?;
            let added = self.write_object(&entry.digest, body)?;
            (added, self.write_entry(key_id, &entry)?)
        };
        self.keep_written(key_id, &record, &entry, Some(body));
        self.account(added)
    }

    /// Marks an entry as revalidated now (after a 304), keeping its body.
    pub fn renew(
        &self,
        key: &CacheKey,
        entry: &Entry,
        etag: Option<String>,
        etag_token: Option<String>,
    ) -> anyhow::Result<Entry> {
        self.writable()?;
        let mut renewed = entry.clone();
        renewed.fetched_at_ms = now_ms();
        if etag.is_some() {
            renewed.etag = etag;
            renewed.etag_token = etag_token;
        }
        let _shared = self.writer_lock()?;
        let record = self.write_entry(key.id(), &renewed)?;
        self.keep_written(key.id(), &record, &renewed, None);
        Ok(renewed)
    }

    /// After this process wrote `entry` (whose record file now has the metadata `record`) and,
    /// when given, its body (hashed to the entry's digest by the caller): keeps both in memory.
    fn keep_written(
        &self,
        key_id: &str,
        record: &fs::Metadata,
        entry: &Entry,
        body: Option<&[u8]>,
    ) {
        if let Some(verified) = &self.verified {
            if let Some(body) = body {
                verified.insert_copy(&entry.digest, body);
            }
            verified.remember_record(key_id, RecordStamp::of(record), entry);
        }
    }

    /// Takes the fetch stripe of `key`, blocking until other processes release it.
    pub fn lock_key(&self, key: &CacheKey) -> anyhow::Result<KeyLock> {
        if self.read_only {
            return Ok(KeyLock { _file: None });
        }
        let path = self
            .dir
            .join("locks")
            .join(format!("{}.lock", &key.id()[..3]));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok(KeyLock { _file: Some(file) })
    }

    /// Writers hold `cache.lock` shared so that eviction (exclusive) never sees half a store.
    fn writer_lock(&self) -> io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("cache.lock"))?;
        file.lock_shared()?;
        Ok(file)
    }

    /// Writes a body unless an intact copy exists; returns the bytes added.
    fn write_object(&self, digest: &str, body: &[u8]) -> io::Result<u64> {
        let path = self.object_path(digest);
        if let Ok(existing) = fs::read(&path)
            && hex::encode(Sha256::digest(&existing)) == digest
        {
            return Ok(0);
        }
        write_atomic(&path, body)?;
        Ok(body.len() as u64)
    }

    fn write_entry(&self, key_id: &str, entry: &Entry) -> io::Result<fs::Metadata> {
        let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
        write_atomic(&self.entry_path(key_id), &json)
    }

    /// Adds to the usage bound and evicts when it passes the limit.
    fn account(&self, added: u64) -> anyhow::Result<()> {
        if added == 0 {
            return Ok(());
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(self.dir.join("usage"))?;
        file.lock()?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let bound = text
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
            .saturating_add(added);
        rewrite(&mut file, bound.to_string().as_bytes())?;
        drop(file);
        if bound > self.max_size {
            self.evict()?;
        }
        Ok(())
    }

    /// Removes least-recently-used entries until the bodies fit under the bound, deletes bodies
    /// no entry references and temporary files left by crashed writers, and resets `usage`.
    pub fn evict(&self) -> anyhow::Result<Usage> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("cache.lock"))?;
        lock.lock()?;
        let mut records = self.scan_entries();
        let mut refs: std::collections::HashMap<String, (u64, usize)> =
            std::collections::HashMap::new();
        for r in &records {
            let slot = refs
                .entry(r.entry.digest.clone())
                .or_insert((r.entry.size, 0));
            slot.1 += 1;
        }
        let mut bytes: u64 = refs.values().map(|(size, _)| size).sum();
        let target = self.max_size / 100 * EVICT_TARGET_PERCENT;
        records.sort_by_key(|r| r.last_used);
        let mut evicted = 0;
        let mut kept = records.len();
        for r in &records {
            if bytes <= target {
                break;
            }
            let _ = fs::remove_file(&r.path);
            kept -= 1;
            evicted += 1;
            if let Some(slot) = refs.get_mut(&r.entry.digest) {
                slot.1 -= 1;
                if slot.1 == 0 {
                    bytes = bytes.saturating_sub(slot.0);
                }
            }
        }
        self.remove_unreferenced_objects(&refs);
        let usage = Usage {
            entries: kept as u64,
            bytes,
        };
        fs::write(self.dir.join("usage"), bytes.to_string())?;
        if evicted > 0 {
            self.bump(|c| c.evictions += evicted);
            tracing::info!(
                "evicted {evicted} least-recently-used cache entries to stay under {} bytes",
                self.max_size
            );
        }
        Ok(usage)
    }

    fn remove_unreferenced_objects(&self, refs: &std::collections::HashMap<String, (u64, usize)>) {
        let Ok(shards) = fs::read_dir(self.dir.join("objects")) else {
            return;
        };
        for shard in shards.flatten() {
            let Ok(files) = fs::read_dir(shard.path()) else {
                continue;
            };
            let prefix = shard.file_name().to_string_lossy().into_owned();
            for file in files.flatten() {
                let digest = format!("{prefix}{}", file.file_name().to_string_lossy());
                let live = refs.get(&digest).is_some_and(|(_, count)| *count > 0);
                if !live {
                    let _ = fs::remove_file(file.path());
                }
            }
        }
        // Temporary files of crashed writers in the entries tree (no writer runs during eviction).
        if let Ok(shards) = fs::read_dir(self.dir.join("entries")) {
            for shard in shards.flatten() {
                for file in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                    if file.file_name().to_string_lossy().starts_with(".tmp") {
                        let _ = fs::remove_file(file.path());
                    }
                }
            }
        }
    }

    /// Every readable index record with its path and last use.
    fn scan_entries(&self) -> Vec<ScannedEntry> {
        let mut out = Vec::new();
        let Ok(shards) = fs::read_dir(self.dir.join("entries")) else {
            return out;
        };
        for shard in shards.flatten() {
            for file in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                let path = file.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let Ok(bytes) = fs::read(&path) else { continue };
                let Ok(entry) = serde_json::from_slice::<Entry>(&bytes) else {
                    continue;
                };
                let last_used = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(ScannedEntry {
                    path,
                    entry,
                    last_used,
                });
            }
        }
        out
    }

    /// Entries and distinct body bytes, by scanning the index.
    pub fn usage(&self) -> Usage {
        let records = self.scan_entries();
        let mut seen = std::collections::HashSet::new();
        let bytes = records
            .iter()
            .filter(|r| seen.insert(r.entry.digest.clone()))
            .map(|r| r.entry.size)
            .sum();
        Usage {
            entries: records.len() as u64,
            bytes,
        }
    }

    /// Every entry in the index with its key id (for the swarm and for tests).
    pub fn entries(&self) -> Vec<(String, Entry)> {
        self.scan_entries()
            .into_iter()
            .filter_map(|r| {
                let id = r.path.file_stem()?.to_string_lossy().into_owned();
                Some((id, r.entry))
            })
            .collect()
    }

    /// The counters shared by every process using this cache dir.
    pub fn counters(&self) -> Counters {
        fs::read(self.dir.join("counters.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn bump(&self, change: impl FnOnce(&mut Counters)) {
        let result = (|| -> io::Result<()> {
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(self.dir.join("counters.json"))?;
            file.lock()?;
            let mut text = Vec::new();
            file.read_to_end(&mut text)?;
            let mut counters: Counters = serde_json::from_slice(&text).unwrap_or_default();
            change(&mut counters);
            rewrite(
                &mut file,
                &serde_json::to_vec(&counters).map_err(io::Error::other)?,
            )
        })();
        if let Err(e) = result {
            tracing::debug!("could not update cache counters: {e}");
        }
    }
}

struct ScannedEntry {
    path: PathBuf,
    entry: Entry,
    last_used: SystemTime,
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<fs::Metadata> {
    let parent = path.parent().expect("cache paths have a parent");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp")
        .tempfile_in(parent)?;
    tmp.write_all(bytes)?;
    // The renamed file keeps its inode and mtime: this is the stamp of what now sits at `path`.
    tmp.persist(path).map_err(|e| e.error)?.metadata()
}

/// Replaces a locked file's contents in place.
fn rewrite(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(bytes)
}

fn is_hex_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A short, non-reversible tag of a token, stored beside an ETag to know which token it is for.
/// The token itself decides it, however it is written (`X`, `Bearer X`, `token X`): a daemon's
/// own token and the same token in a client's `Authorization` are one caller to GitHub.
pub fn token_tag(token: Option<&str>) -> String {
    let token = token.unwrap_or("").trim();
    let bare = ["bearer ", "token "]
        .iter()
        .find_map(|scheme| {
            token
                .get(..scheme.len())
                .filter(|head| head.eq_ignore_ascii_case(scheme))
                .map(|_| token[scheme.len()..].trim_start())
        })
        .unwrap_or(token);
    let mut hasher = Sha256::new();
    hasher.update(b"peercache etag token v1\0");
    hasher.update(bare.as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

/// [`token_tag`] of no token, worked out once.
pub fn no_token_tag() -> &'static str {
    static TAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| token_tag(None));
    &TAG
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{DEFAULT_ACCEPT, DEFAULT_API_VERSION};

    fn key(path: &str) -> CacheKey {
        let url = url::Url::parse(&format!("https://api.github.com/{path}")).unwrap();
        CacheKey::new(&url, DEFAULT_ACCEPT, DEFAULT_API_VERSION)
    }

    fn meta() -> ResponseMeta {
        ResponseMeta {
            status: 200,
            content_type: Some("application/json".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_token_has_one_tag_however_it_is_written() {
        let tag = token_tag(Some("abc"));
        assert_eq!(token_tag(Some("Bearer abc")), tag);
        assert_eq!(token_tag(Some("token abc")), tag);
        assert_eq!(token_tag(Some("  BEARER   abc ")), tag);
        assert_ne!(token_tag(Some("abd")), tag);
        assert_ne!(token_tag(None), tag);
    }

    #[test]
    fn round_trip_and_dedup() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        cache
            .put(
                &key("a"),
                "u",
                &meta(),
                b"same body",
                Duration::from_secs(60),
            )
            .unwrap();
        cache
            .put(
                &key("b"),
                "u",
                &meta(),
                b"same body",
                Duration::from_secs(60),
            )
            .unwrap();
        match cache.get(&key("a")) {
            Lookup::Hit { body, entry } => {
                assert_eq!(body, &b"same body"[..]);
                assert!(entry.is_fresh(Duration::from_secs(60), now_ms()));
                assert!(!entry.is_fresh(Duration::ZERO, now_ms()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            cache.usage(),
            Usage {
                entries: 2,
                bytes: 9
            }
        );
        assert!(matches!(cache.get(&key("c")), Lookup::Miss));
    }

    /// A cache as the daemon opens it (remembering what it read) and another process's, on one
    /// dir.
    fn daemon_and_other(dir: &Path) -> (Cache, Cache) {
        let daemon = Cache::open(dir, 1 << 20)
            .unwrap()
            .with_verified_bodies(1 << 16);
        (daemon, Cache::open(dir, 1 << 20).unwrap())
    }

    #[test]
    fn a_remembered_entry_is_served_until_another_process_replaces_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let (daemon, other) = daemon_and_other(dir.path());
        let ttl = Duration::from_secs(60);
        assert!(
            daemon.get_remembered(&key("a")).is_none(),
            "nothing read yet"
        );
        daemon
            .put(&key("a"), "u", &meta(), b"first body", ttl)
            .unwrap();
        match daemon.get_remembered(&key("a")) {
            Some(Remembered { body, .. }) => assert_eq!(body, &b"first body"[..]),
            other => panic!("expected a remembered hit, got {other:?}"),
        }
        assert!(
            other.get_remembered(&key("a")).is_none(),
            "a cache without memory always reads the disk"
        );

        // Another process stores a new answer for the key: the stamp no longer matches.
        other
            .put(&key("a"), "u", &meta(), b"second body", ttl)
            .unwrap();
        assert!(daemon.get_remembered(&key("a")).is_none());
        match daemon.get(&key("a")) {
            Lookup::Hit { body, .. } => assert_eq!(body, &b"second body"[..]),
            other => panic!("expected a hit, got {other:?}"),
        }
        match daemon.get_remembered(&key("a")) {
            Some(Remembered { body, .. }) => assert_eq!(body, &b"second body"[..]),
            other => panic!("expected the new body remembered, got {other:?}"),
        }

        // A removed record is a miss, whatever memory holds.
        std::fs::remove_file(daemon.entry_path(key("a").id())).unwrap();
        assert!(daemon.get_remembered(&key("a")).is_none());
        assert!(matches!(daemon.get(&key("a")), Lookup::Miss));
    }

    #[test]
    fn a_mark_holds_while_its_record_file_is_unchanged_and_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let (daemon, other) = daemon_and_other(dir.path());
        let ttl = Duration::from_secs(60);
        daemon.put(&key("a"), "u", &meta(), b"first", ttl).unwrap();
        let mark = daemon.get_remembered(&key("a")).unwrap().mark;
        assert!(mark.dir.is_some(), "the entries dir is held open");
        let now = SystemTime::now();
        assert!(daemon.still_remembered(&mark, now));
        assert!(
            !daemon.still_remembered(&mark, now + LAST_USE_GRANULARITY),
            "not used recently any more"
        );

        // Replaced by another process: a new file.
        other.put(&key("a"), "u", &meta(), b"second", ttl).unwrap();
        assert!(!daemon.still_remembered(&mark, SystemTime::now()));

        // The whole entries dir replaced: the dir held open no longer has the record, and the
        // next mark holds the new dir.
        assert!(matches!(daemon.get(&key("a")), Lookup::Hit { .. }));
        let mark = daemon.get_remembered(&key("a")).unwrap().mark;
        let entries = dir.path().join("entries");
        let moved = dir.path().join("entries-old");
        std::fs::rename(&entries, &moved).unwrap();
        copy_tree(&moved, &entries);
        std::fs::remove_dir_all(&moved).unwrap();
        assert!(!daemon.still_remembered(&mark, SystemTime::now()));
        assert!(matches!(daemon.get(&key("a")), Lookup::Hit { .. }));
        let mark = daemon.get_remembered(&key("a")).unwrap().mark;
        assert!(mark.dir.is_some(), "the new entries dir is held open");
        assert!(daemon.still_remembered(&mark, SystemTime::now()));
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for item in std::fs::read_dir(from).unwrap() {
            let item = item.unwrap();
            let target = to.join(item.file_name());
            if item.file_type().unwrap().is_dir() {
                copy_tree(&item.path(), &target);
            } else {
                std::fs::copy(item.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn flipped_or_truncated_bodies_are_discarded_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        let entry = cache
            .put(
                &key("a"),
                "u",
                &meta(),
                b"0123456789",
                Duration::from_secs(60),
            )
            .unwrap();
        let object = cache.object_path(&entry.digest);
        let mut bytes = fs::read(&object).unwrap();
        bytes[3] ^= 0x01;
        fs::write(&object, &bytes).unwrap();
        assert!(matches!(cache.get(&key("a")), Lookup::Discarded { .. }));
        assert!(matches!(cache.get(&key("a")), Lookup::Miss));
        assert!(!object.exists());

        let entry = cache
            .put(
                &key("b"),
                "u",
                &meta(),
                b"abcdefghij",
                Duration::from_secs(60),
            )
            .unwrap();
        fs::write(cache.object_path(&entry.digest), b"abcde").unwrap();
        assert!(matches!(cache.get(&key("b")), Lookup::Discarded { .. }));
        assert_eq!(cache.counters().integrity_failures, 2);
    }

    #[test]
    fn corrupt_index_record_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 1 << 20).unwrap();
        cache
            .put(&key("a"), "u", &meta(), b"x", Duration::from_secs(60))
            .unwrap();
        fs::write(cache.entry_path(key("a").id()), b"{ not json").unwrap();
        assert!(matches!(cache.get(&key("a")), Lookup::Discarded { .. }));
    }

    #[test]
    fn lru_eviction_keeps_recently_used_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), 10_000).unwrap();
        let body = |i: u8| vec![i; 1000];
        for i in 0..9u8 {
            cache
                .put(
                    &key(&format!("k{i}")),
                    "u",
                    &meta(),
                    &body(i),
                    Duration::from_secs(60),
                )
                .unwrap();
            // Distinct mtimes, oldest first.
            let past = SystemTime::now() - Duration::from_secs(100 - i as u64);
            File::open(cache.entry_path(key(&format!("k{i}")).id()))
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
        // Use k0, the oldest, so that it becomes the most recent.
        assert!(matches!(cache.get(&key("k0")), Lookup::Hit { .. }));
        for i in 9..12u8 {
            cache
                .put(
                    &key(&format!("k{i}")),
                    "u",
                    &meta(),
                    &body(i),
                    Duration::from_secs(60),
                )
                .unwrap();
        }
        let usage = cache.usage();
        assert!(usage.bytes <= 10_000, "{usage:?}");
        assert!(
            matches!(cache.get(&key("k0")), Lookup::Hit { .. }),
            "recently used entry was evicted"
        );
        assert!(
            matches!(cache.get(&key("k1")), Lookup::Miss),
            "least recently used entry survived"
        );
        assert!(matches!(cache.get(&key("k11")), Lookup::Hit { .. }));
        assert!(cache.counters().evictions >= 2);
        // Evicted bodies are gone from disk too.
        let objects: usize = fs::read_dir(dir.path().join("objects"))
            .unwrap()
            .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(objects as u64, cache.usage().entries);
    }
}
