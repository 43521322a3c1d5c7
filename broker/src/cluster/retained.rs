//! Retained messages cluster-wide: a JetStream key-value bucket (`{prefix}_retained`) keyed
//! by topic, holding each topic's last retained message as an envelope
//! ([`super::envelope`]); an empty payload deletes the key. Every node keeps its own
//! retained store ([`crate::broker::retained`]) as a local index of the bucket, fed by a
//! watch, so a SUBSCRIBE's retained lookup never leaves the node.
//!
//! Every node, the writer included, applies the bucket's changes in the bucket's order, so
//! all nodes end with the bucket's value even when two nodes retain on one topic at once.
//! This module owns the bucket, its key format and the watch.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::envelope;
use super::error::ClusterError;
use super::metrics::ClusterMetrics;
use crate::broker::Broker;
use crate::message::Message;

const KEY_ENCODING: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The cluster's retained bucket.
#[derive(Debug, Clone)]
pub(crate) struct RetainedBucket {
    store: kv::Store,
}

/// Where the node's KV buckets live: JetStream, and how many copies a new bucket gets.
#[derive(Debug, Clone)]
pub(crate) struct Kv {
    /// JetStream on the node's NATS connection.
    pub(crate) jetstream: async_nats::jetstream::Context,
    /// `cluster.kv_replicas`: copies of a bucket this node creates.
    pub(crate) replicas: usize,
}

impl Kv {
    /// JetStream on `client`; buckets created with `replicas` copies.
    pub(crate) fn new(client: &async_nats::Client, replicas: usize) -> Kv {
        Kv {
            jetstream: async_nats::jetstream::new(client.clone()),
            replicas,
        }
    }
}

/// Opens key-value bucket `bucket` (history 1; entries expire after `max_age` if given),
/// creating it if missing with `kv.replicas` copies.
///
/// # Errors
/// [`ClusterError::Bucket`] when JetStream cannot create it (not enabled on the server, or
/// fewer JetStream servers than replicas).
pub(crate) async fn open_bucket(
    kv: &Kv,
    bucket: &str,
    max_age: Option<Duration>,
) -> Result<kv::Store, ClusterError> {
    let jetstream = &kv.jetstream;
    if let Ok(store) = jetstream.get_key_value(bucket).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: bucket.to_string(),
        history: 1,
        max_age: max_age.unwrap_or_default(),
        num_replicas: kv.replicas,
        ..Default::default()
    };
    match jetstream.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another node created it meanwhile.
        Err(source) => match jetstream.get_key_value(bucket).await {
            Ok(store) => Ok(store),
            Err(_) => Err(ClusterError::Bucket {
                bucket: bucket.to_string(),
                source,
            }),
        },
    }
}

/// The key of `topic`: base64url, which only holds characters a key may have.
fn key_of(topic: &str) -> String {
    KEY_ENCODING.encode(topic.as_bytes())
}

fn topic_of(key: &str) -> Option<String> {
    String::from_utf8(KEY_ENCODING.decode(key).ok()?).ok()
}

impl RetainedBucket {
    /// Opens the bucket, creating it if missing.
    ///
    /// # Errors
    /// [`ClusterError::Bucket`] when JetStream cannot create it (not enabled on the server).
    pub(crate) async fn open(kv: &Kv, prefix: &str) -> Result<RetainedBucket, ClusterError> {
        let store = open_bucket(kv, &format!("{prefix}_retained"), None).await?;
        Ok(RetainedBucket { store })
    }

    /// Stores `value` as `topic`'s retained message (`None`: deletes it); returns whether
    /// JetStream took it. Failures are logged (the local store has the change either way).
    pub(crate) async fn write(&self, topic: &str, value: Option<Bytes>) -> bool {
        let key = key_of(topic);
        let result = match value {
            Some(value) => self
                .store
                .put(&key, value)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            None => self.store.delete(&key).await.map_err(|e| e.to_string()),
        };
        if let Err(error) = &result {
            tracing::warn!(topic, %error, "cluster: cannot write the retained bucket");
        }
        result.is_ok()
    }

    /// Starts applying the bucket to `broker`'s retained store: every current value first,
    /// then each change as it happens; rewatches after an error.
    ///
    /// # Errors
    /// [`ClusterError::Watch`] when the first watch cannot be set up.
    pub(crate) async fn watch_into(
        &self,
        broker: Broker,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<(), ClusterError> {
        let watch_error = |source| ClusterError::Watch {
            bucket: self.store.name.clone(),
            source,
        };
        let mut watch = self
            .store
            .watch_with_history(">")
            .await
            .map_err(watch_error)?;
        // The current values first, before the listeners open: a SUBSCRIBE right after the
        // node starts finds the retained messages set elsewhere. (Bounded: a bucket that
        // changes all the time is caught up with by the task below.)
        let stored = match self.store.stream.get_info().await {
            Ok(info) => info.state.messages,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: retained bucket size unknown");
                0
            }
        };
        if stored > 0 {
            let catch_up = async {
                while let Some(Ok(entry)) = watch.next().await {
                    let last = entry.delta == 0;
                    apply(&broker, entry, &metrics);
                    if last {
                        break;
                    }
                }
            };
            if tokio::time::timeout(INITIAL_LOAD, catch_up).await.is_err() {
                tracing::warn!("cluster: retained bucket not read whole at start; going on");
            }
        }
        tokio::spawn(follow(self.store.clone(), watch, broker, metrics));
        Ok(())
    }
}

/// Longest a node waits at start to have read the retained bucket.
const INITIAL_LOAD: Duration = Duration::from_secs(10);

/// Applies the bucket's changes as they happen; rewatches (from the current values) after
/// an error.
async fn follow(
    store: kv::Store,
    mut watch: kv::Watch,
    broker: Broker,
    metrics: Arc<ClusterMetrics>,
) {
    loop {
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(entry) => apply(&broker, entry, &metrics),
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: retained watch failed");
                    break;
                }
            }
        }
        // Ended (NATS went away for long): start again from the current values.
        tokio::time::sleep(Duration::from_secs(1)).await;
        match store.watch_with_history(">").await {
            Ok(again) => watch = again,
            Err(e) => tracing::debug!(error = %e, "cluster: cannot rewatch retained"),
        }
    }
}

/// Applies one change of the bucket to the local store.
fn apply(broker: &Broker, entry: kv::Entry, metrics: &ClusterMetrics) {
    let now = Instant::now();
    let message = match entry.operation {
        Operation::Put => match envelope::decode(entry.value, now, envelope::unix_ms_now()) {
            Ok(message) => message,
            Err(e) => {
                ClusterMetrics::inc(&metrics.envelope_errors);
                tracing::debug!(key = entry.key, error = %e, "cluster: bad retained entry");
                return;
            }
        },
        Operation::Delete | Operation::Purge => {
            let Some(topic) = topic_of(&entry.key) else {
                return;
            };
            Message::broker_made(&topic, Bytes::new(), true, now)
        }
    };
    broker.store_remote_retained(&message, now);
    ClusterMetrics::inc(&metrics.retained_applied);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_reversible() {
        for topic in ["a/b", "$SYS/x", "a b/.*>", "ünï", "/"] {
            let key = key_of(topic);
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(topic_of(&key).as_deref(), Some(topic));
        }
    }
}
