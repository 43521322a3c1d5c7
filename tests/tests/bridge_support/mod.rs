//! Shared helpers of the bridge tests (`bridge_sse.rs`, `bridge_ws.rs`, `browser.rs`): a
//! raw-socket HTTP/1.1 client that reads a chunked Server-Sent Events stream, a one-shot GET,
//! a WebSocket JSON client, and ACL files reloaded in-process.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// How long a helper waits for something that should come.
pub const WAIT: Duration = Duration::from_secs(5);

/// One-shot GET with extra headers; returns (status, headers, body).
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, head.to_string(), body.to_string())
}

/// One SSE event (or comment) as received.
#[derive(Debug, Default, Clone)]
pub struct SseEvent {
    /// `id:` field.
    pub id: Option<String>,
    /// `event:` field.
    pub event: Option<String>,
    /// `data:` lines joined.
    pub data: Option<String>,
    /// Comment lines (`: ...`).
    pub comments: Vec<String>,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("data is JSON")
    }
}

/// A raw HTTP/1.1 SSE client: sends the request and de-chunks the body itself.
pub struct SseClient {
    stream: TcpStream,
    /// Raw bytes not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body not yet parsed into events.
    body: String,
    /// Status code.
    pub status: u16,
    /// Response head.
    pub head: String,
    /// Whether the body is chunked (the hyper path) or close-delimited (the lean SSE path).
    pub chunked: bool,
}

impl SseClient {
    /// Opens `path` (with query) with extra headers and reads the response head.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        SseClient::open_inner(addr, path, headers, false).await
    }

    /// Like [`SseClient::open`], but the SSE request is the second on its connection (after
    /// a `GET /health`), so hyper serves it rather than the lean SSE path.
    pub async fn open_second(addr: SocketAddr, path: &str) -> SseClient {
        SseClient::open_inner(addr, path, &[], true).await
    }

    async fn open_inner(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        after_health: bool,
    ) -> SseClient {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        if after_health {
            let health = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            stream.write_all(health.as_bytes()).await.expect("write");
        }
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut client = SseClient {
            stream,
            raw: Vec::new(),
            body: String::new(),
            status: 0,
            head: String::new(),
            chunked: false,
        };
        if after_health {
            // Skip the /health response: its head, then content-length bytes.
            let length = loop {
                if let Some(end) = find(&client.raw, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&client.raw[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .expect("content-length");
                    client.raw.drain(..end + 4);
                    break length;
                }
                assert!(
                    client.read_more().await,
                    "closed before the /health response"
                );
            };
            while client.raw.len() < length {
                assert!(client.read_more().await, "closed in the /health body");
            }
            client.raw.drain(..length);
        }
        loop {
            if let Some(end) = find(&client.raw, b"\r\n\r\n") {
                client.head = String::from_utf8_lossy(&client.raw[..end]).to_string();
                client.raw.drain(..end + 4);
                break;
            }
            assert!(client.read_more().await, "closed before the response head");
        }
        client.status = client
            .head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        client.chunked = client
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        client
    }

    /// A header value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    async fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.raw.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!(
                "timed out waiting for SSE data; body so far: {:?}",
                self.body
            ),
        }
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self.chunked {
            let complete = match std::str::from_utf8(&self.raw) {
                Ok(text) => text.len(),
                Err(e) => e.valid_up_to(),
            };
            let text: Vec<u8> = self.raw.drain(..complete).collect();
            self.body
                .push_str(std::str::from_utf8(&text).expect("UTF-8 body"));
            return;
        }
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let data = &self.raw[line_end + 2..line_end + 2 + size];
            self.body
                .push_str(std::str::from_utf8(data).expect("UTF-8 body"));
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// The next event or comment block; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            self.dechunk();
            if let Some(end) = self.body.find("\n\n") {
                let block: String = self.body.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        event.comments.push(c.trim().to_string());
                    } else if let Some((k, v)) = line.split_once(": ") {
                        match k {
                            "id" => event.id = Some(v.to_string()),
                            "event" => event.event = Some(v.to_string()),
                            "data" => {
                                let data = event.data.get_or_insert_with(String::new);
                                if !data.is_empty() {
                                    data.push('\n');
                                }
                                data.push_str(v);
                            }
                            _ => {}
                        }
                    }
                }
                return Some(event);
            }
            if !self.read_more().await {
                return None;
            }
        }
    }

    /// The next block that is an event (skipping comments and `retry:`).
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            let event = self.next().await.expect("stream ended");
            if event.event.is_some() {
                return event;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A WebSocket JSON client of `/ws`.
pub struct WsClient {
    ws: WebSocketStream<TcpStream>,
}

impl WsClient {
    /// Connects to `ws://addr{path}` with extra headers.
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> WsClient {
        let mut request = format!("ws://{addr}{path}")
            .into_client_request()
            .expect("request");
        for (k, v) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                    .expect("name"),
                v.parse().expect("value"),
            );
        }
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("WebSocket handshake");
        WsClient { ws }
    }

    /// Sends one JSON value as a text frame.
    pub async fn send(&mut self, value: serde_json::Value) {
        self.ws
            .send(Message::Text(value.to_string().into()))
            .await
            .expect("send");
    }

    /// The next JSON text frame.
    pub async fn recv(&mut self) -> serde_json::Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a WebSocket message")
                .expect("WebSocket closed")
                .expect("WebSocket error");
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).expect("JSON frame");
            }
        }
    }

    /// Sends `value` and returns the reply (the next frame that is an ack or an error).
    pub async fn request(&mut self, value: serde_json::Value) -> serde_json::Value {
        self.send(value).await;
        loop {
            let reply = self.recv().await;
            if matches!(reply["type"].as_str(), Some("ack" | "error")) {
                return reply;
            }
        }
    }

    /// Waits for the server's Close frame (skipping other frames); returns its code and
    /// reason.
    #[allow(dead_code)] // not every test binary that includes this module closes
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the Close frame")
                .expect("WebSocket ended without a Close frame")
                .expect("WebSocket error");
            if let Message::Close(frame) = message {
                let frame = frame.expect("a Close frame with a code");
                return (u16::from(frame.code), frame.reason.to_string());
            }
        }
    }

    /// Asserts the connection stays open and silent for `wait`: a frame, an error or the
    /// end of the stream fails.
    pub async fn expect_nothing(&mut self, wait: Duration) {
        match tokio::time::timeout(wait, self.ws.next()).await {
            Err(_elapsed) => {}
            Ok(Some(message)) => panic!("expected nothing, got {message:?}"),
            Ok(None) => panic!("expected nothing, but the WebSocket closed"),
        }
    }
}

