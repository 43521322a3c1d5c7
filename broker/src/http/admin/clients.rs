//! `/api/v1/clients`, `/api/v1/sessions` and `/api/v1/subscriptions`: what the broker's
//! session registry knows, as JSON, and the two operator actions on it (kick a connection,
//! delete a session).
//!
//! A client is a session with a connection attached; a session may be offline (persistent
//! sessions). Lists are sorted by client identifier and paged (`offset`, `limit`).

use std::sync::Arc;

use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tern_codec::ProtocolVersion;

use super::{bad_request, json, Query};
use crate::error::Kick;
use crate::http::bridge::access::percent_decode;
use crate::http::bridge::Bridges;
use crate::http::{json_error, Body};
use crate::session::Session;

/// Dispatches `rest` (the path after `/api/v1`).
pub(super) fn route(
    bridges: &Arc<Bridges>,
    method: &Method,
    rest: &str,
    query: &Query,
) -> Response<Body> {
    let get = *method == Method::GET;
    match rest {
        "/clients" if get => list(bridges, query, true),
        "/sessions" if get => list(bridges, query, false),
        "/subscriptions" if get => subscriptions(bridges, query),
        "/subscriptions/stats" if get => stats(bridges),
        "/clients" | "/sessions" | "/subscriptions" | "/subscriptions/stats" => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => one(bridges, method, rest),
    }
}

/// `/clients/{id}`, `/clients/{id}/kick`, `/sessions/{id}`.
fn one(bridges: &Arc<Bridges>, method: &Method, rest: &str) -> Response<Body> {
    let (kind, tail) = match rest.strip_prefix("/clients/") {
        Some(tail) => ("clients", tail),
        None => match rest.strip_prefix("/sessions/") {
            Some(tail) => ("sessions", tail),
            None => return json_error(StatusCode::NOT_FOUND, "not found"),
        },
    };
    let (raw_id, kick) = match tail.strip_suffix("/kick") {
        Some(id) if kind == "clients" => (id, true),
        _ => (tail, false),
    };
    let Some(client_id) = percent_decode(raw_id).filter(|id| !id.is_empty()) else {
        return bad_request(bridges, "bad client identifier in the path");
    };
    let broker = bridges.broker();
    let session = broker.session(&client_id).filter(|s| !s.is_ended());
    let online = session.as_ref().is_some_and(|s| s.delivery().is_online());
    match (kind, method.clone(), kick) {
        ("clients", Method::GET, false) if online => {
            json(StatusCode::OK, &details(session.as_deref()))
        }
        ("sessions", Method::GET, false) if session.is_some() => {
            json(StatusCode::OK, &details(session.as_deref()))
        }
        ("clients", Method::POST, true) | ("clients", Method::DELETE, false) if online => {
            kick_client(session.as_deref());
            tracing::info!(%client_id, "admin API: client kicked");
            json(
                StatusCode::OK,
                &json!({"kicked": true, "client_id": client_id}),
            )
        }
        ("sessions", Method::DELETE, false) => match session {
            Some(session) => {
                kick_client(Some(&session));
                broker.end_session(&session);
                tracing::info!(%client_id, "admin API: session deleted");
                json(
                    StatusCode::OK,
                    &json!({"deleted": true, "client_id": client_id}),
                )
            }
            None => json_error(StatusCode::NOT_FOUND, "no such session"),
        },
        (_, Method::GET | Method::DELETE, false) | ("clients", Method::POST, true) => {
            json_error(StatusCode::NOT_FOUND, "no such client connected")
        }
        _ => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// Asks the attached connection, if any, to close with 0x98 Administrative action.
fn kick_client(session: Option<&Session>) {
    if let Some(session) = session {
        if let Some(writer) = session.delivery().link_writer() {
            writer.control().kick(Kick::Administrative);
        }
    }
}

fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V5 => "5.0",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V3_1 => "3.1",
    }
}

