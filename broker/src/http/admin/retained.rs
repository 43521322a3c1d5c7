//! `/api/v1/retained` (list by filter, read one, delete) and `POST /api/v1/publish` (a
//! message from the operator, with QoS, retain and 5.0 properties).
//!
//! Payloads are shown as UTF-8 text when they are, else base64 (`payload_encoding` says
//! which); a publish takes the same two encodings.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tern_codec::{ByteStr, PacketId, Publish, PublishQoS, QoS};
use tokio::time::Instant;

use super::{bad_request, json, Query};
use crate::http::bridge::access::percent_decode;
use crate::http::bridge::Bridges;
use crate::http::{json_error, Body};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::RouteScratch;

/// Dispatches `rest` (the path after `/api/v1`, starting with `/retained`).
pub(super) fn route(
    bridges: &Arc<Bridges>,
    method: &Method,
    rest: &str,
    query: &Query,
) -> Response<Body> {
    if rest == "/retained" {
        return match *method {
            Method::GET => list(bridges, query),
            _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        };
    }
    let Some(raw) = rest.strip_prefix("/retained/") else {
        return json_error(StatusCode::NOT_FOUND, "not found");
    };
    let Some(topic) = percent_decode(raw).filter(|t| tern_codec::topic::validate_name(t).is_ok())
    else {
        return bad_request(bridges, "the path must end in a topic name (no wildcards)");
    };
    let broker = bridges.broker();
    let now = Instant::now();
    match *method {
        Method::GET => {
            let mut found = None;
            broker.for_each_retained(&topic, now, |m| found = Some(m.clone()));
            match found {
                Some(message) => json(StatusCode::OK, &message_json(&message, now)),
                None => json_error(StatusCode::NOT_FOUND, "no retained message on this topic"),
            }
        }
        Method::DELETE => {
            if broker.delete_retained(&topic, now) {
                tracing::info!(%topic, "admin API: retained message deleted");
                json(StatusCode::OK, &json!({"deleted": true, "topic": topic}))
            } else {
                json_error(StatusCode::NOT_FOUND, "no retained message on this topic")
            }
        }
        _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// `GET /retained?filter=a/#`: retained messages matching the filter (default `#`).
fn list(bridges: &Arc<Bridges>, query: &Query) -> Response<Body> {
    let (offset, limit) = match query.page() {
        Ok(page) => page,
        Err(e) => return bad_request(bridges, &e),
    };
    let filter = query.get("filter").unwrap_or("#");
    if tern_codec::topic::validate_filter(filter).is_err() || filter.starts_with("$share/") {
        return bad_request(bridges, &format!("invalid topic filter {filter:?}"));
    }
    let now = Instant::now();
    let mut messages: Vec<Arc<Message>> = Vec::new();
    bridges
        .broker()
        .for_each_retained(filter, now, |m| messages.push(m.clone()));
    messages.sort_by(|a, b| a.topic().cmp(b.topic()));
    let total = messages.len();
    let items: Vec<Value> = messages
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| message_json(m, now))
        .collect();
    json(
        StatusCode::OK,
        &json!({"total": total, "offset": offset, "limit": limit, "retained": items}),
    )
}

fn message_json(message: &Message, now: Instant) -> Value {
    let publish = message.publish();
    let payload = publish.payload();
    let (text, encoding) = match std::str::from_utf8(payload) {
        Ok(text) => (text.to_string(), "utf-8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(payload),
            "base64",
        ),
    };
    let props = publish.properties();
    json!({
        "topic": message.topic(),
        "qos": message.qos() as u8,
        "payload": text,
        "payload_encoding": encoding,
        "payload_bytes": payload.len(),
        "content_type": props.content_type(),
        "response_topic": props.response_topic(),
        "message_expiry_interval_secs": message.remaining_expiry_secs(now).and_then(Result::ok),
        "user_properties": props
            .to_properties()
            .user_properties
            .iter()
            .map(|(k, v)| json!([&**k, &**v]))
            .collect::<Vec<_>>(),
    })
}

/// `POST /publish`: `{"topic", "payload", "encoding": "utf-8"|"base64", "qos": 0|1|2,
/// "retain": bool, "properties": {...}}`; answers how many sessions and bridge rings the
/// message went to.
pub(super) fn publish(bridges: &Arc<Bridges>, body: &Value) -> Response<Body> {
    let broker = bridges.broker();
    let publish = match build(broker, body) {
        Ok(publish) => publish,
        Err(e) => return bad_request(bridges, &e),
    };
    let now = Instant::now();
    let topic = publish.topic().to_string();
    let message = Message::new(publish, now, None);
    Metrics::add(&broker.metrics().messages_received, 1);
    let mut scratch = RouteScratch::default();
    let delivered = broker.publish(&message, &mut scratch, now);
    tracing::info!(%topic, delivered, "admin API: message published");
    json(
        StatusCode::OK,
        &json!({"published": true, "topic": topic, "delivered": delivered}),
    )
}

/// The PUBLISH `body` describes.
fn build(broker: &crate::broker::Broker, body: &Value) -> Result<Publish, String> {
    let topic = body
        .get("topic")
        .and_then(Value::as_str)
        .ok_or("topic (a string) is required")?;
    let limits = broker.limits();
    if topic.is_empty()
        || tern_codec::topic::validate_name(topic).is_err()
        || !limits.topic_within_limits(topic)
    {
        return Err(format!("invalid topic name {topic:?}"));
    }
    let payload = payload(body)?;
    if payload.len() > limits.max_packet_size_bytes as usize {
        return Err("payload too large".into());
    }
    let qos = match body.get("qos").map_or(Some(0), Value::as_u64) {
        Some(0) => QoS::AtMostOnce,
        Some(1) => QoS::AtLeastOnce,
        Some(2) => QoS::ExactlyOnce,
        _ => return Err("qos must be 0, 1 or 2".into()),
    };
    let retain = match body.get("retain") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("retain must be true or false".into()),
    };
    let mut publish = Publish::new(ByteStr::from(topic), payload);
    // The template's packet identifier is never sent: every delivery patches in its own.
    publish.set_qos(PublishQoS::with_id(qos, PacketId::MIN));
    publish.retain = retain;
    if let Some(props) = body.get("properties") {
        properties(&mut publish, props)?;
    }
    Ok(publish)
}

