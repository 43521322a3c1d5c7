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

pub use line::Ticket;

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
    line: Arc<line::Line>,
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
    /// keeps waiting, up to ten times `max_wait`. Returns how many were marked slow, and
    /// the publisher's place in the line once it may go on.
    ///
    /// `held`: the place the publisher kept from its last wait. It keeps it (and so comes
    /// first again) while it handles the input it already had when its turn came, then
    /// drops it: the room goes to the oldest messages, not to each publisher's first few.
    pub async fn wait(
        &self,
        pressure: &[Pressure],
        queue_bound: usize,
        max_wait: Duration,
        held: Option<Ticket>,
    ) -> (usize, Option<Ticket>) {
        let started = Instant::now();
        let hard_deadline = started + max_wait * 10;
        let mut deadline = started + max_wait;
        // A newcomer to a line others stand in waits for its turn even where there is
        // room: the room is theirs first.
        let mut needs_turn = held.is_none() && self.has_waiters();
        // Leaving the line (dropping the ticket) hands the turn to the one behind.
        let ticket = held.unwrap_or_else(|| self.line.join());
        let _counted = Counted::new(pressure);
        let behind = |p: &Pressure| p.is_behind(queue_bound);
        let mut had_turn = false;
        loop {
            if !needs_turn && !pressure.iter().any(behind) {
                break;
            }
            if std::mem::take(&mut had_turn) {
                ticket.pass_on();
            }
            tokio::select! {
                () = ticket.turn() => {
                    had_turn = true;
                    needs_turn = false;
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {}
            }
            let lagging: Vec<&Pressure> = pressure.iter().filter(|p| behind(p)).collect();
            let most_drained = lagging.len() * 2 <= pressure.len();
            if lagging.is_empty() {
                break;
            }
            if most_drained || Instant::now() >= hard_deadline {
                for p in &lagging {
                    let _ = p.writer.mark_slow();
                }
                return (lagging.len(), None);
            }
            deadline += max_wait;
        }
        // Going on: the ones behind may look too (there may be room for more than us).
        ticket.pass_on();
        (0, Some(ticket))
    }
}

/// Counts a waiting publisher in each of its consumers ([`SharedWriter::has_waiting`])
/// for as long as it waits.
struct Counted<'a>(&'a [Pressure]);

impl<'a> Counted<'a> {
    fn new(pressure: &'a [Pressure]) -> Counted<'a> {
        pressure.iter().for_each(|p| p.writer.count_waiting(true));
        Counted(pressure)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.iter().for_each(|p| p.writer.count_waiting(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use std::sync::Mutex;

    fn fill(writer: &SharedWriter) {
        writer.lock().buf().extend_from_slice(&[0; 100]);
    }

    fn drain(writer: &SharedWriter) {
        let _ = writer.take(&mut BytesMut::new());
    }

    async fn until(what: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !what() {
            assert!(Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// One consumer whose buffer is over its soft cap, and publishers waiting for it that
    /// note the order in which they go on (each fills the buffer again as it goes).
    struct Scene {
        relief: Arc<Relief>,
        writer: Arc<SharedWriter>,
        pressure: Vec<Pressure>,
        order: Arc<Mutex<Vec<u32>>>,
    }

    impl Scene {
        fn new() -> Scene {
            let writer = Arc::new(SharedWriter::with_soft_cap(1 << 20, 10));
            fill(&writer);
            Scene {
                relief: Arc::new(Relief::default()),
                pressure: vec![Pressure {
                    session: crate::test_support::session(1, 100),
                    writer: Arc::clone(&writer),
                    qos0: true,
                }],
                writer,
                order: Arc::new(Mutex::new(Vec::new())),
            }
        }

        fn spawn_waiter(&self, name: u32) -> tokio::task::JoinHandle<()> {
            let (r, w, p, o) = (
                Arc::clone(&self.relief),
                Arc::clone(&self.writer),
                self.pressure.clone(),
                Arc::clone(&self.order),
            );
            tokio::spawn(async move {
                let (slow, kept) = r.wait(&p, 1000, Duration::from_secs(30), None).await;
                assert_eq!(slow, 0);
                // Going on, it takes the room before the next one looks.
                fill(&w);
                o.lock().expect("order").push(name);
                drop(kept);
            })
        }

        fn served(&self) -> Vec<u32> {
            self.order.lock().expect("order").clone()
        }
    }

    /// The room a consumer frees goes to the publisher that stopped first. (With a
    /// broadcast, the one woken last ran first on a tokio worker: the newest waiter.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_room_goes_to_publishers_in_the_order_they_stopped() {
        let scene = Scene::new();
        for name in 0..3 {
            scene.spawn_waiter(name);
            until(|| scene.relief.line.len() == name as usize + 1).await;
        }
        for served in 1..=3 {
            // The consumer drains and relieves from its own task, on the worker.
            let (r, w) = (Arc::clone(&scene.relief), Arc::clone(&scene.writer));
            tokio::spawn(async move {
                drain(&w);
                r.relieve();
            })
            .await
            .expect("consumer");
            until(|| scene.served().len() == served).await;
        }
        assert_eq!(scene.served(), vec![0, 1, 2]);
        until(|| !scene.relief.has_waiters()).await;
    }

    /// A publisher that comes to a line others stand in waits for its turn, even when its
    /// subscriber has room at that moment: the room is theirs first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_newcomer_waits_behind_those_already_waiting() {
        let scene = Scene::new();
        let first = scene.spawn_waiter(0);
        until(|| scene.relief.line.len() == 1 && scene.writer.has_waiting()).await;
        // Room, but nobody told the line yet: the newcomer must not take it.
        drain(&scene.writer);
        let newcomer = scene.spawn_waiter(1);
        until(|| scene.relief.line.len() == 2).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(scene.served().is_empty(), "the newcomer went first");
        scene.relief.relieve();
        until(|| scene.served().len() == 1).await;
        drain(&scene.writer);
        scene.relief.relieve();
        first.await.expect("first");
        newcomer.await.expect("newcomer");
        assert_eq!(scene.served(), vec![0, 1]);
        assert!(!scene.writer.has_waiting() && !scene.relief.has_waiters());
    }
}
