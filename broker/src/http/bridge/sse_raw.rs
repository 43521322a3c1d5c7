//! The lean path for SSE connections: a connection whose first request is `GET /sse` is
//! served here instead of through hyper, so that an idle subscriber costs its ring cursor and
//! a socket, not hyper's per-connection read and write buffers (8 KiB each).
//!
//! The request head is read into a bounded buffer (at most [`MAX_HEAD_BYTES`], within the
//! listener's header timeout), parsed, and handed to the same checks as the hyper path
//! ([`super::sse::open`]). The response is HTTP/1.1 with `Connection: close` and a
//! close-delimited body: the stream is single-use, as DESIGN.md says. Events are written as
//! the ring encoded them; several ready at once go out in one write.
//!
//! After the response head a subscriber has a task only while it has something to write
//! ([`catch_up`]): the opening comment and retained messages, or a backlog. Once caught up it
//! is parked on its ring and written to by the ring's writer ([`super::sse_park`]) until
//! a write would block, which brings it back here.
//!
//! This module owns the HTTP framing of that path and the writes off the fast path; what is
//! sent is [`super::sse`]'s.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::access;
use super::sse::{self, Subscriber};
use super::sse_park::{self, Parked, MAX_WRITE_BYTES};
use std::sync::Arc;

use super::Bridges;
use crate::http::{json_error, Body};
use crate::metrics::Metrics;

/// Longest request head accepted on this path (the request line carries the filters).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What a request on this path starts with (then `?` or a space).
const PREFIX: &[u8] = b"GET /sse";

/// Serves the connection here when its first request is `GET /sse`; otherwise gives the
/// stream back (untouched: only peeked at) for hyper.
pub async fn take(
    bridges: &Arc<Bridges>,
    stream: TcpStream,
    peer: SocketAddr,
    header_timeout: Duration,
) -> Option<TcpStream> {
    match Box::pin(tokio::time::timeout(header_timeout, is_sse(&stream))).await {
        Ok(true) => {
            serve(bridges, stream, peer, header_timeout).await;
            None
        }
        _ => Some(stream),
    }
}

/// Whether the first bytes are `GET /sse?` or `GET /sse `.
///
/// # Cancel safety
/// Cancel safe: it only peeks.
async fn is_sse(stream: &TcpStream) -> bool {
    let mut buf = [0u8; PREFIX.len() + 1];
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let seen = &buf[..n];
        let prefix_len = n.min(PREFIX.len());
        if seen[..prefix_len] != PREFIX[..prefix_len] {
            return false;
        }
        if n == buf.len() {
            return matches!(buf[PREFIX.len()], b'?' | b' ');
        }
        // A partial request line (rare: it usually comes in one segment). Peek returns at
        // once while data is waiting, so wait a little before looking again.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve(bridges: &Arc<Bridges>, mut stream: TcpStream, peer: SocketAddr, timeout: Duration) {
    let broker = bridges.broker();
    Metrics::add(&broker.metrics().http_requests, 1);
    let write_timeout = Duration::from_millis(broker.limits().slow_consumer_timeout_ms);
    // Boxed: the steps before streaming run once, and the catch-up below should not carry
    // them.
    match Box::pin(open(bridges, &mut stream, timeout, write_timeout)).await {
        Some(subscriber) => {
            tracing::debug!(%peer, "SSE stream opened");
            catch_up(stream, subscriber, Instant::now()).await;
        }
        None => {
            let _ = stream.shutdown().await;
        }
    }
}

