//! What a session holds for its client, in bytes: the accounting behind
//! `max_queued_bytes` (queued and inflight together) and the broker-wide
//! [`crate::delivery::budget::ByteBudget`], the room checks that keep QoS 1/2 bytes in the
//! connection's output buffer under its cap, and the slow-consumer clock of a window that
//! does not move (issue #17), and whether publishers must wait for it (back-pressure).
//!
//! Every byte taken here is given back exactly once: when its message leaves the window,
//! is dropped from the queue, or when the delivery state is cleared or dropped. The shared
//! budget counter is touched once per [`CREDIT_CHUNK_BYTES`] of traffic rather than per
//! message: a session takes budget a chunk ahead and keeps at most one chunk of it unused
//! while it holds anything, and [`CREDIT_IDLE_BYTES`] while it holds nothing but is online
//! (so that a client acknowledging every message before the next does not touch the
//! shared counter twice per message); none offline.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;

/// Budget a session takes ahead of need, so that the shared counter (one cache line for
/// every core) is not touched for every message.
pub(super) const CREDIT_CHUNK_BYTES: usize = 16 * 1024;

/// Budget an online session that holds nothing keeps taken ahead.
pub(super) const CREDIT_IDLE_BYTES: usize = 4 * 1024;

use super::replay::Replay;
use super::{held_size, DeliverCtx, Delivery, Queued};
use crate::delivery::shared_writer::SharedWriter;
use crate::error::Kick;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::inflight::{Inflight, Window};
use tern_codec::PacketId;

/// What a session holds for its client while QoS 1/2 messages or a retained replay flow:
/// the window, the queue behind it, their bytes and the budget taken ahead. Boxed in
/// [`Delivery`] at first need and let go when it holds nothing again
/// ([`Delivery::release_idle`]): an idle session carries 8 bytes for it instead of 120.
#[derive(Debug)]
pub(super) struct Flow {
    /// The QoS 1/2 messages sent and not yet acknowledged.
    pub(super) window: Window,
    /// QoS 1/2 messages waiting for the window (or for the client to come back).
    pub(super) queue: VecDeque<Queued>,
    /// Payload and topic bytes of the queued messages.
    pub(super) queued_bytes: usize,
    /// Payload and topic bytes of the messages in the window.
    pub(super) inflight_bytes: usize,
    /// Bytes taken from the budget ahead and not held yet.
    pub(super) credit_bytes: usize,
    /// Retained replays in progress, oldest first (boxed: most flows have none).
    #[allow(clippy::box_collection)]
    pub(super) replays: Option<Box<VecDeque<Replay>>>,
    /// Since when messages have waited for a window that has not moved (no
    /// acknowledgement since), for the slow-consumer timeout.
    pub(super) stalled_since: Option<Instant>,
    /// The cluster identities of the QoS 1/2 messages handed to the session since another
    /// node prepared to take it over (`delivery_log.rs`); boxed: almost always `None`.
    pub(super) seen: Option<Box<super::log::Seen>>,
}

impl Flow {
    const EMPTY: Flow = Flow {
        window: Window::new(),
        queue: VecDeque::new(),
        queued_bytes: 0,
        inflight_bytes: 0,
        credit_bytes: 0,
        replays: None,
        stalled_since: None,
        seen: None,
    };

    /// Whether it holds no message, no replay and no byte but its credit.
    fn holds_nothing(&self) -> bool {
        self.window.is_empty()
            && self.queue.is_empty()
            && self.replays.is_none()
            && self.seen.is_none()
            && self.queued_bytes + self.inflight_bytes == 0
    }
}

/// What a session without flow state reads.
static EMPTY_FLOW: Flow = Flow::EMPTY;

/// The flow state in `flow`, or the empty one (field-level, so that it can be borrowed
/// next to the link).
pub(super) fn flow_ref(flow: &Option<Box<Flow>>) -> &Flow {
    flow.as_deref().unwrap_or(&EMPTY_FLOW)
}

