//! The live queue between publishers' tasks and the task that sends to NATS: messages in
//! the order they were queued, each with its position (its number in that order), bounded.
//!
//! One mutex guards the queue and the position counter together, so positions follow the
//! queue's order; a publisher queues a whole run of messages under one lock, and wakes the
//! sending task only when it is parked on an empty queue (under load it is busy sending and
//! finds the new messages when it comes back, with no wake-up at all). It replaces a tokio
//! channel, whose per-message push, semaphore and wake were a tenth of a forwarding node's
//! CPU in cross-node QoS 0 runs.
//!
//! This module owns the queue, its bound and the sending task's waker.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

/// What [`Outbox::push`] queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// The position of the last message queued (0 when none was and none before).
    pub(crate) position: u64,
    /// Messages queued.
    pub(crate) queued: usize,
    /// Messages refused because the queue was full.
    pub(crate) dropped: usize,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// Positions given out so far (the last queued message's).
    position: u64,
    /// The sending task, parked on an empty queue.
    waker: Option<Waker>,
    /// No more messages will be taken.
    closed: bool,
}

impl<T> Outbox<T> {
    /// An empty queue of at most `capacity` messages.
    pub(crate) fn new(capacity: usize) -> Outbox<T> {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                position: 0,
                waker: None,
                closed: false,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `items` in order while there is room (the rest are dropped and counted).
    pub(crate) fn push(&self, items: impl IntoIterator<Item = T>) -> Pushed {
        let (mut queued, mut dropped) = (0, 0);
        let (position, waker) = {
            let mut state = self.lock();
            for item in items {
                if state.closed || state.queue.len() >= self.capacity {
                    dropped += 1;
                    continue;
                }
                state.queue.push_back(item);
                state.position += 1;
                queued += 1;
            }
            let waker = (!state.queue.is_empty())
                .then(|| state.waker.take())
                .flatten();
            (state.position, waker)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Pushed {
            position,
            queued,
            dropped,
        }
    }

    /// Moves up to `max` queued messages into `out`, waiting while there are none;
    /// returns how many (0: closed).
    pub(crate) async fn take(&self, out: &mut Vec<T>, max: usize) -> usize {
        poll_fn(|cx| {
            let mut state = self.lock();
            if state.queue.is_empty() {
                if state.closed {
                    return Poll::Ready(0);
                }
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            let n = state.queue.len().min(max);
            out.extend(state.queue.drain(..n));
            Poll::Ready(n)
        })
        .await
    }

    /// Room left.
    pub(crate) fn free(&self) -> usize {
        self.capacity.saturating_sub(self.lock().queue.len())
    }

    /// Whether [`Outbox::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Stops the queue: later pushes are dropped, and the sending task, once it has taken
    /// what is queued, gets 0.
    pub(crate) fn close(&self) {
        let waker = {
            let mut state = self.lock();
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn messages_keep_their_order_and_positions_and_the_bound_drops() {
        let outbox = Outbox::new(3);
        let pushed = |position, queued, dropped| Pushed {
            position,
            queued,
            dropped,
        };
        assert_eq!(outbox.push([1, 2]), pushed(2, 2, 0));
        assert_eq!(outbox.push([3, 4]), pushed(3, 1, 1));
        assert_eq!(outbox.free(), 0);
        let mut out = Vec::new();
        assert_eq!(outbox.take(&mut out, 2).await, 2);
        assert_eq!(outbox.take(&mut out, 10).await, 1);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(outbox.push([5]).position, 4);
        outbox.close();
        assert_eq!(outbox.push([6]).dropped, 1);
        assert!(outbox.is_closed());
        // What was queued before the close is still taken; then 0.
        assert_eq!(outbox.take(&mut out, 10).await, 1);
        assert_eq!(outbox.take(&mut out, 10).await, 0);
        assert_eq!(out, [1, 2, 3, 5]);
    }

    /// A parked sending task is woken by a push from another thread, and no push is
    /// missed between its look at the empty queue and its parking.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_taker_is_woken_by_every_push() {
        let outbox = Arc::new(Outbox::new(1 << 20));
        let taker = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 10_000 {
                    outbox.take(&mut got, 64).await;
                }
                got
            })
        };
        for i in 0..10_000u32 {
            outbox.push([i]);
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), taker)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got, (0..10_000).collect::<Vec<_>>());
    }
}
