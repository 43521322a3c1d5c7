//! The cluster's counters on one node, read by `/metrics`, `/api/stats` and the dashboard.
//! This module owns the numbers only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters of this node's part in the cluster.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// Messages sent to NATS for other nodes.
    pub messages_out: AtomicU64,
    /// NATS messages those travelled in (fewer when consecutive messages of one topic
    /// went as one batch).
    pub nats_messages_out: AtomicU64,
    /// Messages received from other nodes and routed here (first copies).
    pub messages_in: AtomicU64,
    /// Second copies dropped (a message matching several of this node's filters).
    pub duplicates_dropped: AtomicU64,
    /// Messages not sent because the queue to NATS was full.
    pub forward_dropped: AtomicU64,
    /// Times a publisher was held back because the queue to NATS was over half full.
    pub publisher_waits: AtomicU64,
    /// Messages NATS refused (connection closed), and retained messages refused on this
    /// node for being larger than NATS's max_payload.
    pub publish_errors: AtomicU64,
    /// Messages NATS gave this node for a shared group that had no member here any more.
    pub group_misses: AtomicU64,
    /// Received envelopes that did not decode.
    pub envelope_errors: AtomicU64,
    /// Messages larger than NATS's `max_payload` sent through the object store.
    pub large_messages_out: AtomicU64,
    /// Such messages fetched from the object store (once per NATS message that referred to
    /// one: a message matching several of this node's filters is fetched once per filter).
    pub large_messages_in: AtomicU64,
    /// Failed attempts to put a large message into the object store (each retried; a QoS 0
    /// message is given up after some 15 s).
    pub large_put_errors: AtomicU64,
    /// References to large messages that could not be fetched (skipped).
    pub large_fetch_errors: AtomicU64,
    /// Retained messages written to the cluster's bucket.
    pub retained_writes: AtomicU64,
    /// Retained changes applied from the cluster's bucket.
    pub retained_applied: AtomicU64,
    /// Distinct filters this node holds interest in (NATS subscriptions are one per
    /// filter, two for `…/#`).
    pub interest_filters: AtomicU64,
    /// Filters whose SUBACK (or a handed-over session's CONNACK) went out although a live
    /// node had not confirmed, within its time, that its NATS server had their interest.
    pub interest_unconfirmed: AtomicU64,
    /// Client ids this node took ownership of (new ones and ones taken from other nodes).
    pub ownership_changes: AtomicU64,
    /// This node's clients taken over by a CONNECT on another node (closed with 0x8E).
    pub takeovers: AtomicU64,
    /// Sessions another node handed over to this one (takeover with Clean Start 0).
    pub handovers: AtomicU64,
    /// Handovers whose chunks did not all arrive in order within `handover_timeout_ms`
    /// (this node took the stored state instead).
    pub handovers_incomplete: AtomicU64,
    /// Messages this node could not hand over (a record of theirs larger than one NATS
    /// message): left behind, dropped.
    pub handover_messages_dropped: AtomicU64,
    /// Session-state writes to the sessions bucket dropped (its queue was full).
    pub session_writes_dropped: AtomicU64,
    /// Session-state writes the sessions bucket refused (NATS away).
    pub session_writes_failed: AtomicU64,
    /// Session-state writes skipped because a later change of the same session was queued.
    pub session_writes_coalesced: AtomicU64,
    /// Dead nodes whose sessions this node claimed.
    pub dead_nodes_claimed: AtomicU64,
    /// Sessions of dead nodes this node claimed.
    pub dead_sessions_claimed: AtomicU64,
    /// Clients disconnected because the node was cut off from NATS longer than the lease.
    pub partition_disconnects: AtomicU64,
    /// The last measured NATS round-trip time, microseconds.
    pub nats_rtt_us: AtomicU64,
    /// Times the connection to NATS was lost.
    pub disconnects: AtomicU64,
    /// Whether the node is connected to NATS now.
    pub connected: AtomicBool,
}

