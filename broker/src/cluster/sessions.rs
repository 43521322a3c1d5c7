//! The session state every node can read, for when the node that held a session cannot
//! hand it over (it stopped answering, or died): the JetStream key-value bucket
//! `{prefix}_sessions`, two keys per client id (base64url):
//! - `s.{id}`: a persistent session (expiry > 0): its expiry and subscriptions with their
//!   options and identifiers, in the handover form of journal records
//!   ([`crate::broker::Broker::stored_session_form`]); written at CONNECT, SUBSCRIBE,
//!   UNSUBSCRIBE and DISCONNECT, deleted when the session ends;
//! - `w.{id}`: the will its connection carries (or, offline, the will waiting for its
//!   delay), same form; written at CONNECT, deleted once published or discarded.
//!
//! Never on the PUBLISH path. Writes leave through one task in the order the broker made
//! them; each `s.` write reads the session as it is then. Queued messages are not stored
//! here: they live in the owning node's memory (and journal) only.
//!
//! This module owns the bucket and its writer; when it is read is [`super::owners`]' and
//! [`super::failover`]'s business.

use std::sync::Arc;

use async_nats::jetstream::kv;
use base64::Engine as _;
use tokio::sync::mpsc;

use super::error::ClusterError;
use super::metrics::ClusterMetrics;
use crate::broker::Broker;

/// Changes waiting to be written (past it they are dropped and counted).
const QUEUE: usize = 65_536;

/// One change to write.
#[derive(Debug)]
enum Op {
    /// Write the session's current expiry and subscriptions (delete: gone or expiry 0).
    State(Arc<str>),
    /// Write (`Some`) or delete the will.
    Will(Arc<str>, Option<Vec<u8>>),
    /// The session ended: delete both keys.
    Gone(Arc<str>),
}

/// The bucket and the queue to its writer.
#[derive(Debug)]
pub(crate) struct SessionBucket {
    store: kv::Store,
    queue: mpsc::Sender<Op>,
    metrics: Arc<ClusterMetrics>,
}

pub(crate) fn key(kind: char, client_id: &str) -> String {
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client_id.as_bytes());
    format!("{kind}.{id}")
}

