//! Bodies as they are sent to clients, kept per stored body and base URL: the upstream API's
//! URLs in a JSON body are rewritten ([`super::rewrite::urls`]) once per body and base, not on
//! every hit (searching and rewriting 20 KB cost more than the rest of a hit together).
//!
//! A body is named by its SHA-256 (the cache verified it), so what is kept for it can never be
//! stale; the base is one of the few the daemon answers under (its address or a loopback name,
//! with or without the capability prefix).

use std::hash::{Hash, Hasher};

use bytes::Bytes;

use crate::memo::{Equivalent, Memo};

/// Bytes of rewritten bodies kept at most (oldest out first); bodies without URLs to rewrite
/// cost only their names.
const BUDGET: u64 = 8 << 20;
/// Bodies remembered at most, rewritten or not.
const MAX_BODIES: usize = 4096;

/// The bodies as sent, by base and digest.
#[derive(Debug)]
pub struct SentBodies {
    /// By (base, body digest): the rewritten body, or `None` when nothing changes.
    memo: Memo<(String, String)>,
}

impl Default for SentBodies {
    fn default() -> SentBodies {
        SentBodies {
            memo: Memo::new(BUDGET, MAX_BODIES),
        }
    }
}

/// A (base, digest) looked up without building the owned key; hashes as the tuple does.
struct Named<'a>(&'a str, &'a str);

impl Hash for Named<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl Equivalent<(String, String)> for Named<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

impl SentBodies {
    /// The body to send for `body` (whose SHA-256 is `digest`) under `base`: `rewrite`'s
    /// output, worked out on first use, or `body` itself when `rewrite` changes nothing.
    pub fn get_or_rewrite(
        &self,
        base: &str,
        digest: &str,
        body: &Bytes,
        rewrite: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    ) -> Bytes {
        if let Some(known) = self.memo.get(&Named(base, digest)) {
            return known.unwrap_or_else(|| body.clone());
        }
        let rewritten = rewrite(body).map(Bytes::from);
        self.memo
            .insert((base.to_string(), digest.to_string()), rewritten.clone());
        rewritten.unwrap_or_else(|| body.clone())
    }

    /// Bytes of rewritten bodies held.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.memo.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_once_per_body_and_base() {
        let sent = SentBodies::default();
        let body = Bytes::from_static(b"{\"url\":\"https://api.github.com/x\"}");
        let mut calls = 0;
        let mut rewrite = |b: &[u8]| {
            calls += 1;
            Some(b.to_ascii_uppercase())
        };
        let first = sent.get_or_rewrite("http://a", "d1", &body, &mut rewrite);
        let again = sent.get_or_rewrite("http://a", "d1", &body, &mut rewrite);
        assert_eq!(first, body.to_ascii_uppercase());
        assert_eq!(
            again.as_ptr(),
            first.as_ptr(),
            "the kept bytes, not a new rewrite"
        );
        let other = sent.get_or_rewrite("http://b", "d1", &body, &mut rewrite);
        assert_eq!(other, first);
        assert_eq!(calls, 2, "one rewrite per base");
        assert_eq!(sent.bytes(), 2 * body.len() as u64);
    }

    #[test]
    fn a_body_without_urls_is_sent_as_it_is() {
        let sent = SentBodies::default();
        let body = Bytes::from_static(b"{\"a\":1}");
        let mut calls = 0;
        for _ in 0..3 {
            let out = sent.get_or_rewrite("http://a", "d", &body, |_| {
                calls += 1;
                None
            });
            assert_eq!(out.as_ptr(), body.as_ptr(), "the stored bytes themselves");
        }
        assert_eq!(calls, 1, "searched once");
        assert_eq!(sent.bytes(), 0);
    }

    #[test]
    fn stays_within_its_budget() {
        let sent = SentBodies::default();
        let big = (BUDGET / 4) as usize;
        for i in 0..6 {
            let body = Bytes::from(vec![b'x'; big]);
            sent.get_or_rewrite("http://a", &format!("d{i}"), &body, |b| Some(b.to_vec()));
        }
        assert!(sent.bytes() <= BUDGET);
        let mut calls = 0;
        let body = Bytes::from(vec![b'x'; big]);
        sent.get_or_rewrite("http://a", "d0", &body, |b| {
            calls += 1;
            Some(b.to_vec())
        });
        assert_eq!(calls, 1, "the oldest body left");
    }
}
