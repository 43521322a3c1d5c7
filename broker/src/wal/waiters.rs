//! Tasks waiting for a log position to become durable. It owns the wakers, not the
//! position: the committer publishes that and then calls [`Waiters::wake_up_to`].

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::task::Waker;

/// Wakers by the position each waits for.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_position: Mutex<BTreeMap<u64, Vec<Waker>>>,
}

impl Waiters {
    /// Registers `waker` for `position` unless `done()` already holds, checked under the
    /// lock the committer takes after publishing (so a wake-up cannot be missed). A task
    /// that polls again for the same position replaces nothing and adds nothing.
    /// Returns whether `done()` held.
    pub(crate) fn register(
        &self,
        position: u64,
        waker: &Waker,
        mut done: impl FnMut() -> bool,
    ) -> bool {
        let mut map = self
            .by_position
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if done() {
            return true;
        }
        let wakers = map.entry(position).or_default();
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        false
    }

    /// Wakes every task waiting for a position at or below `durable`.
    pub(crate) fn wake_up_to(&self, durable: u64) {
        let ready = {
            let mut map = self
                .by_position
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if map
                .first_key_value()
                .is_none_or(|(first, _)| *first > durable)
            {
                return;
            }
            let later = map.split_off(&(durable + 1));
            std::mem::replace(&mut *map, later)
        };
        ready.into_values().flatten().for_each(Waker::wake);
    }

    /// Wakes every waiting task (failure or close: they will find out which).
    pub(crate) fn wake_all(&self) {
        let all = std::mem::take(
            &mut *self
                .by_position
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        all.into_values().flatten().for_each(Waker::wake);
    }

    /// How many wakers are registered (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let map = self
            .by_position
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.values().map(Vec::len).sum()
    }
}
