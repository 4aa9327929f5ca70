//! A memo of byte strings within a byte budget, the oldest out first: what a long-lived process
//! keeps of the bodies it already worked on (verified from disk, rewritten for a base URL), so
//! that a hot one is neither re-read nor re-worked on every hit. The cache and the local API
//! each keep one.

use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
pub use hashbrown::Equivalent;

/// Bodies by key, up to `budget` bytes and `max_items` keys.
///
/// A key may be known to have no bytes of its own (`None`: "nothing to keep, use the original"),
/// which costs only its key. Lookups take any [`Equivalent`] of the key, so that a hit builds
/// no owned key.
#[derive(Debug)]
pub struct Memo<K> {
    budget: u64,
    max_items: usize,
    held: Mutex<Held<K>>,
}

#[derive(Debug)]
struct Held<K> {
    /// Shared bytes: a hit hands out a reference, never a copy.
    values: hashbrown::HashMap<K, Option<Bytes>>,
    /// Keys in the order they came in.
    order: VecDeque<K>,
    bytes: u64,
}

impl<K: Hash + Eq + Clone> Memo<K> {
    /// An empty memo holding at most `budget` bytes under at most `max_items` keys.
    pub fn new(budget: u64, max_items: usize) -> Memo<K> {
        Memo {
            budget,
            max_items,
            held: Mutex::new(Held {
                values: hashbrown::HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
        }
    }

    /// What is kept under `key`: `Some(Some(bytes))`, `Some(None)` when the key is known to
    /// have no bytes of its own, `None` when it is not known.
    pub fn get<Q: Hash + Equivalent<K> + ?Sized>(&self, key: &Q) -> Option<Option<Bytes>> {
        self.lock().values.get(key).cloned()
    }

    /// Whether a value of `size` bytes would be kept: not over a quarter of the budget, as one
    /// of those would push out many small hot ones.
    pub fn keeps(&self, size: usize) -> bool {
        size as u64 <= self.budget / 4
    }

    /// Keeps `value` under `key` (a reference to the same bytes, not a copy), pushing out the
    /// oldest as needed; a key already known keeps what it has, and a value too large for
    /// [`Memo::keeps`] is not kept.
    pub fn insert(&self, key: K, value: Option<Bytes>) {
        let size = value.as_ref().map_or(0, |b| b.len() as u64);
        if !self.keeps(size as usize) {
            return;
        }
        let mut held = self.lock();
        if held.values.contains_key(&key) {
            return;
        }
        while held.bytes + size > self.budget || held.order.len() >= self.max_items {
            let Some(oldest) = held.order.pop_front() else {
                break;
            };
            if let Some(Some(gone)) = held.values.remove(&oldest) {
                held.bytes -= gone.len() as u64;
            }
        }
        held.order.push_back(key.clone());
        held.values.insert(key, value);
        held.bytes += size;
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, Held<K>> {
        // Every step leaves the maps consistent, so a panic elsewhere leaves them usable.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(b: u8, n: usize) -> Bytes {
        Bytes::from(vec![b; n])
    }

    #[test]
    fn keeps_bodies_up_to_the_budget_oldest_out_first() {
        let memo: Memo<String> = Memo::new(100, 1000);
        for (i, key) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            memo.insert(key.to_string(), Some(body(i as u8, 20)));
        }
        assert_eq!(memo.bytes(), 100);
        let f = body(6, 20);
        memo.insert("f".to_string(), Some(f.clone()));
        assert_eq!(memo.get("a"), None, "the oldest body left");
        assert!(memo.get("b").is_some());
        let held = memo.get("f").flatten().unwrap();
        assert_eq!(held, f);
        assert_eq!(held.as_ptr(), f.as_ptr(), "the same bytes, not a copy");
        assert_eq!(memo.bytes(), 100);
        memo.insert("big".to_string(), Some(body(0, 26)));
        assert_eq!(memo.get("big"), None, "over a quarter of the budget");
    }

    #[test]
    fn a_key_without_bytes_costs_nothing_but_its_place() {
        let memo: Memo<String> = Memo::new(100, 3);
        memo.insert("none".to_string(), None);
        assert_eq!(memo.get("none"), Some(None));
        assert_eq!(memo.bytes(), 0);
        memo.insert("x".to_string(), Some(body(1, 10)));
        memo.insert("y".to_string(), Some(body(2, 10)));
        memo.insert("z".to_string(), Some(body(3, 10)));
        assert_eq!(memo.get("none"), None, "at most 3 keys: the oldest left");
        assert_eq!(memo.bytes(), 30);
    }

    #[test]
    fn a_known_key_keeps_what_it_has() {
        let memo: Memo<String> = Memo::new(100, 10);
        let first = body(1, 10);
        memo.insert("k".to_string(), Some(first.clone()));
        memo.insert("k".to_string(), Some(body(2, 20)));
        assert_eq!(memo.get("k").flatten().unwrap().as_ptr(), first.as_ptr());
        assert_eq!(memo.bytes(), 10);
    }
}
