//! Routing: subscriptions in a topic trie, and the fan-out of one message to every matching
//! session, run in the publisher's own task (no router thread).
//!
//! Matching takes the trie's read lock only; (un)subscribe takes the write lock briefly and
//! changes one path. A subscriber in the trie is a [`Session`], a shared group, or a bridge
//! ring (SSE, WebSocket JSON: [`SubValue::Bridge`], fed once per message per ring).

mod batch;
pub(crate) use self::batch::{can_run, is_run_member};
pub mod shared;
pub mod trie;

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tern_codec::topic::split_shared;
use tern_codec::{QoS, SubscriptionOptions};

use crate::auth::ClientAcl;
use crate::backpressure::{Pressure, Ticket};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::delivery::DeliverCtx;
use crate::session::Session;

use self::shared::SharedGroup;
use self::trie::Trie;

/// Who a trie entry belongs to: a session's own subscription, or a shared group. 16 bytes
/// (a thin pointer for the group's name): an entry of one session's filter, key and
/// value, then fits jemalloc's 48-byte class instead of 64.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubKey {
    /// A session, by its id.
    Session(u64),
    /// A shared subscription group, by its name (the filter is the trie path).
    #[allow(clippy::box_collection)]
    Group(Box<String>),
    /// A bridge ring ([`crate::http::bridge`]), by its id.
    Bridge(u64),
}

/// A trie entry.
#[derive(Debug)]
pub enum SubValue {
    /// A session's subscription.
    Direct(SubEntry),
    /// The members of a shared subscription group.
    Group(Arc<SharedGroup>),
    /// A bridge subscription (SSE, WebSocket JSON): its shared ring.
    Bridge(Arc<dyn BridgeSink>),
}

/// One session's subscription to one filter.
#[derive(Debug, Clone)]
pub struct SubEntry {
    /// The subscriber.
    pub session: Arc<Session>,
    /// Options granted.
    pub options: SubscriptionOptions,
    /// Subscription Identifier (5.0).
    pub subscription_id: Option<u32>,
    /// The subscriber's ACL, when the filter matches topics it may not read: each message
    /// is checked with it before delivery. `None`: no ACL, or the filter is wholly readable.
    pub read_check: Option<Arc<ClientAcl>>,
}

