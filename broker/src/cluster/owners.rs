//! Which node owns each client identifier: the JetStream key-value bucket `{prefix}_owners`
//! (key: the client id in base64url, value: the owning node's name), changed only by
//! compare-and-swap. A CONNECT claims its id before the session is opened
//! ([`Owners::claim`]); taking it from another node tells that node on
//! `{prefix}.takeover.{node}`, and the node closes its connection with DISCONNECT 0x8E and
//! ends the session there ([`crate::broker::Broker::end_session`]).
//!
//! Not done yet: handing the session's state (subscriptions, queued and inflight messages)
//! over to the new node: the session starts afresh there (Session Present 0).
//!
//! This module owns the bucket, the claim and the takeover subject.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use base64::Engine as _;
use futures_util::StreamExt as _;

use super::error::ClusterError;
use super::metrics::ClusterMetrics;
use crate::broker::Broker;

/// How many times a claim retries a lost compare-and-swap before giving up.
const CLAIM_TRIES: usize = 16;
/// Longest a CONNECT waits for its claim (then it goes on, and says so in the log).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// The ownership bucket and this node's name.
#[derive(Debug)]
pub(crate) struct Owners {
    store: kv::Store,
    client: async_nats::Client,
    node_name: String,
    prefix: String,
    metrics: Arc<ClusterMetrics>,
}

fn key_of(client_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client_id.as_bytes())
}

/// The subject on which `node` hears that it lost a client.
fn takeover_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.takeover.{node}")
}

impl Owners {
    /// Opens the bucket and starts listening for takeovers of this node's clients.
    ///
    /// # Errors
    /// The bucket cannot be opened (JetStream off).
    pub(crate) async fn start(
        jetstream: &async_nats::jetstream::Context,
        client: async_nats::Client,
        prefix: &str,
        node_name: &str,
        broker: Broker,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<Owners, ClusterError> {
        let bucket = format!("{prefix}_owners");
        let store = super::retained::open_bucket(jetstream, &bucket, None).await?;
        let subject = takeover_subject(prefix, node_name);
        let mut takeovers = loop {
            match client.subscribe(subject.clone()).await {
                Ok(subscriber) => break subscriber,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot subscribe to takeovers; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let counters = metrics.clone();
        tokio::spawn(async move {
            while let Some(message) = takeovers.next().await {
                let Ok(client_id) = std::str::from_utf8(&message.payload) else {
                    continue;
                };
                if let Some(session) = broker.session(client_id) {
                    // DISCONNECT 0x8E to its connection, and the session ends here.
                    broker.end_session(&session);
                    ClusterMetrics::inc(&counters.takeovers);
                    tracing::debug!(client_id, "cluster: client taken over by another node");
                }
            }
        });
        Ok(Owners {
            store,
            client,
            node_name: node_name.to_string(),
            prefix: prefix.to_string(),
            metrics,
        })
    }

    /// Makes this node the owner of `client_id`, telling the previous owner to let go.
    /// Gives up (logging why) after [`CLAIM_TIMEOUT`] or [`CLAIM_TRIES`] lost swaps: the
    /// CONNECT goes on either way.
    pub(crate) async fn claim(&self, client_id: &str) {
        match tokio::time::timeout(CLAIM_TIMEOUT, self.try_claim(client_id)).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(client_id, "cluster: ownership claim kept losing; going on")
            }
            Err(_) => tracing::warn!(client_id, "cluster: ownership claim timed out; going on"),
        }
    }

    async fn try_claim(&self, client_id: &str) -> bool {
        let key = key_of(client_id);
        let me = bytes::Bytes::from(self.node_name.clone());
        for _ in 0..CLAIM_TRIES {
            let current = match self.store.entry(&key).await {
                Ok(current) => current,
                Err(e) => {
                    tracing::debug!(error = %e, "cluster: cannot read the owner");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let previous = match current {
                Some(e) if e.operation == kv::Operation::Put && e.value == me => return true,
                Some(e) => {
                    let owner = (e.operation == kv::Operation::Put).then_some(e.value);
                    match self.store.update(&key, me.clone(), e.revision).await {
                        Ok(_) => owner,
                        Err(_) => continue, // another node swapped first: read again
                    }
                }
                None => match self.store.create(&key, me.clone()).await {
                    Ok(_) => None,
                    Err(_) => continue,
                },
            };
            ClusterMetrics::inc(&self.metrics.ownership_changes);
            if let Some(owner) = previous.and_then(|o| String::from_utf8(o.to_vec()).ok()) {
                let subject = takeover_subject(&self.prefix, &owner);
                let payload = bytes::Bytes::from(client_id.to_string());
                if let Err(e) = self.client.publish(subject, payload).await {
                    tracing::debug!(error = %e, owner, "cluster: takeover notice not sent");
                }
            }
            return true;
        }
        false
    }
}
