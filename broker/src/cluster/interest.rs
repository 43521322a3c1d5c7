//! Interest-based routing: one NATS subscription per distinct filter this node's
//! subscribers hold (two for a filter ending in `/#`), counted by holder and dropped with
//! the last one. Each filter's task takes its subscriptions, waits until the NATS servers
//! the other nodes publish through have them ([`super::confirm`]), marks the filter ready,
//! and routes what arrives through the local trie, after
//! dropping second copies ([`super::dedup`]). A message matching several filters arrives in
//! each of their streams; the duplicate check and the routing of the first copy happen under
//! a lock per (origin, topic) ([`super::ordered`]), so the task that finds a copy moves on
//! to the topic's next message only once the first copy is delivered: messages of one topic
//! are delivered in publishing order ([MQTT-4.6.0-6]) whichever task routes them.
//!
//! A SUBACK waits for its filter to be ready ([`Interests::ready`]), so a client told it is
//! subscribed gets every message published anywhere after that. NATS keeps no state for a
//! lost connection: the client resubscribes by itself when it reconnects.
//!
//! A shared subscription `$share/g/f` is a NATS queue subscription of group `g` on `f`'s
//! subjects, on a second connection ([`Shared::queue_client`]): NATS hands each message to
//! one node of the group, the publishing node included (the first connection is no-echo),
//! and that node picks the member ([`Broker::route_to_group`]). Local routing leaves shared
//! groups to this path, so each message reaches a group once cluster-wide. This path needs
//! neither the duplicate check nor its lock: a queue subscription gets each message once,
//! routing it reaches only the group's member (never a plain subscription, which the plain
//! filters' path serves), and one group's messages of a topic come in one stream, in order
//! (across nodes NATS spreads them anyway: ordering is not required of shared subscriptions).
//!
//! A NATS message may carry a batch of envelopes of one topic ([`envelope::split`]): each
//! is handled in order as if it had come alone (duplicate check, routing; for a queue group
//! the member is picked per message), the whole batch under one lock.
//!
//! A NATS message may instead be a reference to a large message kept in the object store
//! ([`super::large`]): the task fetches it (an await, before any lock) and handles it as
//! the envelope it stands for; one that cannot be fetched is skipped (counted).
//!
//! This module owns the subscriptions and the inbound routing tasks.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::confirm::Confirmer;
use super::envelope;
use super::large::LargeStore;
use super::metrics::ClusterMetrics;
use super::ordered::FirstCopies;
use super::subject;
use crate::broker::{Broker, InterestReady};
use crate::message::Message;
use crate::router::{can_run, is_run_member, RouteScratch};

/// The filters this node holds interest in.
#[derive(Debug)]
pub(crate) struct Interests {
    filters: Mutex<HashMap<Arc<str>, Interest>>,
    shared: Arc<Shared>,
}

/// What every filter's task needs.
#[derive(Debug)]
struct Shared {
    client: async_nats::Client,
    /// Carries the queue subscriptions: another connection than `client`, which publishes
    /// with no echo, so that NATS may pick the publishing node itself for a group.
    queue_client: async_nats::Client,
    /// Confirms `client`'s subscriptions on every NATS server ([`Confirmer`]).
    confirm: Confirmer,
    /// Confirms `queue_client`'s.
    queue_confirm: Confirmer,
    broker: Broker,
    prefix: String,
    /// Duplicate check and routing, in order per topic across the filters' tasks.
    first_copies: FirstCopies,
    /// Where the envelopes of large messages are fetched from.
    large: LargeStore,
    metrics: Arc<ClusterMetrics>,
    /// Longest a SUBACK waits for a filter to be ready.
    ready_timeout: Duration,
}

/// One filter's interest.
#[derive(Debug)]
struct Interest {
    /// Local holders (sessions' subscriptions, bridge rings).
    holders: usize,
    /// `true` once NATS has the subscriptions.
    ready: watch::Receiver<bool>,
    /// Subscribes, then routes what arrives; aborted (unsubscribing) with the last holder.
    task: JoinHandle<()>,
}

impl Interests {
    /// No interest yet; `confirmers` confirm the subscriptions of `connections`' client
    /// and queue client.
    pub(crate) fn new(
        connections: super::Connections,
        large: LargeStore,
        confirmers: (Confirmer, Confirmer),
        broker: Broker,
        prefix: String,
        metrics: Arc<ClusterMetrics>,
        ready_timeout: Duration,
    ) -> Interests {
        Interests {
            filters: Mutex::new(HashMap::new()),
            shared: Arc::new(Shared {
                client: connections.client,
                queue_client: connections.queue_client,
                confirm: confirmers.0,
                queue_confirm: confirmers.1,
                broker,
                prefix,
                first_copies: FirstCopies::default(),
                large,
                metrics,
                ready_timeout,
            }),
        }
    }

