//! Hot hits, sent again as they were.
//!
//! A `GET <base>/gh/…` that a remembered local entry answered is kept, once answered, as the
//! exact response it got (its head as written, the body as shared bytes) under a fingerprint of
//! the whole request head: the target of the HTTP/1.1 `GET`, and every header name and value in
//! order. The same request head gets that response again ([`super::conn`]) without being
//! routed, parsed into a resolver request, keyed, looked up or admitted, for as long as
//! everything the first answer rested on holds:
//!
//! - the record file it came from is unchanged and recently used (one `stat`, as every
//!   remembered hit does: another process may have replaced it);
//! - the entry is still fresh for the request's TTL;
//! - the token's admission still holds (the access proof, when there was one, is unexpired and
//!   the proofs unchanged since);
//! - the rate-limit figures on it are not due to be read again (at most a second).
//!
//! When any of it lapses the request goes the whole way again, and its new answer is kept in
//! turn. So a request is answered exactly as the full path would answer it; only the work is
//! skipped. The fingerprint is a SHA-256 of the request head, so no token is kept in memory here,
//! and any header the full path might read (a conditional, a TTL, the capability, the `Host`
//! that picks the base URL) makes a request head of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::Bytes;
use sha2::{Digest, Sha256};

use super::api::Api;
use super::metrics::Outcome;
use crate::resolver::{Replay, Source};

/// Answers kept at most (then the memory starts over).
const MAX_KEPT: usize = 4096;
/// Body bytes kept at most, counted per answer (then the memory starts over). Bodies are shared
/// with the verified bodies and the rewritten ones, so most of it is not a copy.
const MAX_KEPT_BYTES: u64 = 64 << 20;

/// What the full path says about an answer it sent from a hit in memory (a response
/// extension, taken off before the response is sent; see [`super::conn`]).
#[derive(Clone)]
pub struct Ticket {
    replay: Replay,
    figures_until: Instant,
    endpoint: String,
    body: Bytes,
}

impl Ticket {
    /// The ticket of an answer with body `body` to a request for `endpoint` (the path under the
    /// API base), whose rate-limit figures are read again at `figures_until`.
    pub fn new(replay: Replay, figures_until: Instant, endpoint: String, body: Bytes) -> Ticket {
        Ticket {
            replay,
            figures_until,
            endpoint,
            body,
        }
    }
}

/// A response as it was sent, and what it rests on.
pub struct Kept {
    /// The status line and every header but `date`, as sent.
    pub head: Bytes,
    ticket: Ticket,
}

impl Kept {
    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.ticket.body
    }
}

/// The answers kept, by request fingerprint.
#[derive(Default)]
pub struct HotAnswers {
    kept: RwLock<Shelf>,
    replayed: AtomicU64,
}

#[derive(Default)]
struct Shelf {
    by_fingerprint: HashMap<Fingerprint, Arc<Kept>>,
    bytes: u64,
}

/// SHA-256 of a request head.
pub type Fingerprint = [u8; 32];

impl HotAnswers {
    /// Answers sent again since start.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    /// The kept answer for `fingerprint`, counted as the local hit it is, when all it rested on
    /// still holds at `now`.
    pub fn answer(
        &self,
        api: &Api,
        fingerprint: &Fingerprint,
        now: std::time::SystemTime,
    ) -> Option<Arc<Kept>> {
        let kept = Arc::clone(self.read().by_fingerprint.get(fingerprint)?);
        let ticket = &kept.ticket;
        if Instant::now() >= ticket.figures_until
            || !api.resolver.still_replayable(&ticket.replay, now)
        {
            self.forget(fingerprint, &kept);
            return None;
        }
        api.resolver.count_replayed_hit();
        api.observer
            .record(&ticket.endpoint, Outcome::Answered(Source::Local));
        self.replayed.fetch_add(1, Ordering::Relaxed);
        Some(kept)
    }

    /// Keeps an answer, its head as sent (without `date`), for requests with this fingerprint.
    pub fn keep(&self, fingerprint: Fingerprint, head: Bytes, ticket: Ticket) {
        let kept = Arc::new(Kept { head, ticket });
        let size = kept.ticket.body.len() as u64;
        let mut shelf = self.write();
        if shelf.by_fingerprint.len() >= MAX_KEPT || shelf.bytes + size > MAX_KEPT_BYTES {
            shelf.by_fingerprint.clear();
            shelf.bytes = 0;
        }
        if let Some(old) = shelf.by_fingerprint.insert(fingerprint, kept) {
            shelf.bytes -= old.ticket.body.len() as u64;
        }
        shelf.bytes += size;
    }

    /// Drops `kept`, unless another answer replaced it since.
    fn forget(&self, fingerprint: &Fingerprint, kept: &Arc<Kept>) {
        let mut shelf = self.write();
        if shelf
            .by_fingerprint
            .get(fingerprint)
            .is_some_and(|now| Arc::ptr_eq(now, kept))
        {
            shelf.by_fingerprint.remove(fingerprint);
            shelf.bytes -= kept.ticket.body.len() as u64;
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Shelf> {
        // Every change to the shelf is complete when its lock is released.
        self.kept.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Shelf> {
        self.kept.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fingerprint of an HTTP/1.1 `GET` head: its target and every header, names lowercased,
/// in the order sent. `None` when a header name comes twice (then the order the full path sees
/// them in is not the order sent, so such a request is never answered again).
pub fn fingerprint<'a>(
    target: &[u8],
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Option<Fingerprint> {
    let mut hash = Sha256::new();
    hash.update(b"peercache GET HTTP/1.1 head v1\0");
    hash.update(target);
    for (n, (name, value)) in headers.clone().enumerate() {
        if headers
            .clone()
            .take(n)
            .any(|(earlier, _)| earlier.eq_ignore_ascii_case(name))
        {
            return None;
        }
        // Neither names nor values may hold a NUL, so the separators keep fields apart.
        hash.update(b"\0");
        let mut lower = [0u8; 64];
        for chunk in name.chunks(lower.len()) {
            let lower = &mut lower[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            hash.update(&*lower);
        }
        hash.update(b"\0");
        hash.update(value);
    }
    Some(hash.finalize().into())
}