/// One session as JSON; with `subscriptions` listed in full when `full`.
fn describe(session: &Session, full: bool) -> Value {
    let subscriptions = session.subscription_snapshot();
    let delivery = session.delivery();
    let mut value = json!({
        "client_id": &*session.client_id,
        "online": delivery.is_online(),
        "session_expiry_secs": session.expiry_secs(),
        "inflight": delivery.inflight(),
        "queued": delivery.queued(),
        "subscriptions": subscriptions.len(),
        "offline_since_unix_ms": delivery.offline_since_unix_ms(),
    });
    if let Some(link) = delivery.link() {
        let (received, sent) = session.bytes();
        value["username"] = json!(link.username.as_deref());
        value["peer"] = json!(link.peer.to_string());
        value["protocol"] = json!(protocol_name(link.version));
        value["keep_alive_secs"] = json!(link.keep_alive_secs);
        value["connected_at_unix_ms"] = json!(link.connected_at_unix_ms);
        value["bytes_received"] = json!(received);
        value["bytes_sent"] = json!(sent);
        value["slow"] = json!(link.writer.is_slow());
    }
    drop(delivery);
    if full {
        value["subscriptions"] = Value::Array(
            subscriptions
                .iter()
                .map(|(filter, record)| subscription_json(filter, record))
                .collect(),
        );
    }
    value
}

fn details(session: Option<&Session>) -> Value {
    session.map_or(Value::Null, |s| describe(s, true))
}

fn subscription_json(filter: &str, record: &crate::session::SubscriptionRecord) -> Value {
    let o = &record.options;
    json!({
        "filter": filter,
        "qos": o.qos as u8,
        "no_local": o.no_local,
        "retain_as_published": o.retain_as_published,
        "retain_handling": o.retain_handling as u8,
        "subscription_id": record.subscription_id,
    })
}

/// `GET /clients` (`online_only`) and `GET /sessions`: filtered by `prefix` (client id),
/// `user` and `address` (the peer address starts with it), sorted, paged.
fn list(bridges: &Arc<Bridges>, query: &Query, online_only: bool) -> Response<Body> {
    let (offset, limit) = match query.page() {
        Ok(page) => page,
        Err(e) => return bad_request(bridges, &e),
    };
    let prefix = query.get("prefix").unwrap_or("");
    let user = query.get("user");
    let address = query.get("address");
    let mut sessions: Vec<Arc<Session>> = bridges
        .broker()
        .sessions()
        .into_iter()
        .filter(|s| !s.is_ended() && s.client_id.starts_with(prefix))
        .filter(|s| {
            let delivery = s.delivery();
            match delivery.link() {
                None => !online_only && user.is_none() && address.is_none(),
                Some(link) => {
                    user.is_none_or(|u| link.username.as_deref() == Some(u))
                        && address.is_none_or(|a| link.peer.to_string().starts_with(a))
                }
            }
        })
        .collect();
    sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let total = sessions.len();
    let items: Vec<Value> = sessions
        .iter()
        .skip(offset)
        .take(limit)
        .map(|s| describe(s, false))
        .collect();
    let key = if online_only { "clients" } else { "sessions" };
    json(
        StatusCode::OK,
        &json!({"total": total, "offset": offset, "limit": limit, key: items}),
    )
}

/// `GET /subscriptions[?client=ID]`: every session subscription (filter and options).
fn subscriptions(bridges: &Arc<Bridges>, query: &Query) -> Response<Body> {
    let (offset, limit) = match query.page() {
        Ok(page) => page,
        Err(e) => return bad_request(bridges, &e),
    };
    let broker = bridges.broker();
    let sessions: Vec<Arc<Session>> = match query.get("client") {
        Some(id) => broker.session(id).into_iter().collect(),
        None => broker.sessions(),
    };
    let mut all: Vec<Value> = Vec::new();
    for session in sessions.iter().filter(|s| !s.is_ended()) {
        for (filter, record) in session.subscription_snapshot() {
            let mut value = subscription_json(&filter, &record);
            value["client_id"] = json!(&*session.client_id);
            all.push(value);
        }
    }
    all.sort_by(|a, b| {
        (a["client_id"].as_str(), a["filter"].as_str())
            .cmp(&(b["client_id"].as_str(), b["filter"].as_str()))
    });
    let total = all.len();
    let items: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
    json(
        StatusCode::OK,
        &json!({"total": total, "offset": offset, "limit": limit, "subscriptions": items}),
    )
}

/// `GET /subscriptions/stats`: the topic trie and the subscription counters.
fn stats(bridges: &Arc<Bridges>) -> Response<Body> {
    use crate::metrics::Metrics;
    let broker = bridges.broker();
    let m = broker.metrics();
    json(
        StatusCode::OK,
        &json!({
            "trie_entries": broker.trie_entries(),
            "subscriptions": Metrics::get(&m.subscriptions),
            "sessions": broker.session_count(),
            "bridge_rings": bridges.ring_count(),
            "bridge_clients": bridges.client_count(),
        }),
    )
}
