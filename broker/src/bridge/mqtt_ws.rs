//! `GET /mqtt`: MQTT over WebSocket (subprotocol `mqtt`) on the HTTP listener.
//!
//! The upgraded connection becomes a [`WsByteStream`] handed to the same connection driver
//! as TCP ([`connection::serve_with`]): packets may span frames and a frame may hold several
//! packets. The connection takes a `max_connections` slot like any MQTT connection, and
//! authenticates with its CONNECT (not with HTTP credentials).

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
    Metrics::add(&broker.metrics.connections_accepted, 1);
    let Ok(permit) = broker.connection_slots.clone().try_acquire_owned() else {
        Metrics::add(&broker.metrics.connections_refused_limit, 1);
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
        let config = ws_config(broker.config.limits.max_packet_size_bytes);
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (reader, writer) = tokio::io::split(WsByteStream::new(ws));
        let info = PeerInfo {
            addr: peer,
            cert_username: None,
        };
        connection::serve_with(broker, reader, writer, info).await;
        drop(permit);
    });
    response
}