    /// One more local holder of `filter`.
    pub(crate) fn add(&self, filter: &str) {
        let mut filters = self.filters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(interest) = filters.get_mut(filter) {
            interest.holders += 1;
            return;
        }
        let (ready_tx, ready) = watch::channel(false);
        let prefix = &self.shared.prefix;
        let (subjects, queue) = match tern_codec::topic::split_shared(filter) {
            Some(Ok((group, inner))) => (
                subject::filter_subjects(prefix, inner),
                Some(Queue {
                    name: subject::queue_name(group),
                    key: Arc::from(filter),
                }),
            ),
            Some(Err(_)) => return, // not a valid shared filter: never subscribed
            None => (subject::filter_subjects(prefix, filter), None),
        };
        let task = tokio::spawn(run(self.shared.clone(), subjects, queue, ready_tx));
        filters.insert(
            Arc::from(filter),
            Interest {
                holders: 1,
                ready,
                task,
            },
        );
        ClusterMetrics::inc(&self.shared.metrics.interest_filters);
    }

    /// One local holder of `filter` fewer; the last one takes the NATS subscriptions along.
    pub(crate) fn remove(&self, filter: &str) {
        let mut filters = self.filters.lock().unwrap_or_else(|p| p.into_inner());
        let Some(interest) = filters.get_mut(filter) else {
            return;
        };
        interest.holders -= 1;
        if interest.holders == 0 {
            if let Some(interest) = filters.remove(filter) {
                interest.task.abort();
                self.shared
                    .metrics
                    .interest_filters
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Waits until `filter`'s subscriptions are in force in NATS (at most the configured
    /// time); `None` when they are already, or the filter is node-local.
    pub(crate) fn ready(&self, filter: &str) -> Option<InterestReady> {
        let filters = self.filters.lock().unwrap_or_else(|p| p.into_inner());
        let mut ready = filters.get(filter)?.ready.clone();
        if *ready.borrow() {
            return None;
        }
        let timeout = self.shared.ready_timeout;
        let filter = filter.to_string();
        Some(Box::pin(async move {
            let waited = tokio::time::timeout(timeout, ready.wait_for(|r| *r)).await;
            if waited.is_err() {
                tracing::warn!(
                    filter,
                    "cluster: NATS did not confirm interest in time; SUBACK sent anyway"
                );
            }
        }))
    }
}

/// A shared subscription's queue group.
#[derive(Debug)]
struct Queue {
    /// The NATS queue group name.
    name: String,
    /// `$share/{group}/{filter}`: the group in the trie.
    key: Arc<str>,
}

/// Subscribes to `subjects` (in `queue`'s group for a shared subscription) until NATS
/// confirms them (retrying while it is away), marks them ready, then routes every message
/// that arrives.
async fn run(
    shared: Arc<Shared>,
    subjects: Vec<String>,
    queue: Option<Queue>,
    ready: watch::Sender<bool>,
) {
    let (client, confirm) = match queue {
        Some(_) => (&shared.queue_client, &shared.queue_confirm),
        None => (&shared.client, &shared.confirm),
    };
    let mut streams = Vec::with_capacity(subjects.len());
    for subject in &subjects {
        loop {
            let subscribed = match &queue {
                Some(q) => {
                    client
                        .queue_subscribe(subject.clone(), q.name.clone())
                        .await
                }
                None => client.subscribe(subject.clone()).await,
            };
            match subscribed {
                Ok(subscriber) => {
                    streams.push(subscriber);
                    break;
                }
                Err(e) => {
                    tracing::warn!(subject, error = %e, "cluster: cannot subscribe; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    // The subscriptions are queued on the connection; once requests sent after them have
    // come back, the NATS servers have them ([`super::confirm`]).
    confirm.confirm().await;
    ready.send_replace(true);
    let mut incoming = futures_util::stream::select_all(streams);
    let mut scratch = RouteScratch::default();
    let mut buffers = Buffers::default();
    while let Some(message) = incoming.next().await {
        // A large message's reference is resolved first: fetched here, before the per-topic
        // lock is taken, so that no lock is held across the wait; the next NATS message of
        // this stream waits for it (order kept).
        // A copy of a message routed already (it matched another filter of this node too)
        // is dropped before its fetch, not after.
        if queue.is_none()
            && envelope::reference_identity(&message.payload)
                .is_some_and(|id| shared.first_copies.seen(id))
        {
            ClusterMetrics::inc(&shared.metrics.duplicates_dropped);
            continue;
        }
        let Some(payload) = shared.large.resolve(message.payload).await else {
            continue;
        };
        // One NATS message carries one envelope or a batch of them, in publishing order;
        // the clocks are read once for all of them.
        let clock = (Instant::now(), envelope::unix_ms_now());
        match &queue {
            Some(q) => {
                for entry in shared.envelopes(payload) {
                    shared.handle_group(&q.key, entry, clock, &mut scratch);
                }
            }
            None => shared.handle(&message.subject, payload, clock, &mut buffers, &mut scratch),
        }
    }
}

/// When a NATS message was received: monotonic and Unix milliseconds.
type Clock = (Instant, u64);

/// A filter task's buffers, kept across its NATS messages (no allocation per batch).
#[derive(Default)]
struct Buffers {
    /// One NATS message's envelopes with their headers.
    entries: Vec<(envelope::Header, Bytes)>,
    /// The messages of a run being gathered (one topic and QoS, 0 or 1).
    run: Vec<Arc<Message>>,
}

impl Shared {
    /// The envelopes in `payload` (a cut batch ends there, counted).
    fn envelopes(&self, payload: Bytes) -> impl Iterator<Item = Bytes> + '_ {
        envelope::split(payload).map_while(|entry| match entry {
            Ok(entry) => Some(entry),
            Err(e) => {
                ClusterMetrics::inc(&self.metrics.envelope_errors);
                tracing::debug!(error = %e, "cluster: bad batch ignored");
                None
            }
        })
    }

    /// Routes one envelope NATS picked this node for to a member of shared group `key`.
    /// No copy is dropped here: a queue subscription gets each message once.
    fn handle_group(&self, key: &str, payload: Bytes, clock: Clock, scratch: &mut RouteScratch) {
        let (now, unix_now_ms) = clock;
        match envelope::decode(payload, now, unix_now_ms) {
            Ok(message) => {
                ClusterMetrics::inc(&self.metrics.messages_in);
                if self.broker.route_to_group(key, &message, scratch, now) == 0 {
                    ClusterMetrics::inc(&self.metrics.group_misses);
                }
            }
            Err(e) => {
                ClusterMetrics::inc(&self.metrics.envelope_errors);
                tracing::debug!(error = %e, "cluster: bad envelope ignored");
            }
        }
    }

    /// Routes the envelopes of one received NATS message (of `subject`) locally, in order,
    /// except copies of messages routed already: the duplicate check and the routing of the
    /// first copies under one lock per (origin, subject) ([`FirstCopies`]). `buffers` is
    /// scratch space, left empty.
    fn handle(
        &self,
        subject: &async_nats::Subject,
        payload: Bytes,
        clock: Clock,
        buffers: &mut Buffers,
        scratch: &mut RouteScratch,
    ) {
        let Buffers { entries, run } = buffers;
        for entry in self.envelopes(payload) {
            match envelope::header(&entry) {
                Ok(header) => entries.push((header, entry)),
                Err(e) => {
                    ClusterMetrics::inc(&self.metrics.envelope_errors);
                    tracing::debug!(error = %e, "cluster: foreign message ignored");
                }
            }
        }
        let Some(origin) = entries.first().map(|(h, _)| h.origin) else {
            return;
        };
        let dropped = self.first_copies.route_first(
            (origin, subject.as_bytes()),
            entries,
            |(h, _)| (h.origin, h.sequence),
            |first| self.route_entries(first, run, clock, scratch),
        );
        entries.clear();
        ClusterMetrics::inc_by(&self.metrics.duplicates_dropped, dropped as u64);
    }

    /// Decodes and routes `entries` (first copies, in order; left empty), gathering runs
    /// in `run` (left empty).
    fn route_entries(
        &self,
        entries: &mut Vec<(envelope::Header, Bytes)>,
        run: &mut Vec<Arc<Message>>,
        (now, unix_now_ms): Clock,
        scratch: &mut RouteScratch,
    ) {
        // A batch is one publisher's burst on one topic: its QoS 0 and 1 messages are routed
        // as runs, as on the node they were published on (`router/batch.rs`).
        // Counted once per batch, before any is delivered (every filter task bumps this
        // one counter); a bad envelope is taken off again.
        ClusterMetrics::inc_by(&self.metrics.messages_in, entries.len() as u64);
        for (_, entry) in entries.drain(..) {
            match envelope::decode(entry, now, unix_now_ms) {
                Ok(message) => {
                    if run
                        .first()
                        .is_some_and(|first| !is_run_member(&message, first))
                    {
                        self.route_run(run, scratch, now);
                    }
                    if can_run(&message) {
                        run.push(message);
                    } else {
                        self.broker.route_remote(&message, scratch, now);
                    }
                }
                Err(e) => {
                    self.metrics.messages_in.fetch_sub(1, Ordering::Relaxed);
                    ClusterMetrics::inc(&self.metrics.envelope_errors);
                    tracing::debug!(error = %e, "cluster: bad envelope ignored");
                }
            }
        }
        self.route_run(run, scratch, now);
    }

    /// Routes the messages gathered in `run` (left empty).
    fn route_run(&self, run: &mut Vec<Arc<Message>>, scratch: &mut RouteScratch, now: Instant) {
        if !run.is_empty() {
            self.broker.route_remote_run(run, scratch, now);
            run.clear();
        }
    }
}
