//! `GET /ws` (WebSocket JSON API) and `GET /mqtt` (MQTT over WebSocket on the HTTP
//! listener): ops and replies, messages in both directions between WebSocket and MQTT
//! clients, batching, the `lagged` notice, the publish rate limit, the frame size limit,
//! cross-origin refusal, reads and publishes under a reloaded ACL, the per-IP limits on
//! `/mqtt`, and MQTT.js over `ws://.../mqtt`.

mod bridge_support;

use std::sync::Arc;
use std::time::Duration;

use bridge_support::{get, route, AclFiles, WsClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tern_broker::message::Message;
use tern_broker::metrics::Metrics;
use tern_broker::router::RouteScratch;
use tern_codec::{Connect, Packet, ProtocolVersion, QoS};
use tern_tests::TestBroker;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Publishes `count` messages from the test's own task, with no await in between: the
/// WebSocket task can only run after all of them are in the ring.
fn publish_burst(broker: &TestBroker, topic: &str, count: usize) {
    let mut scratch = RouteScratch::default();
    let now = tokio::time::Instant::now();
    for n in 0..count {
        let message: Arc<Message> = Message::broker_made(topic, n.to_string(), false, now);
        broker.broker().publish(&message, &mut scratch, now);
    }
}

#[tokio::test]
async fn subscribe_publish_and_messages_both_ways() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let mut ws = WsClient::connect(http, "/ws", &[]).await;
    let ack = ws
        .request(json!({"op": "subscribe", "filters": ["w/+", "w/#"], "id": 7}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["op"], "subscribe");
    assert_eq!(ack["id"], 7);
    assert_eq!(ack["filters"], json!(["w/#", "w/+"]));

    // MQTT -> WebSocket.
    let mut mqtt = broker.client(ProtocolVersion::V5, "ws-mqtt").await;
    mqtt.publish("w/a", b"from mqtt", QoS::AtLeastOnce, false)
        .await;
    let message = ws.recv().await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["topic"], "w/a");
    assert_eq!(message["payload"], "from mqtt");
    assert_eq!(message["qos"], 1);

    // WebSocket -> MQTT (and back to the WebSocket client, which is subscribed too).
    mqtt.subscribe("to-mqtt/#", QoS::AtLeastOnce).await;
    let ack = ws
        .request(json!({"op": "publish", "topic": "to-mqtt/x", "payload": "from ws", "qos": 1}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["delivered"], 1);
    let publish = mqtt.expect_publish_acked().await;
    assert_eq!(publish.topic(), "to-mqtt/x");
    assert_eq!(publish.payload(), b"from ws");
    assert_eq!(publish.qos(), QoS::AtLeastOnce);
    let ack = ws
        .request(
            json!({"op": "publish", "topic": "to-mqtt/b", "payload": "AAE=", "encoding": "base64"}),
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(mqtt.expect_publish().await.payload(), &[0u8, 1]);

    // Retained on subscribe, in the ack.
    mqtt.publish("kept/1", b"r", QoS::AtLeastOnce, true).await;
    let ack = ws
        .request(json!({"op": "subscribe", "filters": ["kept/#"], "retained": true}))
        .await;
    assert_eq!(ack["retained"][0]["topic"], "kept/1", "{ack}");
    assert_eq!(ack["retained"][0]["retain"], true);

    // Unsubscribe: nothing more from w/.
    let ack = ws
        .request(json!({"op": "unsubscribe", "filters": ["w/+", "w/#"]}))
        .await;
    assert_eq!(ack["filters"], json!(["kept/#"]));
    mqtt.publish("w/a", b"gone", QoS::AtLeastOnce, false).await;
    ws.expect_nothing(Duration::from_millis(200)).await;
    broker.running.stop().await;
}

#[tokio::test]
async fn errors_are_replies_and_the_client_stays() {
    let broker = TestBroker::start_with(|c| {
        c.http.ws_publish_rate_per_sec = 2;
        c.http.ws_max_frame_bytes = 1024;
    })
    .await;
    let http = broker.running.http_addr.expect("http");
    let mut ws = WsClient::connect(http, "/ws", &[]).await;
    for (request, needle) in [
        (
            json!({"op": "subscribe", "filters": ["a/#/b"]}),
            "invalid topic filter",
        ),
        (
            json!({"op": "subscribe", "filters": []}),
            "at least one filter",
        ),
        (json!({"op": "fly"}), "bad request"),
        (
            json!({"op": "publish", "topic": "a/+", "payload": "x"}),
            "invalid topic",
        ),
        (
            json!({"op": "publish", "topic": "a", "payload": "x", "qos": 2}),
            "qos",
        ),
        // As over MQTT: clients do not publish into the broker's own statistics.
        (
            json!({"op": "publish", "topic": "$SYS/broker/uptime", "payload": "x", "retain": true}),
            "not authorised",
        ),
    ] {
        let reply = ws.request(request.clone()).await;
        assert_eq!(reply["type"], "error", "{request} -> {reply}");
        assert!(
            reply["reason"].as_str().unwrap_or("").contains(needle),
            "{request} -> {reply}"
        );
    }
    // Rate: two publishes saved up, the third refused.
    for _ in 0..2 {
        let reply = ws
            .request(json!({"op": "publish", "topic": "r", "payload": "x"}))
            .await;
        assert_eq!(reply["type"], "ack", "{reply}");
    }
    let reply = ws
        .request(json!({"op": "publish", "topic": "r", "payload": "x"}))
        .await;
    assert_eq!(reply["reason"], "publish rate exceeded", "{reply}");
    let ack = ws
        .request(json!({"op": "subscribe", "filters": ["ok"]}))
        .await;
    assert_eq!(ack["type"], "ack");
    let (_, _, metrics) = get(http, "/metrics", &[]).await;
    assert!(
        metrics.contains("tern_bridge_publish_throttled_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tern_bridge_clients 1"), "{metrics}");
    broker.running.stop().await;
}

#[tokio::test]
async fn several_ready_messages_come_in_batches_of_at_most_100() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let mut ws = WsClient::connect(http, "/ws", &[]).await;
    ws.request(json!({"op": "subscribe", "filters": ["b/#"]}))
        .await;
    publish_burst(&broker, "b/x", 150);
    let mut got = Vec::new();
    let mut frames = Vec::new();
    while got.len() < 150 {
        let frame = ws.recv().await;
        match frame["type"].as_str() {
            Some("batch") => {
                let messages = frame["messages"].as_array().expect("messages").clone();
                frames.push(messages.len());
                got.extend(messages);
            }
            Some("message") => {
                frames.push(1);
                got.push(frame);
            }
            other => panic!("unexpected {other:?}: {frame}"),
        }
    }
    assert_eq!(frames, vec![100, 50], "two frames: 100 then 50");
    for (n, message) in got.iter().enumerate() {
        assert_eq!(message["payload"], n.to_string(), "in order");
    }
    broker.running.stop().await;
}

#[tokio::test]
async fn a_client_behind_its_ring_is_told_and_stays() {
    let broker = TestBroker::start_with(|c| c.http.ring_max_messages = 5).await;
    let http = broker.running.http_addr.expect("http");
    let mut ws = WsClient::connect(http, "/ws", &[]).await;
    ws.request(json!({"op": "subscribe", "filters": ["lag/#"]}))
        .await;
    publish_burst(&broker, "lag/x", 20);
    let lagged = ws.recv().await;
    assert_eq!(lagged, json!({"type": "lagged", "missed": 15}));
    let batch = ws.recv().await;
    assert_eq!(batch["type"], "batch", "{batch}");
    let payloads: Vec<_> = batch["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["payload"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(payloads, ["15", "16", "17", "18", "19"]);
    publish_burst(&broker, "lag/x", 1);
    assert_eq!(ws.recv().await["type"], "message");
    broker.running.stop().await;
}

#[tokio::test]
async fn oversized_frames_and_foreign_origins_are_refused() {
    let broker = TestBroker::start_with(|c| {
        c.http.ws_max_frame_bytes = 256;
        c.http.cors_allowed_origins = vec!["http://allowed.example".into()];
    })
    .await;
    let http = broker.running.http_addr.expect("http");
    let mut request = format!("ws://{http}/ws")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("origin", "http://evil.example".parse().expect("value"));
    let stream = tokio::net::TcpStream::connect(http).await.expect("connect");
    let refused = tokio_tungstenite::client_async(request, stream).await;
    assert!(refused.is_err(), "foreign origin must be refused");
    let mut ok = WsClient::connect(http, "/ws", &[("origin", "http://allowed.example")]).await;
    ok.request(json!({"op": "subscribe", "filters": ["x"]}))
        .await;

    let (mut raw, _) = tokio_tungstenite::client_async(
        format!("ws://{http}/ws"),
        tokio::net::TcpStream::connect(http).await.expect("connect"),
    )
    .await
    .expect("handshake");
    let big = json!({"op": "publish", "topic": "t", "payload": "x".repeat(1000)}).to_string();
    raw.send(WsMessage::Text(big.into())).await.expect("send");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match raw.next().await {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "an oversized message closes the WebSocket");
    broker.running.stop().await;
}

/// An MQTT client over `/mqtt`: CONNECT split over two WebSocket frames.
#[tokio::test]
async fn mqtt_over_websocket_on_the_http_listener() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let (status, _, _) = get(
        http,
        "/mqtt",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    assert_eq!(status, 400, "subprotocol mqtt is required");

    let mut request = format!("ws://{http}/mqtt")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().expect("value"));
    let stream = tokio::net::TcpStream::connect(http).await.expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("handshake");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt")
    );
    let connect = Packet::Connect(Box::new(Connect::new(ProtocolVersion::V5, "over-ws")))
        .to_bytes(ProtocolVersion::V5);
    let (a, b) = connect.split_at(5);
    ws.send(WsMessage::Binary(a.to_vec().into()))
        .await
        .expect("send");
    ws.send(WsMessage::Binary(b.to_vec().into()))
        .await
        .expect("send");
    let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("CONNACK in time")
        .expect("open")
        .expect("frame");
    let WsMessage::Binary(bytes) = frame else {
        panic!("expected a binary frame, got {frame:?}");
    };
    assert_eq!(bytes[0], 0x20, "CONNACK");
    assert_eq!(bytes[3], 0, "success");
    broker.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqttjs_over_http_listener_mqtt_path() {
    if !tern_tests::mqttjs_available() {
        return;
    }
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let url = format!("ws://127.0.0.1:{}/mqtt", http.port());
    tern_tests::run_mqttjs_over_websocket(&url).await;
    broker.running.stop().await;
}

/// The topics of the next message frame (a single message or a batch).
async fn frame_topics(ws: &mut WsClient) -> Vec<String> {
    let frame = ws.recv().await;
    let messages = match frame["type"].as_str() {
        Some("batch") => frame["messages"].as_array().expect("messages").clone(),
        Some("message") => vec![frame.clone()],
        _ => panic!("expected messages, got {frame}"),
    };
    messages
        .iter()
        .map(|m| m["topic"].as_str().expect("topic").to_string())
        .collect()
}

/// A reload of the ACL reaches a connected WebSocket JSON client: what it reads (narrowed,
/// then widened), what it may publish (from its next op), and what it may add by
/// `subscribe`.
#[tokio::test]
async fn ws_clients_follow_an_acl_reload() {
    let files = AclFiles::new("ws-reload", "topic readwrite a/#\n");
    let acl = files.acl.clone();
    let broker = TestBroker::start_with(move |c| c.auth.acl_file = acl).await;
    let http = broker.running.http_addr.expect("http");
    let mut ws = WsClient::connect(http, "/ws", &[]).await;
    let ack = ws
        .request(json!({"op": "subscribe", "filters": ["a/#"]}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let publish = json!({"op": "publish", "topic": "a/secret/w", "payload": "x"});
    let ack = ws.request(publish.clone()).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(frame_topics(&mut ws).await, ["a/secret/w"]);

    files.reload(broker.bridges(), "topic read a/public/#\n");
    let reply = ws.request(publish.clone()).await;
    assert_eq!(reply["type"], "error", "write access is gone: {reply}");
    assert_eq!(
        reply["reason"],
        "not authorised to publish to \"a/secret/w\""
    );
    let reply = ws
        .request(json!({"op": "subscribe", "filters": ["a/secret/#"]}))
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    route(broker.broker(), "a/secret/x", "1");
    route(broker.broker(), "a/public/x", "2");
    assert_eq!(frame_topics(&mut ws).await, ["a/public/x"]);

    files.reload(broker.bridges(), "topic readwrite a/#\n");
    route(broker.broker(), "a/secret/y", "3");
    assert_eq!(frame_topics(&mut ws).await, ["a/secret/y"]);
    let ack = ws.request(publish).await;
    assert_eq!(ack["type"], "ack", "write access is back: {ack}");
    broker.running.stop().await;
}

/// Opens `/mqtt`: the WebSocket, or the refusal's status and body.
async fn open_mqtt_ws(
    http: std::net::SocketAddr,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, (u16, String)> {
    let mut request = format!("ws://{http}/mqtt")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mqtt".parse().expect("value"));
    let stream = tokio::net::TcpStream::connect(http).await.expect("connect");
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// `GET /mqtt` is admitted like an MQTT listener's connection: `max_connections_per_ip`
/// counts TCP and `/mqtt` connections of one address together, `max_connect_rate_per_ip`
/// limits upgrades; over either, 429 with a JSON error, counted as on the listeners.
#[tokio::test]
async fn mqtt_path_applies_the_per_ip_limits() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections_per_ip = 2).await;
    let http = broker.running.http_addr.expect("http");
    let tcp = broker.client(ProtocolVersion::V5, "tcp").await;
    let first = open_mqtt_ws(http).await.expect("second connection of 2");
    let (status, body) = open_mqtt_ws(http).await.expect_err("third refused");
    assert_eq!(status, 429);
    assert!(
        body.contains("\"error\":\"too many connections from this address\""),
        "{body}"
    );
    let metrics = &broker.broker().metrics();
    assert_eq!(Metrics::get(&metrics.connections_refused_per_ip), 1);
    // A closed connection frees its place, whichever way it came in.
    tcp.disconnect().await;
    let mut freed = false;
    for _ in 0..50 {
        if let Ok(ws) = open_mqtt_ws(http).await {
            drop(ws);
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the TCP client's place was not freed");
    drop(first);
    broker.running.stop().await;

    let broker = TestBroker::start_with(|c| c.limits.max_connect_rate_per_ip = 2).await;
    let http = broker.running.http_addr.expect("http");
    let a = open_mqtt_ws(http).await.expect("within the rate");
    let b = open_mqtt_ws(http).await.expect("within the rate");
    let (status, body) = open_mqtt_ws(http).await.expect_err("over the rate");
    assert_eq!(status, 429);
    assert!(body.contains("connecting too fast"), "{body}");
    let metrics = &broker.broker().metrics();
    assert_eq!(Metrics::get(&metrics.connections_refused_rate), 1);
    drop((a, b));
    broker.running.stop().await;
}

/// `/ws` reads with a small buffer ([`tern_broker::http::bridge::ws_json::WS_JSON_READ_BUFFER_BYTES`]);
/// a frame many times its size still arrives whole.
#[tokio::test]
async fn a_publish_larger_than_the_read_buffer_arrives_whole() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let mut ws = WsClient::connect(http, "/ws", &[]).await;
    let mut mqtt = broker.client(ProtocolVersion::V5, "big-reader").await;
    mqtt.subscribe("big", QoS::AtMostOnce).await;
    let payload = "x".repeat(40 * tern_broker::http::bridge::ws_json::WS_JSON_READ_BUFFER_BYTES);
    let ack = ws
        .request(json!({"op": "publish", "topic": "big", "payload": payload}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(mqtt.expect_publish().await.payload(), payload.as_bytes());
    broker.running.stop().await;
}

/// Limits put in force by a reload (SIGHUP) apply to the bridges at once: `/ws` reads the
/// broker's limits in force, not the values it started with (issue #10: the bridges kept
/// the startup limits).
#[tokio::test]
async fn ws_follows_reloaded_limits() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let mut ws = WsClient::connect(http, "/ws", &[]).await;
    let ack = ws
        .request(json!({"op": "subscribe", "filters": ["a/b/c"]}))
        .await;
    assert_eq!(
        ack["op"], "subscribe",
        "three levels allowed at start: {ack}"
    );
    let dir = tempdir("ws-limits");
    let config = dir.join("tern.toml");
    std::fs::write(&config, "[limits]\nmax_topic_levels = 2\n").expect("config");
    tern_broker::reload::reload(broker.bridges(), Some(&config), &|_| Ok(())).expect("reload");
    let refused = ws
        .request(json!({"op": "subscribe", "filters": ["x/y/z"]}))
        .await;
    assert!(
        refused.to_string().contains("too many topic levels"),
        "the reloaded limit applies: {refused}"
    );
    let refused = ws
        .request(json!({"op": "publish", "topic": "x/y/z", "payload": "p"}))
        .await;
    assert!(
        refused.to_string().contains("error"),
        "a publish to a topic over the reloaded limit is refused: {refused}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    broker.running.stop().await;
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}
