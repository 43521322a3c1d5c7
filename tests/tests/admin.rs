//! The admin API (`/api/v1`): every endpoint, the token required on each (401 with a JSON
//! error, counted), the API off by default (404), and bad input answered with 400 and a
//! JSON error.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use tern_broker::http_client;
use tern_codec::{Connect, Packet, ProtocolVersion, QoS};
use tern_tests::TestBroker;

const V5: ProtocolVersion = ProtocolVersion::V5;
const TOKEN: &str = "admin-api-test-token-0123456789";

/// One token directory per broker: tests run in parallel, and a file rewritten while
/// another broker reads it would read empty (the API then stays closed).
async fn start() -> (TestBroker, SocketAddr) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tern-admin-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let broker = TestBroker::start_with(|c| {
        c.admin.enabled = true;
        c.admin.token_file = token.clone();
    })
    .await;
    let http = broker.running.http_addr.expect("http");
    (broker, http)
}

/// One request with `token`; returns (status, JSON body).
async fn call(
    http: SocketAddr,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &authorization {
        headers.push(("authorization", a.as_str()));
    }
    let answer = http_client::send(
        method,
        &format!("http://{http}/api/v1{path}"),
        &headers,
        body.map(|b| Bytes::from(b.to_string())),
        Duration::from_secs(5),
    )
    .await
    .expect("request");
    let value = serde_json::from_slice(&answer.body).expect("JSON body");
    (answer.status.as_u16(), value)
}

async fn api(http: SocketAddr, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    call(http, Some(TOKEN), method, path, body).await
}

