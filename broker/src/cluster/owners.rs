//! Which node owns each client identifier: the JetStream key-value bucket `{prefix}_owners`
//! (key: the client id in base64url, value: the owning node's name), changed only by
//! compare-and-swap. A CONNECT claims its id before the session is opened
//! ([`Owners::claim`]); taking it from another node asks that node on
//! `{prefix}.takeover.{node}` (NATS request/reply): it closes its connection with
//! DISCONNECT 0x8E and, when the CONNECT resumes (Clean Start 0), answers with the
//! session's state, messages included, in as many NATS messages as it takes
//! ([`Handover::into_forms`], sent as [`super::handover_chunks`]), which this node
//! puts back ([`Broker::adopt_session`]) and whose filters' interest it waits for before
//! the CONNACK (Session Present 1). With Clean Start 1 the old node just ends the session.
//! A node that does not answer within `handover_timeout_ms`, or whose answer does not
//! arrive whole within it, leaves this node with the state the sessions bucket holds
//! ([`super::sessions`]), or a fresh session. A node of an earlier version asks for the
//! session in one message (`H`) and gets it so ([`Broker::hand_over`]: the messages only if
//! they fit); it answers this node's `M` as an end (the session ends there, this node takes
//! the stored state).
//!
//! Before the handover the new node prepares the session ([`super::prepare`]): it makes
//! it from the old node's subscriptions and waits for their interest, so that nothing
//! published meanwhile is missed; then it asks with `N` (the forms carry each message's
//! cluster identity) and merges ([`Broker::adopt_prepared`]). A node that does not answer
//! the preparation (an earlier version) is asked with `M`, as before. A node whose prepare
//! answer says it sends bodies in parts is asked with `P` instead of `N`: as `N`, with
//! the body of a message too large for one form in parts across forms
//! ([`Handover::in_parts`]), so that every message moves. Any other node gets no parts
//! (its version could not read them): such messages stay behind there, counted.
//!
//! A CONNECT that claimed its id here but has not attached its session yet is remembered
//! ([`Owners::attached`]): a takeover request for that id in between (another node's
//! CONNECT won the id after ours) cannot find a session to end, so it marks the claim
//! lost, and the CONNECT's session is ended (0x8E) as soon as it is attached. Without it
//! both connections would stay.
//!
//! Which recovered sessions a node restarted with `[persistence]` keeps is
//! [`super::rejoin`]'s business.
//!
//! This module owns the bucket, the claim, the pending claims and the takeover subject.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use base64::Engine as _;
use futures_util::StreamExt as _;

use super::error::ClusterError;
use super::handover_chunks::{send_handover, ChunkError, Handing, Senders};
use super::metrics::ClusterMetrics;
use super::prepare::PrepareAnswer;
use crate::broker::{Broker, Handover, Prepared};

/// How many times a claim retries a lost compare-and-swap before giving up.
const CLAIM_TRIES: usize = 16;
/// Longest a CONNECT waits for its claim (then it goes on, and says so in the log).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(3);

/// The takeover request's first byte: the new node resumes the session (hand it over in
/// one message: what a node of an earlier version asks; the messages go only if they fit).
const HAND_OVER: u8 = b'H';
/// The takeover request's first byte: the new node resumes the session (hand it over in
/// as many chunks as it takes, [`super::handover_chunks`]).
const HAND_OVER_CHUNKED: u8 = b'M';
/// The takeover request's first byte: as [`HAND_OVER_CHUNKED`], with each message's
/// cluster identity in the forms (asked only of a node that answered a prepare request,
/// [`super::prepare`]: an earlier version would take an unknown kind as [`END`]).
const HAND_OVER_IDENTIFIED: u8 = b'N';
/// The takeover request's first byte: as [`HAND_OVER_IDENTIFIED`], with a body too large
/// for one form in parts (asked only of a node whose prepare answer said it sends them,
/// [`super::prepare`]).
const HAND_OVER_IN_PARTS: u8 = b'P';
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

/// The key of `client_id` in the bucket.
pub(crate) fn key_of(client_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(client_id.as_bytes())
}

