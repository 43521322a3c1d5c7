//! `GET /ws`: a WebSocket JSON API over the same routed stream.
//!
//! Client to server, one JSON object per text frame (an optional `"id"` is echoed back):
//! - `{"op":"subscribe","filters":[..],"retained":bool}`
//! - `{"op":"unsubscribe","filters":[..]}`
//! - `{"op":"publish","topic":..,"payload":..,"encoding":"base64"?,"qos":0|1,"retain":bool}`
//!
//! Server to client: `{"type":"ack","op":..}` or `{"type":"error","reason":..}` for each op;
//! messages as `{"type":"message",..}` (the ring's shared encoding, sent as is) or, when
//! several are ready, `{"type":"batch","messages":[..]}` with up to [`MAX_BATCH`];
//! `{"type":"lagged","missed":N}` when the client fell behind its ring.
//!
//! A client's filters are one filter set, so one ring: changing them moves the client to the
//! ring of the new set (shared with any other client holding the same set) and its cursor
//! starts at that ring's next message. Publishing goes through [`Broker::publish`], rate
//! limited by `ws_publish_rate_per_sec`.
//!
//! Access follows the auth state in force: each op re-derives the client's ACL after a
//! reload (a `subscribe` checks only the filters it adds; a `publish` checks write access
//! under the new rules), and the messages reaching the client are filtered by its ring's
//! read ACL, which the reload updated ([`super::read_acl`]). Filters that became unreadable
//! stay in the client's set and receive nothing.

use std::net::SocketAddr;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tern_codec::{ByteStr, PacketId, Publish, PublishQoS, QoS};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::access::{self, Identity};
use super::ring::{self, Next};
use super::{ClientSlot, RingLease};
use std::sync::Arc;

use super::Bridges;
use crate::broker::Broker;
use crate::http::{json_error, json_string, Body};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::RouteScratch;

/// Most messages in one `batch` frame.
pub const MAX_BATCH: usize = 100;

/// Read buffer per `/ws` client. Client ops are small JSON (a subscribe is under 100 bytes),
/// so the 4 KiB of the MQTT WebSocket paths ([`crate::listener::ws::WS_READ_BUFFER_BYTES`])
/// would mostly sit idle: tungstenite zero-fills the whole buffer on its first read, so each
/// idle client pays for it in RSS. A larger frame (a `publish` with a big payload, up to
/// `ws_max_frame_bytes`) still arrives whole: the buffer grows to the frame's length, read
/// this many bytes per call.
pub const WS_JSON_READ_BUFFER_BYTES: usize = 512;

/// One request from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Op {
    Subscribe {
        filters: Vec<String>,
        #[serde(default)]
        retained: bool,
    },
    Unsubscribe {
        filters: Vec<String>,
    },
    Publish {
        topic: String,
        payload: serde_json::Value,
        #[serde(default)]
        encoding: Option<String>,
        #[serde(default)]
        qos: u8,
        #[serde(default)]
        retain: bool,
    },
}

/// The id a client may attach to any op, echoed in the reply.
#[derive(Debug, Deserialize)]
struct OpId {
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// Serves `GET /ws`: authenticates, answers the upgrade, and runs the client in a task.
pub async fn handle(
    bridges: &Arc<Bridges>,
    mut request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let broker = bridges.broker();
    let identity = match access::authenticate(broker, &request).await {
        Ok(identity) => identity,
        Err(response) => return *response,
    };
    let response = match access::websocket_accept(&request, None) {
        Ok(response) => response,
        Err(response) => return *response,
    };
    let Some(slot) = ClientSlot::acquire(bridges) else {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "too many bridge clients");
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let bridges = bridges.clone();
    tokio::spawn(async move {
        let broker = bridges.broker();
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let max = broker.http_config().ws_max_frame_bytes.max(64);
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_JSON_READ_BUFFER_BYTES)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let mut client = Client::new(bridges.clone(), identity, slot);
        if let Err(e) = client.run(ws).await {
            tracing::debug!(%peer, error = %e, "WebSocket JSON client ended with an error");
        }
    });
    response
}