/// The flow state in `flow`, allocated if there is none.
pub(super) fn flow_mut(flow: &mut Option<Box<Flow>>) -> &mut Flow {
    flow.get_or_insert_with(|| Box::new(Flow::EMPTY))
}

impl Delivery {
    /// The writer publishers should wait for, if this session is falling behind: its queue
    /// at the back-pressure bound (and not marked slow), or, after a QoS 0 delivery
    /// (`qos0`), its buffer over the soft cap. QoS 1/2 messages past the buffer's cap wait
    /// in the queue, whose bound is their brake: a buffer full of them holds nobody back.
    /// `in_line`: the publisher is being let through the back-pressure line, so others
    /// waiting there for this consumer do not stop it.
    pub fn pressure(
        &self,
        ctx: DeliverCtx<'_>,
        qos0: bool,
        in_line: bool,
    ) -> Option<&Arc<SharedWriter>> {
        let link = self.link.as_ref()?;
        let queue_long = self.flow().queue.len() >= ctx.backpressure_queued_messages;
        // Publishers already wait for it: queue up behind them instead of taking the room.
        let others_wait = !in_line && link.writer.has_waiting();
        ((qos0 && link.writer.is_pressing())
            || ((queue_long || others_wait) && !link.writer.is_slow()))
        .then_some(&link.writer)
    }

    /// Whether this session's consumer is marked slow (behind, but not waited for).
    pub fn is_slow(&self) -> bool {
        self.link.as_ref().is_some_and(|link| link.writer.is_slow())
    }

    /// The flow state (the empty one while there is none).
    pub(super) fn flow(&self) -> &Flow {
        flow_ref(&self.flow)
    }

    /// Payload and topic bytes held for the client: queued and inflight.
    pub fn held_bytes(&self) -> usize {
        let flow = self.flow();
        flow.queued_bytes + flow.inflight_bytes
    }

    /// Lets the flow state go if it holds nothing (an idle connection parks, or the session
    /// goes offline), giving its credit back to the budget; the next QoS 1/2 message
    /// allocates it again. Returns whether there is none now.
    pub fn release_idle(&mut self) -> bool {
        let Some(flow) = self.flow.as_deref() else {
            return true;
        };
        if !flow.holds_nothing() {
            return false;
        }
        // A slow-consumer clock still running goes too: it only matters while messages wait.
        self.budget.release(flow.credit_bytes);
        self.flow = None;
        true
    }

    /// The window moved (or the client left): the slow-consumer clock stops.
    pub(super) fn unstall(&mut self) {
        if let Some(flow) = self.flow.as_deref_mut() {
            flow.stalled_since = None;
        }
    }

    /// Takes `size` bytes for `message` within `max_queued_bytes` and the broker-wide
    /// budget; a message that does not fit is dropped and counted (and the client is
    /// behind: the slow-consumer clock runs).
    pub(super) fn reserve(&mut self, size: usize, message: &Message, ctx: DeliverCtx<'_>) -> bool {
        let fits = self.fits(size, message, ctx);
        if !fits {
            self.note_waiting(ctx);
        }
        fits
    }

    fn fits(&mut self, size: usize, message: &Message, ctx: DeliverCtx<'_>) -> bool {
        if self.held_bytes() + size > self.max_queued_bytes {
            Metrics::add(&ctx.metrics.dropped_queue_full, 1);
            tracing::debug!(
                topic = message.topic(),
                "session over max_queued_bytes: message dropped"
            );
            return false;
        }
        if !self.take_budget(size) {
            Metrics::add(&ctx.metrics.dropped_total_budget, 1);
            tracing::debug!(
                topic = message.topic(),
                "broker over max_total_queued_bytes: message dropped"
            );
            return false;
        }
        true
    }

    /// Takes `size` bytes of the broker-wide budget: from the credit, or a chunk more.
    fn take_budget(&mut self, size: usize) -> bool {
        let flow = flow_mut(&mut self.flow);
        if flow.credit_bytes >= size {
            flow.credit_bytes -= size;
            return true;
        }
        let need = size - flow.credit_bytes;
        if self.budget.try_reserve(need + CREDIT_CHUNK_BYTES) {
            flow.credit_bytes = CREDIT_CHUNK_BYTES;
            return true;
        }
        if self.budget.try_reserve(need) {
            flow.credit_bytes = 0;
            return true;
        }
        false
    }