/// Writes a subscriber's frames until it has caught up with its ring, then parks it
/// ([`sse_park::park`]: the task ends, the subscriber stays). Ends the stream (closing the
/// connection) when a write fails or stalls past `slow_consumer_timeout_ms`, or at shutdown.
/// `last_write` is when the client was last written to (for the keep-alive once parked).
pub async fn catch_up(mut stream: TcpStream, mut subscriber: Subscriber, mut last_write: Instant) {
    let broker = subscriber.lease.broker().clone();
    let write_timeout = Duration::from_millis(broker.limits().slow_consumer_timeout_ms);
    let mut out = Vec::new();
    while !broker.is_shutting_down() {
        if sse::expired(subscriber.expires_at, Instant::now()) {
            sse::count_expired(&broker);
            let _ = write_all(&mut stream, sse::EXPIRED, write_timeout).await;
            break;
        }
        let Some(first) = subscriber.try_frame() else {
            sse_park::park(Parked::new(stream, subscriber, last_write));
            return;
        };
        let written = match subscriber.try_frame() {
            None => write_all(&mut stream, &first, write_timeout).await,
            Some(second) => {
                out.clear();
                out.extend_from_slice(&first);
                out.extend_from_slice(&second);
                while out.len() < MAX_WRITE_BYTES {
                    let Some(frame) = subscriber.try_frame() else {
                        break;
                    };
                    out.extend_from_slice(&frame);
                }
                write_all(&mut stream, &out, write_timeout).await
            }
        };
        if !written {
            tracing::debug!("SSE stream ended: the client left or stopped reading");
            break;
        }
        last_write = Instant::now();
        if out.capacity() > MAX_WRITE_BYTES * 2 {
            out = Vec::new();
        }
    }
    let _ = stream.shutdown().await;
}

/// Reads and checks the request, writes the response head; `None` when the request was
/// refused (the error response has been written).
async fn open(
    bridges: &Arc<Bridges>,
    stream: &mut TcpStream,
    timeout: Duration,
    write_timeout: Duration,
) -> Option<Subscriber> {
    let request = match tokio::time::timeout(timeout, read_head(stream)).await {
        Ok(Some(request)) => request,
        Ok(None) => {
            let refusal = json_error(hyper::StatusCode::BAD_REQUEST, "bad request head");
            write_response(stream, refusal).await;
            return None;
        }
        Err(_) => return None,
    };
    let cors = match access::check_origin(bridges.broker(), &request) {
        Ok(cors) => cors,
        Err(refusal) => {
            write_response(stream, *refusal).await;
            return None;
        }
    };
    let subscriber = match sse::open(bridges, &request).await {
        Ok(subscriber) => subscriber,
        Err(refusal) => {
            let mut refusal = *refusal;
            if let Some(origin) = cors {
                access::add_cors_headers(&mut refusal, origin);
            }
            write_response(stream, refusal).await;
            return None;
        }
    };
    let mut head = String::from(concat!(
        "HTTP/1.1 200 OK\r\n",
        "content-type: text/event-stream\r\n",
        "cache-control: no-cache\r\n",
        "x-accel-buffering: no\r\n",
        "connection: close\r\n",
    ));
    if let Some(origin) = cors.as_ref().and_then(|o| o.to_str().ok()) {
        head.push_str(&format!(
            "access-control-allow-origin: {origin}\r\nvary: Origin\r\n"
        ));
    }
    head.push_str("\r\n");
    write_all(stream, head.as_bytes(), write_timeout)
        .await
        .then_some(subscriber)
}

async fn write_all(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> bool {
    // Boxed: the timeout's timer is only needed while writing, not while idle.
    matches!(
        Box::pin(tokio::time::timeout(timeout, stream.write_all(bytes))).await,
        Ok(Ok(()))
    )
}

/// Reads and parses the request head; `None` when it is malformed or too long.
async fn read_head(stream: &mut TcpStream) -> Option<Request<()>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return None;
        }
        buf.reserve(1024.min(MAX_HEAD_BYTES - buf.len()));
        let mut limited = (&mut *stream).take((MAX_HEAD_BYTES - buf.len()) as u64);
        match limited.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    };
    parse_head(std::str::from_utf8(&buf[..end]).ok()?)
}

/// Parses `GET target HTTP/1.x` and the header lines.
fn parse_head(head: &str) -> Option<Request<()>> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if method != "GET" || !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let mut builder = Request::builder().method("GET").uri(target);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        builder = builder.header(name.trim(), value.trim());
    }
    builder.body(()).ok()
}

/// Writes a complete response (an error) and closes.
async fn write_response(stream: &mut TcpStream, response: Response<Body>) {
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    let _ = write_all(stream, &bytes, Duration::from_secs(5)).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let request = parse_head(
            "GET /sse?filter=a/%2B HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 5\r\nAuthorization: Basic YTpi",
        )
        .expect("parses");
        assert_eq!(request.uri().query(), Some("filter=a/%2B"));
        assert_eq!(request.headers()["last-event-id"], "5");
        assert!(parse_head("POST /sse HTTP/1.1").is_none());
        assert!(parse_head("GET /sse HTTP/1.1\r\nno colon").is_none());
        assert!(parse_head("GET /sse").is_none());
    }
}
