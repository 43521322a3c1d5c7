//! The HTTP listener (hyper, HTTP/1.1 with upgrades): `/health`, `/metrics` in Prometheus
//! text format, and the place where the browser bridges attach (`/sse`, `/ws`, `/mqtt`).
//!
//! This module owns accepting HTTP connections and dispatching by path; each endpoint lives
//! in its own module. `/api/v1` is the admin API ([`admin`]).

pub mod admin;
pub mod bridge;
pub mod metrics;
mod metrics_bridges;
mod metrics_journal;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use std::sync::Arc;

use self::bridge::Bridges;
use crate::metrics::Metrics;

/// The body type of every response.
pub type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// How long a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A complete response with a fixed body.
pub fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    use http_body_util::BodyExt;
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// A JSON error response: `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = format!("{{\"error\":{}}}", json_string(message));
    full(status, "application/json", body)
}

/// `text` as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Accepts HTTP connections until the task is aborted.
pub async fn accept_loop(bridges: Arc<Bridges>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bridges = bridges.clone();
        tokio::spawn(async move {
            // A connection whose first request is `GET /sse` takes the lean SSE path.
            let Some(stream) = bridge::sse_raw::take(&bridges, stream, peer, HEADER_TIMEOUT).await
            else {
                return;
            };
            let service = service_fn(move |request| {
                let bridges = bridges.clone();
                async move { Ok::<_, Infallible>(route(&bridges, request, peer).await) }
            });
            // Boxed: the task's future stays small for SSE subscribers, which never get here.
            let connection = Box::pin(
                http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// Dispatches one request by method and path.
async fn route(
    bridges: &Arc<Bridges>,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let broker = bridges.broker();
    Metrics::add(&broker.metrics().http_requests, 1);
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/health") => {
            if broker.is_shutting_down() {
                full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    "{\"status\":\"shutting down\"}",
                )
            } else {
                full(StatusCode::OK, "application/json", "{\"status\":\"ok\"}")
            }
        }
        (&Method::GET, "/metrics") => metrics::respond(broker),
        (_, "/health" | "/metrics") => {
            json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        (_, path) if path == "/api/v1" || path.starts_with("/api/v1/") => {
            admin::route(bridges, request, peer).await
        }
        // `/`, `/api/stats`, `/sse`, `/ws`, `/mqtt`, and 404 for the rest.
        _ => bridge::route(bridges, request, peer).await,
    }
}
