//! `GET /mqtt`: MQTT over WebSocket (subprotocol `mqtt`) on the HTTP listener.
//!
//! The upgraded connection becomes a [`WsByteStream`] handed to the same connection driver
//! as TCP ([`connection::serve_with`]): packets may span frames and a frame may hold several
//! packets. The connection is admitted like one on an MQTT listener: the per-IP limits
//! (`max_connections_per_ip`, `max_connect_rate_per_ip`, one table with the MQTT listeners,
//! same counters; over them: 429 with a JSON error), then a `max_connections` slot (503).
//! It authenticates with its CONNECT (not with HTTP credentials).

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::access;
use crate::broker::Broker;
use crate::connection::{self, PeerInfo};
use crate::http::{json_error, Body};
use crate::listener::ws::{ws_config, WsByteStream, SUBPROTOCOL};
use crate::metrics::Metrics;

/// Serves `GET /mqtt`: answers the upgrade and runs the MQTT connection in a task.
pub fn handle(broker: &Broker, mut request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let response = match access::websocket_accept(&request, Some(SUBPROTOCOL)) {
        Ok(response) => response,
        Err(response) => return *response,
    };
    Metrics::add(&broker.metrics().connections_accepted, 1);
    let admission = match broker
        .ip_limits()
        .admit(peer.ip(), tokio::time::Instant::now())
    {
        Ok(admission) => admission,
        Err(refusal) => {
            Metrics::add(refusal.counter(broker.metrics()), 1);
            tracing::debug!(%peer, ?refusal, "per-IP limit: MQTT WebSocket upgrade refused");
            return json_error(StatusCode::TOO_MANY_REQUESTS, refusal.reason());
        }
    };
    let Ok(permit) = broker.connection_slots().clone().try_acquire_owned() else {
        Metrics::add(&broker.metrics().connections_refused_limit, 1);
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
    };
    let upgrade = hyper::upgrade::on(&mut request);
    let broker = broker.clone();
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "MQTT WebSocket upgrade failed");
                return;
            }
        };
        let config = ws_config(broker.limits().max_packet_size_bytes);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (reader, writer) = tokio::io::split(WsByteStream::new(ws));
        let info = PeerInfo {
            addr: peer,
            cert_username: None,
            redirect: None,
        };
        connection::serve_with(broker, reader, writer, info).await;
        drop(permit);
        drop(admission);
    });
    response
}