type WsError = tokio_tungstenite::tungstenite::Error;

/// One connected client.
struct Client {
    broker: Broker,
    bridges: Arc<Bridges>,
    identity: Identity,
    _slot: ClientSlot,
    /// The filters subscribed, sorted (the ring key, with the user name).
    filters: Vec<Box<str>>,
    /// The ring of `filters`, with the cursor and wake-up receiver; `None` with no filters.
    ring: Option<(RingLease, u64, watch::Receiver<()>)>,
    shutdown: watch::Receiver<bool>,
    scratch: RouteScratch,
    /// Publish token bucket: tokens left and when it was last refilled.
    tokens: f64,
    refilled: Instant,
}

/// The close frame for a client whose token expired: 1008 (policy violation).
fn token_expired_close() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Policy,
        reason: "token expired".into(),
    }
}

impl Client {
    fn new(bridges: Arc<Bridges>, identity: Identity, slot: ClientSlot) -> Client {
        let broker = bridges.broker().clone();
        let tokens = f64::from(broker.http_config().ws_publish_rate_per_sec);
        Client {
            shutdown: broker.shutdown_signal(),
            broker,
            bridges,
            identity,
            _slot: slot,
            filters: Vec::new(),
            ring: None,
            scratch: RouteScratch::default(),
            tokens,
            refilled: Instant::now(),
        }
    }

    async fn run<S>(&mut self, mut ws: WebSocketStream<S>) -> Result<(), WsError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let expires_at = self.identity.expiry_instant();
        loop {
            self.send_ready(&mut ws).await?;
            let wake = async {
                match &mut self.ring {
                    Some((_, _, wake)) => wake.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Cancel safe (the stream keeps partial frames).
                incoming = ws.next() => match incoming {
                    Some(Ok(WsMessage::Text(text))) => {
                        let reply = self.handle_op(text.as_str());
                        ws.send(WsMessage::Text(reply.into())).await?;
                    }
                    Some(Ok(WsMessage::Binary(_))) => {
                        let reply = error_reply(None, None, "send JSON in text frames");
                        ws.send(WsMessage::Text(reply.into())).await?;
                    }
                    Some(Ok(WsMessage::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => {} // ping/pong: answered by tungstenite
                    Some(Err(e)) => return Err(e),
                },
                // Cancel safe (watch::Receiver::changed).
                alive = wake => {
                    if !alive {
                        return Ok(());
                    }
                }
                // Cancel safe.
                _ = self.shutdown.changed() => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                // Cancel safe (recreated each pass).
                () = super::sse::sleep_until_expiry(expires_at) => {
                    super::sse::count_expired(&self.broker);
                    let _ = ws.close(Some(token_expired_close())).await;
                    return Ok(());
                }
            }
        }
    }

    /// Sends what the ring holds past the cursor: single messages as they are, several in
    /// `batch` frames, a `lagged` notice where the cursor skipped.
    async fn send_ready<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), WsError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        loop {
            let Some((lease, cursor, wake)) = &mut self.ring else {
                return Ok(());
            };
            wake.borrow_and_update();
            let ring = lease.ring().clone();
            let mut batch: Vec<Bytes> = Vec::new();
            let mut lagged = None;
            while batch.len() < MAX_BATCH {
                match ring.next(cursor) {
                    Next::Entry(entry) => batch.push(entry.json),
                    Next::Lagged(missed) => {
                        lagged = Some(missed);
                        break;
                    }
                    Next::Empty => break,
                }
            }
            let more = batch.len() == MAX_BATCH || lagged.is_some();
            match batch.len() {
                0 => {}
                1 => ws.feed(text_frame(batch.swap_remove(0))).await?,
                _ => ws.feed(text_frame(batch_frame(&batch))).await?,
            }
            if let Some(missed) = lagged {
                Metrics::add(&self.broker.metrics().bridge_lagged_messages, missed);
                ws.feed(WsMessage::Text(ring::lagged_json(Some(missed)).into()))
                    .await?;
            }
            if !more {
                return ws.flush().await;
            }
        }
    }

