//! Retained replay as a cursor (issue #17): on SUBSCRIBE, the matching retained messages
//! go to the subscriber as fast as it takes them, not all at once. A replay holds its
//! place in the retained store ([`crate::retained::RetainedStore::next_matches`]) and a
//! page of at most [`PAGE_MESSAGES`] shared references, never a copy of the matching set.
//!
//! Pacing: a QoS 0 message goes while the connection's output buffer is under half its cap
//! (the other half is left to live traffic), a QoS 1/2 message while the Receive Maximum
//! window, `max_queued_bytes` and the buffer's cap have room. When one runs out the replay
//! stops, and the session is pumped again when the client acknowledges or the connection
//! has taken the buffer ([`crate::delivery::shared_writer::SharedWriter::want_drain`]).
//! Live messages queued for the session go first; the replay follows while the queue is
//! empty. Offline, a replay waits for the session's next connection.
//!
//! Order: a live message on a topic the replay has not reached yet pulls that topic's
//! retained message forward, so the older retained message never arrives after the newer
//! live one ([MQTT-4.6.0-6], Ordered Topic). A message retained after the SUBSCRIBE reached
//! the subscriber live, so the replay skips it.
//!
//! Not persisted: after a crash the rest of a replay is not resumed (what it had handed to
//! the window of a persistent session is, like any outbound message).

use std::collections::VecDeque;
use std::sync::Arc;

use tern_codec::topic;
use tern_codec::{ByteStr, PublishQoS, QoS};

use super::{flow_mut, held_size, DeliverCtx, Delivery};
use crate::auth::ClientAcl;
use crate::message::Message;
use crate::retained::RetainedStore;
use crate::session::write::write_publish;

/// Retained messages fetched from the store at a time, per replay.
const PAGE_MESSAGES: usize = 64;

/// What one replay sends: the retained messages matching `filter`, just subscribed.
#[derive(Debug)]
pub struct ReplayRequest {
    /// The filter (plain: shared subscriptions get no retained messages).
    pub filter: Arc<str>,
    /// The QoS granted; each message goes at the lower of it and its own.
    pub granted: QoS,
    /// The subscription's identifier (5.0).
    pub subscription_id: Option<u32>,
    /// The ACL's read check, when the filter is not wholly readable.
    pub read_check: Option<Arc<ClientAcl>>,
    /// The store's change number at the SUBSCRIBE ([`RetainedStore::seq`]).
    pub upto_seq: u64,
}

/// One replay in progress.
#[derive(Debug)]
pub(super) struct Replay {
    request: ReplayRequest,
    subscription_ids: Vec<u32>,
    /// The last topic fetched from the store.
    after: Option<ByteStr>,
    /// Fetched, not sent yet.
    page: VecDeque<(ByteStr, Arc<Message>)>,
    /// Nothing left in the store after `after`.
    exhausted: bool,
    /// Topics sent ahead of the cursor because a live message on them came first.
    sent_early: Vec<ByteStr>,
}

impl Replay {
    fn new(request: ReplayRequest) -> Replay {
        Replay {
            subscription_ids: request.subscription_id.into_iter().collect(),
            request,
            after: None,
            page: VecDeque::new(),
            exhausted: false,
            sent_early: Vec::new(),
        }
    }

    fn allows(&self, topic: &str) -> bool {
        self.request
            .read_check
            .as_ref()
            .is_none_or(|acl| acl.allows_read(topic))
    }

    fn fill(&mut self, store: &RetainedStore, ctx: DeliverCtx<'_>) {
        let mut out = Vec::with_capacity(PAGE_MESSAGES);
        let r = &self.request;
        self.exhausted = store.next_matches(
            &r.filter,
            self.after.as_deref(),
            r.upto_seq,
            ctx.now,
            PAGE_MESSAGES,
            &mut out,
        );
        if let Some((topic, _)) = out.last() {
            self.after = Some(topic.clone());
        }
        self.page.extend(out);
    }

    /// Whether `topic` was sent ahead of the cursor (and forgets it: the cursor is there).
    fn take_early(&mut self, topic: &str) -> bool {
        let found = self.sent_early.iter().position(|t| &**t == topic);
        found.map(|i| self.sent_early.swap_remove(i)).is_some()
    }

    /// The retained message of `topic` that a live message on it must not overtake: one
    /// this replay has yet to send, taken out of its way.
    /// Offline (`online` false), a QoS 0 one stays where it is: it could not be sent now,
    /// and waits for the replay to reach it after the client is back.
    fn take_ahead(
        &mut self,
        topic: &str,
        online: bool,
        store: &RetainedStore,
        ctx: DeliverCtx<'_>,
    ) -> Option<Arc<Message>> {
        if !topic::matches(&self.request.filter, topic) {
            return None;
        }
        let sendable = |m: &Message| online || m.qos().min(self.request.granted) != QoS::AtMostOnce;
        let message = if let Some(i) = self.page.iter().position(|(t, _)| &**t == topic) {
            if !sendable(&self.page[i].1) {
                return None;
            }
            self.page.remove(i)?.1
        } else {
            let passed = self.after.as_deref().is_some_and(|after| topic <= after);
            if passed || self.sent_early.iter().any(|t| &**t == topic) {
                return None;
            }
            let message = store.stored_by(topic, self.request.upto_seq)?;
            if !sendable(&message) {
                return None;
            }
            self.sent_early.push(ByteStr::from(topic));
            message
        };
        (!message.is_expired(ctx.now) && self.allows(topic)).then_some(message)
    }
}