/// The client id whose key in the bucket is `key` (`None`: not a client id's key).
pub(crate) fn client_id_of(key: &str) -> Option<String> {
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key)
        .ok()?;
    String::from_utf8(id).ok()
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
        super::prepare::start_answering(&client, (prefix, node_name), broker.clone()).await;
        let pending = Arc::new(PendingClaims::default());
        tokio::spawn(answer_takeovers(
            takeovers,
            client.clone(),
            broker.clone(),
            (metrics.clone(), pending.clone()),
            handover_timeout,
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
        if !resume {
            self.ask_to_end(&owner, client_id).await;
            return;
        }
        let (kind, prepared) = self.prepare(&owner, client_id).await;
        let forms = match self.ask_to_hand_over(&owner, client_id, kind).await {
            Some(forms) => forms,
            // No answer: the state stored cluster-wide (subscriptions), if any.
            None => match self.sessions.stored_form(client_id).await {
                Some(form) => vec![form],
                None => {
                    if let Some(prepared) = &prepared {
                        self.broker.drop_prepared(prepared);
                    }
                    return;
                }
            },
        };
        self.adopt(client_id, &forms, prepared.as_ref()).await;
    }

    /// Makes `client_id`'s session here ahead of the handover, from its subscriptions as
    /// `owner` holds them ([`super::prepare`]), and waits until the cluster routes their
    /// messages here (each wait bounded by `interest_timeout_ms`). Returns the takeover
    /// kind to ask `owner` with (what its version answers: identities if it knows prepare
    /// requests, bodies in parts if its answer says so), and the session made (`None`:
    /// `owner` has no session of the client id, or did not answer within half of
    /// `handover_timeout_ms`).
    async fn prepare(&self, owner: &str, client_id: &str) -> (u8, Option<Prepared>) {
        let to = (self.prefix.as_str(), owner);
        // Half the handover's time: a node that answers neither leaves the CONNECT to the
        // stored state after 1.5 times `handover_timeout_ms`.
        let timeout = self.handover_timeout / 2;
        let kind = |parts: bool| {
            if parts {
                HAND_OVER_IN_PARTS
            } else {
                HAND_OVER_IDENTIFIED
            }
        };
        let (form, kind) = match super::prepare::ask(&self.client, to, client_id, timeout).await {
            PrepareAnswer::Unknown => return (HAND_OVER_CHUNKED, None),
            PrepareAnswer::NoSession { parts } => return (kind(parts), None),
            PrepareAnswer::Form { form, parts } => (form, kind(parts)),
        };
        match self.broker.prepare_session(&form, ADOPT_LINGER_SECS) {
            Ok(prepared) => {
                for filter in &prepared.filters {
                    if let Some(ready) = self.broker.interest_ready(filter) {
                        ready.await;
                    }
                }
                (kind, Some(prepared))
            }
            Err(e) => {
                tracing::warn!(client_id, owner, error = %e, "cluster: prepared session dropped");
                (kind, None)
            }
        }
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

    /// Tells `owner` that it lost `client_id` to a CONNECT that starts afresh (Clean
    /// Start 1): it ends the session; waits at most `handover_timeout_ms` for that.
    async fn ask_to_end(&self, owner: &str, client_id: &str) {
        let subject = takeover_subject(&self.prefix, owner);
        let request = self.client.request(subject, request(END, client_id));
        match tokio::time::timeout(self.handover_timeout, request).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(client_id, owner, error = %e, "cluster: the previous owner did not end the session");
            }
            Err(_) => {
                tracing::warn!(
                    client_id,
                    owner,
                    "cluster: the previous owner did not answer the takeover in time"
                );
            }
        }
    }

    /// Tells `owner` that it lost `client_id` to a CONNECT that resumes (Clean Start 0);
    /// returns the session it hands over, in handover forms (`None`: it had none, it did
    /// not answer in time, or not in whole).
    async fn ask_to_hand_over(
        &self,
        owner: &str,
        client_id: &str,
        kind: u8,
    ) -> Option<Vec<bytes::Bytes>> {
        let subject = takeover_subject(&self.prefix, owner);
        let request = request(kind, client_id);
        let answer = super::handover_chunks::ask_in_chunks(
            &self.client,
            subject,
            request,
            self.handover_timeout,
        )
        .await;
        match answer {
            Ok(forms) => forms,
            Err(e @ ChunkError::TimedOut { total: 0, .. }) => {
                tracing::warn!(client_id, owner, error = %e, "cluster: the previous owner did not answer the takeover in time");
                None
            }
            Err(
                e @ (ChunkError::Nats
                | ChunkError::NoResponders
                | ChunkError::Ended { total: 0, .. }),
            ) => {
                tracing::warn!(client_id, owner, error = %e, "cluster: the previous owner did not hand the session over");
                None
            }
            Err(e) => {
                ClusterMetrics::inc(&self.metrics.handovers_incomplete);
                tracing::warn!(
                    client_id,
                    owner,
                    error = %e,
                    "cluster: the handed-over session did not arrive whole; taking the stored state"
                );
                None
            }
        }
    }

    /// Puts a handed-over session back here (merged into the `prepared` one, if any) and
    /// waits until its filters' interest is in force cluster-wide (each wait bounded by
    /// `interest_timeout_ms`).
    async fn adopt(&self, client_id: &str, forms: &[bytes::Bytes], prepared: Option<&Prepared>) {
        let forms: Vec<&[u8]> = forms.iter().map(|f| &f[..]).collect();
        let adopted = match prepared {
            Some(prepared) => self
                .broker
                .adopt_prepared(prepared, &forms, ADOPT_LINGER_SECS)
                .inspect_err(|_| self.broker.drop_prepared(prepared)),
            None => self.broker.adopt_session(&forms, ADOPT_LINGER_SECS),
        };
        match adopted {
            Ok(adopted) => {
                ClusterMetrics::inc(&self.metrics.handovers);
                tracing::debug!(
                    client_id,
                    messages = adopted.messages,
                    forms = forms.len(),
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

/// A takeover request: its kind byte, then the client id.
fn request(kind: u8, client_id: &str) -> bytes::Bytes {
    let mut payload = Vec::with_capacity(1 + client_id.len());
    payload.push(kind);
    payload.extend_from_slice(client_id.as_bytes());
    payload.into()
}

/// What this node answers a takeover request with.
enum Answer {
    /// One message: the session in one handover form, or empty (no session here, or the
    /// request only ends it).
    One(Vec<u8>),
    /// The session, to go in chunks (encoded and sent by a task of its own).
    Chunks(Handover),
}

/// Answers the takeover requests for this node's clients: the connection gets DISCONNECT
/// 0x8E and the session ends here; a request that resumes gets the session's state in
/// handover forms (empty: no session here). Chunks go out from a task of their own, so
/// that the next request is not held up.
async fn answer_takeovers(
    mut takeovers: async_nats::Subscriber,
    client: async_nats::Client,
    broker: Broker,
    (counters, pending): (Arc<ClusterMetrics>, Arc<PendingClaims>),
    handover_timeout: Duration,
) {
    let senders = Senders::new();
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
        let answer = answer(&broker, &client, kind, client_id, &counters);
        let Some(reply) = message.reply else {
            continue;
        };
        match answer {
            Answer::One(form) => {
                if let Err(e) = client.publish(reply, form.into()).await {
                    tracing::warn!(client_id, error = %e, "cluster: handover answer not sent");
                }
            }
            Answer::Chunks(handover) => {
                let to = Handing {
                    client: client.clone(),
                    reply,
                    timeout: handover_timeout,
                    metrics: counters.clone(),
                };
                tokio::spawn(send_handover(handover, to, senders.clone()));
            }
        }
    }
}

/// Ends the session of `client_id` here for a takeover request of `kind` and says what to
/// answer.
fn answer(
    broker: &Broker,
    client: &async_nats::Client,
    kind: u8,
    client_id: &str,
    counters: &ClusterMetrics,
) -> Answer {
    let answer = match kind {
        HAND_OVER_IN_PARTS => broker
            .end_for_handover(client_id)
            .map(|handover| Answer::Chunks(handover.in_parts())),
        // A node of the version before: it could not read parts.
        HAND_OVER_IDENTIFIED => broker.end_for_handover(client_id).map(Answer::Chunks),
        // An earlier version asks: it could not read message identities.
        HAND_OVER_CHUNKED => broker
            .end_for_handover(client_id)
            .map(|handover| Answer::Chunks(handover.without_identities())),
        // One NATS message carries the answer (with room for its headers).
        HAND_OVER => broker
            .hand_over(client_id, max_payload(client))
            .map(Answer::One),
        // END, or a kind of a later version: the session just ends.
        _ => broker.session(client_id).map(|session| {
            broker.end_session(&session);
            Answer::One(Vec::new())
        }),
    };
    if answer.is_some() {
        ClusterMetrics::inc(&counters.takeovers);
        tracing::debug!(client_id, "cluster: client taken over by another node");
    }
    answer.unwrap_or(Answer::One(Vec::new()))
}