    /// Handles one op and returns the reply.
    fn handle_op(&mut self, text: &str) -> String {
        self.identity.refresh(&self.broker);
        let id = serde_json::from_str::<OpId>(text).ok().and_then(|o| o.id);
        let op = match serde_json::from_str::<Op>(text) {
            Ok(op) => op,
            Err(e) => return error_reply(id.as_ref(), None, &format!("bad request: {e}")),
        };
        match op {
            Op::Subscribe { filters, .. } | Op::Unsubscribe { filters } if filters.is_empty() => {
                error_reply(id.as_ref(), None, "at least one filter is required")
            }
            Op::Subscribe { filters, retained } => match self.subscribe(&filters) {
                Ok(()) => {
                    let mut reply = ack(id.as_ref(), "subscribe", &self.filters);
                    if retained {
                        self.push_retained(&filters, &mut reply);
                    }
                    reply
                }
                Err(reason) => error_reply(id.as_ref(), Some("subscribe"), &reason),
            },
            Op::Unsubscribe { filters } => {
                let remaining: Vec<String> = self
                    .filters
                    .iter()
                    .filter(|f| !filters.iter().any(|g| g == &***f))
                    .map(|f| f.to_string())
                    .collect();
                match self.set_filters(remaining) {
                    Ok(()) => ack(id.as_ref(), "unsubscribe", &self.filters),
                    Err(reason) => error_reply(id.as_ref(), Some("unsubscribe"), &reason),
                }
            }
            Op::Publish {
                topic,
                payload,
                encoding,
                qos,
                retain,
            } => match self.publish(topic, payload, encoding.as_deref(), qos, retain) {
                Ok(delivered) => {
                    let mut reply = String::from("{\"type\":\"ack\",\"op\":\"publish\"");
                    push_id(&mut reply, id.as_ref());
                    reply.push_str(&format!(",\"delivered\":{delivered}}}"));
                    reply
                }
                Err(reason) => error_reply(id.as_ref(), Some("publish"), &reason),
            },
        }
    }

    /// Adds `filters` (each must be readable in part at least) to the filter set.
    fn subscribe(&mut self, filters: &[String]) -> Result<(), String> {
        let added = super::validate_filters(&self.broker, filters.to_vec())?;
        self.identity.check_readable(&self.broker, &added)?;
        let mut all: Vec<String> = self.filters.iter().map(|f| f.to_string()).collect();
        all.extend(filters.iter().cloned());
        self.set_filters(all)
    }

    /// Replaces the filter set; moves to the ring of the new set.
    fn set_filters(&mut self, filters: Vec<String>) -> Result<(), String> {
        if filters.is_empty() {
            self.filters.clear();
            self.ring = None;
            return Ok(());
        }
        let filters = super::validate_filters(&self.broker, filters)?;
        if filters == self.filters {
            return Ok(());
        }
        let lease = self
            .bridges
            .attach(filters.clone(), self.identity.username.as_deref());
        let cursor = lease.ring().next_id();
        let wake = lease.ring().subscribe();
        self.ring = Some((lease, cursor, wake));
        self.filters = filters;
        Ok(())
    }

    /// Adds the retained messages matching `filters` to an ack as `"retained":[..]`.
    fn push_retained(&self, filters: &[String], reply: &mut String) {
        let limit = self.broker.http_config().ring_max_messages.max(1);
        let mut out: Vec<Bytes> = Vec::new();
        let now = Instant::now();
        for filter in filters {
            self.broker.for_each_retained(filter, now, |message| {
                if out.len() < limit && self.identity.may_read(message.topic()) {
                    out.push(ring::encode_json(message.publish(), true));
                }
            });
        }
        reply.pop(); // the closing brace
        reply.push_str(",\"retained\":[");
        for (i, json) in out.iter().enumerate() {
            if i > 0 {
                reply.push(',');
            }
            reply.push_str(std::str::from_utf8(json).unwrap_or("null"));
        }
        reply.push_str("]}");
    }

