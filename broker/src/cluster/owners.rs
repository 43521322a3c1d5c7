//! Which node owns each client identifier: the JetStream key-value bucket `{prefix}_owners`
//! (key: the client id in base64url, value: the owning node's name), changed only by
//! compare-and-swap. A CONNECT claims its id before the session is opened
//! ([`Owners::claim`]); taking it from another node asks that node on
//! `{prefix}.takeover.{node}` (NATS request/reply): it closes its connection with
//! DISCONNECT 0x8E and, when the CONNECT resumes (Clean Start 0), answers with the
//! session's state ([`Broker::hand_over`]), which this node puts back
//! ([`Broker::adopt_session`]) and whose filters' interest it waits for before the CONNACK
//! (Session Present 1). With Clean Start 1 the old node just ends the session. A node that
//! does not answer within `handover_timeout_ms` leaves this node with the state the
//! sessions bucket holds ([`super::sessions`]), or a fresh session.
//!
//! A CONNECT that claimed its id here but has not attached its session yet is remembered
//! ([`Owners::attached`]): a takeover request for that id in between (another node's
//! CONNECT won the id after ours) cannot find a session to end, so it marks the claim
//! lost, and the CONNECT's session is ended (0x8E) as soon as it is attached. Without it
//! both connections would stay.
//!
//! This module owns the bucket, the claim, the pending claims and the takeover subject.

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

/// The takeover request's first byte: the new node resumes the session (hand it over).
const HAND_OVER: u8 = b'H';
/// The takeover request's first byte: the new node starts afresh (just end it).
const END: u8 = b'E';

/// A handed-over session stays at least this long (its CONNECT attaches in a moment, even
/// when its expiry is 0).
const ADOPT_LINGER_SECS: u32 = 30;
/// How many pending claims are kept before old ones (of CONNECTs that never attached) go.
const PENDING_CLAIMS: usize = 4096;
/// A pending claim older than this is dropped when the table is full.
const PENDING_CLAIM_AGE: Duration = Duration::from_secs(30);

/// Client ids claimed here whose session is not attached yet: whether another node took
/// them meanwhile, and when they were claimed.
type PendingClaims =
    std::sync::Mutex<std::collections::HashMap<String, (bool, std::time::Instant)>>;

