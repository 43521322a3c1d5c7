//! The broker-wide budget of bytes held for clients (`max_total_queued_bytes`): every
//! session's queued and inflight QoS 1/2 messages count against it, next to each session's
//! own `max_queued_bytes`. When it is exhausted, QoS 1/2 publishes are refused (5.0:
//! PUBACK/PUBREC 0x97 Quota exceeded; 3.1.1: dropped and counted) and sessions queue
//! nothing more, instead of letting memory grow (issue #17).
//!
//! Plain atomics: sessions reserve and release under their own delivery lock, never
//! under a broker-wide one. The count is of payload and topic bytes, the part of a message
//! that grows with what clients send; a message shared by many sessions counts once per
//! session, as each holds it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The bytes held for clients, against a limit.
#[derive(Debug)]
pub struct ByteBudget {
    used_bytes: AtomicUsize,
    /// The limit; 0: none.
    max_bytes: AtomicUsize,
    /// A reservation was refused and nothing was given back since: the budget is
    /// exhausted for new publishes (a limit is rarely hit exactly, so `used >= max` alone
    /// would seldom hold).
    refused: AtomicBool,
}

impl ByteBudget {
    /// A budget of `max_bytes` (0: no limit).
    pub const fn new(max_bytes: usize) -> ByteBudget {
        ByteBudget {
            used_bytes: AtomicUsize::new(0),
            max_bytes: AtomicUsize::new(max_bytes),
            refused: AtomicBool::new(false),
        }
    }

    /// Puts a new limit in force (a reload); what is held stays held.
    pub fn set_max_bytes(&self, max_bytes: usize) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// The limit (0: none).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes.load(Ordering::Relaxed)
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// Whether nothing more may be held: new QoS 1/2 publishes are refused. True once a
    /// reservation was refused, until bytes are given back (or the limit is reached).
    pub fn is_exhausted(&self) -> bool {
        let max = self.max_bytes();
        max != 0 && (self.refused.load(Ordering::Relaxed) || self.used_bytes() >= max)
    }

    /// Takes `n` bytes if they fit; returns whether they did.
    pub fn try_reserve(&self, n: usize) -> bool {
        let max = self.max_bytes();
        let before = self.used_bytes.fetch_add(n, Ordering::Relaxed);
        if max != 0 && before + n > max {
            self.used_bytes.fetch_sub(n, Ordering::Relaxed);
            self.refused.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Takes `n` bytes whatever the limit (messages restored at startup, resent ones).
    pub fn force_reserve(&self, n: usize) {
        self.used_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Gives back `n` bytes taken before.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.used_bytes.fetch_sub(n, Ordering::Relaxed);
        if self.refused.load(Ordering::Relaxed) {
            self.refused.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_within_the_limit_only() {
        let budget = ByteBudget::new(100);
        assert!(budget.try_reserve(60));
        assert!(!budget.try_reserve(41), "over the limit: nothing taken");
        assert_eq!(budget.used_bytes(), 60);
        assert!(budget.is_exhausted(), "a refusal exhausts it");
        budget.release(0);
        assert!(budget.is_exhausted(), "until something is given back");
        assert!(budget.try_reserve(40));
        assert!(budget.is_exhausted());
        budget.release(50);
        assert!(!budget.is_exhausted());
        assert!(budget.try_reserve(10));
        let unlimited = ByteBudget::new(0);
        assert!(unlimited.try_reserve(usize::MAX / 2));
        assert!(!unlimited.is_exhausted());
    }
}
