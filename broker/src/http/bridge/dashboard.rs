//! `GET /`: the live dashboard (one static HTML page, no build step, no external resources),
//! and `GET /api/stats`: the JSON the page polls for connected clients and message counts.

use hyper::{Response, StatusCode};

use crate::http::{full, Body};
use crate::metrics::Metrics;

/// The page: connected clients, message rates, and a live view of a topic filter fed by
/// `/sse`.
const PAGE: &str = include_str!("dashboard.html");

/// Serves the dashboard page.
pub fn page() -> Response<Body> {
    let mut response = full(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// Serves `/api/stats`: a snapshot of the counters the dashboard shows (rates are computed
/// by the page from two snapshots).
pub fn stats(bridges: &super::Bridges) -> Response<Body> {
    let broker = bridges.broker();
    let m = &broker.metrics();
    let body = format!(
        concat!(
            "{{\"uptime_secs\":{},\"clients_connected\":{},\"bridge_clients\":{},",
            "\"bridge_rings\":{},\"sessions\":{},\"subscriptions\":{},",
            "\"retained_messages\":{},\"messages_received\":{},\"messages_sent\":{},",
            "\"bridge_messages\":{},\"bytes_received\":{},\"bytes_sent\":{},",
            "\"mqtt_bridges\":{},\"cluster\":{}}}"
        ),
        broker.started_at().elapsed().as_secs(),
        Metrics::get(&m.clients_connected),
        bridges.client_count(),
        bridges.ring_count(),
        Metrics::get(&m.sessions),
        Metrics::get(&m.subscriptions),
        Metrics::get(&m.retained_messages),
        Metrics::get(&m.messages_received),
        Metrics::get(&m.messages_sent),
        Metrics::get(&m.bridge_messages),
        Metrics::get(&m.bytes_received),
        Metrics::get(&m.bytes_sent),
        mqtt_bridges_json(broker),
        // The node's part in a cluster and the members it sees; null on a single node.
        broker
            .cluster()
            .map_or(serde_json::Value::Null, |c| c.stats()),
    );
    let mut response = full(StatusCode::OK, "application/json", body);
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    response
}

/// The MQTT bridges as a JSON array: name, state, remote, last error (null if none),
/// messages held for the remote, and the counters.
fn mqtt_bridges_json(broker: &crate::broker::Broker) -> String {
    use crate::metrics::bridge_links::LinkStatus;
    let bridges: Vec<serde_json::Value> = broker
        .bridge_links()
        .all()
        .iter()
        .map(|link| {
            let mut object = serde_json::Map::new();
            object.insert("name".into(), link.name.clone().into());
            object.insert("state".into(), link.state().name().into());
            object.insert("remote".into(), link.remote().into());
            object.insert("last_error".into(), link.last_error().into());
            object.insert("queued".into(), LinkStatus::get(&link.queued).into());
            for (name, _, value) in link.counters.snapshot() {
                object.insert(name.into(), value.into());
            }
            serde_json::Value::Object(object)
        })
        .collect();
    serde_json::Value::Array(bridges).to_string()
}
