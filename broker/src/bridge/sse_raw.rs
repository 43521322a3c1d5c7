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
//! This module owns only the HTTP framing of that path; what is sent is [`super::sse`]'s.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::access;
use super::sse::{self, Subscriber};
use crate::broker::Broker;
use crate::http::{json_error, Body};
use crate::metrics::Metrics;

/// Longest request head accepted on this path (the request line carries the filters).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What a request on this path starts with (then `?` or a space).
const PREFIX: &[u8] = b"GET /sse";

/// Most bytes gathered into one write when several events are ready.
const MAX_WRITE_BYTES: usize = 64 * 1024;

/// Serves the connection here when its first request is `GET /sse`; otherwise gives the
/// stream back (untouched: only peeked at) for hyper.
pub async fn take(
    broker: &Broker,
    stream: TcpStream,
    peer: SocketAddr,
    header_timeout: Duration,
) -> Option<TcpStream> {
    match Box::pin(tokio::time::timeout(header_timeout, is_sse(&stream))).await {
        Ok(true) => {
            serve(broker, stream, peer, header_timeout).await;
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

async fn serve(broker: &Broker, mut stream: TcpStream, peer: SocketAddr, timeout: Duration) {
    Metrics::add(&broker.metrics.http_requests, 1);
    let write_timeout = Duration::from_millis(broker.config.limits.slow_consumer_timeout_ms);
    // Boxed: the steps before streaming run once, and the task's future (which lives as long
    // as the subscriber) should hold only what streaming needs.
    let opened = Box::pin(open(broker, &mut stream, timeout, write_timeout)).await;
    if let Some(subscriber) = opened {
        stream_events(subscriber, &mut stream, write_timeout).await;
    }
    tracing::debug!(%peer, "SSE stream ended");
    let _ = stream.shutdown().await;
}

/// Reads and checks the request, writes the response head; `None` when the request was
/// refused (the error response has been written).
async fn open(
    broker: &Broker,
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
    let cors = match access::check_origin(broker, &request) {
        Ok(cors) => cors,
        Err(refusal) => {
            write_response(stream, *refusal).await;
            return None;
        }
    };
    let subscriber = match sse::open(broker, &request).await {
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

/// Writes events until the client leaves, a write stalls past `write_timeout` (a consumer
/// that stopped reading), or the broker shuts down.
async fn stream_events(
    mut subscriber: Subscriber,
    stream: &mut TcpStream,
    write_timeout: Duration,
) {
    loop {
        let first = tokio::select! {
            // Cancel safe (documented on `next_frame`).
            frame = subscriber.next_frame() => match frame {
                Some(frame) => frame,
                None => return,
            },
            // Cancel safe: readiness and a non-blocking read.
            () = client_gone(stream) => return,
        };
        let mut more: Vec<Bytes> = Vec::new();
        let mut size = first.len();
        while size < MAX_WRITE_BYTES {
            let Some(frame) = subscriber.try_frame() else {
                break;
            };
            size += frame.len();
            more.push(frame);
        }
        let written = if more.is_empty() {
            write_all(stream, &first, write_timeout).await
        } else {
            let mut out = Vec::with_capacity(size);
            out.extend_from_slice(&first);
            for frame in &more {
                out.extend_from_slice(frame);
            }
            write_all(stream, &out, write_timeout).await
        };
        if !written {
            return;
        }
    }
}

async fn write_all(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> bool {
    // Boxed: the timeout's timer is only needed while writing, not while idle.
    matches!(
        Box::pin(tokio::time::timeout(timeout, stream.write_all(bytes))).await,
        Ok(Ok(()))
    )
}

/// Completes when the client closed the connection (or it failed); anything the client
/// sends is read and ignored.
///
/// # Cancel safety
/// Cancel safe.
async fn client_gone(stream: &TcpStream) {
    let mut sink = [0u8; 16];
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
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
