//! The line of publishers stopped by back-pressure, oldest first, and whose turn it is to
//! look at their subscribers again. It owns the places in the line and the turn, nothing
//! about subscribers.
//!
//! Why a line and not one broadcast: a drained subscriber used to wake every stopped
//! publisher at once. The room it freed went to whichever ran first, and on a tokio worker
//! that is the one woken last (the LIFO slot), which is the one that stopped most
//! recently, usually the very publisher that had just been let through. A few publishers
//! took all the room while the others waited out their timeouts (fan-in QoS 1, 100 -> 1:
//! p50 1.5 ms, p99 over 100 ms). Now a relief gives the turn to the oldest waiter; whoever
//! has the turn looks, then hands it to the one behind, whether it goes on (and leaves the
//! line) or must wait again (and keeps its place). So the room goes to publishers in the
//! order they stopped.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// The line. The broker owns one; every [`Ticket`] holds it too.
#[derive(Debug, Default)]
pub(super) struct Line {
    /// How many places are taken (read without the lock by [`Line::is_empty`]).
    len: AtomicUsize,
    places: Mutex<Places>,
}

#[derive(Debug, Default)]
struct Places {
    next_id: u64,
    /// Ordered by id: joined at the back, left from anywhere.
    queue: VecDeque<Place>,
}

#[derive(Debug)]
struct Place {
    id: u64,
    waker: Option<Waker>,
    /// Given the turn and not yet taken it.
    turn: bool,
}

impl Places {
    fn index(&self, id: u64) -> Option<usize> {
        self.queue.binary_search_by_key(&id, |p| p.id).ok()
    }

    /// Gives the turn to the place at `index`, if there is one.
    fn give_turn(&mut self, index: usize) {
        if let Some(place) = self.queue.get_mut(index) {
            if !place.turn {
                place.turn = true;
                if let Some(waker) = place.waker.take() {
                    waker.wake();
                }
            }
        }
    }
}

impl Line {
    /// Whether nobody waits (one atomic load).
    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    /// How many places are taken.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Places> {
        self.places.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the last place.
    pub(super) fn join(self: &Arc<Self>) -> Ticket {
        let mut places = self.lock();
        let id = places.next_id;
        places.next_id += 1;
        places.queue.push_back(Place {
            id,
            waker: None,
            turn: false,
        });
        self.len.fetch_add(1, Ordering::Relaxed);
        Ticket {
            line: Arc::clone(self),
            id,
        }
    }

    /// Gives the turn to the first in line.
    pub(super) fn relieve(&self) {
        if !self.is_empty() {
            self.lock().give_turn(0);
        }
    }
}

/// A place in the [`Line`]; dropping it leaves the line and hands the turn to the one
/// behind (a turn given to a waiter that leaves is never lost). A publisher keeps it while
/// it handles the input it had when its turn came (see [`super::Relief::wait`]).
#[derive(Debug)]
pub struct Ticket {
    line: Arc<Line>,
    id: u64,
}

impl Ticket {
    /// Waits for the turn (ready at once if it was given meanwhile). Cancel safe.
    pub(super) fn turn(&self) -> Turn<'_> {
        Turn { ticket: self }
    }

    /// Keeps the place and hands the turn to the one behind.
    pub(super) fn pass_on(&self) {
        let mut places = self.line.lock();
        if let Some(index) = places.index(self.id) {
            places.give_turn(index + 1);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut places = self.line.lock();
        if let Some(index) = places.index(self.id) {
            places.queue.remove(index);
            self.line.len.fetch_sub(1, Ordering::Relaxed);
            // The one behind moved up to `index`.
            places.give_turn(index);
        }
    }
}

/// Future of [`Ticket::turn`].
#[derive(Debug)]
pub(super) struct Turn<'t> {
    ticket: &'t Ticket,
}

impl Future for Turn<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut places = self.ticket.line.lock();
        let Some(index) = places.index(self.ticket.id) else {
            return Poll::Ready(());
        };
        let place = &mut places.queue[index];
        if std::mem::take(&mut place.turn) {
            return Poll::Ready(());
        }
        match &mut place.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::WakeCount;

    fn poll_turn(ticket: &Ticket, count: &Arc<WakeCount>) -> bool {
        let waker = Waker::from(Arc::clone(count));
        let mut cx = Context::from_waker(&waker);
        let mut turn = ticket.turn();
        Pin::new(&mut turn).poll(&mut cx).is_ready()
    }

    #[test]
    fn a_relief_goes_to_the_oldest_and_the_turn_moves_down_the_line() {
        let line = Arc::new(Line::default());
        let (a, b, c) = (line.join(), line.join(), line.join());
        let counts: Vec<Arc<WakeCount>> = (0..3).map(|_| Arc::default()).collect();
        for (t, n) in [&a, &b, &c].into_iter().zip(&counts) {
            assert!(!poll_turn(t, n));
        }
        line.relieve();
        assert_eq!(counts[0].get(), 1, "the oldest is woken");
        assert_eq!(counts[1].get(), 0, "and only it");
        assert!(poll_turn(&a, &counts[0]));
        // `a` must wait again: it keeps its place and hands the turn on.
        a.pass_on();
        assert_eq!(counts[1].get(), 1);
        assert!(poll_turn(&b, &counts[1]));
        // `b` goes on: leaving hands the turn to `c`.
        drop(b);
        assert_eq!(counts[2].get(), 1);
        assert!(poll_turn(&c, &counts[2]));
        // The next relief starts again with `a`, still first.
        assert!(!poll_turn(&a, &counts[0]));
        line.relieve();
        assert_eq!(counts[0].get(), 2);
        drop((a, c));
        assert!(line.is_empty());
    }

    #[test]
    fn a_turn_given_meanwhile_is_not_lost_and_reliefs_merge() {
        let line = Arc::new(Line::default());
        let (a, b) = (line.join(), line.join());
        line.relieve();
        line.relieve();
        let count = Arc::default();
        assert!(poll_turn(&a, &count), "given before the first poll");
        assert!(
            !poll_turn(&a, &count),
            "two reliefs before it looked are one turn"
        );
        // A waiter that leaves with the turn unused hands it on.
        line.relieve();
        drop(a);
        assert!(poll_turn(&b, &count));
    }
}