fn payload(body: &Value) -> Result<Bytes, String> {
    let text = match body.get("payload") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("payload must be a string".into()),
    };
    match body.get("encoding").and_then(Value::as_str) {
        None | Some("utf-8") => Ok(Bytes::copy_from_slice(text.as_bytes())),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(|_| "payload is not valid base64".into()),
        Some(other) => Err(format!("unknown encoding {other:?}")),
    }
}

/// The 5.0 properties of an operator's message.
fn properties(publish: &mut Publish, props: &Value) -> Result<(), String> {
    let Value::Object(map) = props else {
        return Err("properties must be an object".into());
    };
    let p = publish.properties_mut();
    for (key, value) in map {
        let text = || {
            value
                .as_str()
                .ok_or(format!("properties.{key} must be a string"))
        };
        match key.as_str() {
            "content_type" => p.content_type = Some(ByteStr::from(text()?)),
            "response_topic" => {
                let topic = text()?;
                if tern_codec::topic::validate_name(topic).is_err() {
                    return Err("properties.response_topic must be a topic name".into());
                }
                p.response_topic = Some(ByteStr::from(topic));
            }
            "correlation_data" => {
                p.correlation_data = Some(Bytes::copy_from_slice(text()?.as_bytes()))
            }
            "payload_format_indicator" => {
                p.payload_format_indicator = match value.as_u64() {
                    Some(v @ 0..=1) => Some(v as u8),
                    _ => return Err("properties.payload_format_indicator must be 0 or 1".into()),
                }
            }
            "message_expiry_interval_secs" => {
                p.message_expiry_interval_secs = Some(
                    value
                        .as_u64()
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or("properties.message_expiry_interval_secs must be a u32")?,
                )
            }
            "user_properties" => p.user_properties = user_properties(value)?,
            other => return Err(format!("unknown property {other:?}")),
        }
    }
    Ok(())
}

fn user_properties(value: &Value) -> Result<Vec<(ByteStr, ByteStr)>, String> {
    let bad = || "properties.user_properties must be a list of [name, value] pairs".to_string();
    let Value::Array(pairs) = value else {
        return Err(bad());
    };
    pairs
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(k), Value::String(v)]) => {
                Ok((ByteStr::from(k.as_str()), ByteStr::from(v.as_str())))
            }
            _ => Err(bad()),
        })
        .collect()
}