/// What [`deliver_targets`] hands each matched session: one message, or a run of messages
/// of one topic and QoS, 0 or 1 ([`Router::route_run`]).
#[derive(Clone, Copy)]
enum Deliveries<'m> {
    One(&'m Arc<Message>),
    Run(&'m [Arc<Message>]),
}

/// One delivery decided by matching, before overlapping subscriptions are merged.
#[derive(Debug)]
struct Target {
    session: Arc<Session>,
    qos: QoS,
    retain: bool,
    subscription_id: Option<u32>,
    /// The shared group this delivery came through; such deliveries are never merged.
    group: Option<Arc<SharedGroup>>,
}

/// Buffers reused from one publish to the next by the same publisher, so routing does not
/// allocate per message.
#[derive(Debug, Default)]
pub struct RouteScratch {
    targets: Vec<Target>,
    subscription_ids: Vec<u32>,
    bridges: Vec<Arc<dyn BridgeSink>>,
    /// Subscribers this publisher's messages left behind: it waits for them before reading
    /// more ([`crate::backpressure`]).
    pressure: Vec<Pressure>,
    /// The cluster position of the last message this publisher forwarded to other nodes
    /// (0: none): its acknowledgement waits for NATS to confirm it.
    pub cluster_position: u64,
    /// This publisher's place in the back-pressure line, kept while it handles the input
    /// it had when its turn came ([`crate::backpressure::Relief::wait`]): while it holds
    /// one, others waiting for a subscriber do not stop it.
    turn: Option<Ticket>,
}

impl RouteScratch {
    /// Takes the place in the back-pressure line, to wait with it.
    pub fn take_turn(&mut self) -> Option<Ticket> {
        self.turn.take()
    }

    /// Keeps (or gives up) a place in the back-pressure line.
    pub fn set_turn(&mut self, turn: Option<Ticket>) {
        self.turn = turn;
    }

    /// After a buffer: the place is kept only to go on with the input left in it
    /// (`has_buffered`) once the subscribers it stopped for drain.
    pub fn keep_turn_for_input(&mut self, has_buffered: bool) {
        if !(has_buffered && self.has_pressure()) {
            self.turn = None;
        }
    }

    /// Whether some subscriber fell behind since the last [`RouteScratch::take_pressure`].
    pub fn has_pressure(&self) -> bool {
        !self.pressure.is_empty()
    }

    /// The subscribers that fell behind, each once.
    pub fn take_pressure(&mut self) -> Vec<Pressure> {
        let mut pressure = std::mem::take(&mut self.pressure);
        pressure.sort_unstable_by_key(|p| Arc::as_ptr(&p.writer) as usize);
        pressure.dedup_by(|a, b| {
            let same = Arc::ptr_eq(&a.writer, &b.writer);
            if same {
                b.qos0 |= a.qos0;
            }
            same
        });
        pressure
    }
}

/// The subscription table.
#[derive(Debug, Default)]
pub struct Router {
    trie: RwLock<Trie<SubKey, SubValue>>,
    /// Set in a cluster: shared groups are served by [`Router::route_group`] only (the
    /// cluster's queue groups pick the node), never by [`Router::route`]. Read only when a
    /// shared group matches.
    groups_by_cluster: std::sync::atomic::AtomicBool,
}

impl Router {
    fn read(&self) -> RwLockReadGuard<'_, Trie<SubKey, SubValue>> {
        self.trie.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Trie<SubKey, SubValue>> {
        self.trie.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces `session`'s subscription to `filter` (validated; may be
    /// `$share/{group}/{filter}`). Returns whether it is new (the `subscriptions` gauge
    /// follows the router: +1 here when new, -1 when [`Router::unsubscribe`] removes one).
    pub fn subscribe(
        &self,
        filter: &str,
        session: &Arc<Session>,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    ) -> bool {
        self.subscribe_checked(filter, session, options, subscription_id, None)
    }

    /// [`Router::subscribe`] with a read check applied to each message before it is
    /// delivered through this subscription (see [`SubEntry::read_check`]).
    pub fn subscribe_checked(
        &self,
        filter: &str,
        session: &Arc<Session>,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
        read_check: Option<Arc<ClientAcl>>,
    ) -> bool {
        let entry = SubEntry {
            session: session.clone(),
            options,
            subscription_id,
            read_check,
        };
        match split_shared(filter) {
            Some(Ok((group, inner))) => {
                let mut trie = self.write();
                let key = SubKey::Group(Box::new(group.to_owned()));
                if let Some(SubValue::Group(existing)) = trie.get(inner, &key) {
                    existing.upsert(entry)
                } else {
                    let group = Arc::new(SharedGroup::new(Arc::from(filter)));
                    group.upsert(entry);
                    trie.insert(inner, key, SubValue::Group(group));
                    true
                }
            }
            _ => self
                .write()
                .insert(filter, SubKey::Session(session.id), SubValue::Direct(entry))
                .is_none(),
        }
    }

    /// The shared group subscribed as `key` (`$share/{group}/{filter}`), if it has members.
    pub fn shared_group(&self, key: &str) -> Option<Arc<SharedGroup>> {
        let Some(Ok((group, inner))) = split_shared(key) else {
            return None;
        };
        match self
            .read()
            .get(inner, &SubKey::Group(Box::new(group.to_owned())))
        {
            Some(SubValue::Group(group)) => Some(group.clone()),
            _ => None,
        }
    }

    /// Removes `session_id`'s subscription to `filter`; returns whether it existed.
    pub fn unsubscribe(&self, filter: &str, session_id: u64) -> bool {
        match split_shared(filter) {
            Some(Ok((group, inner))) => {
                let mut trie = self.write();
                let key = SubKey::Group(Box::new(group.to_owned()));
                let Some(SubValue::Group(existing)) = trie.get(inner, &key) else {
                    return false;
                };
                let (removed, now_empty) = existing.remove(session_id);
                if now_empty {
                    trie.remove(inner, &key);
                }
                removed
            }
            _ => self
                .write()
                .remove(filter, &SubKey::Session(session_id))
                .is_some(),
        }
    }

    /// Number of trie entries (session subscriptions and shared groups).
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Delivers `message` to every matching subscriber; returns how many sessions and bridge
    /// rings got it.
    ///
    /// A client whose subscriptions overlap gets ONE copy at the highest granted QoS with
    /// every matching subscription identifier ([MQTT-3.3.4-2], [MQTT-3.3.4-3]); each shared
    /// group delivers to one member (5.0 section 4.8.2). No Local skips the publisher's own
    /// session ([MQTT-3.8.3-3]); RETAIN is kept only for Retain As Published ([MQTT-3.3.1-12],
    /// [MQTT-3.3.1-13]).
    pub fn route(
        &self,
        message: &Arc<Message>,
        scratch: &mut RouteScratch,
        ctx: DeliverCtx<'_>,
    ) -> usize {
        self.collect(message, scratch, ctx, false);
        let delivered = deliver_targets(Deliveries::One(message), scratch, ctx);
        delivered
            + deliver_to_bridges(
                std::slice::from_ref(message),
                &mut scratch.bridges,
                ctx.metrics,
            )
    }

    /// Matches `message` into `scratch`: the deliveries it makes (sorted so that one
    /// session's sit side by side) and the bridge sinks it reaches. With `run`, a shared
    /// group that matches is not served (it picks a member per message): then nothing is
    /// collected and the result is false.
    fn collect(
        &self,
        message: &Message,
        scratch: &mut RouteScratch,
        ctx: DeliverCtx<'_>,
        run: bool,
    ) -> bool {
        let publish = message.publish();
        let origin = message.origin_session.map(std::num::NonZeroU64::get);
        scratch.targets.clear();
        let mut filters = 0usize;
        let mut grouped = false;
        {
            let trie = self.read();
            trie.for_each_match_grouped(
                publish.topic(),
                || filters += 1,
                |_, value| match value {
                    SubValue::Direct(entry) => {
                        if !(entry.options.no_local && Some(entry.session.id) == origin) {
                            push_target(&mut scratch.targets, entry, None, publish, ctx);
                        }
                    }
                    SubValue::Group(group) => {
                        if self
                            .groups_by_cluster
                            .load(std::sync::atomic::Ordering::Relaxed)
                        {
                            return; // the cluster picked a node for it: route_group
                        }
                        if run {
                            grouped = true;
                            return;
                        }
                        if let Some(entry) = group.pick() {
                            let group = Some(group.clone());
                            push_target(&mut scratch.targets, &entry, group, publish, ctx);
                        }
                    }
                    SubValue::Bridge(ring) => scratch.bridges.push(ring.clone()),
                },
            );
        }
        if grouped {
            scratch.targets.clear();
            scratch.bridges.clear();
            return false;
        }
        // Only matches from several filters can name one session twice: then sort, so that
        // overlapping subscriptions sit side by side and merge into one delivery.
        if filters > 1 && scratch.targets.len() > 1 {
            scratch
                .targets
                .sort_unstable_by_key(|t| (t.session.id, t.group.is_some()));
        }
        true
    }

    /// From now on shared groups get messages only through [`Router::route_group`] (a
    /// cluster, whose queue groups deliver each message to one node).
    pub fn serve_groups_by_cluster(&self) {
        self.groups_by_cluster
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Delivers `message` to one member of the shared group subscribed as `key`
    /// (`$share/{group}/{filter}`); returns 1 if a member took it, 0 when the group has no
    /// member here (any more).
    pub fn route_group(
        &self,
        key: &str,
        message: &Arc<Message>,
        scratch: &mut RouteScratch,
        ctx: DeliverCtx<'_>,
    ) -> usize {
        let Some(group) = self.shared_group(key) else {
            return 0;
        };
        let Some(entry) = group.pick() else {
            return 0;
        };
        scratch.targets.clear();
        push_target(
            &mut scratch.targets,
            &entry,
            Some(group),
            message.publish(),
            ctx,
        );
        deliver_targets(Deliveries::One(message), scratch, ctx)
    }

    /// Adds the trie entry of bridge `sink` for `filter` (valid, not shared); returns
    /// whether it is new.
    pub fn subscribe_bridge(&self, filter: &str, sink: Arc<dyn BridgeSink>) -> bool {
        self.write()
            .insert(filter, SubKey::Bridge(sink.id()), SubValue::Bridge(sink))
            .is_none()
    }

    /// Removes the trie entry of bridge ring `ring_id` for `filter`; returns whether it was
    /// there.
    pub fn unsubscribe_bridge(&self, filter: &str, ring_id: u64) -> bool {
        self.write()
            .remove(filter, &SubKey::Bridge(ring_id))
            .is_some()
    }
}

/// Delivers to the matched targets (sorted so that one session's targets sit side by side),
/// merging one session's overlapping subscriptions into one delivery; returns how many
/// deliveries were made. Records the subscribers left over their soft cap for the publisher
/// to wait for, unless only a minority fell behind: those are marked slow instead.
fn deliver_targets(
    deliveries: Deliveries<'_>,
    scratch: &mut RouteScratch,
    ctx: DeliverCtx<'_>,
) -> usize {
    let mut delivered = 0;
    let pressure_before = scratch.pressure.len();
    let mut already_slow = 0usize;
    let mut i = 0;
    while i < scratch.targets.len() {
        let first = &scratch.targets[i];
        let mut qos = first.qos;
        let mut retain = first.retain;
        scratch.subscription_ids.clear();
        scratch.subscription_ids.extend(first.subscription_id);
        let mut j = i + 1;
        if first.group.is_none() {
            while let Some(next) = scratch.targets.get(j) {
                if next.group.is_some() || next.session.id != first.session.id {
                    break;
                }
                qos = qos.max(next.qos);
                retain |= next.retain;
                push_once(&mut scratch.subscription_ids, next.subscription_id);
                j += 1;
            }
        }
        let mut delivery = first.session.delivery();
        let ids = &scratch.subscription_ids;
        let qos0 = match deliveries {
            Deliveries::One(message) => {
                let group = first.group.as_ref().map(|g| g.key());
                delivery.deliver_via(message, qos, retain, ids, group, ctx);
                qos == QoS::AtMostOnce || message.qos() == QoS::AtMostOnce
            }
            Deliveries::Run(messages) => {
                delivery.deliver_run(messages, qos, ids, ctx);
                qos == QoS::AtMostOnce
            }
        };
        if let Some(writer) = delivery.pressure(ctx, qos0, scratch.turn.is_some()) {
            scratch.pressure.push(Pressure {
                session: first.session.clone(),
                writer: writer.clone(),
                qos0,
            });
        } else if delivery.is_slow() {
            already_slow += 1;
        }
        drop(delivery);
        delivered += 1;
        i = j;
    }
    scratch.targets.clear();
    // Back-pressure is for consumers that as a whole cannot keep up. A minority behind the
    // others are slow consumers: the publisher does not wait for them ([DESIGN.md] "a slow
    // subscriber slows nobody else"); their buffers fill to the cap, then drop.
    let pressing = scratch.pressure.len() - pressure_before;
    if pressing > 0 && (pressing + already_slow) * 2 < delivered {
        for p in scratch.pressure.drain(pressure_before..) {
            if p.writer.mark_slow() {
                Metrics::add(&ctx.metrics.backpressure_slow_consumers, 1);
            }
        }
    }
    delivered
}

/// A subscriber outside MQTT in the trie: the HTTP bridges' rings (SSE, WebSocket JSON).
/// The router hands it each matching message once, however many of its filters match.
pub trait BridgeSink: Send + Sync + std::fmt::Debug {
    /// Unique among the sinks of a broker: the trie key of this sink's entries.
    fn id(&self) -> u64;

    /// Takes `message`. `encoded` is shared by every sink one message reaches, so a format
    /// is encoded once: the first sink fills it. Returns how many old entries the sink
    /// dropped to make room, or `None` when its read ACL refuses the topic.
    fn push(&self, message: &Message, encoded: &mut Option<bytes::Bytes>) -> Option<usize>;
}

/// Hands each of `messages`, in order, to each sink in `sinks` once (the list is emptied);
/// returns how many took them, counted per message.
pub(crate) fn deliver_to_bridges<M: std::ops::Deref<Target = Message>>(
    messages: &[M],
    sinks: &mut Vec<Arc<dyn BridgeSink>>,
    metrics: &Metrics,
) -> usize {
    if sinks.is_empty() {
        return 0;
    }
    if sinks.len() > 1 {
        sinks.sort_unstable_by_key(|s| s.id());
        sinks.dedup_by_key(|s| s.id());
    }
    let count = messages
        .iter()
        .map(|message| push_to_bridges(message, sinks, metrics))
        .sum();
    sinks.clear();
    count
}

/// Hands `message` to each of `sinks` (each once in the list); returns how many took it.
fn push_to_bridges(message: &Message, sinks: &[Arc<dyn BridgeSink>], metrics: &Metrics) -> usize {
    let mut encoded = None;
    let mut evicted = 0;
    let mut count = 0;
    for sink in sinks.iter() {
        match sink.push(message, &mut encoded) {
            Some(n) => {
                evicted += n;
                count += 1;
            }
            None => Metrics::add(&metrics.acl_denied, 1),
        }
    }
    Metrics::add(&metrics.bridge_messages, count as u64);
    if evicted > 0 {
        Metrics::add(&metrics.bridge_ring_evictions, evicted as u64);
    }
    count
}

/// Records one matching subscription as a delivery, unless its read ACL refuses the topic.
/// Borrows the entry: only the session handle is cloned, and not for a refused topic.
fn push_target(
    targets: &mut Vec<Target>,
    entry: &SubEntry,
    group: Option<Arc<SharedGroup>>,
    publish: &tern_codec::Publish,
    ctx: DeliverCtx<'_>,
) {
    if let Some(acl) = &entry.read_check {
        if !acl.allows_read(publish.topic()) {
            Metrics::add(&ctx.metrics.acl_denied, 1);
            return;
        }
    }
    targets.push(Target {
        qos: publish.qos().min(entry.options.qos),
        retain: publish.retain && entry.options.retain_as_published,
        subscription_id: entry.subscription_id,
        session: entry.session.clone(),
        group,
    });
}

#[cfg(test)]
mod tests;

/// Adds a merged subscription's identifier unless already there: two matching
/// subscriptions with one identifier put it in the delivered PUBLISH once (issue #13).
fn push_once(ids: &mut Vec<u32>, id: Option<u32>) {
    ids.extend(id.filter(|id| !ids.contains(id)));
}
