//! The first step of a handover without a gap: the node taking a client over asks the node
//! that holds its session, on `{prefix}.prepare.{node}` (NATS request/reply), for the
//! session's expiry and subscriptions, changing nothing there ([`Broker::prepare_form`]),
//! and makes the session here from them ([`Broker::prepare_session`]), so that messages
//! for the client are queued here from the moment the cluster routes its filters here;
//! only then does it ask for the session itself (`owners.rs`), and merges the two
//! ([`Broker::adopt_prepared`]).
//!
//! A node of an earlier version has no subscriber on that subject: NATS answers "no
//! responders" at once, and the takeover goes on as that version's (no early session).
//! A node that sends a message body too large for one form in parts (`owners.rs`'s
//! takeover kind `P`) says so in a header of its answer ([`PARTS_HEADER`]); a node of the
//! version before answers without it (and an unknown kind would end the session there).
//!
//! This module owns the prepare subject: the answering task and the request.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;

use crate::broker::Broker;

/// The header with which a node says, in its prepare answer, that it hands a session
/// over with bodies too large for one form in parts (value [`PARTS`]).
const PARTS_HEADER: &str = "Tern-Handover";
/// [`PARTS_HEADER`]'s value.
const PARTS: &str = "parts";

/// What the node holding a session answered a prepare request with.
#[derive(Debug)]
pub(super) enum PrepareAnswer {
    /// No answer (an earlier version, no responders, timed out): the takeover goes on as
    /// before, without message identities.
    Unknown,
    /// It knows the request but holds no session of the client id; whether it sends
    /// bodies in parts.
    NoSession {
        /// It sends bodies too large for one form in parts when asked.
        parts: bool,
    },
    /// The session's expiry and subscriptions, in the handover form.
    Form {
        /// The form.
        form: Bytes,
        /// It sends bodies too large for one form in parts when asked.
        parts: bool,
    },
}

/// The subject on which `node` answers prepare requests.
fn prepare_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.prepare.{node}")
}

/// Subscribes to this node's prepare subject and starts answering it (the session's
/// form, or empty: no session here).
pub(super) async fn start_answering(
    client: &async_nats::Client,
    (prefix, node): (&str, &str),
    broker: Broker,
) {
    let subject = prepare_subject(prefix, node);
    let mut requests = loop {
        match client.subscribe(subject.clone()).await {
            Ok(subscriber) => break subscriber,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot subscribe to prepare requests; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let client = client.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let (Some(reply), Ok(client_id)) =
                (message.reply, std::str::from_utf8(&message.payload))
            else {
                continue;
            };
            let form = broker.prepare_form(client_id).unwrap_or_default();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(PARTS_HEADER, PARTS);
            if let Err(e) = client
                .publish_with_headers(reply, headers, form.into())
                .await
            {
                tracing::debug!(client_id, error = %e, "cluster: prepare answer not sent");
            }
        }
    });
}

/// Asks `owner` for the state of `client_id`'s session to prepare it here, waiting at most
/// `timeout`.
pub(super) async fn ask(
    client: &async_nats::Client,
    (prefix, owner): (&str, &str),
    client_id: &str,
    timeout: Duration,
) -> PrepareAnswer {
    let subject = prepare_subject(prefix, owner);
    let payload = Bytes::copy_from_slice(client_id.as_bytes());
    match tokio::time::timeout(timeout, client.request(subject, payload)).await {
        Ok(Ok(answer)) => {
            let parts = answer
                .headers
                .as_ref()
                .and_then(|h| h.get(PARTS_HEADER))
                .is_some_and(|v| v.as_str() == PARTS);
            if answer.payload.is_empty() {
                PrepareAnswer::NoSession { parts }
            } else {
                PrepareAnswer::Form {
                    form: answer.payload,
                    parts,
                }
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(client_id, owner, error = %e, "cluster: no prepare answer");
            PrepareAnswer::Unknown
        }
        Err(_) => {
            tracing::debug!(client_id, owner, "cluster: prepare request timed out");
            PrepareAnswer::Unknown
        }
    }
}