impl SessionBucket {
    /// Opens the bucket and starts its writer, which reads sessions from `broker`.
    ///
    /// # Errors
    /// The bucket cannot be opened (JetStream off).
    pub(crate) async fn open(
        kv: &super::retained::Kv,
        prefix: &str,
        broker: Broker,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<SessionBucket, ClusterError> {
        let bucket = format!("{prefix}_sessions");
        let store = super::retained::open_bucket(kv, &bucket, None).await?;
        let (queue, ops) = mpsc::channel(QUEUE);
        tokio::spawn(write(store.clone(), ops, broker, metrics.clone()));
        Ok(SessionBucket {
            store,
            queue,
            metrics,
        })
    }

    fn send(&self, op: Op) {
        if self.queue.try_send(op).is_err() {
            ClusterMetrics::inc(&self.metrics.session_writes_dropped);
        }
    }

    /// The session's subscriptions or expiry changed.
    pub(crate) fn changed(&self, client_id: &Arc<str>) {
        self.send(Op::State(client_id.clone()));
    }

    /// The will of the session is now `form` (`None`: no will).
    pub(crate) fn will(&self, client_id: &Arc<str>, form: Option<Vec<u8>>) {
        self.send(Op::Will(client_id.clone(), form));
    }

    /// The session ended.
    pub(crate) fn gone(&self, client_id: &Arc<str>) {
        self.send(Op::Gone(client_id.clone()));
    }

    /// The stored state (`s.` key) of `client_id`, if any.
    pub(crate) async fn stored_form(&self, client_id: &str) -> Option<bytes::Bytes> {
        self.read(&key('s', client_id)).await
    }

    /// The stored will (`w.` key) of `client_id`, if any.
    pub(crate) async fn stored_will(&self, client_id: &str) -> Option<bytes::Bytes> {
        self.read(&key('w', client_id)).await
    }

    async fn read(&self, key: &str) -> Option<bytes::Bytes> {
        match self.store.get(key).await {
            Ok(value) => value.filter(|v| !v.is_empty()),
            Err(e) => {
                tracing::warn!(key, error = %e, "cluster: stored session not read");
                None
            }
        }
    }
}

/// Most changes taken from the queue at once (and coalesced).
const TAKE_MAX: usize = 1024;

/// Writes the changes in order (a failed write is logged and counted, not retried: the
/// next change of the same session writes its whole state again). The changes that queued
/// while a write was in flight are taken together and coalesced ([`coalesce`]): a client
/// subscribing to many filters one by one has its state written a few times, not once per
/// SUBSCRIBE.
async fn write(
    store: kv::Store,
    mut ops: mpsc::Receiver<Op>,
    broker: Broker,
    metrics: Arc<ClusterMetrics>,
) {
    let mut batch = Vec::with_capacity(TAKE_MAX);
    while ops.recv_many(&mut batch, TAKE_MAX).await > 0 {
        let taken = batch.len();
        coalesce(&mut batch);
        ClusterMetrics::inc_by(
            &metrics.session_writes_coalesced,
            (taken - batch.len()) as u64,
        );
        for op in batch.drain(..) {
            write_one(&store, op, &broker, &metrics).await;
        }
    }
}

/// Drops from `ops` (in order) each change a later one makes pointless, since the last
/// one decides what the bucket holds: a state write followed by another state write or the
/// session's end (the later write reads the session as it is then), a will followed by
/// another will or the end, an end followed by another end.
fn coalesce(ops: &mut Vec<Op>) {
    use std::collections::HashSet;
    let (mut state_later, mut will_later, mut gone_later) =
        (HashSet::new(), HashSet::new(), HashSet::new());
    let mut keep = vec![true; ops.len()];
    for (i, op) in ops.iter().enumerate().rev() {
        keep[i] = match op {
            Op::State(id) => !state_later.contains(id) && !gone_later.contains(id),
            Op::Will(id, _) => !will_later.contains(id) && !gone_later.contains(id),
            Op::Gone(id) => !gone_later.contains(id),
        };
        match op {
            Op::State(id) => state_later.insert(id.clone()),
            Op::Will(id, _) => will_later.insert(id.clone()),
            Op::Gone(id) => gone_later.insert(id.clone()),
        };
    }
    let mut keep = keep.into_iter();
    ops.retain(|_| keep.next().unwrap_or(true));
}

/// Writes one change.
async fn write_one(store: &kv::Store, op: Op, broker: &Broker, metrics: &ClusterMetrics) {
    {
        let done = match op {
            Op::State(client_id) => {
                let key = key('s', &client_id);
                match broker.session(&client_id) {
                    Some(s) if !s.is_ended() && s.expiry_secs() > 0 => {
                        let form = broker.stored_session_form(&s);
                        store.put(key, form.into()).await.map(drop).is_ok()
                    }
                    Some(s) if !s.is_ended() => store.delete(key).await.is_ok(),
                    _ => true,
                }
            }
            Op::Will(client_id, Some(form)) => {
                store.put(key('w', &client_id), form.into()).await.is_ok()
            }
            Op::Will(client_id, None) => store.delete(key('w', &client_id)).await.is_ok(),
            Op::Gone(client_id) => {
                let s = store.delete(key('s', &client_id)).await.is_ok();
                store.delete(key('w', &client_id)).await.is_ok() && s
            }
        };
        if !done {
            ClusterMetrics::inc(&metrics.session_writes_failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                Op::State(id) => format!("s{id}"),
                Op::Will(id, form) => format!("w{id}{}", form.as_ref().map_or(0, Vec::len)),
                Op::Gone(id) => format!("g{id}"),
            })
            .collect()
    }

    #[test]
    fn later_changes_of_a_session_make_earlier_ones_pointless() {
        let id = |s: &str| Arc::<str>::from(s);
        let mut ops = vec![
            Op::State(id("a")),
            Op::Will(id("a"), Some(vec![1])),
            Op::State(id("b")),
            Op::State(id("a")),
            Op::Will(id("a"), Some(vec![1, 2])),
            Op::Gone(id("b")),
            Op::State(id("b")),
            Op::State(id("c")),
        ];
        coalesce(&mut ops);
        assert_eq!(names(&ops), ["sa", "wa2", "gb", "sb", "sc"]);
        let mut ended = vec![
            Op::State(id("a")),
            Op::Will(id("a"), None),
            Op::Gone(id("a")),
        ];
        coalesce(&mut ended);
        assert_eq!(names(&ended), ["ga"]);
    }
}