#[tokio::test]
async fn admin_api_is_off_by_default_and_needs_the_token() {
    let broker = TestBroker::start().await;
    let http = broker.running.http_addr.expect("http");
    let (status, body) = call(http, Some(TOKEN), Method::GET, "/clients", None).await;
    assert_eq!(status, 404, "{body}");
    let (_broker, http) = start().await;
    for (method, path) in [
        (Method::GET, "/clients"),
        (Method::GET, "/openapi.json"),
        (Method::POST, "/publish"),
        (Method::DELETE, "/sessions/x"),
    ] {
        let (status, body) = call(http, None, method.clone(), path, None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(body["error"].is_string());
        let (status, _) = call(
            http,
            Some("wrong-token-but-long-enough"),
            method,
            path,
            None,
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, doc) = api(http, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/clients/{id}/kick"]["post"].is_object());
}

#[tokio::test]
async fn clients_sessions_subscriptions_and_kick() {
    let (broker, http) = start().await;
    let mut alice = broker.raw(V5).await;
    let mut connect = Connect::new(V5, "alice-1");
    connect.username = Some("alice".into());
    connect.properties.session_expiry_interval_secs = Some(600);
    assert_eq!(alice.connect(connect).await.code.0, 0);
    alice.subscribe("a/+/b", QoS::AtLeastOnce).await;
    let _bob = broker.client(V5, "bob-1").await;

    let (status, list) = api(http, Method::GET, "/clients", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 2);
    assert_eq!(list["clients"][0]["client_id"], "alice-1");
    let (_, list) = api(http, Method::GET, "/clients?prefix=bob", None).await;
    assert_eq!(list["total"], 1);
    let (_, list) = api(
        http,
        Method::GET,
        "/clients?user=alice&address=127.0.0.1",
        None,
    )
    .await;
    assert_eq!(list["clients"][0]["client_id"], "alice-1");
    let (_, list) = api(http, Method::GET, "/clients?offset=1&limit=1", None).await;
    assert_eq!(list["clients"][0]["client_id"], "bob-1");

    let (status, one) = api(http, Method::GET, "/clients/alice-1", None).await;
    assert_eq!(status, 200);
    assert_eq!(one["protocol"], "5.0");
    assert_eq!(one["username"], "alice");
    assert_eq!(one["subscriptions"][0]["filter"], "a/+/b");
    assert!(one["bytes_received"].as_u64().unwrap_or(0) > 0);
    assert!(one["connected_at_unix_ms"].as_u64().unwrap_or(0) > 0);

    let (_, subs) = api(http, Method::GET, "/subscriptions?client=alice-1", None).await;
    assert_eq!(subs["subscriptions"][0]["qos"], 1);
    let (_, stats) = api(http, Method::GET, "/subscriptions/stats", None).await;
    assert!(stats["trie_entries"].as_u64().unwrap_or(0) >= 1, "{stats}");

    let (status, _) = api(http, Method::POST, "/clients/alice-1/kick", None).await;
    assert_eq!(status, 200);
    match alice.recv_or_eof().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code.0, 0x98),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    // The persistent session stays, offline.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, session) = api(http, Method::GET, "/sessions/alice-1", None).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["online"], false);
    let (status, _) = api(http, Method::GET, "/clients/alice-1", None).await;
    assert_eq!(status, 404);
    let (_, sessions) = api(http, Method::GET, "/sessions", None).await;
    assert_eq!(sessions["total"], 2);
    let (status, _) = api(http, Method::DELETE, "/sessions/alice-1", None).await;
    assert_eq!(status, 200);
    let (status, _) = api(http, Method::GET, "/sessions/alice-1", None).await;
    assert_eq!(status, 404);
    let (status, _) = api(http, Method::DELETE, "/sessions/alice-1", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn publish_and_retained_messages() {
    let (broker, http) = start().await;
    let mut watcher = broker.client(V5, "watcher").await;
    watcher.subscribe("ops/#", QoS::AtLeastOnce).await;
    let body = json!({"topic": "ops/notice", "payload": "maintenance", "qos": 1, "retain": true,
        "properties": {"content_type": "text/plain", "user_properties": [["by", "admin"]],
                       "message_expiry_interval_secs": 3600}});
    let (status, answer) = api(http, Method::POST, "/publish", Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], 1);
    let publish = watcher.expect_publish_acked().await;
    assert_eq!(publish.payload(), b"maintenance");
    assert_eq!(publish.properties().content_type(), Some("text/plain"));

    let (_, list) = api(http, Method::GET, "/retained?filter=ops/%23", None).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["retained"][0]["topic"], "ops/notice");
    let (status, one) = api(http, Method::GET, "/retained/ops/notice", None).await;
    assert_eq!(status, 200);
    assert_eq!(one["payload"], "maintenance");
    assert_eq!(one["user_properties"][0][1], "admin");
    let binary =
        json!({"topic": "ops/bin", "payload": "/w==", "encoding": "base64", "retain": true});
    api(http, Method::POST, "/publish", Some(binary)).await;
    let (_, one) = api(http, Method::GET, "/retained/ops/bin", None).await;
    assert_eq!(one["payload_encoding"], "base64");
    assert_eq!(one["payload"], "/w==");
    let (status, _) = api(http, Method::DELETE, "/retained/ops/notice", None).await;
    assert_eq!(status, 200);
    let (status, _) = api(http, Method::GET, "/retained/ops/notice", None).await;
    assert_eq!(status, 404);
    let (status, _) = api(http, Method::DELETE, "/retained/ops/notice", None).await;
    assert_eq!(status, 404);
    // In-process brokers have no reload hook (the binary installs one: see ctl_cli).
    let (status, _) = api(http, Method::POST, "/reload", None).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn bad_input_gets_400_with_a_json_error() {
    let (broker, http) = start().await;
    let cases = [
        (Method::GET, "/clients?limit=0", None),
        (Method::GET, "/clients?offset=-1", None),
        (Method::GET, "/retained?filter=a/%23/b", None),
        (Method::GET, "/retained/a/%2B", None),
        (
            Method::POST,
            "/publish",
            Some(json!({"payload": "no topic"})),
        ),
        (Method::POST, "/publish", Some(json!({"topic": "a/#"}))),
        (
            Method::POST,
            "/publish",
            Some(json!({"topic": "a", "qos": 3})),
        ),
        (
            Method::POST,
            "/publish",
            Some(json!({"topic": "a", "retain": "yes"})),
        ),
        (
            Method::POST,
            "/publish",
            Some(json!({"topic": "a", "payload": "!", "encoding": "base64"})),
        ),
        (
            Method::POST,
            "/publish",
            Some(json!({"topic": "a", "properties": {"bogus": 1}})),
        ),
        (
            Method::POST,
            "/publish",
            Some(json!({"topic": "a", "properties": {"user_properties": [["k"]]}})),
        ),
    ];
    for (method, path, body) in cases {
        let (status, answer) = api(http, method.clone(), path, body.clone()).await;
        assert_eq!(status, 400, "{method} {path} {body:?}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let raw = http_client::send(
        Method::POST,
        &format!("http://{http}/api/v1/publish"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        Some(Bytes::from_static(b"{not json")),
        Duration::from_secs(5),
    )
    .await
    .expect("request");
    assert_eq!(raw.status.as_u16(), 400);
    let (status, _) = api(http, Method::PUT, "/clients", None).await;
    assert_eq!(status, 405);
    let (status, _) = api(http, Method::GET, "/nothing", None).await;
    assert_eq!(status, 404);
    let bad = broker
        .broker()
        .metrics()
        .admin_bad_requests
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(bad, 12);
}