impl ClusterMetrics {
    /// Adds one to `counter`.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter as `(name, help, value)` for `/metrics` (prefixed `tern_cluster_`;
    /// `interest_filters`, `nats_rtt_us` and `connected` are gauges).
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let get = ClusterMetrics::get;
        let mut counters = vec![
            (
                "messages_out",
                "Messages sent to NATS for other nodes.",
                get(&self.messages_out),
            ),
            (
                "nats_messages_out",
                "NATS messages carrying them (batches of one topic count once).",
                get(&self.nats_messages_out),
            ),
            (
                "messages_in",
                "Messages from other nodes routed here.",
                get(&self.messages_in),
            ),
            (
                "duplicates_dropped",
                "Second copies of a message dropped (several matching filters).",
                get(&self.duplicates_dropped),
            ),
            (
                "forward_dropped",
                "Messages not sent: the queue to NATS was full.",
                get(&self.forward_dropped),
            ),
            (
                "publish_errors",
                "Messages NATS refused, or retained ones too large for NATS refused.",
                get(&self.publish_errors),
            ),
            (
                "group_misses",
                "Messages for a shared group with no member here any more.",
                get(&self.group_misses),
            ),
            (
                "envelope_errors",
                "Received envelopes that did not decode.",
                get(&self.envelope_errors),
            ),
            (
                "retained_writes",
                "Retained changes written to the cluster's bucket.",
                get(&self.retained_writes),
            ),
            (
                "retained_applied",
                "Retained changes applied from the cluster's bucket.",
                get(&self.retained_applied),
            ),
            (
                "nats_rtt_us",
                "Last measured NATS round trip, microseconds.",
                get(&self.nats_rtt_us),
            ),
            (
                "disconnects",
                "Times a connection to NATS was lost.",
                get(&self.disconnects),
            ),
            (
                "connected",
                "1 while connected to NATS.",
                u64::from(self.connected.load(Ordering::Relaxed)),
            ),
        ];
        counters.extend(self.large_counters());
        counters.extend(self.interest_counters());
        counters.extend(self.session_counters());
        counters
    }

    /// The counters of messages larger than NATS's `max_payload` (part of
    /// [`ClusterMetrics::snapshot`]).
    fn large_counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        let get = ClusterMetrics::get;
        vec![
            (
                "large_messages_out",
                "Messages larger than NATS's max_payload sent through the object store.",
                get(&self.large_messages_out),
            ),
            (
                "large_messages_in",
                "Large messages fetched from the object store.",
                get(&self.large_messages_in),
            ),
            (
                "large_put_errors",
                "Failed attempts to store a large message in the object store.",
                get(&self.large_put_errors),
            ),
            (
                "large_fetch_errors",
                "References to large messages that could not be fetched (skipped).",
                get(&self.large_fetch_errors),
            ),
        ]
    }

    /// The counters of interest routing (part of [`ClusterMetrics::snapshot`]).
    fn interest_counters(&self) -> [(&'static str, &'static str, u64); 2] {
        let get = ClusterMetrics::get;
        [
            (
                "interest_filters",
                "Distinct filters this node holds NATS interest in.",
                get(&self.interest_filters),
            ),
            (
                "interest_unconfirmed",
                "Filters acknowledged although a live node did not confirm their interest in time.",
                get(&self.interest_unconfirmed),
            ),
        ]
    }

    /// The counters of sessions moving between nodes (part of [`ClusterMetrics::snapshot`]).
    fn session_counters(&self) -> Vec<(&'static str, &'static str, u64)> {
        let get = ClusterMetrics::get;
        vec![
            (
                "ownership_changes",
                "Client ids this node took ownership of.",
                get(&self.ownership_changes),
            ),
            (
                "takeovers",
                "This node's clients taken over by a CONNECT on another node.",
                get(&self.takeovers),
            ),
            (
                "handovers",
                "Sessions handed over to this node by another node.",
                get(&self.handovers),
            ),
            (
                "handovers_incomplete",
                "Handovers that did not arrive whole in time (the stored state was used).",
                get(&self.handovers_incomplete),
            ),
            (
                "handover_messages_dropped",
                "Messages this node could not hand over (larger than one NATS message).",
                get(&self.handover_messages_dropped),
            ),
            (
                "session_writes_dropped",
                "Session-state writes dropped (queue to the sessions bucket full).",
                get(&self.session_writes_dropped),
            ),
            (
                "session_writes_failed",
                "Session-state writes the sessions bucket refused.",
                get(&self.session_writes_failed),
            ),
            (
                "session_writes_coalesced",
                "Session-state writes skipped: a later change of the session was queued.",
                get(&self.session_writes_coalesced),
            ),
            (
                "dead_nodes_claimed",
                "Dead nodes whose sessions this node claimed.",
                get(&self.dead_nodes_claimed),
            ),
            (
                "dead_sessions_claimed",
                "Sessions of dead nodes this node claimed.",
                get(&self.dead_sessions_claimed),
            ),
        ]
    }

    /// Adds `n` to `counter`.
    pub(crate) fn inc_by(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