impl Delivery {
    /// Starts replaying the retained messages `request` asks for (replacing a replay of the
    /// same filter still in progress: the SUBSCRIBE sends them again) and sends what the
    /// client has room for now.
    pub fn start_replay(&mut self, request: ReplayRequest, ctx: DeliverCtx<'_>) {
        let replays = flow_mut(&mut self.flow).replays.get_or_insert_default();
        replays.retain(|r| r.request.filter != request.filter);
        replays.push_back(Replay::new(request));
        self.pump(ctx);
    }

    /// Stops the replay for `filter`, if one is in progress (UNSUBSCRIBE).
    pub fn cancel_replay(&mut self, filter: &str) {
        if let Some(flow) = self.flow.as_deref_mut() {
            if let Some(replays) = &mut flow.replays {
                replays.retain(|r| &*r.request.filter != filter);
                if replays.is_empty() {
                    flow.replays = None;
                }
            }
        }
    }

    /// Whether a retained replay is in progress.
    pub fn is_replaying(&self) -> bool {
        self.flow().replays.is_some()
    }

    /// Sends replayed messages while the client has room, oldest replay first.
    pub(super) fn pump_replays(&mut self, ctx: DeliverCtx<'_>) {
        let Some(flow) = self.flow.as_deref_mut() else {
            return;
        };
        let Some(store) = ctx.retained else {
            flow.replays = None;
            return;
        };
        let Some(mut replays) = flow.replays.take() else {
            return;
        };
        while let Some(replay) = replays.front_mut() {
            if !self.replay_some(replay, store, ctx) {
                break;
            }
            replays.pop_front();
        }
        if !replays.is_empty() {
            flow_mut(&mut self.flow).replays = Some(replays);
        }
    }

    /// Sends from `replay` until the client has no room (`false`) or the replay is done.
    fn replay_some(
        &mut self,
        replay: &mut Replay,
        store: &RetainedStore,
        ctx: DeliverCtx<'_>,
    ) -> bool {
        loop {
            let Some((topic, message)) = replay.page.front() else {
                if replay.exhausted {
                    return true;
                }
                replay.fill(store, ctx);
                continue;
            };
            let (topic, message) = (topic.clone(), message.clone());
            if replay.take_early(&topic) || !replay.allows(&topic) {
                replay.page.pop_front();
                continue;
            }
            let qos = message.qos().min(replay.request.granted);
            if !self.has_replay_room(qos, held_size(&message)) {
                return false;
            }
            replay.page.pop_front();
            self.send_retained(&message, qos, &replay.subscription_ids, ctx);
        }
    }

    /// Whether the client takes one more replayed message of `size` bytes at `qos` now.
    fn has_replay_room(&self, qos: QoS, size: usize) -> bool {
        let Some(link) = &self.link else {
            return false;
        };
        if qos == QoS::AtMostOnce {
            // Half the cap, and never past it (a QoS 0 message past the cap is dropped).
            let cap = link.writer.cap_bytes();
            let fits =
                |buffered: usize| buffered == 0 || (buffered < cap / 2 && buffered + size <= cap);
            if link.writer.is_below(cap / 2) && link.writer.has_room(size) {
                return true;
            }
            link.writer.want_drain();
            return fits(link.writer.lock().buf().len());
        }
        let bytes_fit =
            self.flow().window.is_empty() || self.held_bytes() + size <= self.max_queued_bytes;
        self.has_window_room() && bytes_fit && self.has_writer_room(size)
    }

    /// Sends one retained message because of a SUBSCRIBE: RETAIN 1 ([MQTT-3.3.1-8]),
    /// encoded one-shot unless the message has the template already (a replay of a large
    /// store leaves no encoded copies behind).
    fn send_retained(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        ids: &[u32],
        ctx: DeliverCtx<'_>,
    ) {
        let ctx = DeliverCtx {
            cache_templates: false,
            ..ctx
        };
        if qos != QoS::AtMostOnce {
            self.deliver_via(message, qos, true, ids, None, ctx);
        } else if let Some(link) = self.link.as_mut() {
            let out = PublishQoS::AtMostOnce;
            write_publish(link, message, out, true, false, ids, 0, ctx);
        }
    }

    /// Before live message on `topic` goes out: the retained messages of that topic that
    /// replays in progress have yet to send go first ([MQTT-4.6.0-6]).
    pub(super) fn pull_forward(&mut self, topic: &str, ctx: DeliverCtx<'_>) {
        let Some(store) = ctx.retained else {
            return;
        };
        let Some(mut replays) = self.flow.as_deref_mut().and_then(|f| f.replays.take()) else {
            return;
        };
        let online = self.link.is_some();
        for replay in replays.iter_mut() {
            if let Some(message) = replay.take_ahead(topic, online, store, ctx) {
                let qos = message.qos().min(replay.request.granted);
                self.send_retained(&message, qos, &replay.subscription_ids, ctx);
            }
        }
        flow_mut(&mut self.flow).replays = Some(replays);
    }
}