    /// Publishes through the broker; returns the number of MQTT sessions it went to.
    fn publish(
        &mut self,
        topic: String,
        payload: serde_json::Value,
        encoding: Option<&str>,
        qos: u8,
        retain: bool,
    ) -> Result<usize, String> {
        let limits = &self.broker.limits();
        if topic.is_empty()
            || tern_codec::topic::validate_name(&topic).is_err()
            || !limits.topic_within_limits(&topic)
        {
            return Err(format!("invalid topic name {topic:?}"));
        }
        // As for MQTT clients: the broker's own statistics are not for clients to publish.
        if crate::config::is_sys_topic(&topic) {
            return Err(format!("not authorised to publish to {topic:?}"));
        }
        let qos = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => return Err("qos must be 0 or 1".into()),
        };
        let payload: Bytes = match (payload, encoding) {
            (serde_json::Value::String(s), Some("base64")) => {
                base64::engine::general_purpose::STANDARD
                    .decode(s.as_bytes())
                    .map_err(|_| "payload is not valid base64".to_string())?
                    .into()
            }
            (_, Some(other)) if other != "utf-8" => {
                return Err(format!("unknown encoding {other:?}"))
            }
            (serde_json::Value::String(s), _) => s.into(),
            (other, _) => other.to_string().into(),
        };
        if payload.len() > limits.max_packet_size_bytes as usize {
            return Err("payload too large".into());
        }
        if !self.identity.may_write(&topic) {
            Metrics::add(&self.broker.metrics().acl_denied, 1);
            return Err(format!("not authorised to publish to {topic:?}"));
        }
        if !self.take_token() {
            Metrics::add(&self.broker.metrics().bridge_publish_throttled, 1);
            return Err("publish rate exceeded".into());
        }
        let now = Instant::now();
        let mut publish = Publish::new(ByteStr::from(topic), payload);
        // The message's own packet identifier is never sent (every delivery patches in its
        // own): the placeholder 1, as in a template.
        publish.set_qos(PublishQoS::with_id(qos, PacketId::MIN));
        publish.retain = retain;
        let message = Message::new(publish, now, None);
        Metrics::add(&self.broker.metrics().messages_received, 1);
        Metrics::add(&self.broker.metrics().bridge_publishes, 1);
        Ok(self.broker.publish(&message, &mut self.scratch, now))
    }

    /// One token of the publish bucket (`ws_publish_rate_per_sec` per second, that many at
    /// most saved up); 0 turns publishing off.
    fn take_token(&mut self) -> bool {
        let rate = f64::from(self.broker.http_config().ws_publish_rate_per_sec);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn text_frame(json: Bytes) -> WsMessage {
    match Utf8Bytes::try_from(json) {
        Ok(text) => WsMessage::Text(text),
        // The ring holds JSON built from UTF-8 strings; never reached.
        Err(_) => WsMessage::Text("{\"type\":\"error\",\"reason\":\"encoding\"}".into()),
    }
}

fn batch_frame(messages: &[Bytes]) -> Bytes {
    let size: usize = messages.iter().map(|m| m.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 32);
    out.extend_from_slice(b"{\"type\":\"batch\",\"messages\":[");
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

fn push_id(reply: &mut String, id: Option<&serde_json::Value>) {
    if let Some(id) = id {
        reply.push_str(",\"id\":");
        reply.push_str(&id.to_string());
    }
}

fn ack(id: Option<&serde_json::Value>, op: &str, filters: &[Box<str>]) -> String {
    let mut reply = format!("{{\"type\":\"ack\",\"op\":{}", json_string(op));
    push_id(&mut reply, id);
    reply.push_str(",\"filters\":[");
    for (i, f) in filters.iter().enumerate() {
        if i > 0 {
            reply.push(',');
        }
        reply.push_str(&json_string(f));
    }
    reply.push_str("]}");
    reply
}

fn error_reply(id: Option<&serde_json::Value>, op: Option<&str>, reason: &str) -> String {
    let mut reply = String::from("{\"type\":\"error\"");
    if let Some(op) = op {
        reply.push_str(&format!(",\"op\":{}", json_string(op)));
    }
    push_id(&mut reply, id);
    reply.push_str(&format!(",\"reason\":{}}}", json_string(reason)));
    reply
}
