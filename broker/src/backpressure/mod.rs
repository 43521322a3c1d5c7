//! Publisher back-pressure: a publisher whose QoS 0 messages fill a subscriber's output buffer
//! past its soft cap (or a subscriber's QoS 1/2 queue past a bound) stops reading from its socket
//! until those subscribers drain, for at most `backpressure_max_wait_ms` when the others drain
//! (up to ten times that when all of them lag alike). A subscriber that falls behind the rest
//! is marked slow and no longer holds publishers back: its QoS 0
//! messages beyond the hard cap are dropped and counted, and a client stuck past the cap is
//! disconnected (0x97). So a fast publisher is slowed to what its subscribers absorb instead
//! of losing messages or queueing seconds of them, and one stuck consumer costs a publisher
//! at most one wait.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::delivery::shared_writer::SharedWriter;
use crate::session::Session;

mod line;

/// Whether a subscriber's queue of `queued` messages lets publishers stopped by it
/// (`queue_bound`) go on again. (Resuming at half the bound was measured: the same
/// fan-in throughput, a worse p99 and 5 % more CPU, so publishers go on below the bound.)
pub fn queue_relieved(queued: usize, queue_bound: usize) -> bool {
    queued < queue_bound
}

/// One subscriber a publisher waits for.
#[derive(Debug, Clone)]
pub struct Pressure {
    /// Its session (for the queue bound).
    pub session: Arc<Session>,
    /// Its output buffer.
    pub writer: Arc<SharedWriter>,
    /// A QoS 0 message was delivered to it: its buffer's soft cap counts too, not only its
    /// queue.
    pub qos0: bool,
}

impl Pressure {
    /// Whether this subscriber still holds its publishers back, with `queue_bound` the
    /// bound that stopped them.
    fn is_behind(&self, queue_bound: usize) -> bool {
        let buffer_behind = self.qos0 && !self.writer.is_relieved();
        buffer_behind || !queue_relieved(self.session.delivery().queued(), queue_bound)
    }
}

/// Broker-wide wake-ups for waiting publishers: consumers call [`Relief::relieve`] when they
/// take a batch or their queue shrinks; it costs one atomic load when nobody waits. Waiting
/// publishers stand in a [`line::Line`], so the room a consumer frees goes to them in the
/// order they stopped.
#[derive(Debug, Default)]
pub struct Relief {
    line: line::Line,
}

impl Relief {
    /// Whether any publisher waits.
    #[inline]
    pub fn has_waiters(&self) -> bool {
        !self.line.is_empty()
    }

    /// Lets the waiting publishers re-check their subscribers, oldest first.
    #[inline]
    pub fn relieve(&self) {
        self.line.relieve();
    }

    /// Waits until every subscriber in `pressure` has drained to its soft cap (after a QoS
    /// 0 delivery) and its queue below `queue_bound` ([`queue_relieved`]), looking again
    /// each time its turn comes. Past `max_wait`, the ones still behind are marked slow,
    /// but only if most of the others drained (they are slow *relative* to the rest); when
    /// all are behind alike, the consumers as a whole are the bottleneck and the publisher
    /// keeps waiting, up to ten times `max_wait`. Returns how many were marked slow.
    pub async fn wait(
        &self,
        pressure: &[Pressure],
        queue_bound: usize,
        max_wait: Duration,
    ) -> usize {
        let started = Instant::now();
        let hard_deadline = started + max_wait * 10;
        let mut deadline = started + max_wait;
        // Leaving the line (dropping the ticket) hands the turn to the one behind.
        let ticket = self.line.join();
        let behind = |p: &Pressure| p.is_behind(queue_bound);
        let mut had_turn = false;
        loop {
            if !pressure.iter().any(behind) {
                return 0;
            }
            if std::mem::take(&mut had_turn) {
                ticket.pass_on();
            }
            tokio::select! {
                () = ticket.turn() => {
                    had_turn = true;
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {}
            }
            let lagging: Vec<&Pressure> = pressure.iter().filter(|p| behind(p)).collect();
            let most_drained = lagging.len() * 2 <= pressure.len();
            if lagging.is_empty() {
                return 0;
            }
            if most_drained || Instant::now() >= hard_deadline {
                for p in &lagging {
                    let _ = p.writer.mark_slow();
                }
                return lagging.len();
            }
            deadline += max_wait;
        }
    }
}
