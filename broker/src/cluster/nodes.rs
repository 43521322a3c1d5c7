//! The cluster's members as this node sees them: every node writes a heartbeat into the
//! JetStream key-value bucket `{prefix}_nodes` (key: its name) every [`HEARTBEAT`], and
//! watches the bucket. A node whose last heartbeat arrived longer than `node_lease_ms` ago
//! is shown as not alive and declared dead ([`Nodes::dead`]; [`super::failover`] acts on
//! it); `/api/stats` and the dashboard show the list.
//!
//! This module owns the heartbeat, the bucket and the list.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::error::ClusterError;
use super::metrics::ClusterMetrics;
use crate::broker::Broker;
use crate::metrics::Metrics;

/// How often a node writes its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// The members seen, by name.
#[derive(Debug)]
pub(crate) struct Nodes {
    seen: Mutex<BTreeMap<String, Seen>>,
    /// A node not heard from for this long is dead (`node_lease_ms`).
    lease: Duration,
}

#[derive(Debug)]
struct Seen {
    /// The last heartbeat's content.
    beat: serde_json::Value,
    /// When it arrived here.
    at: Instant,
    /// Its revision in the bucket: the same on every node, so it names this death.
    revision: u64,
}

impl Nodes {
    /// No member seen yet; `lease` declares one dead.
    pub(crate) fn new(lease: Duration) -> Nodes {
        Nodes {
            seen: Mutex::default(),
            lease,
        }
    }

    /// The members not heard from for longer than the lease, with their last heartbeat's
    /// revision.
    pub(crate) fn dead(&self) -> Vec<(String, u64)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        seen.iter()
            .filter(|(_, s)| now.saturating_duration_since(s.at) >= self.lease)
            .map(|(name, s)| (name.clone(), s.revision))
            .collect()
    }

    /// The members other than `me` heard from within the lease.
    pub(crate) fn alive_except(&self, me: &str) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        seen.iter()
            .filter(|(name, s)| *name != me && now.saturating_duration_since(s.at) < self.lease)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every member seen, with `alive` and how long ago it was last heard from.
    pub(crate) fn list(&self) -> serde_json::Value {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let list: Vec<serde_json::Value> = seen
            .iter()
            .map(|(name, s)| {
                let age = now.saturating_duration_since(s.at);
                serde_json::json!({
                    "node_name": name,
                    "alive": age < self.lease,
                    "last_seen_ms_ago": age.as_millis() as u64,
                    "clients_connected": s.beat["clients_connected"],
                    "messages_in": s.beat["messages_in"],
                    "messages_out": s.beat["messages_out"],
                })
            })
            .collect();
        serde_json::Value::Array(list)
    }

    fn apply(&self, entry: kv::Entry) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match entry.operation {
            Operation::Put => {
                let beat = serde_json::from_slice(&entry.value).unwrap_or_default();
                seen.insert(
                    entry.key,
                    Seen {
                        beat,
                        at: Instant::now(),
                        revision: entry.revision,
                    },
                );
            }
            Operation::Delete | Operation::Purge => {
                seen.remove(&entry.key);
            }
        }
    }
}

/// Opens the bucket (`lease` sets how long an entry outlives its last heartbeat).
///
/// # Errors
/// The bucket cannot be opened (JetStream off).
pub(crate) async fn open(
    kv: &super::retained::Kv,
    prefix: &str,
    lease: Duration,
) -> Result<kv::Store, ClusterError> {
    super::retained::open_bucket(kv, &format!("{prefix}_nodes"), Some(lease * 6)).await
}

/// The revision of `node_name`'s last heartbeat in the bucket (`None`: none there, as
/// before a node's first start, or deleted, or expired).
///
/// # Errors
/// The bucket cannot be read.
pub(crate) async fn last_beat(
    store: &kv::Store,
    node_name: &str,
) -> Result<Option<u64>, kv::EntryError> {
    Ok(store
        .entry(node_name)
        .await?
        .filter(|entry| entry.operation == Operation::Put)
        .map(|entry| entry.revision))
}

/// Starts the heartbeat into `store` (opened by [`open`]) and the watch feeding `nodes`.
///
/// # Errors
/// The bucket cannot be watched.
pub(crate) async fn start(
    store: kv::Store,
    node_name: &str,
    broker: Broker,
    metrics: Arc<ClusterMetrics>,
    nodes: Arc<Nodes>,
) -> Result<(), ClusterError> {
    let watch = store
        .watch_with_history(">")
        .await
        .map_err(|source| ClusterError::Watch {
            bucket: store.name.clone(),
            source,
        })?;
    tokio::spawn(follow(store.clone(), watch, nodes));
    tokio::spawn(beat(store, node_name.to_string(), broker, metrics));
    Ok(())
}

/// Applies the bucket's changes to `nodes`; rewatches after an error.
async fn follow(store: kv::Store, mut watch: kv::Watch, nodes: Arc<Nodes>) {
    loop {
        while let Some(Ok(entry)) = watch.next().await {
            nodes.apply(entry);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(again) = store.watch_with_history(">").await {
            watch = again;
        }
    }
}

/// Writes this node's heartbeat every [`HEARTBEAT`] (failures are retried on the next).
async fn beat(store: kv::Store, node_name: String, broker: Broker, metrics: Arc<ClusterMetrics>) {
    let mut every = tokio::time::interval(HEARTBEAT);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let beat = serde_json::json!({
            "clients_connected": Metrics::get(&broker.metrics().clients_connected),
            "messages_in": ClusterMetrics::get(&metrics.messages_in),
            "messages_out": ClusterMetrics::get(&metrics.messages_out),
        });
        if let Err(e) = store.put(&node_name, beat.to_string().into()).await {
            tracing::debug!(error = %e, "cluster: heartbeat not written");
        }
    }
}
