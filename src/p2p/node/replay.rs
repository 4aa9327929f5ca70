//! Replay protection for gossip.
//!
//! Gossipsub forgets a message id after 60 s; a member that recorded an announcement or a
//! release could publish it again afterwards (it stays signed by its author and sealed), and
//! end a live claim or wake the nodes waiting on it. Every message therefore carries its
//! author's send time ([`Stamped`](crate::p2p::protocol::Stamped)), strictly increasing per
//! author, and a receiver takes a message only when
//!
//! 1. its time is within [`CLOCK_TOLERANCE`] of the receiver's clock (what is older is dead
//!    everywhere: the only case where the receiver has nothing else to go by), and
//! 2. it is not older than its author's newest message by more than [`REORDER_WINDOW`]
//!    (gossip may arrive out of order, never minutes late), and
//! 3. that author's message of that time was not taken before.
//!
//! Rules 2 and 3 compare an author's times only with each other, so clocks that are minutes
//! apart (a runner's clock is not always right) do not matter. The state is bounded: per author
//! the times of its last [`REORDER_WINDOW`] (at most [`MAX_TIMES_PER_AUTHOR`]), and at most
//! [`MAX_AUTHORS`] authors, those heard from longest ago forgotten first (after
//! 2 × [`CLOCK_TOLERANCE`] rule 1 covers them).

use std::collections::BTreeSet;

use super::*;

/// How far a message's time may be from this node's clock. Runners' clocks may be minutes off
/// (the fault tests run members ±10 min apart, 20 min from each other).
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(30 * 60);
/// How much older than its author's newest message a message may be: more than gossip ever
/// takes to cross a mesh, and more than gossipsub's 60 s duplicate cache, so a replay is
/// caught by one or the other.
pub const REORDER_WINDOW: Duration = Duration::from_secs(120);
/// Authors remembered.
pub const MAX_AUTHORS: usize = 4096;
/// Message times remembered per author (a burst of announcements within the window).
pub const MAX_TIMES_PER_AUTHOR: usize = 4096;

/// Why a message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Its time is more than [`CLOCK_TOLERANCE`] from this node's clock.
    OffClock,
    /// Its author sent a message more than [`REORDER_WINDOW`] later already.
    Stale,
    /// That message was taken before.
    Replayed,
}

impl Refused {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Refused::OffClock => {
                "its time is more than 30 min from this node's clock (check the clocks)"
            }
            Refused::Stale => "its author has sent newer messages since (a replay)",
            Refused::Replayed => "it was received before (a replay)",
        }
    }
}

struct Author {
    newest: u64,
    /// Times at or below this are refused (raised when old times are forgotten).
    floor: u64,
    times: BTreeSet<u64>,
    heard: Instant,
}

/// The times of the messages taken, per author.
#[derive(Default)]
pub(super) struct ReplayGuard {
    authors: HashMap<PeerId, Author>,
}

impl ReplayGuard {
    /// Takes `author`'s message sent at `sent_at_ms` if it is neither off the clock nor a replay.
    pub(super) fn check(
        &mut self,
        author: PeerId,
        sent_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), Refused> {
        if u128::from(sent_at_ms.abs_diff(now_ms)) > CLOCK_TOLERANCE.as_millis() {
            return Err(Refused::OffClock);
        }
        let window = REORDER_WINDOW.as_millis() as u64;
        if !self.authors.contains_key(&author) && self.authors.len() >= MAX_AUTHORS {
            self.forget_one();
        }
        let a = self.authors.entry(author).or_insert_with(|| Author {
            newest: sent_at_ms,
            floor: 0,
            times: BTreeSet::new(),
            heard: Instant::now(),
        });
        if sent_at_ms <= a.floor || sent_at_ms.saturating_add(window) < a.newest {
            return Err(Refused::Stale);
        }
        if !a.times.insert(sent_at_ms) {
            return Err(Refused::Replayed);
        }
        a.heard = Instant::now();
        a.newest = a.newest.max(sent_at_ms);
        let horizon = a.newest.saturating_sub(window);
        while let Some(&oldest) = a.times.first() {
            if oldest >= horizon && a.times.len() <= MAX_TIMES_PER_AUTHOR {
                break;
            }
            a.times.pop_first();
            a.floor = a.floor.max(oldest);
        }
        Ok(())
    }

    /// Forgets the author heard from longest ago.
    fn forget_one(&mut self) {
        let oldest = self
            .authors
            .iter()
            .min_by_key(|(_, a)| a.heard)
            .map(|(p, _)| *p);
        if let Some(oldest) = oldest {
            self.authors.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.authors.values().map(|a| a.times.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_message_is_taken_once_and_late_copies_are_replays() {
        let mut guard = ReplayGuard::default();
        let author = PeerId::random();
        assert_eq!(guard.check(author, NOW, NOW), Ok(()));
        assert_eq!(
            guard.check(author, NOW, NOW + 90_000),
            Err(Refused::Replayed)
        );
        // Out of order within the window is fine.
        assert_eq!(guard.check(author, NOW - 5_000, NOW), Ok(()));
        // Newer messages push old ones out; a replay of them is stale.
        assert_eq!(guard.check(author, NOW + 200_000, NOW + 200_000), Ok(()));
        assert_eq!(guard.check(author, NOW, NOW + 200_000), Err(Refused::Stale));
        assert_eq!(
            guard.check(author, NOW - 5_000, NOW + 200_000),
            Err(Refused::Stale)
        );
        // Another author's times are its own.
        assert_eq!(guard.check(PeerId::random(), NOW, NOW + 1_000), Ok(()));
    }

    #[test]
    fn clocks_minutes_apart_are_fine_hours_are_not() {
        let mut guard = ReplayGuard::default();
        let ahead = PeerId::random();
        let behind = PeerId::random();
        assert_eq!(guard.check(ahead, NOW + 600_000, NOW), Ok(()));
        assert_eq!(guard.check(behind, NOW - 600_000, NOW), Ok(()));
        assert_eq!(
            guard.check(PeerId::random(), NOW - 2 * 3_600_000, NOW),
            Err(Refused::OffClock)
        );
    }

    #[test]
    fn what_is_remembered_stays_bounded() {
        let mut guard = ReplayGuard::default();
        let author = PeerId::random();
        // A burst faster than the window: the oldest times are forgotten, and refused.
        for i in 0..(2 * MAX_TIMES_PER_AUTHOR as u64) {
            assert_eq!(guard.check(author, NOW + i, NOW), Ok(()));
        }
        assert_eq!(guard.remembered(), MAX_TIMES_PER_AUTHOR);
        assert_eq!(guard.check(author, NOW, NOW), Err(Refused::Stale));
        for i in 0..(MAX_AUTHORS as u64 + 10) {
            let _ = guard.check(PeerId::random(), NOW + i, NOW);
        }
        assert_eq!(guard.authors.len(), MAX_AUTHORS);
    }
}
