//! Body ids ([`super::record::Record::Body`], the body an Out record refers to), handed
//! out without a counter every thread bumps per message: each thread takes a block of
//! [`BLOCK`] ids from the journal's counter at a time and numbers from it. Ids are unique
//! across threads (blocks do not overlap) and across restarts (recovery raises the counter
//! above every id it read before any is handed out: [`BodyIds::above`]); an id a thread
//! did not use before a restart is simply never used.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Ids a thread takes from the counter at a time.
pub(super) const BLOCK: u64 = 1024;

/// Sources of ids numbered for the thread-local blocks, so that a block taken from one
/// journal (or before a recovery raised the counter) is never used for another.
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's block: its source, the next id in it and the end of it.
    static BLOCK_OF_THREAD: Cell<(u64, u64, u64)> = const { Cell::new((0, 0, 0)) };
}

/// A journal's body ids.
#[derive(Debug)]
pub(super) struct BodyIds {
    /// The first id no block holds yet.
    next: AtomicU64,
    /// Which blocks are good: those taken under this source.
    source: AtomicU64,
}

impl BodyIds {
    /// Ids from 1.
    pub(super) fn new() -> BodyIds {
        BodyIds {
            next: AtomicU64::new(1),
            source: AtomicU64::new(NEXT_SOURCE.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// Ids up to `max` are taken (recovered): new ones are above, and blocks taken before
    /// are not used again.
    pub(super) fn above(&self, max: u64) {
        self.next.fetch_max(max + 1, Ordering::AcqRel);
        let source = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed);
        self.source.store(source, Ordering::Release);
    }

    /// A new id: the next of this thread's block, taking a new block when it is used up.
    pub(super) fn next(&self) -> u64 {
        let source = self.source.load(Ordering::Acquire);
        BLOCK_OF_THREAD.with(|block| {
            let (of, mut next, mut end) = block.get();
            if of != source || next >= end {
                next = self.next.fetch_add(BLOCK, Ordering::AcqRel);
                end = next + BLOCK;
            }
            block.set((source, next + 1, end));
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn ids_of_two_threads_never_collide() {
        let ids = Arc::new(BodyIds::new());
        let take = |ids: Arc<BodyIds>| {
            std::thread::spawn(move || (0..5000).map(|_| ids.next()).collect::<Vec<_>>())
        };
        let (a, b) = (take(ids.clone()), take(ids.clone()));
        let mut all: Vec<u64> = a.join().expect("thread a");
        all.extend(b.join().expect("thread b"));
        all.extend((0..100).map(|_| ids.next()));
        let distinct: HashSet<u64> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "an id was handed out twice");
        assert!(!distinct.contains(&0), "0 means no body");
    }

    /// A recovered journal numbers above what it read, also on a thread that holds a
    /// block of an earlier journal (a restart in one process, as tests do) or of the same
    /// one from before the recovery raised the counter.
    #[test]
    fn ids_after_a_recovery_stay_above_the_recovered_ones() {
        let before = BodyIds::new();
        let early = before.next();
        assert_eq!(early, 1);
        let recovered = BodyIds::new();
        recovered.above(50_000);
        for _ in 0..3 * BLOCK {
            assert!(recovered.next() > 50_000);
        }
        // The earlier journal's block on this thread was dropped for the other's: it
        // takes a new one of its own.
        let again = before.next();
        assert!(again > early);
        before.above(1 << 40);
        assert!(
            before.next() > 1 << 40,
            "the block taken before is not used"
        );
    }
}
