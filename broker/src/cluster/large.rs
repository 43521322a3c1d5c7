//! Messages larger than one NATS message (the server's `max_payload`). The sending node puts
//! the whole envelope into the JetStream object store `{prefix}_large`, which cuts it into
//! chunks itself, and sends on the topic's subject, as for any message, a small reference
//! naming the object ([`envelope::encode_reference`]); a receiving node fetches the object
//! and handles it as the envelope it stands for (duplicate check, routing, the member of a
//! shared group).
//!
//! Why the object store rather than chunks on the topic's subject: a shared subscription's
//! queue group gets each NATS message on a node NATS picks, so chunks would scatter over
//! nodes; a reference is one NATS message like any other.
//!
//! Order: the sending task awaits the put before it sends the reference, and it sends the
//! node's messages in queue order ([`super::forward`]), so a large message neither overtakes
//! nor is overtaken by the node's other messages of its topic. A receiving filter task
//! awaits the fetch before it handles the next NATS message of its stream, and before the
//! per-topic lock ([`super::ordered`]) is taken: no lock is held across the fetch.
//!
//! Objects expire after [`MAX_AGE`] (the bucket's `max_age`): nothing is deleted by hand,
//! and a receiver has that long to fetch one. Only large messages pay: a put (a JetStream
//! round trip per chunk) on the sending node, a fetch on each receiving node.
//!
//! This module owns the bucket, the object names and the put and fetch.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use bytes::Bytes;
use tokio::io::AsyncReadExt as _;
use tokio::time::Instant;

use super::envelope::{self, EnvelopeError};
use super::error::ClusterError;
use super::metrics::ClusterMetrics;
use super::retained::Kv;

/// How long an object stays in the bucket: far longer than any receiver takes to fetch it,
/// short enough that the bucket holds little.
const MAX_AGE: Duration = Duration::from_secs(5 * 60);
/// Longest one put or fetch may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the sending task keeps trying to put a QoS 0 message's object (NATS away, a
/// JetStream leader election) before it gives the message up for other nodes. A QoS 1/2
/// message's is tried until it is stored: its publisher's acknowledgement waits for it.
const PUT_TRY_FOR: Duration = Duration::from_secs(15);
/// First pause between two attempts to put (doubled each time up to [`PUT_RETRY_MAX`]).
const PUT_RETRY: Duration = Duration::from_millis(200);
/// Longest pause between two attempts to put.
const PUT_RETRY_MAX: Duration = Duration::from_secs(2);
/// The largest object fetched: an MQTT packet is at most 256 MiB.
const FETCH_MAX_BYTES: usize = 256 << 20;
/// What a chunk leaves of the server's `max_payload` (the JetStream publish's overhead).
const CHUNK_MARGIN_BYTES: usize = 1024;
/// The largest chunk: few JetStream round trips per object, none holding a connection long.
const CHUNK_MAX_BYTES: usize = 1 << 20;
/// The smallest chunk (a server with a tiny `max_payload`).
const CHUNK_MIN_BYTES: usize = 16 * 1024;