/// An ACL file and a configuration file naming it (anonymous clients allowed), for tests
/// that change the rules and reload them in-process as SIGHUP does.
pub struct AclFiles {
    /// The ACL file.
    pub acl: PathBuf,
    config: PathBuf,
}

impl AclFiles {
    /// Writes `rules` to a fresh ACL file for the test `tag`.
    pub fn new(tag: &str, rules: &str) -> AclFiles {
        let dir = std::env::temp_dir().join(format!("tern-acl-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let acl = dir.join("acl");
        std::fs::write(&acl, rules).expect("acl");
        let config = dir.join("tern.toml");
        std::fs::write(
            &config,
            format!(
                "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:0\"\n\
                 [auth]\nallow_anonymous = true\nacl_file = \"{}\"\n",
                acl.display()
            ),
        )
        .expect("config");
        AclFiles { acl, config }
    }

    /// Replaces the rules with `rules` and reloads the configuration into `broker`.
    pub fn reload(
        &self,
        bridges: &tern_broker::http::bridge::Bridges,
        rules: &str,
    ) -> tern_broker::reload::ReloadReport {
        std::fs::write(&self.acl, rules).expect("acl");
        tern_broker::reload::reload(bridges, Some(&self.config), &|_| Ok(())).expect("reload")
    }
}

/// Publishes `topic` (payload `payload`) from the test's own task, as the broker would route
/// an MQTT PUBLISH, bypassing any write ACL.
pub fn route(broker: &tern_broker::Broker, topic: &str, payload: &str) {
    let mut scratch = tern_broker::router::RouteScratch::default();
    let now = tokio::time::Instant::now();
    let message =
        tern_broker::message::Message::broker_made(topic, payload.to_string(), false, now);
    broker.publish(&message, &mut scratch, now);
}