/// The ownership bucket and this node's name.
#[derive(Debug)]
pub(crate) struct Owners {
    store: kv::Store,
    client: async_nats::Client,
    node_name: String,
    prefix: String,
    metrics: Arc<ClusterMetrics>,
    broker: Broker,
    /// Longest a takeover waits for the old node's answer.
    handover_timeout: Duration,
    /// The session state stored cluster-wide, for when the old node does not answer.
    sessions: Arc<super::sessions::SessionBucket>,
    /// Claims made here whose session is not attached yet.
    pending: Arc<PendingClaims>,
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
        kv: &super::retained::Kv,
        client: async_nats::Client,
        (prefix, node_name): (&str, &str),
        broker: Broker,
        metrics: Arc<ClusterMetrics>,
        (handover_timeout, sessions): (Duration, Arc<super::sessions::SessionBucket>),
    ) -> Result<Owners, ClusterError> {
        let bucket = format!("{prefix}_owners");
        let store = super::retained::open_bucket(kv, &bucket, None).await?;
        let subject = takeover_subject(prefix, node_name);
        let takeovers = loop {
            match client.subscribe(subject.clone()).await {
                Ok(subscriber) => break subscriber,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: cannot subscribe to takeovers; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let pending = Arc::new(PendingClaims::default());
        tokio::spawn(answer_takeovers(
            takeovers,
            client.clone(),
            broker.clone(),
            (metrics.clone(), pending.clone()),
        ));
        Ok(Owners {
            store,
            client,
            node_name: node_name.to_string(),
            prefix: prefix.to_string(),
            metrics,
            broker,
            handover_timeout,
            sessions,
            pending,
        })
    }

    /// Drops the sessions this node recovered from its journal whose client ids another
    /// node owns now (it claimed them while this node was down, or their clients moved):
    /// their wills and messages are that node's business. Before the node joins.
    pub(crate) async fn drop_superseded_sessions(&self) {
        let me = self.node_name.as_bytes();
        let mut dropped = 0;
        for session in self.broker.sessions() {
            let Ok(Some(entry)) = self.store.entry(&key_of(&session.client_id)).await else {
                continue;
            };
            if entry.operation == kv::Operation::Put && entry.value != me {
                self.broker.drop_superseded(&session);
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "cluster: recovered sessions now owned by other nodes dropped"
            );
        }
    }

    /// The owners bucket (the failover's reap keys live there too).
    pub(crate) fn store(&self) -> kv::Store {
        self.store.clone()
    }

    /// Makes this node the owner of `client_id`, asking the previous owner to let go (and,
    /// when the CONNECT resumes, to hand the session over). Gives up the claim (logging
    /// why) after [`CLAIM_TIMEOUT`] or [`CLAIM_TRIES`] lost swaps: the CONNECT goes on
    /// either way.
    pub(crate) async fn claim(&self, client_id: &str, resume: bool) {
        // Before the swap: a takeover request can only come once it has succeeded.
        self.note_pending(client_id);
        let previous = match tokio::time::timeout(CLAIM_TIMEOUT, self.try_claim(client_id)).await {
            Ok(Some(previous)) => previous,
            Ok(None) => {
                tracing::warn!(client_id, "cluster: ownership claim kept losing; going on");
                return;
            }
            Err(_) => {
                tracing::warn!(client_id, "cluster: ownership claim timed out; going on");
                return;
            }
        };
        let Some(owner) = previous else {
            // Nobody held it (or this node did).
            return;
        };
        let form = self.ask_to_let_go(&owner, client_id, resume).await;
        if !resume {
            return;
        }
        let form = match form {
            Some(form) => form,
            // No answer: the state stored cluster-wide (subscriptions), if any.
            None => match self.sessions.stored_form(client_id).await {
                Some(form) => form,
                None => return,
            },
        };
        self.adopt(client_id, &form).await;
    }

    fn note_pending(&self, client_id: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= PENDING_CLAIMS {
            pending.retain(|_, (_, at)| at.elapsed() < PENDING_CLAIM_AGE);
        }
        pending.insert(client_id.to_string(), (false, std::time::Instant::now()));
    }

    /// The CONNECT that claimed `client_id` here has attached its session: false when
    /// another node took the id over in between (the caller ends the session).
    pub(crate) fn attached(&self, client_id: &str) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        !pending.remove(client_id).is_some_and(|(lost, _)| lost)
    }

    /// Tells `owner` that it lost `client_id`; returns the session it hands over (`None`:
    /// it had none, it does not answer, or `resume` is false).
    async fn ask_to_let_go(
        &self,
        owner: &str,
        client_id: &str,
        resume: bool,
    ) -> Option<bytes::Bytes> {
        let subject = takeover_subject(&self.prefix, owner);
        let mut payload = Vec::with_capacity(1 + client_id.len());
        payload.push(if resume { HAND_OVER } else { END });
        payload.extend_from_slice(client_id.as_bytes());
        let request = self.client.request(subject, payload.into());
        match tokio::time::timeout(self.handover_timeout, request).await {
            Ok(Ok(reply)) if !reply.payload.is_empty() => Some(reply.payload),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::warn!(client_id, owner, error = %e, "cluster: the previous owner did not hand the session over");
                None
            }
            Err(_) => {
                tracing::warn!(
                    client_id,
                    owner,
                    "cluster: the previous owner did not answer the takeover in time"
                );
                None
            }
        }
    }

    /// Puts a handed-over session back here and waits until its filters' interest is in
    /// force cluster-wide (each wait bounded by `interest_timeout_ms`).
    async fn adopt(&self, client_id: &str, form: &[u8]) {
        match self.broker.adopt_session(&[form], ADOPT_LINGER_SECS) {
            Ok(adopted) => {
                ClusterMetrics::inc(&self.metrics.handovers);
                tracing::debug!(
                    client_id,
                    messages = adopted.messages,
                    "cluster: session handed over"
                );
                for filter in &adopted.filters {
                    if let Some(ready) = self.broker.interest_ready(filter) {
                        ready.await;
                    }
                }
            }
            Err(e) => tracing::warn!(client_id, error = %e, "cluster: handed-over session dropped"),
        }
    }

    /// The swap: `Some(previous owner)` once this node owns the key (`Some(None)`: nobody
    /// else held it); `None` after [`CLAIM_TRIES`] lost swaps.
    async fn try_claim(&self, client_id: &str) -> Option<Option<String>> {
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
                Some(e) if e.operation == kv::Operation::Put && e.value == me => return Some(None),
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
            return Some(previous.and_then(|o| String::from_utf8(o.to_vec()).ok()));
        }
        None
    }
}

/// The largest payload the NATS server takes, less room for the message's own framing.
fn max_payload(client: &async_nats::Client) -> usize {
    // The client's negotiated limit (an atomic), not a copy of the whole server INFO.
    client.max_payload().saturating_sub(1024).max(1024)
}

/// Answers the takeover requests for this node's clients: the connection gets DISCONNECT
/// 0x8E and the session ends here; a request that resumes gets the session's state in the
/// handover form (empty: no session here).
async fn answer_takeovers(
    mut takeovers: async_nats::Subscriber,
    client: async_nats::Client,
    broker: Broker,
    (counters, pending): (Arc<ClusterMetrics>, Arc<PendingClaims>),
) {
    while let Some(message) = takeovers.next().await {
        let Some((&kind, id)) = message.payload.split_first() else {
            continue;
        };
        let Ok(client_id) = std::str::from_utf8(id) else {
            continue;
        };
        // A CONNECT here that claimed the id but has not attached yet lost it.
        if let Some((lost, _)) = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(client_id)
        {
            *lost = true;
        }
        let form = match kind {
            // One NATS message carries the answer (with room for its headers).
            HAND_OVER => broker.hand_over(client_id, max_payload(&client)),
            _ => broker.session(client_id).map(|session| {
                broker.end_session(&session);
                Vec::new()
            }),
        };
        if form.is_some() {
            ClusterMetrics::inc(&counters.takeovers);
            tracing::debug!(client_id, "cluster: client taken over by another node");
        }
        if let Some(reply) = message.reply {
            let form = bytes::Bytes::from(form.unwrap_or_default());
            if let Err(e) = client.publish(reply, form).await {
                tracing::warn!(client_id, error = %e, "cluster: handover answer not sent");
            }
        }
    }
}