/// Why a large message could not be put or fetched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LargeError {
    /// The reference, or the envelope to refer to, is malformed.
    #[error("{0}")]
    Envelope(#[from] EnvelopeError),
    /// JetStream did not take the object.
    #[error("cannot store the object: {0}")]
    Put(#[from] object_store::PutError),
    /// The object is not there (expired, never stored) or JetStream is unavailable.
    #[error("cannot get the object: {0}")]
    Get(#[from] object_store::GetError),
    /// Reading the object's chunks failed (digest mismatch, stream cut).
    #[error("cannot read the object: {0}")]
    Read(#[from] std::io::Error),
    /// The object is larger than any MQTT packet.
    #[error("object of {0} bytes, larger than any MQTT packet")]
    TooLarge(usize),
    /// The object is not the envelope its reference names.
    #[error("the object is not the envelope its reference names")]
    Mismatch,
    /// The put or fetch took longer than [`ATTEMPT_TIMEOUT`].
    #[error("timed out")]
    Timeout,
}

/// The cluster's object store for large messages.
#[derive(Clone)]
pub(crate) struct LargeStore {
    store: ObjectStore,
    /// The NATS connection (for the server's `max_payload`).
    client: async_nats::Client,
    metrics: Arc<ClusterMetrics>,
}

impl std::fmt::Debug for LargeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LargeStore").finish_non_exhaustive()
    }
}

/// The object name of node `origin`'s message `sequence` (origins are random per start, so
/// names do not repeat across restarts).
fn object_name(origin: u64, sequence: u64) -> String {
    format!("{origin:016x}.{sequence}")
}

/// The chunk size for a server taking `max_payload_bytes` per message.
fn chunk_bytes(max_payload_bytes: usize) -> usize {
    max_payload_bytes
        .saturating_sub(CHUNK_MARGIN_BYTES)
        .clamp(CHUNK_MIN_BYTES, CHUNK_MAX_BYTES)
}

impl LargeStore {
    /// Opens the bucket `{prefix}_large`, creating it if missing (`kv.replicas` copies, file
    /// storage, objects expiring after [`MAX_AGE`]).
    ///
    /// # Errors
    /// [`ClusterError::Bucket`] when JetStream cannot create it.
    pub(crate) async fn open(
        kv: &Kv,
        prefix: &str,
        client: async_nats::Client,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<LargeStore, ClusterError> {
        let bucket = format!("{prefix}_large");
        let jetstream = &kv.jetstream;
        let store = match jetstream.get_object_store(&bucket).await {
            Ok(store) => store,
            Err(_) => {
                let config = object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("Tern: messages larger than max_payload".to_string()),
                    max_age: MAX_AGE,
                    num_replicas: kv.replicas,
                    ..Default::default()
                };
                match jetstream.create_object_store(config).await {
                    Ok(store) => store,
                    // Another node created it meanwhile.
                    Err(source) => match jetstream.get_object_store(&bucket).await {
                        Ok(store) => store,
                        Err(_) => return Err(ClusterError::Bucket { bucket, source }),
                    },
                }
            }
        };
        Ok(LargeStore {
            store,
            client,
            metrics,
        })
    }

    /// Whether an envelope of `envelope_bytes` is larger than one NATS message may be.
    pub(crate) fn too_large(&self, envelope_bytes: usize) -> bool {
        envelope_bytes > self.client.max_payload()
    }

    /// Puts `envelope` (a whole envelope) into the store, retrying until it is stored when
    /// `acknowledged` (a QoS 1/2 message: its publisher's acknowledgement waits for it, and
    /// the queue behind it waits too), else for [`PUT_TRY_FOR`]; returns the reference to
    /// send instead. `None`: JetStream never took a QoS 0 message (logged and counted in
    /// `large_put_errors`; other nodes do not get it).
    pub(crate) async fn put(&self, envelope: &Bytes, acknowledged: bool) -> Option<Bytes> {
        let started = Instant::now();
        let mut pause = PUT_RETRY;
        loop {
            match self.put_once(envelope).await {
                Ok(reference) => {
                    ClusterMetrics::inc(&self.metrics.large_messages_out);
                    return Some(reference);
                }
                Err(e) if acknowledged || started.elapsed() < PUT_TRY_FOR => {
                    ClusterMetrics::inc(&self.metrics.large_put_errors);
                    tracing::debug!(error = %e, "cluster: large message not stored yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(PUT_RETRY_MAX);
                }
                Err(e) => {
                    ClusterMetrics::inc(&self.metrics.large_put_errors);
                    tracing::warn!(
                        error = %e,
                        bytes = envelope.len(),
                        "cluster: large message not stored; other nodes do not get it"
                    );
                    return None;
                }
            }
        }
    }

    async fn put_once(&self, envelope: &Bytes) -> Result<Bytes, LargeError> {
        let header = envelope::header(envelope)?;
        let name = object_name(header.origin, header.sequence);
        let reference = envelope::encode_reference(envelope, &name)?;
        let meta = ObjectMetadata {
            name,
            chunk_size: Some(chunk_bytes(self.client.max_payload())),
            ..Default::default()
        };
        let mut data: &[u8] = envelope;
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.store.put(meta, &mut data)).await {
            Ok(Ok(_info)) => Ok(reference),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(LargeError::Timeout),
        }
    }

    /// `payload` (a received NATS message) as what to handle: itself, or for a reference
    /// the envelope it stands for, fetched from the store. `None`: a reference that could
    /// not be resolved (object gone, NATS away, not the envelope named), logged and counted
    /// in `large_fetch_errors`; the message is skipped.
    pub(crate) async fn resolve(&self, payload: Bytes) -> Option<Bytes> {
        if !envelope::is_reference(&payload) {
            return Some(payload);
        }
        match self.fetch(&payload).await {
            Ok(envelope) => {
                ClusterMetrics::inc(&self.metrics.large_messages_in);
                Some(envelope)
            }
            Err(e) => {
                ClusterMetrics::inc(&self.metrics.large_fetch_errors);
                tracing::warn!(error = %e, "cluster: large message could not be fetched; skipped");
                None
            }
        }
    }

    async fn fetch(&self, reference: &[u8]) -> Result<Bytes, LargeError> {
        let name = envelope::reference_name(reference)?;
        let read = async {
            let mut object = self.store.get(name).await?;
            let size = object.info.size;
            if size > FETCH_MAX_BYTES {
                return Err(LargeError::TooLarge(size));
            }
            let mut out = Vec::with_capacity(size);
            object.read_to_end(&mut out).await?;
            Ok(Bytes::from(out))
        };
        let envelope = tokio::time::timeout(ATTEMPT_TIMEOUT, read)
            .await
            .map_err(|_| LargeError::Timeout)??;
        if !envelope::stands_for(reference, &envelope) {
            return Err(LargeError::Mismatch);
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_chunks() {
        assert_eq!(object_name(0x2a, 9), "000000000000002a.9");
        assert_eq!(chunk_bytes(1 << 20), (1 << 20) - CHUNK_MARGIN_BYTES);
        assert_eq!(chunk_bytes(8 << 20), CHUNK_MAX_BYTES);
        assert_eq!(chunk_bytes(100), CHUNK_MIN_BYTES);
    }
}