    /// Gives back `size` bytes no longer held (already taken off the queued or inflight
    /// count): into the credit, which keeps one chunk while anything is held.
    pub(super) fn give_back(&mut self, size: usize) {
        let online = self.link.is_some();
        let Some(flow) = self.flow.as_deref_mut() else {
            return; // nothing was taken
        };
        flow.credit_bytes += size;
        let keep = match (flow.queued_bytes + flow.inflight_bytes, online) {
            (0, false) => 0,
            (0, true) => CREDIT_IDLE_BYTES,
            _ => CREDIT_CHUNK_BYTES,
        };
        if flow.credit_bytes > keep * 2 {
            self.budget.release(flow.credit_bytes - keep);
            flow.credit_bytes = keep;
        }
    }

    /// Puts an entry whose bytes are taken into the window.
    pub(super) fn window_push(&mut self, entry: Inflight) {
        let flow = flow_mut(&mut self.flow);
        flow.inflight_bytes += held_size(&entry.message);
        flow.window.push(entry);
    }

    /// Takes an entry out of the window and gives its bytes back.
    pub(super) fn window_remove(&mut self, packet_id: PacketId) -> Option<Inflight> {
        let flow = self.flow.as_deref_mut()?;
        let entry = flow.window.remove(packet_id)?;
        let size = held_size(&entry.message);
        flow.inflight_bytes -= size;
        self.give_back(size);
        Some(entry)
    }

    /// Counts restored messages (recovery) as held, whatever the bounds: they were
    /// accepted before the restart.
    pub(super) fn hold_restored(&mut self, size: usize, inflight: bool) {
        let flow = flow_mut(&mut self.flow);
        if inflight {
            flow.inflight_bytes += size;
        } else {
            flow.queued_bytes += size;
        }
        self.budget.force_reserve(size);
    }

    /// Gives back every byte held (the queue and window were emptied).
    pub(super) fn release_all(&mut self) {
        if let Some(flow) = self.flow.as_deref_mut() {
            let held = flow.queued_bytes + flow.inflight_bytes + flow.credit_bytes;
            self.budget.release(held);
            flow.queued_bytes = 0;
            flow.inflight_bytes = 0;
            flow.credit_bytes = 0;
        }
    }

    /// Whether a connection is attached with room in its window.
    pub(super) fn has_window_room(&self) -> bool {
        self.link.is_some() && self.flow().window.len() < usize::from(self.window_max)
    }

    /// Whether the connection's output buffer takes `size` more bytes now; if not, the
    /// connection is asked to pump this session once it has taken the buffer. Checked again
    /// under the buffer's lock after asking, so that a drain between the check and the
    /// request is not missed.
    pub(super) fn has_writer_room(&self, size: usize) -> bool {
        let Some(link) = &self.link else {
            return false;
        };
        if link.writer.has_room(size) {
            return true;
        }
        link.writer.want_drain();
        let buffered = link.writer.lock().buf().len();
        buffered == 0 || buffered + size <= link.writer.cap_bytes()
    }

    /// A message waits (queued, or dropped for want of room): starts the slow-consumer
    /// clock if it is not running, and disconnects the client (0x97) once its window has
    /// not moved for `slow_consumer_timeout` while messages wait.
    pub(super) fn note_waiting(&mut self, ctx: DeliverCtx<'_>) {
        let Some(link) = &self.link else {
            return;
        };
        let flow = flow_mut(&mut self.flow);
        let since = *flow.stalled_since.get_or_insert(ctx.now);
        if stalled_too_long(since, ctx) && !flow.window.is_empty() {
            link.writer.control().kick(Kick::SlowConsumer);
        }
    }
}

fn stalled_too_long(since: Instant, ctx: DeliverCtx<'_>) -> bool {
    ctx.now.duration_since(since) >= ctx.slow_consumer_timeout
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.release_all();
    }
}
